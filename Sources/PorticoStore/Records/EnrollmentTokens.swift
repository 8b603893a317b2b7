import Crypto
import Foundation
import SQLKit

/// A secret that lets new agents enroll. Only a SHA-256 of the secret is stored.
public struct EnrollmentTokenRecord: Sendable, Equatable {
    public var id: String
    public var secretHash: [UInt8]
    /// The group enrolled devices join.
    public var groupID: String?
    /// `nil`: any number of uses until expiry or revocation; 1: one-time.
    public var usesAllowed: Int?
    public var uses: Int
    public var expiresMilliseconds: Int64?
    public var revoked: Bool
    public var createdBy: String
    public var createdMilliseconds: Int64

    public init(id: String, secretHash: [UInt8], groupID: String? = nil, usesAllowed: Int? = 1, uses: Int = 0, expiresMilliseconds: Int64?, revoked: Bool = false, createdBy: String, createdMilliseconds: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) {
        self.id = id
        self.secretHash = secretHash
        self.groupID = groupID
        self.usesAllowed = usesAllowed
        self.uses = uses
        self.expiresMilliseconds = expiresMilliseconds
        self.revoked = revoked
        self.createdBy = createdBy
        self.createdMilliseconds = createdMilliseconds
    }
}

/// Why an enrollment token was not accepted. Callers should tell an agent only that the
/// token was refused; the reason is for the operator's log.
public enum EnrollmentRefusal: String, Error, Sendable {
    case unknown, wrongSecret, revoked, expired, usedUp
}

extension Store {
    public func createEnrollmentToken(_ token: EnrollmentTokenRecord) async throws {
        try await write { try await $0.createEnrollmentToken(token) }
    }

    /// Checks a presented secret and counts one use, atomically: two agents racing for a
    /// one-time token cannot both have it.
    /// - Throws: ``EnrollmentRefusal``.
    public func consumeEnrollmentToken(id: String, secret: [UInt8], now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> EnrollmentTokenRecord {
        let presented = Array(SHA256.hash(data: secret))
        return try await write { transaction in
            guard let row = try await transaction.database.raw("SELECT * FROM enrollment_tokens WHERE id = \(bind: id)").first() else { throw EnrollmentRefusal.unknown }
            var token = try EnrollmentTokenRecord(row: row)
            guard ConstantTime.equal(token.secretHash, presented) else { throw EnrollmentRefusal.wrongSecret }
            if token.revoked { throw EnrollmentRefusal.revoked }
            if let expires = token.expiresMilliseconds, now >= expires { throw EnrollmentRefusal.expired }
            if let allowed = token.usesAllowed, token.uses >= allowed { throw EnrollmentRefusal.usedUp }
            let hlc = transaction.timestamp()
            try await transaction.database.raw("UPDATE enrollment_tokens SET uses = uses + 1, hlc = \(bind: Int64(bitPattern: hlc)) WHERE id = \(bind: id)").run()
            try await transaction.logChange(entity: "enrollment_token", key: id, op: .upsert, hlc: hlc)
            token.uses += 1
            return token
        }
    }

    public func revokeEnrollmentToken(id: String) async throws {
        try await write { try await $0.revokeEnrollmentToken(id: id) }
    }

    public func enrollmentToken(id: String) async throws -> EnrollmentTokenRecord? {
        try await read { db in try await db.raw("SELECT * FROM enrollment_tokens WHERE id = \(bind: id)").first().map(EnrollmentTokenRecord.init(row:)) }
    }

    public func enrollmentTokens() async throws -> [EnrollmentTokenRecord] {
        try await read { db in try await db.raw("SELECT * FROM enrollment_tokens ORDER BY created_ms, id").all().map(EnrollmentTokenRecord.init(row:)) }
    }
}

extension Transaction {
    public func createEnrollmentToken(_ token: EnrollmentTokenRecord) async throws {
        try Validate.identifier(token.id, field: "token.id", maxLength: 64)
        guard token.secretHash.count == 32 else { throw StoreError.invalid("token.secret_hash", "must be a 32-byte SHA-256") }
        if let uses = token.usesAllowed, uses < 1 { throw StoreError.invalid("token.uses_allowed", "must be at least 1") }
        if let group = token.groupID, try await database.raw("SELECT id FROM device_groups WHERE id = \(bind: group)").first() == nil {
            throw StoreError.notFound("group \(group)")
        }
        let hlc = timestamp()
        try await database.raw("""
            INSERT INTO enrollment_tokens (id, secret_hash, group_id, uses_allowed, uses, expires_ms, revoked, created_by, created_ms, origin_site, hlc)
            VALUES (\(bind: token.id), \(bind: Data(token.secretHash)), \(bind: token.groupID), \(bind: token.usesAllowed), 0, \(bind: token.expiresMilliseconds),
                    0, \(bind: token.createdBy), \(bind: token.createdMilliseconds), \(bind: siteID), \(bind: Int64(bitPattern: hlc)))
            """).run()
        try await logChange(entity: "enrollment_token", key: token.id, op: .upsert, hlc: hlc)
    }

    public func revokeEnrollmentToken(id: String) async throws {
        let hlc = timestamp()
        let updated = try await database.raw("UPDATE enrollment_tokens SET revoked = 1, hlc = \(bind: Int64(bitPattern: hlc)) WHERE id = \(bind: id) RETURNING id").all()
        guard !updated.isEmpty else { throw StoreError.notFound("enrollment token \(id)") }
        try await logChange(entity: "enrollment_token", key: id, op: .upsert, hlc: hlc)
    }
}

extension EnrollmentTokenRecord {
    init(row: any SQLRow) throws {
        self.init(
            id: try row.decode(column: "id", as: String.self),
            secretHash: Array(try row.decode(column: "secret_hash", as: Data.self)),
            groupID: try row.decode(column: "group_id", as: String?.self),
            usesAllowed: try row.decode(column: "uses_allowed", as: Int?.self),
            uses: try row.decode(column: "uses", as: Int.self),
            expiresMilliseconds: try row.decode(column: "expires_ms", as: Int64?.self),
            revoked: try row.decode(column: "revoked", as: Int.self) != 0,
            createdBy: try row.decode(column: "created_by", as: String.self),
            createdMilliseconds: try row.decode(column: "created_ms", as: Int64.self)
        )
    }
}

/// Comparisons of secrets that take the same time wherever the first difference is.
public enum ConstantTime {
    public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}
