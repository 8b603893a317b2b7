import Crypto
import Foundation
import PorticoGateway

/// The manager's agent-facing secrets, kept under the data directory with mode 0600:
/// the X25519 key agents seal enrollment to (and remote-help secrets derive from), and the
/// site policy key that encrypts policy bundles.
public struct ManagerKeys: Sendable {
    public let agreement: Curve25519.KeyAgreement.PrivateKey
    public let siteKey: SymmetricKey

    /// Loads the keys from `directory`, creating them on first use.
    public static func loadOrCreate(in directory: String) throws -> ManagerKeys {
        let agreementBytes = try loadOrCreate(directory + "/agent-agreement.key") { Curve25519.KeyAgreement.PrivateKey().rawRepresentation }
        let siteBytes = try loadOrCreate(directory + "/site-policy.key") { SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) } }
        return ManagerKeys(agreement: try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: agreementBytes), siteKey: SymmetricKey(data: siteBytes))
    }

    private static func loadOrCreate(_ path: String, make: () -> Data) throws -> Data {
        if let text = try? String(contentsOfFile: path, encoding: .utf8), let bytes = Base64URLText.decode(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            return Data(bytes)
        }
        if FileManager.default.fileExists(atPath: path) {
            throw ManagerError("\(path) exists but does not hold a key; restore it from backup (agents enrolled with it depend on it)")
        }
        let bytes = make()
        try SecureFile.write(Array((Base64URLText.encode(Array(bytes)) + "\n").utf8), to: path, mode: 0o600)
        return bytes
    }
}

/// A problem the manager reports in words.
public struct ManagerError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

import PorticoProtocol
typealias Base64URLText = Base64URL
