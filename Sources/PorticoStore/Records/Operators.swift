import Foundation
import SQLKit

/// What an operator may do.
public enum OperatorRole: String, Sendable, CaseIterable {
    case admin, `operator`, auditor
}

public struct OperatorRecord: Sendable, Equatable {
    public var name: String
    /// A slow password hash (bcrypt or equivalent), never the password.
    public var passwordHash: String
    public var role: OperatorRole
    public var failedLogins: Int
    public var lockedUntilMilliseconds: Int64?
    public var disabled: Bool

    public init(name: String, passwordHash: String, role: OperatorRole, failedLogins: Int = 0, lockedUntilMilliseconds: Int64? = nil, disabled: Bool = false) {
        self.name = name
        self.passwordHash = passwordHash
        self.role = role
        self.failedLogins = failedLogins
        self.lockedUntilMilliseconds = lockedUntilMilliseconds
        self.disabled = disabled
    }

    /// Whether the account is locked out at `now`.
    public func isLocked(at now: Int64) -> Bool { (lockedUntilMilliseconds ?? 0) > now }
}

extension Store {
    public func createOperator(_ record: OperatorRecord) async throws {
        try Validate.identifier(record.name, field: "operator.name", maxLength: 64)
        guard !record.passwordHash.isEmpty else { throw StoreError.invalid("operator.password_hash", "must not be empty") }
        try await write { transaction in
            if try await transaction.database.raw("SELECT name FROM operators WHERE name = \(bind: record.name)").first() != nil {
                throw StoreError(kind: .conflict, message: "an operator named \(record.name) already exists")
            }
            let hlc = transaction.timestamp()
            try await transaction.database.raw("""
                INSERT INTO operators (name, password_hash, role, failed_logins, locked_until_ms, disabled, created_ms, origin_site, hlc)
                VALUES (\(bind: record.name), \(bind: record.passwordHash), \(bind: record.role.rawValue), 0, NULL, \(bind: record.disabled ? 1 : 0),
                        \(bind: Int64(HybridLogicalClock.wallMilliseconds())), \(bind: transaction.siteID), \(bind: Int64(bitPattern: hlc)))
                """).run()
            try await transaction.logChange(entity: "operator", key: record.name, op: .upsert, hlc: hlc)
        }
    }

    public func operatorAccount(named name: String) async throws -> OperatorRecord? {
        try await read { db in try await db.raw("SELECT * FROM operators WHERE name = \(bind: name)").first().map(OperatorRecord.init(row:)) }
    }

    /// Counts a failed login; after `lockAfter` in a row the account is locked for `lockFor`
    /// milliseconds. Returns the account as it is now.
    @discardableResult
    public func recordLoginFailure(name: String, now: Int64, lockAfter: Int, lockFor: Int64) async throws -> OperatorRecord? {
        try await write { transaction in
            guard let row = try await transaction.database.raw("SELECT * FROM operators WHERE name = \(bind: name)").first() else { return nil }
            var account = try OperatorRecord(row: row)
            account.failedLogins += 1
            if account.failedLogins >= lockAfter { account.lockedUntilMilliseconds = now + lockFor }
            try await transaction.database.raw("UPDATE operators SET failed_logins = \(bind: account.failedLogins), locked_until_ms = \(bind: account.lockedUntilMilliseconds) WHERE name = \(bind: name)").run()
            return account
        }
    }

    /// A successful login clears the failure count.
    public func recordLoginSuccess(name: String) async throws {
        try await write { transaction in
            try await transaction.database.raw("UPDATE operators SET failed_logins = 0 WHERE name = \(bind: name)").run()
        }
    }

    /// An admin lifts a lockout.
    public func unlockOperator(name: String) async throws {
        try await write { transaction in
            let updated = try await transaction.database.raw("UPDATE operators SET failed_logins = 0, locked_until_ms = NULL WHERE name = \(bind: name) RETURNING name").all()
            guard !updated.isEmpty else { throw StoreError.notFound("operator \(name)") }
        }
    }
}

extension OperatorRecord {
    init(row: any SQLRow) throws {
        let role = try row.decode(column: "role", as: String.self)
        guard let parsedRole = OperatorRole(rawValue: role) else { throw StoreError.invalid("operator.role", "is unknown: \(role)") }
        self.init(name: try row.decode(column: "name", as: String.self), passwordHash: try row.decode(column: "password_hash", as: String.self), role: parsedRole,
                  failedLogins: try row.decode(column: "failed_logins", as: Int.self), lockedUntilMilliseconds: try row.decode(column: "locked_until_ms", as: Int64?.self),
                  disabled: try row.decode(column: "disabled", as: Int.self) != 0)
    }
}
