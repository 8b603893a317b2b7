import Foundation
import SQLKit

/// A peer manager in another site.
public struct PeerRecord: Sendable, Equatable {
    public var name: String
    public var url: String
    /// SHA-256 of the peer's certificate, hex.
    public var certificateFingerprint: String
    public var siteID: String?
    /// Which way events and audit entries go with this peer.
    public var history: PeerHistory
    /// The peer's certificate (PEM), which every manager of this site trusts and pins.
    public var certificatePEM: String?

    public init(name: String, url: String, certificateFingerprint: String, siteID: String? = nil, history: PeerHistory = .both, certificatePEM: String? = nil) {
        self.certificatePEM = certificatePEM
        self.name = name
        self.url = url
        self.certificateFingerprint = certificateFingerprint
        self.siteID = siteID
        self.history = history
    }
}

/// Which way history (events and audit entries) replicates with a peer. Everything else
/// always goes both ways.
public enum PeerHistory: String, Sendable, CaseIterable {
    case both, send, receive, none

    /// This site sends its history to the peer.
    public var sends: Bool { self == .both || self == .send }
    /// This site takes the peer's history.
    public var receives: Bool { self == .both || self == .receive }
}

extension Store {
    /// Records this manager's site (once; later calls keep the first creation time).
    public func registerSite(name: String) async throws {
        try Validate.text(name, field: "site.name", maxBytes: 128)
        try await write { transaction in
            let hlc = transaction.timestamp()
            try await transaction.database.raw("""
                INSERT INTO sites (id, name, created_ms, origin_site, hlc)
                VALUES (\(bind: transaction.siteID), \(bind: name), \(bind: Int64(HybridLogicalClock.wallMilliseconds())), \(bind: transaction.siteID), \(bind: Int64(bitPattern: hlc)))
                ON CONFLICT (id) DO UPDATE SET name = \(bind: name)
                """).run()
            try await transaction.logChange(entity: "site", key: transaction.siteID, op: .upsert, hlc: hlc)
        }
    }

    public func sites() async throws -> [(id: String, name: String)] {
        try await read { db in
            try await db.raw("SELECT id, name FROM sites ORDER BY id").all().map { (try $0.decode(column: "id", as: String.self), try $0.decode(column: "name", as: String.self)) }
        }
    }

    public func addPeer(_ peer: PeerRecord) async throws {
        try await write { try await $0.addPeer(peer) }
    }

    public func removePeer(name: String) async throws {
        try await write { try await $0.removePeer(name: name) }
    }

    public func peers() async throws -> [PeerRecord] {
        try await read { db in
            try await db.raw("SELECT name, url, certificate_fingerprint, site_id, history, certificate_pem FROM peers ORDER BY name").all().map {
                PeerRecord(name: try $0.decode(column: "name", as: String.self), url: try $0.decode(column: "url", as: String.self),
                           certificateFingerprint: try $0.decode(column: "certificate_fingerprint", as: String.self), siteID: try $0.decode(column: "site_id", as: String?.self),
                           history: PeerHistory(rawValue: try $0.decode(column: "history", as: String.self)) ?? .both,
                           certificatePEM: try $0.decode(column: "certificate_pem", as: String?.self))
            }
        }
    }

    /// Moves a device to a new lifecycle state (locked, wiped, revoked, active again).
    public func setDeviceState(id: String, to state: DeviceState) async throws {
        try await write { try await $0.setDeviceState(id: id, to: state) }
    }
}

extension Transaction {
    /// Moves a device to a new lifecycle state (locked, wiped, revoked, active again).
    public func setDeviceState(id: String, to state: DeviceState) async throws {
        let hlc = timestamp()
        let updated = try await database.raw("UPDATE devices SET state = \(bind: state.rawValue), hlc = \(bind: Int64(bitPattern: hlc)) WHERE id = \(bind: id) RETURNING id").all()
        guard !updated.isEmpty else { throw StoreError.notFound("device \(id)") }
        try await logChange(entity: "device", key: id, op: .upsert, hlc: hlc)
    }

    /// Forgets a device: its row, group memberships and open commands. Its events and the
    /// audit log stay as history. The agent must enroll again to come back.
    public func deleteDevice(id: String) async throws {
        let removed = try await database.raw("DELETE FROM devices WHERE id = \(bind: id) RETURNING id").all()
        guard !removed.isEmpty else { throw StoreError.notFound("device \(id)") }
        let hlc = timestamp()
        try await database.raw("DELETE FROM device_group_members WHERE device_id = \(bind: id)").run()
        try await database.raw("UPDATE commands SET state = 'expired', updated_ms = \(bind: Int64(HybridLogicalClock.wallMilliseconds())), hlc = \(bind: Int64(bitPattern: hlc)) WHERE device_id = \(bind: id) AND state IN ('pending', 'delivered')").run()
        try await logChange(entity: "device", key: id, op: .delete, hlc: hlc)
    }

    public func addPeer(_ peer: PeerRecord) async throws {
        try Validate.identifier(peer.name, field: "peer.name", maxLength: 64)
        guard peer.url.hasPrefix("https://") else { throw StoreError.invalid("peer.url", "must be an https:// URL") }
        guard peer.certificateFingerprint.count == 64, peer.certificateFingerprint.allSatisfy(\.isHexDigit) else {
            throw StoreError.invalid("peer.certificate_fingerprint", "must be a SHA-256 in 64 hex digits")
        }
        if try await database.raw("SELECT name FROM peers WHERE name = \(bind: peer.name)").first() != nil {
            throw StoreError(kind: .conflict, message: "a peer named \(peer.name) already exists")
        }
        try await database.raw("""
            INSERT INTO peers (name, url, certificate_fingerprint, site_id, history, added_ms, certificate_pem)
            VALUES (\(bind: peer.name), \(bind: peer.url), \(bind: peer.certificateFingerprint.lowercased()), \(bind: peer.siteID), \(bind: peer.history.rawValue),
                    \(bind: Int64(HybridLogicalClock.wallMilliseconds())), \(bind: peer.certificatePEM))
            """).run()
    }

    /// Adds a peer or brings its URL and fingerprint up to date (peers from the config file).
    public func upsertPeer(_ peer: PeerRecord) async throws {
        try Validate.identifier(peer.name, field: "peer.name", maxLength: 64)
        guard peer.url.hasPrefix("https://") else { throw StoreError.invalid("peer.url", "must be an https:// URL") }
        try await database.raw("""
            INSERT INTO peers (name, url, certificate_fingerprint, site_id, history, added_ms, certificate_pem)
            VALUES (\(bind: peer.name), \(bind: peer.url), \(bind: peer.certificateFingerprint.lowercased()), NULL, \(bind: peer.history.rawValue), \(bind: Int64(HybridLogicalClock.wallMilliseconds())),
                    \(bind: peer.certificatePEM))
            ON CONFLICT (name) DO UPDATE SET url = excluded.url, certificate_fingerprint = excluded.certificate_fingerprint, history = excluded.history,
            certificate_pem = excluded.certificate_pem
            """).run()
    }

    /// Records the site a peer said it is.
    public func setPeerSite(name: String, siteID: String) async throws {
        try Validate.text(siteID, field: "peer.site_id", maxBytes: 128)
        try await database.raw("UPDATE peers SET site_id = \(bind: siteID) WHERE name = \(bind: name)").run()
    }

    public func removePeer(name: String) async throws {
        let removed = try await database.raw("DELETE FROM peers WHERE name = \(bind: name) RETURNING name").all()
        guard !removed.isEmpty else { throw StoreError.notFound("peer \(name)") }
    }
}
