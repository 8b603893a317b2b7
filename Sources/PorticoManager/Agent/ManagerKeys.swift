import Crypto
import Foundation
import PorticoGateway
import PorticoServer

/// The site's agent-facing secrets: the X25519 key agents seal enrollment to (and remote-help
/// secrets derive from), and the site policy key that encrypts policy bundles. They live in
/// the database, sealed with the secrets key, so that every manager of a site has the same.
public struct ManagerKeys: Sendable {
    public let agreement: Curve25519.KeyAgreement.PrivateKey
    public let siteKey: SymmetricKey

    public init(agreement: Curve25519.KeyAgreement.PrivateKey, siteKey: SymmetricKey) {
        self.agreement = agreement
        self.siteKey = siteKey
    }

    /// The site's keys, created on the first start of its first manager. A manager that kept
    /// them as files in `legacyDirectory` (before they moved to the database) brings them
    /// there, so that its enrolled agents keep working.
    public static func load(from vault: SiteVault, legacyDirectory: String?) async throws -> ManagerKeys {
        let agreementBytes = try await vault.readOrCreate("agent-agreement") {
            try legacy(legacyDirectory.map { $0 + "/agent-agreement.key" }) ?? Array(Curve25519.KeyAgreement.PrivateKey().rawRepresentation)
        }
        let siteBytes = try await vault.readOrCreate("site-policy") {
            try legacy(legacyDirectory.map { $0 + "/site-policy.key" }) ?? SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) }
        }
        guard let agreement = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: agreementBytes), siteBytes.count == 32 else {
            throw ManagerError("the site's agent keys in the database are not well formed")
        }
        return ManagerKeys(agreement: agreement, siteKey: SymmetricKey(data: siteBytes))
    }

    private static func legacy(_ path: String?) throws -> [UInt8]? {
        guard let path, FileManager.default.fileExists(atPath: path) else { return nil }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), let bytes = Base64URLText.decode(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw ManagerError("\(path) exists but does not hold a key; restore it from backup (agents enrolled with it depend on it)")
        }
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
