import Foundation
import PorticoStore

/// Checks an operator's name and password for every way in (API login, console login,
/// enrollment by operator credentials): same hashing, same lockout, same timing for an
/// unknown name as for a known one.
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

        /// A short word for the audit log.
        public var auditReason: String {
            switch self {
            case .accepted: "ok"
            case .badCredentials: "bad credentials"
            case .locked: "locked"
            case .disabled: "disabled"
            }
        }
    }

    let store: Store
    let policy: Policy

    public init(store: Store, policy: Policy = Policy()) {
        self.store = store
        self.policy = policy
    }

    /// Checks the credentials and counts a failure against the account (locking it after
    /// `lockAfterFailures`), or clears the count on success.
    public func authenticate(name: String, password: String, now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> Outcome {
        let account = try await store.operatorAccount(named: name)
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

    /// A hash of nothing in particular, so that a login for an unknown name costs what a real one does.
    static let decoyHash = "$scrypt$ln=15,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
}
