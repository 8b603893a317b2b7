import Foundation
import PorticoStore

/// Checks an operator's name and password for every way in (API login, console login,
/// enrollment by operator credentials): same hashing, same lockout, same timing for an
/// unknown name as for a known one. With a directory whose groups map to roles
/// (`directory.operator_roles`), a name that is not a local operator is the directory's: its
/// password is checked by a bind, and its role comes from its groups at each sign-in.
public struct OperatorAuthenticator: Sendable {
    public struct Policy: Sendable {
        /// Failed logins in a row before the account locks.
        public var lockAfterFailures: Int = 5
        /// How long a lockout lasts (an admin can lift it sooner).
        public var lockoutMilliseconds: Int64 = 15 * 60_000

        public init(lockAfterFailures: Int = 5, lockoutMilliseconds: Int64 = 15 * 60_000) {
            self.lockAfterFailures = lockAfterFailures
            self.lockoutMilliseconds = lockoutMilliseconds
        }
    }

    public enum Outcome: Sendable, Equatable {
        case accepted(OperatorRecord)
        /// Unknown name or wrong password (callers must not say which).
        case badCredentials
        /// Locked out until the given time; the password was not checked.
        case locked(until: Int64)
        case disabled
        /// A directory account in no group `directory.operator_roles` names.
        case noRole
        /// The directory could not be asked (local operators still sign in).
        case directoryUnavailable(String)

        /// A short word for the audit log.
        public var auditReason: String {
            switch self {
            case .accepted: "ok"
            case .badCredentials: "bad credentials"
            case .locked: "locked"
            case .disabled: "disabled"
            case .noRole: "the directory account is in no group that maps to a role"
            case .directoryUnavailable(let why): "directory unavailable: \(why)"
            }
        }
    }

    let store: Store
    let policy: Policy
    let directory: DirectoryClient?

    public init(store: Store, policy: Policy = Policy(), directory: DirectoryClient? = nil) {
        self.store = store
        self.policy = policy
        self.directory = directory.flatMap { $0.settings.operatorRoles.isEmpty ? nil : $0 }
    }

    /// Checks the credentials and counts a failure against the account (locking it after
    /// `lockAfterFailures`), or clears the count on success.
    public func authenticate(name: String, password: String, now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> Outcome {
        let account = try await store.operatorAccount(named: name)
        if let directory, account?.fromDirectory ?? true {
            return try await authenticateInDirectory(name: name, password: password, account: account, directory: directory, now: now)
        }
        guard let account else {
            // Spend the same time on an unknown name as on a known one.
            _ = await PasswordHasher.verify(password, against: Self.decoyHash)
            return .badCredentials
        }
        if account.isLocked(at: now) { return .locked(until: account.lockedUntilMilliseconds ?? now) }
        guard await PasswordHasher.verify(password, against: account.passwordHash) else {
            // The failure that reaches the limit locks the account from the next attempt on.
            try await ManagerOperations(store: store, agent: nil).recordLoginFailure(name: name, now: now, lockAfter: policy.lockAfterFailures, lockFor: policy.lockoutMilliseconds)
            return .badCredentials
        }
        if account.disabled { return .disabled }
        if account.failedLogins > 0 { try await ManagerOperations(store: store, agent: nil).recordLoginSuccess(name: name) }
        return .accepted(account)
    }

    /// A directory operator: a bind as them, then the role of the first mapped group they are
    /// in. The account is recorded (or its role brought up to date) for sessions and the
    /// audit log; an admin may still disable it here.
    private func authenticateInDirectory(name: String, password: String, account: OperatorRecord?, directory: DirectoryClient, now: Int64) async throws -> Outcome {
        if let account, account.isLocked(at: now) { return .locked(until: account.lockedUntilMilliseconds ?? now) }
        let found: DirectoryAccount
        do {
            found = try await directory.authenticate(user: name, password: password)
        } catch let error as DirectoryError where error.kind == .invalidCredentials {
            if account != nil {
                try await ManagerOperations(store: store, agent: nil).recordLoginFailure(name: name, now: now, lockAfter: policy.lockAfterFailures, lockFor: policy.lockoutMilliseconds)
            }
            return .badCredentials
        } catch let error as DirectoryError {
            return .directoryUnavailable(error.description)
        }
        guard let role = directory.settings.role(forGroups: found.groups) else { return .noRole }
        let operations = ManagerOperations(store: store, agent: nil)
        let record = try await operations.directoryOperatorSignedIn(name: name, role: role)
        if record.disabled { return .disabled }
        return .accepted(record)
    }

    /// A hash of nothing in particular, so that a login for an unknown name costs what a real one does.
    static let decoyHash = "$scrypt$ln=15,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
}
