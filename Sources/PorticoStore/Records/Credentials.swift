import Foundation
import SQLKit

/// A token for automation; only a SHA-256 of its secret is stored, and it is listed
/// without it.
public struct APITokenRecord: Sendable, Equatable {
    public var id: String
    public var secretHash: [UInt8]
    public var name: String
    public var role: OperatorRole
    public var scopes: [String]
    public var expiresMilliseconds: Int64?
    public var revoked: Bool
    public var createdBy: String

    public init(id: String, secretHash: [UInt8], name: String, role: OperatorRole, scopes: [String] = [], expiresMilliseconds: Int64?, revoked: Bool = false, createdBy: String) {
        self.id = id
        self.secretHash = secretHash
        self.name = name
        self.role = role
        self.scopes = scopes
        self.expiresMilliseconds = expiresMilliseconds
        self.revoked = revoked
        self.createdBy = createdBy
    }

    /// Whether the token may be used at `now`.
    public func isUsable(at now: Int64) -> Bool { !revoked && (expiresMilliseconds.map { now < $0 } ?? true) }
}

/// A signed-in browser session; the cookie value is never stored, only its hash.
public struct ConsoleSessionRecord: Sendable, Equatable {
    public var idHash: [UInt8]
    public var operatorName: String
    public var csrfToken: String
    public var createdMilliseconds: Int64
    public var expiresMilliseconds: Int64
    public var source: String

    public init(idHash: [UInt8], operatorName: String, csrfToken: String, createdMilliseconds: Int64, expiresMilliseconds: Int64, source: String) {
        self.idHash = idHash
        self.operatorName = operatorName
        self.csrfToken = csrfToken
        self.createdMilliseconds = createdMilliseconds
        self.expiresMilliseconds = expiresMilliseconds
        self.source = source
    }
}

extension Transaction {
    public func createAPIToken(_ token: APITokenRecord) async throws {
        try Validate.identifier(token.id, field: "api_token.id", maxLength: 64)
        guard token.secretHash.count == 32 else { throw StoreError.invalid("api_token.secret_hash", "must be a 32-byte SHA-256") }
        try Validate.text(token.name, field: "api_token.name", maxBytes: 128)
        for scope in token.scopes { try Validate.identifier(scope, field: "api_token.scopes", maxLength: 64) }
        let hlc = timestamp()
        try await database.raw("""
            INSERT INTO api_tokens (id, secret_hash, name, role, scopes, expires_ms, revoked, created_by, created_ms, origin_site, hlc)
            VALUES (\(bind: token.id), \(bind: Data(token.secretHash)), \(bind: token.name), \(bind: token.role.rawValue), \(bind: token.scopes.joined(separator: " ")),
                    \(bind: token.expiresMilliseconds), \(bind: token.revoked ? 1 : 0), \(bind: token.createdBy), \(bind: Int64(HybridLogicalClock.wallMilliseconds())), \(bind: siteID), \(bind: Int64(bitPattern: hlc)))
            """).run()
        try await logChange(entity: "api_token", key: token.id, op: .upsert, hlc: hlc)
    }

    /// Revokes the tokens `creator` made, and the tokens those made, in turn: a token ends
    /// with whoever made it. Returns the ids revoked.
    public func revokeAPITokens(createdBy creator: String) async throws -> [String] {
        var revoked: [String] = []
        var creators = [creator]
        while let next = creators.popLast(), revoked.count < 100_000 {
            let ids = try await database.raw("SELECT id FROM api_tokens WHERE created_by = \(bind: next) AND revoked = 0").all().map { try $0.decode(column: "id", as: String.self) }
            for id in ids {
                try await revokeAPIToken(id: id)
                revoked.append(id)
                creators.append("token:\(id)")
            }
        }
        return revoked
    }

