import Foundation
import PorticoStore

/// Operator accounts and their sign-ins.
extension ManagerOperations {
    public func createOperator(name: String, role: OperatorRole, password: String, by actor: Actor) async throws -> OperatorRecord {
        let record = OperatorRecord(name: name, passwordHash: try await PasswordHasher.hash(password), role: role)
        try await store.write { transaction in
            try await transaction.createOperator(record)
            try await transaction.audit(actor.entry("operator.create", target: name, detail: "role \(role.rawValue)"))
        }
        return record
    }

    public func unlockOperator(name: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.unlockOperator(name: name)
            try await transaction.audit(actor.entry("operator.unlock", target: name))
        }
    }

    /// Role, password hash or disabled flag. The last admin who can sign in cannot be demoted
    /// or disabled, so the manager never loses its last administrator.
    /// - Parameter keepingConsoleSession: the console session to keep when the operator
    ///   changes their own password (every other session ends).
    public func updateOperator(name: String, role: OperatorRole?, password: String?, disabled: Bool?, by actor: Actor,
                               keepingConsoleSession: [UInt8]? = nil) async throws -> OperatorRecord {
        let hash = if let password { try await PasswordHasher.hash(password) } else { String?.none }
        var changes: [String] = []
        if let role { changes.append("role \(role.rawValue)") }
        if hash != nil { changes.append("password") }
        if let disabled { changes.append(disabled ? "disabled" : "enabled") }
        let detail = changes.isEmpty ? "no change" : changes.joined(separator: ", ")
        return try await store.write { transaction in
            let account = try await transaction.updateOperator(name: name, role: role, passwordHash: hash, disabled: disabled, keeping: keepingConsoleSession)
            // Only a new role or a disabled account can take away the last admin.
            if role != nil || disabled == true, try await transaction.activeAdminCount() == 0 {
                throw StoreError.conflict("\(name) is the last admin who can sign in; make another admin first")
            }
            try await transaction.audit(actor.entry("operator.update", target: name, detail: detail))
            return account
        }
    }

    /// A directory operator signed in: recorded with the role its groups give (a change of
    /// role audited), its failures cleared.
    func directoryOperatorSignedIn(name: String, role: OperatorRole) async throws -> OperatorRecord {
        try await store.write { transaction in
            let actor = Actor(name: "directory", source: "directory")
            guard let existing = try await transaction.operatorAccount(named: name) else {
                let record = OperatorRecord(name: name, passwordHash: OperatorRecord.directoryMarker, role: role)
                try await transaction.createOperator(record)
                try await transaction.audit(actor.entry("operator.create", target: name, detail: "from the directory, role \(role.rawValue)"))
                return record
            }
            guard existing.role != role else { return existing }
            let updated = try await transaction.updateOperator(name: name, role: role)
            try await transaction.audit(actor.entry("operator.update", target: name, detail: "role \(role.rawValue), from the directory's groups"))
            return updated
        }
    }

    /// A directory operator the directory no longer lets in (gone, disabled, or in no mapped
    /// group): the account's record is removed here with its sessions and API tokens, until the
    /// directory lets it sign in again. Returns whether there was one to remove.
    @discardableResult
    func directoryOperatorRefused(name: String, reason: String) async throws -> Bool {
        try await store.write { transaction in
            guard let existing = try await transaction.operatorAccount(named: name), existing.fromDirectory else { return false }
            try await transaction.deleteOperator(name: name)
            let revoked = try await transaction.revokeAPITokens(createdBy: "operator:\(name)")
            try await transaction.audit(AuditEntry(actor: "directory", action: "operator.delete", target: name, source: "directory", result: "ok",
                                                   detail: "sessions ended: \(reason)" + (revoked.isEmpty ? "" : "; API tokens revoked: \(revoked.joined(separator: ", "))")))
            return true
        }
    }

    public func deleteOperator(name: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.deleteOperator(name: name)
            if try await transaction.activeAdminCount() == 0 {
                throw StoreError.conflict("\(name) is the last admin who can sign in; make another admin first")
            }
            // The API tokens the operator made end with the account.
            let revoked = try await transaction.revokeAPITokens(createdBy: "operator:\(name)")
            try await transaction.audit(actor.entry("operator.delete", target: name, detail: revoked.isEmpty ? "" : "API tokens revoked: \(revoked.joined(separator: ", "))"))
        }
    }
}

/// Sign-ins: failures counted towards the account's lockout, and the sessions of the console
/// and of the API.
extension ManagerOperations {
    /// Counts a failed password; the failure that reaches `lockAfter` locks the account.
    public func recordLoginFailure(name: String, now: Int64, lockAfter: Int, lockFor: Int64) async throws {
        _ = try await store.recordLoginFailure(name: name, now: now, lockAfter: lockAfter, lockFor: lockFor)
    }

    /// Clears the count of failed passwords after a sign-in.
    public func recordLoginSuccess(name: String) async throws {
        try await store.recordLoginSuccess(name: name)
    }

    /// Opens an API session (access and refresh tokens), pruning expired ones.
    public func openAPISession(_ session: AuthSessionRecord, now: Int64) async throws {
        try await store.write { transaction in
            try await transaction.createAuthSession(session)
            try await transaction.audit(AuditEntry(actor: "operator:\(session.operatorName)", action: "auth.login", target: session.operatorName, source: session.source,
                                                   result: "ok", detail: "session \(session.id)"))
            try await transaction.pruneAuthSessions(now: now)
        }
    }

    /// Gives an API session a new pair of token hashes.
    public func renewAPISession(id: String, accessHash: [UInt8], accessExpiresMilliseconds: Int64, refreshHash: [UInt8]) async throws {
        try await store.write { transaction in
            try await transaction.renewAuthSession(id: id, accessHash: accessHash, accessExpiresMilliseconds: accessExpiresMilliseconds, refreshHash: refreshHash)
        }
    }

    /// Ends an API session; `entry` says why (a logout, or a replayed refresh token).
    public func endAPISession(id: String, audit entry: AuditEntry) async throws {
        try await store.write { transaction in
            try await transaction.revokeAuthSession(id: id)
            try await transaction.audit(entry)
        }
    }

    public func openConsoleSession(_ record: ConsoleSessionRecord) async throws {
        try await store.write { transaction in
            try await transaction.createConsoleSession(record)
            try await transaction.audit(AuditEntry(actor: "operator:\(record.operatorName)", action: "auth.login", target: record.operatorName, source: record.source,
                                                   result: "ok", detail: "console"))
        }
    }

    public func endConsoleSession(idHash: [UInt8], by actor: Actor, name: String) async throws {
        try await store.write { transaction in
            try await transaction.deleteConsoleSession(idHash: idHash)
            try await transaction.audit(actor.entry("auth.logout", target: name, detail: "console"))
        }
    }
}
