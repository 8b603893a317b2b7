import PorticoStore

/// Peers of other sites, what they send, and the fleet's history.
extension ManagerOperations {
    public func addPeer(_ peer: PeerRecord, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.addPeer(peer)
            try await transaction.audit(actor.entry("peer.add", target: peer.name, detail: "\(peer.url) \(peer.certificateFingerprint)"))
        }
    }

    public func removePeer(name: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.removePeer(name: name)
            try await transaction.audit(actor.entry("peer.remove", target: name))
        }
    }

    /// A peer the config file names: added, or its URL and certificate brought up to date.
    public func configurePeer(_ peer: PeerRecord) async throws {
        try await store.write { try await $0.upsertPeer(peer) }
    }

    /// The site a peer said it is.
    public func learnPeerSite(name: String, siteID: String) async throws {
        try await store.write { try await $0.setPeerSite(name: name, siteID: siteID) }
    }

    /// Applies a batch of a peer's changes.
    public func applyChanges(_ batch: ChangeBatch, history: Bool) async throws -> ApplyOutcome {
        try await store.apply(batch, history: history)
    }

    /// Keeps today's figures of the fleet for the reports.
    public func recordFleetSnapshot(_ summary: FleetSummary, at milliseconds: Int64) async throws {
        try await store.recordFleetSnapshot(summary, at: milliseconds)
    }
}
