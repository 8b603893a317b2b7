import Foundation
import PorticoStore

/// Endpoint users, who may sign in where, and what their sign-ins did.
extension ManagerOperations {
    /// A user local to Portico, with a password the manager keeps (scrypt).
    public func createLocalUser(name: String, displayName: String, password: String, minimumLength: Int, by actor: Actor) async throws -> EndpointUser {
        try EndpointUser.validate(name: name)
        try Self.checkNewPassword(password, minimumLength: minimumLength)
        let user = EndpointUser(name: name, source: .local, displayName: displayName, passwordHash: try await PasswordHasher.hash(password))
        try await store.write { transaction in
            try await transaction.createEndpointUser(user)
            try await transaction.audit(actor.entry("user.create", target: name, detail: "local"))
        }
        return user
    }

    /// Changes a user's display name, a local user's password, or whether it may sign in.
    public func updateUser(name: String, displayName: String?, password: String?, disabled: Bool?, minimumLength: Int, by actor: Actor) async throws -> EndpointUser {
        if let password { try Self.checkNewPassword(password, minimumLength: minimumLength) }
        let hash = if let password { try await PasswordHasher.hash(password) } else { String?.none }
        var changes: [String] = []
        if displayName != nil { changes.append("display name") }
        if hash != nil { changes.append("password") }
        if let disabled { changes.append(disabled ? "disabled" : "enabled") }
        let detail = changes.isEmpty ? "no change" : changes.joined(separator: ", ")
        return try await store.write { transaction in
            let user = try await transaction.updateEndpointUser(name: name, displayName: displayName, passwordHash: hash, disabled: disabled)
            try await transaction.audit(actor.entry("user.update", target: name, detail: detail))
            return user
        }
    }

    public func deleteUser(name: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.deleteEndpointUser(name: name)
            try await transaction.audit(actor.entry("user.delete", target: name))
        }
    }

    /// Lifts a user's lockout (the manager's; a device's own offline lockout is lifted by
    /// remote help).
    public func unlockUser(name: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.clearSignInFailures(scope: "user", subject: name)
            try await transaction.audit(actor.entry("user.unlock", target: name))
        }
    }

    /// A directory user's password set by an operator (in the directory): audited, and the
    /// user's lockout ends.
    func userPasswordReset(name: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.clearSignInFailures(scope: "user", subject: name)
            try await transaction.audit(actor.entry("user.reset_password", target: name, detail: "in the directory"))
        }
    }

    /// A one-time sign-in code given to a user (its hash stored), audited.
    func signInCodeIssued(user: String, codeHash: String, expires: Int64, by actor: Actor, now: Int64) async throws {
        try await store.write { transaction in
            try await transaction.createSignInCode(user: user, codeHash: codeHash, expiresMilliseconds: expires, createdBy: actor.name, now: now)
            try await transaction.audit(actor.entry("user.sign_in_code", target: user, detail: "valid \((expires - now) / 60_000) minutes"))
        }
    }

    public func grantSignIn(groupID: String, principal: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.grantSignIn(SignInGrant(groupID: groupID, principal: principal, createdBy: actor.name))
            try await transaction.audit(actor.entry("user.grant", target: groupID, detail: principal))
        }
    }

    public func revokeSignIn(groupID: String, principal: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.revokeSignIn(groupID: groupID, principal: principal)
            try await transaction.audit(actor.entry("user.revoke", target: groupID, detail: principal))
        }
    }

    /// A sign-in that succeeded on a device: recorded on the user (a directory user is saved
    /// as the directory described it), its failures cleared, audited.
    func userSignedIn(user: String, device: String, directory: DirectoryAccount?, action: String, detail: String, source: String, now: Int64) async throws {
        try await store.write { transaction in
            if let directory {
                try await transaction.saveDirectoryUser(name: user, dn: directory.dn, displayName: directory.displayName, groups: directory.groups, run: nil, now: now)
            }
            try await transaction.recordSignIn(user: user, device: device, now: now)
            try await transaction.clearSignInFailures(scope: "user", subject: user)
            try await transaction.audit(AuditEntry(actor: "user:" + user, action: action, target: device, source: source, result: "ok", detail: detail))
        }
    }

    /// A wrong password on a device: counted against the user and the device, audited.
    /// Returns when the user or the device is locked until, if this failure locked it.
    func userSignInFailed(user: String, device: String, action: String, source: String, now: Int64,
                          limits: (user: Int, device: Int, window: Int64)) async throws -> Int64? {
        try await store.write { transaction in
            let userLock = try await transaction.recordSignInFailure(scope: "user", subject: user, now: now, limit: limits.user, window: limits.window)
            let deviceLock = try await transaction.recordSignInFailure(scope: "device", subject: device, now: now, limit: limits.device, window: limits.window)
            let locked = [userLock, deviceLock].compactMap { $0 }.max()
            try await transaction.audit(AuditEntry(actor: "user:" + user, action: action, target: device, source: source, result: "refused",
                                                   detail: "bad credentials" + (userLock != nil ? "; the user is locked" : "") + (deviceLock != nil ? "; the device is locked" : "")))
            return locked
        }
    }

    /// The rules every new password of a local user meets (a directory user's are the directory's).
    static func checkNewPassword(_ password: String, minimumLength: Int) throws {
        guard password.count >= minimumLength else { throw StoreError.invalid("user.password", "must be at least \(minimumLength) characters long") }
        guard password.utf8.count <= 1024, !password.contains("\0") else { throw StoreError.invalid("user.password", "must be at most 1024 bytes, without NUL") }
    }
}