    public func revokeAPIToken(id: String) async throws {
        let hlc = timestamp()
        let updated = try await database.raw("UPDATE api_tokens SET revoked = 1, hlc = \(bind: Int64(bitPattern: hlc)) WHERE id = \(bind: id) RETURNING id").all()
        guard !updated.isEmpty else { throw StoreError.notFound("API token \(id)") }
        try await logChange(entity: "api_token", key: id, op: .upsert, hlc: hlc)
    }
}

extension Store {
    public func createAPIToken(_ token: APITokenRecord) async throws {
        try await write { try await $0.createAPIToken(token) }
    }

    public func apiToken(id: String) async throws -> APITokenRecord? {
        try await read { db in try await db.raw("SELECT * FROM api_tokens WHERE id = \(bind: id)").first().map(APITokenRecord.init(row:)) }
    }

    public func apiTokens() async throws -> [APITokenRecord] {
        try await read { db in try await db.raw("SELECT * FROM api_tokens ORDER BY created_ms, id").all().map(APITokenRecord.init(row:)) }
    }

    public func revokeAPIToken(id: String) async throws {
        try await write { try await $0.revokeAPIToken(id: id) }
    }

    public func createConsoleSession(_ session: ConsoleSessionRecord) async throws {
        try await write { try await $0.createConsoleSession(session) }
    }

    /// The session for a cookie's hash, if it exists and has not expired.
    public func consoleSession(idHash: [UInt8], now: Int64) async throws -> ConsoleSessionRecord? {
        try await read { db in
            try await db.raw("SELECT * FROM console_sessions WHERE id_hash = \(bind: Data(idHash)) AND expires_ms > \(bind: now)").first().map {
                ConsoleSessionRecord(idHash: Array(try $0.decode(column: "id_hash", as: Data.self)), operatorName: try $0.decode(column: "operator", as: String.self),
                                     csrfToken: try $0.decode(column: "csrf_token", as: String.self), createdMilliseconds: try $0.decode(column: "created_ms", as: Int64.self),
                                     expiresMilliseconds: try $0.decode(column: "expires_ms", as: Int64.self), source: try $0.decode(column: "source", as: String.self))
            }
        }
    }

    public func deleteConsoleSession(idHash: [UInt8]) async throws {
        try await write { try await $0.deleteConsoleSession(idHash: idHash) }
    }
}

extension Transaction {
    public func createConsoleSession(_ session: ConsoleSessionRecord) async throws {
        guard session.idHash.count == 32 else { throw StoreError.invalid("session.id_hash", "must be a 32-byte SHA-256") }
        try await database.raw("""
            INSERT INTO console_sessions (id_hash, operator, csrf_token, created_ms, expires_ms, source)
            VALUES (\(bind: Data(session.idHash)), \(bind: session.operatorName), \(bind: session.csrfToken), \(bind: session.createdMilliseconds), \(bind: session.expiresMilliseconds), \(bind: session.source))
            """).run()
        try await database.raw("DELETE FROM console_sessions WHERE expires_ms < \(bind: session.createdMilliseconds)").run()
    }

    public func deleteConsoleSession(idHash: [UInt8]) async throws {
        try await database.raw("DELETE FROM console_sessions WHERE id_hash = \(bind: Data(idHash))").run()
    }
}

extension APITokenRecord {
    init(row: any SQLRow) throws {
        let role = try row.decode(column: "role", as: String.self)
        guard let parsedRole = OperatorRole(rawValue: role) else { throw StoreError.invalid("api_token.role", "is unknown: \(role)") }
        let scopes = try row.decode(column: "scopes", as: String.self)
        self.init(id: try row.decode(column: "id", as: String.self), secretHash: Array(try row.decode(column: "secret_hash", as: Data.self)),
                  name: try row.decode(column: "name", as: String.self), role: parsedRole, scopes: scopes.split(separator: " ").map(String.init),
                  expiresMilliseconds: try row.decode(column: "expires_ms", as: Int64?.self), revoked: try row.decode(column: "revoked", as: Int.self) != 0,
                  createdBy: try row.decode(column: "created_by", as: String.self))
    }
}
