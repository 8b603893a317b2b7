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

    /// What a directory operator's password hash holds: no password is kept (the directory
    /// checks it), and nothing a password could match.
    public static let directoryMarker = "$directory$"

    /// An operator from the directory, not a local account.
    public var fromDirectory: Bool { passwordHash == Self.directoryMarker }

    /// Whether the account is locked out at `now`.
    public func isLocked(at now: Int64) -> Bool { (lockedUntilMilliseconds ?? 0) > now }
}

extension Transaction {
    public func createOperator(_ record: OperatorRecord) async throws {
        try Validate.identifier(record.name, field: "operator.name", maxLength: 64)
        guard !record.passwordHash.isEmpty else { throw StoreError.invalid("operator.password_hash", "must not be empty") }
        if try await database.raw("SELECT name FROM operators WHERE name = \(bind: record.name)").first() != nil {
            throw StoreError(kind: .conflict, message: "an operator named \(record.name) already exists")
        }
        let hlc = timestamp()
        try await database.raw("""
            INSERT INTO operators (name, password_hash, role, failed_logins, locked_until_ms, disabled, created_ms, origin_site, hlc)
            VALUES (\(bind: record.name), \(bind: record.passwordHash), \(bind: record.role.rawValue), 0, NULL, \(bind: record.disabled ? 1 : 0),
                    \(bind: Int64(HybridLogicalClock.wallMilliseconds())), \(bind: siteID), \(bind: Int64(bitPattern: hlc)))
            """).run()
        try await logChange(entity: "operator", key: record.name, op: .upsert, hlc: hlc)
    }

    /// Changes an operator's role, password hash or disabled flag; nil leaves it as it is.
    /// A new password or a disabled account also ends the operator's sessions, but for the
    /// console session `keeping` (the operator who changed their own password).
    @discardableResult
    public func updateOperator(name: String, role: OperatorRole? = nil, passwordHash: String? = nil, disabled: Bool? = nil,
                               keeping: [UInt8]? = nil) async throws -> OperatorRecord {
        guard var account = try await database.raw("SELECT * FROM operators WHERE name = \(bind: name)").first().map(OperatorRecord.init(row:)) else {
            throw StoreError.notFound("operator \(name)")
        }
        if let role { account.role = role }
        if let passwordHash {
            guard !passwordHash.isEmpty else { throw StoreError.invalid("operator.password_hash", "must not be empty") }
            guard !account.fromDirectory else { throw StoreError.conflict("\(name) signs in with the directory, which keeps the password: change it there") }
            account.passwordHash = passwordHash
        }
        if let disabled { account.disabled = disabled }
        let hlc = timestamp()
        try await database.raw("""
            UPDATE operators SET role = \(bind: account.role.rawValue), password_hash = \(bind: account.passwordHash), disabled = \(bind: account.disabled ? 1 : 0),
            hlc = \(bind: Int64(bitPattern: hlc)) WHERE name = \(bind: name)
            """).run()
        try await logChange(entity: "operator", key: name, op: .upsert, hlc: hlc)
        if passwordHash != nil || disabled == true {
            try await endAuthSessions(operatorName: name)
            if let keeping, disabled != true {
                try await database.raw("DELETE FROM console_sessions WHERE operator = \(bind: name) AND id_hash <> \(bind: Data(keeping))").run()
            } else {
                try await database.raw("DELETE FROM console_sessions WHERE operator = \(bind: name)").run()
            }
        }
        return account
    }

    /// Removes an operator and ends their sessions. The audit log keeps their name.
    public func deleteOperator(name: String) async throws {
        let removed = try await database.raw("DELETE FROM operators WHERE name = \(bind: name) RETURNING name").all()
        guard !removed.isEmpty else { throw StoreError.notFound("operator \(name)") }
        try await logChange(entity: "operator", key: name, op: .delete, hlc: timestamp())
        try await endAuthSessions(operatorName: name)
        try await database.raw("DELETE FROM console_sessions WHERE operator = \(bind: name)").run()
    }

    /// An admin lifts a lockout.
    public func unlockOperator(name: String) async throws {
        let updated = try await database.raw("UPDATE operators SET failed_logins = 0, locked_until_ms = NULL WHERE name = \(bind: name) RETURNING name").all()
        guard !updated.isEmpty else { throw StoreError.notFound("operator \(name)") }
    }

    public func operatorAccount(named name: String) async throws -> OperatorRecord? {
        try await database.raw("SELECT * FROM operators WHERE name = \(bind: name)").first().map(OperatorRecord.init(row:))
    }

    /// How many admins can still sign in (not disabled).
    public func activeAdminCount() async throws -> Int {
        try await database.raw("SELECT COUNT(*) AS n FROM operators WHERE role = 'admin' AND disabled = 0").first()?.decode(column: "n", as: Int.self) ?? 0
    }
}

extension Store {
    public func createOperator(_ record: OperatorRecord) async throws {
        try await write { try await $0.createOperator(record) }
    }

    /// Every operator, by name.
    public func operators() async throws -> [OperatorRecord] {
        try await read { db in try await db.raw("SELECT * FROM operators ORDER BY name").all().map(OperatorRecord.init(row:)) }
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
        try await write { try await $0.unlockOperator(name: name) }
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
