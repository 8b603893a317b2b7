import Crypto
import Foundation

/// Remote help without a network path to the device: the device shows a challenge, the
/// operator reads it to the manager, and the manager gives back a response code that only it
/// and the device can compute, valid for one challenge and a few minutes.
public enum RemoteHelp {
    /// The secret both sides derive from the device's agreement key and the manager's:
    /// X25519 then HKDF-SHA256.
    public static func deviceSecret(_ shared: SharedSecret, deviceID: String) -> SymmetricKey {
        shared.hkdfDerivedSymmetricKey(using: SHA256.self, salt: Array(deviceID.utf8), sharedInfo: Array("portico-remote-help-v1".utf8), outputByteCount: 32)
    }

    /// A challenge for the device to show: 8 random digits and the minute it was made.
    public static func makeChallenge(now: Int64) -> String {
        let digits = (0..<8).map { _ in String(Int.random(in: 0...9)) }.joined()
        return "\(digits)-\(now / 60_000)"
    }

    /// The 8-digit response for a challenge. With `user`, the response unlocks that user on
    /// the device (and only that user): the device's own lockout of the user ends.
    public static func response(to challenge: String, secret: SymmetricKey, unlockingUser user: String? = nil) -> String {
        let purpose = user.map { "unlock-user|" + Base64URL.encode(Array($0.utf8)) + "|" } ?? ""
        let mac = HMAC<SHA256>.authenticationCode(for: Array("remote-help|\(purpose)\(challenge)".utf8), using: secret)
        let number = mac.prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) } % 100_000_000
        return String(format: "%08u", number)
    }

    /// Whether a response answers a challenge that is at most `validMinutes` old (device side).
    public static func verify(response: String, challenge: String, secret: SymmetricKey, now: Int64, validMinutes: Int64 = 10, unlockingUser user: String? = nil) -> Bool {
        guard let minute = challenge.split(separator: "-").last.flatMap({ Int64($0) }), now / 60_000 - minute <= validMinutes, now / 60_000 >= minute else { return false }
        let expected = Array(self.response(to: challenge, secret: secret, unlockingUser: user).utf8)
        let given = Array(response.utf8)
        guard expected.count == given.count else { return false }
        return zip(expected, given).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}
