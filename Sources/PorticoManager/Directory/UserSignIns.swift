import Crypto
import Foundation
import Logging
import PorticoProtocol
import PorticoStore

/// Endpoint users signing in on devices, and changing their passwords, inside the device's
/// session: the manager hears of a user only from a device it has authenticated. Local users
/// are checked against their scrypt hash, directory users by a bind as them; then the grants
/// of the device's groups decide whether the user may use that device.
public struct UserSignIns: Sendable {
    public struct Configuration: Sendable, Equatable {
        /// How long a device may let a user sign in offline with the verifier it was given;
        /// 0: never.
        public var offlineSeconds = 7 * 86_400
        /// Wrong passwords in a row before a user is locked (on every device).
        public var lockAfterFailures = 5
        /// Wrong passwords on one device, for any users, before the device is locked.
        public var deviceLockAfterFailures = 20
        /// How long failures count, and a lockout lasts.
        public var lockoutMilliseconds: Int64 = 15 * 60_000
        /// The shortest password a local user may set.
        public var minimumPasswordLength = 10
        /// log2 of scrypt's N for the offline verifiers handed to devices.
        public var verifierLogRounds = PasswordVerifier.defaultLogRounds

        public init() {}
    }

    let store: Store
    let directory: DirectoryClient?
    let configuration: Configuration
    let operations: ManagerOperations
    let logger: Logger

    public init(store: Store, directory: DirectoryClient?, configuration: Configuration = Configuration(), logger: Logger = Logger(label: "portico.users")) {
        self.store = store
        self.directory = directory
        self.configuration = configuration
        self.operations = ManagerOperations(store: store, agent: nil)
        self.logger = logger
    }

    /// Who the user is once the password checked out.
    private struct Checked {
        var displayName: String
        var groups: [String]
        /// What the directory said of the user, to save; nil for a local user.
        var account: DirectoryAccount?
    }

    /// How a password check ended, when it did not let the user in.
    private enum Stop: Error {
        case result(UserSignInResult.Outcome, String, lockedUntil: Int64? = nil)
    }

