import Foundation
import PorticoProtocol

/// What a device keeps of its users' sign-ins (`users.json`, 0600, in the agent's state
/// folder): the manager's last signed result for each user, which holds the verifier offline
/// sign-ins are checked against (never a password), and the device's own count of wrong
/// passwords offline. A user locked here stays locked until remote help unlocks it.
public struct UserSignInCache: Codable, Sendable, Equatable {
    public struct Entry: Codable, Sendable, Equatable {
        /// The manager's last allowed result for the user, signed.
        public var result: UserSignInResult?
        /// Wrong passwords offline since the last good sign-in.
        public var failures: Int
        public var locked: Bool
        /// The challenge shown for remote help, while it waits for its response.
        public var challenge: String?
    }

    public var users: [String: Entry] = [:]
    /// Wrong offline passwords before the user is locked on this device.
    public static let lockAfterFailures = 5

    public init() {}

    /// How an offline sign-in went.
    public enum Offline: Equatable, Sendable {
        case allowed(until: Int64)
        /// The user has not signed in on this device with the manager, or offline sign-in is off.
        case noVerifier
        case expired
        case wrongPassword(failuresLeft: Int)
        case locked
    }

    /// Takes the manager's answer: an allowed one replaces the verifier and lifts the device's
    /// own lockout of the user.
    public mutating func record(_ result: UserSignInResult) {
        guard result.outcome == .allowed else { return }
        users[result.user] = Entry(result: result, failures: 0, locked: false)
    }

    /// Checks a password against the verifier the manager gave, if its signature still checks
    /// out against the pins and it has not expired; counts a wrong one.
    public mutating func signInOffline(user: String, password: String, state: AgentState, now: Int64) -> Offline {
        guard var entry = users[user] else { return .noVerifier }
        if entry.locked { return .locked }
        guard let result = entry.result, result.outcome == .allowed, result.deviceID == state.deviceID, let verifier = result.offlineVerifier,
              let until = result.offlineUntilMilliseconds, let signature = Base64URL.decode(result.signature), state.pinned.verify(signature, over: result.transcript)
        else { return .noVerifier }
        guard now < until else { return .expired }
        if PasswordVerifier.matches(password, verifier) {
            entry.failures = 0
            users[user] = entry
            return .allowed(until: until)
        }
        entry.failures += 1
        entry.locked = entry.failures >= Self.lockAfterFailures
        users[user] = entry
        return entry.locked ? .locked : .wrongPassword(failuresLeft: Self.lockAfterFailures - entry.failures)
    }

    /// A challenge for remote help to unlock `user`, kept until its response comes.
    public mutating func unlockChallenge(user: String, now: Int64) -> String {
        let challenge = RemoteHelp.makeChallenge(now: now)
        users[user, default: Entry(result: nil, failures: 0, locked: false)].challenge = challenge
        return challenge
    }

    /// Unlocks `user` when `response` answers the challenge shown for it.
    public mutating func unlock(user: String, response: String, state: AgentState) throws -> Bool {
        guard var entry = users[user], let challenge = entry.challenge else { return false }
        guard try AgentClient.verifyUserUnlock(state: state, user: user, challenge: challenge, response: response) else { return false }
        entry.failures = 0
        entry.locked = false
        entry.challenge = nil
        users[user] = entry
        return true
    }

    public static func load(from directory: String) throws -> UserSignInCache {
        let path = directory + "/users.json"
        guard FileManager.default.fileExists(atPath: path) else { return UserSignInCache() }
        return try JSONDecoder().decode(UserSignInCache.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Writes `users.json` atomically with mode 0600.
    public func save(to directory: String) throws {
        try AgentState.writePrivately(self, to: directory + "/users.json")
    }
}
