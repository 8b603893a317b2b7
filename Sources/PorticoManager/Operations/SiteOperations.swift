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

/// The site's secrets, sealed by the manager before they reach the store.
extension ManagerOperations {
    /// Stores a secret the site does not have yet; false when another manager stored it first.
    public func createSiteSecret(_ name: String, _ secret: SealedSecret) async throws -> Bool {
        try await store.write { transaction in
            let created = try await transaction.insertSecretIfAbsent(name, secret)
            if created { try await transaction.audit(AuditEntry(actor: "manager", action: "site.secret.create", target: name, source: "local", result: "ok", detail: "key \(secret.keyID)")) }
            return created
        }
    }

    /// Replaces a secret of the site (an identity imported, staged or switched on a manager).
    /// - Returns: its new version.
    @discardableResult
    public func replaceSiteSecret(_ name: String, _ secret: SealedSecret, detail: String) async throws -> Int64 {
        try await store.write { transaction in
            let version = try await transaction.replaceSecret(name, secret)
            try await transaction.audit(AuditEntry(actor: "manager", action: "site.secret.replace", target: name, source: "local", result: "ok", detail: detail))
            return version
        }
    }
}