    /// Checks a user's sign-in on `device` and answers what the device should do (unsigned).
    public func signIn(_ request: UserSignInRequest, device: String, source: String, now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> UserSignInResult {
        try EndpointUser.validate(name: request.user)
        return try await answer(device: device, user: request.user, nonce: request.nonce, now: now) { result in
            switch (request.password, request.code) {
            case (let password?, nil):
                let checked = try await check(user: request.user, password: password, device: device, action: "user.sign_in", source: source, now: now)
                result.displayName = checked.displayName
                result.groups = checked.groups
                try await operations.userSignedIn(user: request.user, device: device, directory: checked.account, action: "user.sign_in", detail: "signed in", source: source, now: now)
                try await offer(password, in: &result, now: now)
            case (nil, let code?):
                let (checked, issuer) = try await check(user: request.user, code: code, device: device, source: source, now: now)
                result.displayName = checked.displayName
                result.groups = checked.groups
                // No password was given: the device gets no verifier, and keeps the one it had.
                try await operations.userSignedIn(user: request.user, device: device, directory: checked.account, action: "user.sign_in",
                                                  detail: "signed in with a one-time code from \(issuer)", source: source, now: now)
            default:
                throw ProtocolError(.malformed, "a sign-in carries a password or a one-time code, not both or neither")
            }
            result.message = "signed in"
        }
    }

    /// Sets a user's new password (the old one proves it is the user): a local user's here,
    /// a directory user's in the directory, under its policy.
    public func changePassword(_ change: UserPasswordChange, device: String, source: String, now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> UserSignInResult {
        try EndpointUser.validate(name: change.user)
        let action = "user.password_change"
        return try await answer(device: device, user: change.user, nonce: change.nonce, now: now) { result in
            let checked = try await check(user: change.user, password: change.oldPassword, device: device, action: action, source: source, now: now)
            result.displayName = checked.displayName
            result.groups = checked.groups
            if let directory, checked.account != nil {
                do {
                    try await directory.changePassword(user: change.user, old: change.oldPassword, new: change.newPassword)
                } catch let error as DirectoryError where error.kind == .refused || error.kind == .other {
                    await operations.refused(AuditEntry(actor: "user:" + change.user, action: action, target: device, source: source, result: "refused", detail: error.description))
                    throw Stop.result(.refused, error.description)
                } catch let error as DirectoryError {
                    throw Stop.result(.unavailable, "the directory cannot be reached: \(error.description)")
                }
            } else {
                do {
                    _ = try await operations.updateUser(name: change.user, displayName: nil, password: change.newPassword, disabled: nil,
                                                        minimumLength: configuration.minimumPasswordLength, by: .init(name: "user:" + change.user, source: source))
                } catch let error as StoreError where error.kind == .invalidValue {
                    await operations.refused(AuditEntry(actor: "user:" + change.user, action: action, target: device, source: source, result: "refused", detail: error.message))
                    throw Stop.result(.refused, "the new password " + error.message.replacingOccurrences(of: "user.password ", with: ""))
                }
            }
            try await operations.userSignedIn(user: change.user, device: device, directory: checked.account, action: action, detail: "password changed", source: source, now: now)
            try await offer(change.newPassword, in: &result, now: now)
            result.message = "the password was changed"
        }
    }

    /// The result of a sign-in or a password change: allowed as `body` fills it in, or how
    /// the check stopped.
    private func answer(device: String, user: String, nonce: String, now: Int64, _ body: (inout UserSignInResult) async throws -> Void) async throws -> UserSignInResult {
        var result = UserSignInResult(deviceID: device, user: user, nonce: nonce, outcome: .allowed, message: "", issuedMilliseconds: now)
        do {
            try await body(&result)
        } catch Stop.result(let outcome, let message, let lockedUntil) {
            result = UserSignInResult(deviceID: device, user: user, nonce: nonce, outcome: outcome, message: message, displayName: result.displayName,
                                      lockedUntilMilliseconds: lockedUntil, issuedMilliseconds: now)
        }
        return result
    }

    /// An operator sets a user's new password (the user forgot it): a local user's here, a
    /// directory user's in the directory through the search account, under its policy. The
    /// user's lockout ends; devices learn the new password at the user's next online sign-in.
    public func resetPassword(user: String, to password: String, by actor: ManagerOperations.Actor) async throws {
        guard let record = try await store.endpointUser(named: user) else { throw StoreError.notFound("user \(user)") }
        if record.source == .local {
            _ = try await operations.updateUser(name: user, displayName: nil, password: password, disabled: nil, minimumLength: configuration.minimumPasswordLength, by: actor)
            return
        }
        guard let directory else { throw StoreError.conflict("\(user) is a directory user and this manager has no directory configured") }
        do {
            try await directory.resetPassword(user: user, new: password)
        } catch let error as DirectoryError {
            await operations.refused(actor.entry("user.reset_password", target: user, result: "refused", detail: error.description))
            switch error.kind {
            case .refused, .other, .invalidCredentials: throw StoreError.invalid("user.password", "was refused by the directory: \(error.description)")
            case .unreachable, .tls: throw StoreError.conflict("the directory cannot be reached, so the password was not set: \(error.description)")
            }
        }
        try await operations.userPasswordReset(name: user, by: actor)
    }

    /// The steps of a check, each refusal audited with the user, the device and the action.
    private struct Attempt {
        let user: String
        let device: String
        let action: String
        let source: String
        let now: Int64
    }

    private func refuse(_ attempt: Attempt, _ outcome: UserSignInResult.Outcome, _ message: String, audit detail: String, lockedUntil: Int64? = nil) async -> Stop {
        await operations.refused(AuditEntry(actor: "user:" + attempt.user, action: attempt.action, target: attempt.device, source: attempt.source, result: "refused", detail: detail))
        return .result(outcome, message, lockedUntil: lockedUntil)
    }

    /// Refuses while the user, or the device, is locked after wrong passwords.
    private func checkLocks(_ attempt: Attempt) async throws {
        let locks = [try await store.signInLockedUntil(scope: "user", subject: attempt.user, now: attempt.now),
                     try await store.signInLockedUntil(scope: "device", subject: attempt.device, now: attempt.now)]
        if let until = locks.compactMap({ $0 }).max() {
            throw await refuse(attempt, .locked, "too many wrong passwords: sign-ins are locked for a while", audit: "locked", lockedUntil: until)
        }
    }

    /// Counts a wrong password (or code) against the user and the device.
    private func wrong(_ attempt: Attempt, _ what: String) async throws -> Stop {
        let limits = (configuration.lockAfterFailures, configuration.deviceLockAfterFailures, configuration.lockoutMilliseconds)
        let locked = try await operations.userSignInFailed(user: attempt.user, device: attempt.device, action: attempt.action, source: attempt.source, now: attempt.now, limits: limits)
        if let locked { return .result(.locked, "the name or the \(what) is wrong; sign-ins are now locked for a while", lockedUntil: locked) }
        return .result(.badCredentials, "the name or the \(what) is wrong" + (what == "code" ? ", or the code was used or has expired" : ""))
    }

    /// Once the user is who they say: the account's state, then the device's grants.
    private func checkStanding(_ attempt: Attempt, record: EndpointUser?, groups: [String]) async throws {
        if record?.disabled == true { throw await refuse(attempt, .disabled, "this account is disabled", audit: "disabled") }
        guard try await store.maySignIn(user: attempt.user, groups: groups, device: attempt.device) else {
            throw await refuse(attempt, .notPermitted, "\(attempt.user) may not sign in on this device", audit: "not permitted on this device")
        }
    }

    /// A one-time code an operator gave: the same lockouts, the code used once (a wrong one
    /// counts as a wrong password), then the account's state and the device's grants.
    private func check(user: String, code: String, device: String, source: String, now: Int64) async throws -> (Checked, String) {
        let attempt = Attempt(user: user, device: device, action: "user.sign_in", source: source, now: now)
        try await checkLocks(attempt)
        let hash = SignInCode.hash(code)
        guard let issuer = try await store.write({ try await $0.useSignInCode(user: user, codeHash: hash, now: now) }) else { throw try await wrong(attempt, "code") }
        let record = try await store.endpointUser(named: user)
        var checked = Checked(displayName: record?.displayName ?? "", groups: record?.directoryGroups ?? [], account: nil)
        // The directory's word on a directory user's groups, when it answers; else what was last seen.
        if record?.source != .local, let directory, let account = try? await directory.account(named: user) {
            checked = Checked(displayName: account.displayName, groups: account.groups, account: account)
        }
        try await checkStanding(attempt, record: record, groups: checked.groups)
        return (checked, issuer)
    }

    /// Lockouts, the password, the account's state and the device's grants, in that order.
    private func check(user: String, password: String, device: String, action: String, source: String, now: Int64) async throws -> Checked {
        let attempt = Attempt(user: user, device: device, action: action, source: source, now: now)
        try await checkLocks(attempt)
        let record = try await store.endpointUser(named: user)
        let checked: Checked
        if let record, record.source == .local {
            guard await PasswordHasher.verify(password, against: record.passwordHash) else { throw try await wrong(attempt, "password") }
            checked = Checked(displayName: record.displayName, groups: [], account: nil)
        } else if let directory {
            do {
                let account = try await directory.authenticate(user: user, password: password)
                checked = Checked(displayName: account.displayName, groups: account.groups, account: account)
            } catch let error as DirectoryError where error.kind == .invalidCredentials {
                throw try await wrong(attempt, "password")
            } catch let error as DirectoryError {
                // The device may fall back to the verifier it holds, for as long as it was given.
                logger.warning("a user's sign-in could not reach the directory", metadata: ["user": "\(user)", "error": "\(error.description)"])
                throw await refuse(attempt, .unavailable, "the directory cannot be reached; sign in with the password this device last saw", audit: "directory unavailable: \(error.description)")
            }
        } else {
            // No such local user and no directory: the same time spent as on a real check.
            _ = await PasswordHasher.verify(password, against: OperatorAuthenticator.decoyHash)
            throw try await wrong(attempt, "password")
        }
        try await checkStanding(attempt, record: record, groups: checked.groups)
        return checked
    }

    /// A new one-time code for `user`, valid for `lifetime` milliseconds, given by `actor`
    /// (audited; only its hash is kept).
    public func issueCode(user: String, lifetime: Int64, by actor: ManagerOperations.Actor, now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> (code: String, expires: Int64) {
        try EndpointUser.validate(name: user)
        let code = SignInCode.make()
        let expires = now + lifetime
        try await operations.signInCodeIssued(user: user, codeHash: SignInCode.hash(code), expires: expires, by: actor, now: now)
        return (code, expires)
    }

    /// Puts the offline verifier of `password` into an allowed result.
    private func offer(_ password: String, in result: inout UserSignInResult, now: Int64) async throws {
        result.offlineSeconds = configuration.offlineSeconds
        guard configuration.offlineSeconds > 0 else { return }
        result.offlineVerifier = try await PasswordHasher.hash(password, logRounds: configuration.verifierLogRounds)
        result.offlineUntilMilliseconds = now + Int64(configuration.offlineSeconds) * 1000
    }
}

/// One-time sign-in codes: 12 characters of Crockford's base32 (60 bits), shown as
/// `XXXX-XXXX-XXXX`; what the user types is read without case, dashes or spaces, and the
/// letters base32 leaves out read as the digits they look like.
enum SignInCode {
    static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ")

    static func make() -> String {
        let characters = (0..<12).map { _ in alphabet[Int.random(in: 0..<alphabet.count)] }
        return stride(from: 0, to: 12, by: 4).map { String(characters[$0..<$0 + 4]) }.joined(separator: "-")
    }

    static func normalized(_ code: String) -> String {
        String(code.uppercased().compactMap { character -> Character? in
            switch character {
            case "-", " ": nil
            case "O": "0"
            case "I", "L": "1"
            default: character
            }
        })
    }

    /// What is stored: SHA-256 of the normalized code, hex.
    static func hash(_ code: String) -> String {
        SHA256.hash(data: Array(normalized(code).utf8)).map { String(format: "%02x", $0) }.joined()
    }
}
