import Foundation
import SQLKit

/// A secret of the site as the database keeps it: sealed by the manager with the site's
/// secrets key (the store never sees it open), the id of that key, and a version that moves
/// with every change.
public struct SealedSecret: Sendable, Equatable {
    public var sealed: [UInt8]
    public var keyID: String
    public var version: Int64

    public init(sealed: [UInt8], keyID: String, version: Int64 = 0) {
        self.sealed = sealed
        self.keyID = keyID
        self.version = version
    }
}

extension Store {
    /// The sealed secret named `name`, if the site has one.
    public func sealedSecret(_ name: String) async throws -> SealedSecret? {
        try await read { db in
            guard let row = try await db.raw("SELECT sealed, key_id, version FROM site_secrets WHERE name = \(bind: name)").first() else { return nil }
            return SealedSecret(sealed: Array(try row.decode(column: "sealed", as: Data.self)), keyID: try row.decode(column: "key_id", as: String.self),
                                version: try row.decode(column: "version", as: Int64.self))
        }
    }

    /// The version of each secret, to notice a change made by another manager without
    /// reading the secrets.
    public func secretVersions() async throws -> [String: Int64] {
        try await read { db in
            var versions: [String: Int64] = [:]
            for row in try await db.raw("SELECT name, version FROM site_secrets").all() {
                versions[try row.decode(column: "name", as: String.self)] = try row.decode(column: "version", as: Int64.self)
            }
            return versions
        }
    }
}

extension Transaction {
    /// Stores a secret the site does not have yet. Managers starting together race to create
    /// the site's keys: the first one's stay, and the others read them back.
    /// - Returns: whether this one was stored.
    public func insertSecretIfAbsent(_ name: String, _ secret: SealedSecret) async throws -> Bool {
        let inserted = try await database.raw("""
            INSERT INTO site_secrets (name, sealed, key_id, version, updated_ms)
            VALUES (\(bind: name), \(bind: Data(secret.sealed)), \(bind: secret.keyID), 1, \(bind: Int64(HybridLogicalClock.wallMilliseconds())))
            ON CONFLICT (name) DO NOTHING RETURNING name
            """).all()
        return !inserted.isEmpty
    }

    /// Replaces a secret (or stores it) and moves its version.
    /// - Returns: the new version.
    @discardableResult
    public func replaceSecret(_ name: String, _ secret: SealedSecret) async throws -> Int64 {
        let row = try await database.raw("""
            INSERT INTO site_secrets (name, sealed, key_id, version, updated_ms)
            VALUES (\(bind: name), \(bind: Data(secret.sealed)), \(bind: secret.keyID), 1, \(bind: Int64(HybridLogicalClock.wallMilliseconds())))
            ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, key_id = excluded.key_id, version = site_secrets.version + 1, updated_ms = excluded.updated_ms
            RETURNING version
            """).first()
        return try row?.decode(column: "version", as: Int64.self) ?? 0
    }
}
