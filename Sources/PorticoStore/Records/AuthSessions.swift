import Foundation
import SQLKit

/// A signed-in API session: a short-lived access secret and a longer-lived refresh secret.
/// Only SHA-256 hashes of the secrets are stored. Refreshing replaces both; presenting a
/// refresh secret that was already replaced ends the session (it was copied).
public struct AuthSessionRecord: Sendable, Equatable {
    public var id: String
    public var operatorName: String
    public var accessHash: [UInt8]
    public var accessExpiresMilliseconds: Int64
    public var refreshHash: [UInt8]
    public var refreshExpiresMilliseconds: Int64
    public var revoked: Bool
    public var createdMilliseconds: Int64
    public var source: String

    public init(id: String, operatorName: String, accessHash: [UInt8], accessExpiresMilliseconds: Int64, refreshHash: [UInt8], refreshExpiresMilliseconds: Int64,
                revoked: Bool = false, createdMilliseconds: Int64 = Int64(HybridLogicalClock.wallMilliseconds()), source: String) {
        self.id = id
        self.operatorName = operatorName
        self.accessHash = accessHash
        self.accessExpiresMilliseconds = accessExpiresMilliseconds
        self.refreshHash = refreshHash
        self.refreshExpiresMilliseconds = refreshExpiresMilliseconds
        self.revoked = revoked
        self.createdMilliseconds = createdMilliseconds
        self.source = source
    }
}

extension Transaction {
    public func createAuthSession(_ session: AuthSessionRecord) async throws {
        try Validate.identifier(session.id, field: "session.id", maxLength: 64)
        guard session.accessHash.count == 32, session.refreshHash.count == 32 else { throw StoreError.invalid("session", "hashes must be 32-byte SHA-256") }
        try await database.raw("""
            INSERT INTO auth_sessions (id, operator, access_hash, access_expires_ms, refresh_hash, refresh_expires_ms, revoked, created_ms, source)
            VALUES (\(bind: session.id), \(bind: session.operatorName), \(bind: Data(session.accessHash)), \(bind: session.accessExpiresMilliseconds),
                    \(bind: Data(session.refreshHash)), \(bind: session.refreshExpiresMilliseconds), 0, \(bind: session.createdMilliseconds), \(bind: session.source))
            """).run()
    }

    /// Replaces a session's secrets after a refresh.
    public func renewAuthSession(id: String, accessHash: [UInt8], accessExpiresMilliseconds: Int64, refreshHash: [UInt8]) async throws {
        let updated = try await database.raw("""
            UPDATE auth_sessions SET access_hash = \(bind: Data(accessHash)), access_expires_ms = \(bind: accessExpiresMilliseconds), refresh_hash = \(bind: Data(refreshHash))
            WHERE id = \(bind: id) AND revoked = 0 RETURNING id
            """).all()
        guard !updated.isEmpty else { throw StoreError.notFound("session \(id)") }
    }

    public func revokeAuthSession(id: String) async throws {
        try await database.raw("UPDATE auth_sessions SET revoked = 1 WHERE id = \(bind: id)").run()
    }

    /// Ends every API session of an operator (new password, disabled, deleted).
    public func endAuthSessions(operatorName: String) async throws {
        try await database.raw("UPDATE auth_sessions SET revoked = 1 WHERE operator = \(bind: operatorName)").run()
    }

    /// Removes sessions whose refresh secret has expired.
    public func pruneAuthSessions(now: Int64) async throws {
        try await database.raw("DELETE FROM auth_sessions WHERE refresh_expires_ms < \(bind: now)").run()
    }
}

extension Store {
    public func authSession(id: String) async throws -> AuthSessionRecord? {
        try await read { db in
            try await db.raw("SELECT * FROM auth_sessions WHERE id = \(bind: id)").first().map {
                AuthSessionRecord(
                    id: try $0.decode(column: "id", as: String.self), operatorName: try $0.decode(column: "operator", as: String.self),
                    accessHash: Array(try $0.decode(column: "access_hash", as: Data.self)), accessExpiresMilliseconds: try $0.decode(column: "access_expires_ms", as: Int64.self),
                    refreshHash: Array(try $0.decode(column: "refresh_hash", as: Data.self)), refreshExpiresMilliseconds: try $0.decode(column: "refresh_expires_ms", as: Int64.self),
                    revoked: try $0.decode(column: "revoked", as: Int.self) != 0, createdMilliseconds: try $0.decode(column: "created_ms", as: Int64.self),
                    source: try $0.decode(column: "source", as: String.self))
            }
        }
    }
}
