import Crypto
import Foundation
import _CryptoExtras

/// A user signing in on the device, sent inside the device's session (message type
/// `user_sign_in`): the manager checks the password only because the session is the device's.
/// It carries a password, or a one-time code an operator gave the user.
public struct UserSignInRequest: Codable, Sendable, Equatable {
    public var user: String
    public var password: String?
    public var code: String?
    /// 16 random bytes, base64url: the signed result names it, so that a result is not
    /// taken for the answer to another attempt.
    public var nonce: String

    public init(user: String, password: String, nonce: String = UserSignInRequest.makeNonce()) {
        self.user = user
        self.password = password
        self.nonce = nonce
    }

    public init(user: String, code: String, nonce: String = UserSignInRequest.makeNonce()) {
        self.user = user
        self.code = code
        self.nonce = nonce
    }

    public static func makeNonce() -> String { Base64URL.encode((0..<16).map { _ in UInt8.random(in: 0...255) }) }
}

/// A user setting a new password (message type `user_password_change`): with the old one, the
/// user's own change. The directory's policy decides for a directory user.
public struct UserPasswordChange: Codable, Sendable, Equatable {
    public var user: String
    public var oldPassword: String
    public var newPassword: String
    public var nonce: String

    public init(user: String, oldPassword: String, newPassword: String, nonce: String = UserSignInRequest.makeNonce()) {
        self.user = user
        self.oldPassword = oldPassword
        self.newPassword = newPassword
        self.nonce = nonce
    }

    enum CodingKeys: String, CodingKey { case user, oldPassword = "old_password", newPassword = "new_password", nonce }
}

/// The manager's answer to a sign-in or a password change (message type `user_result`),
/// signed by the manager's identity so that the device can keep it and check it again later
/// (the offline verifier it carries is believed only with a valid signature).
public struct UserSignInResult: Codable, Sendable, Equatable {
    public enum Outcome: String, Codable, Sendable {
        /// Signed in (or the password changed): the user may use the device.
        case allowed
        /// The name or the password is wrong (which one is not said).
        case badCredentials = "bad_credentials"
        /// The password is right but the user may not sign in on this device.
        case notPermitted = "not_permitted"
        /// Too many failures: the user, or this device, is locked until `lockedUntilMilliseconds`.
        case locked
        /// The account is disabled.
        case disabled
        /// The directory cannot be reached: the device may fall back to its offline verifier.
        case unavailable
        /// A new password the directory (or the manager's rules) refused; `message` says why.
        case refused
    }

    public var deviceID: String
    public var user: String
    public var nonce: String
    public var outcome: Outcome
    /// Why, in words (shown to the user).
    public var message: String
    public var displayName: String
    /// The user's policy on the device: the directory groups the user is in (what a device
    /// grants local rights by), as the manager saw them at this sign-in.
    public var groups: [String]
    /// How long the offline verifier may be used on this device, in seconds (the user's
    /// policy); 0 when offline sign-in is off.
    public var offlineSeconds: Int
    /// When allowed: a salted scrypt verifier of the password (`$scrypt$...`), never the
    /// password, for sign-ins while the manager cannot be reached, until `offlineUntilMilliseconds`.
    public var offlineVerifier: String?
    public var offlineUntilMilliseconds: Int64?
    public var lockedUntilMilliseconds: Int64?
    public var issuedMilliseconds: Int64
    /// Manager signature over ``transcript``.
    public var signature: String

    public init(deviceID: String, user: String, nonce: String, outcome: Outcome, message: String, displayName: String = "", groups: [String] = [], offlineSeconds: Int = 0,
                offlineVerifier: String? = nil, offlineUntilMilliseconds: Int64? = nil, lockedUntilMilliseconds: Int64? = nil, issuedMilliseconds: Int64, signature: String = "") {
        self.deviceID = deviceID
        self.user = user
        self.nonce = nonce
        self.outcome = outcome
        self.message = message
        self.displayName = displayName
        self.groups = groups
        self.offlineSeconds = offlineSeconds
        self.offlineVerifier = offlineVerifier
        self.offlineUntilMilliseconds = offlineUntilMilliseconds
        self.lockedUntilMilliseconds = lockedUntilMilliseconds
        self.issuedMilliseconds = issuedMilliseconds
        self.signature = signature
    }

    /// What the signature covers: every field that decides what the device does. Names are
    /// base64url-encoded so that no field can run into the next.
    public var transcript: [UInt8] {
        let fields = [deviceID, Base64URL.encode(Array(user.utf8)), nonce, outcome.rawValue, Base64URL.encode(Array(displayName.utf8)),
                      groups.map { Base64URL.encode(Array($0.utf8)) }.joined(separator: ","), String(offlineSeconds),
                      offlineVerifier ?? "-", offlineUntilMilliseconds.map(String.init) ?? "-", lockedUntilMilliseconds.map(String.init) ?? "-", String(issuedMilliseconds)]
        return Array(("portico-user-result-v1|" + fields.joined(separator: "|")).utf8)
    }

    enum CodingKeys: String, CodingKey {
        case deviceID = "device_id", user, nonce, outcome, message, displayName = "display_name", groups, offlineSeconds = "offline_s", offlineVerifier = "offline_verifier"
        case offlineUntilMilliseconds = "offline_until_ms", lockedUntilMilliseconds = "locked_until_ms", issuedMilliseconds = "issued_ms", signature
    }
}

/// Password verifiers: scrypt, stored as `$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>`
/// (base64url), compared in constant time. The manager keeps local passwords this way and
/// hands devices one of these (never the password) for offline sign-in.
public enum PasswordVerifier {
    public static let defaultLogRounds = 15
    static let blockSize = 8
    static let parallelism = 1

    /// A new verifier of `password` with a random salt. Slow on purpose (about 0.1 s).
    public static func make(_ password: String, logRounds: Int = defaultLogRounds) throws -> String {
        let salt = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let derived = try derive(password, salt: salt, logRounds: logRounds, blockSize: blockSize, parallelism: parallelism)
        return "$scrypt$ln=\(logRounds),r=\(blockSize),p=\(parallelism)$\(Base64URL.encode(salt))$\(Base64URL.encode(derived))"
    }

    /// Whether `password` matches a verifier; false for one it cannot read (or whose cost is
    /// outside what it accepts, so that a forged verifier cannot make it spin).
    public static func matches(_ password: String, _ stored: String) -> Bool {
        let parts = stored.split(separator: "$", omittingEmptySubsequences: true)
        guard parts.count == 4, parts[0] == "scrypt" else { return false }
        var parameters: [String: Int] = [:]
        for pair in parts[1].split(separator: ",") {
            let kv = pair.split(separator: "=")
            if kv.count == 2, let value = Int(kv[1]) { parameters[String(kv[0])] = value }
        }
        guard let ln = parameters["ln"], let r = parameters["r"], let p = parameters["p"], (10...20).contains(ln), (1...32).contains(r), (1...16).contains(p),
              let salt = Base64URL.decode(String(parts[2])), let expected = Base64URL.decode(String(parts[3])),
              let derived = try? derive(password, salt: salt, logRounds: ln, blockSize: r, parallelism: p)
        else { return false }
        guard derived.count == expected.count else { return false }
        return zip(derived, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    static func derive(_ password: String, salt: [UInt8], logRounds: Int, blockSize: Int, parallelism: Int) throws -> [UInt8] {
        let key = try KDF.Scrypt.deriveKey(from: Array(password.utf8), salt: salt, outputByteCount: 32, rounds: 1 << logRounds, blockSize: blockSize, parallelism: parallelism)
        return key.withUnsafeBytes { Array($0) }
    }
}
