import Crypto
import Foundation
import SwiftASN1
import X509
import _CryptoExtras

/// Signatures by the manager's identity key (the key of its TLS certificate), checked by
/// agents against the certificates they pinned.
public enum ManagerSignature {
    /// The algorithm for a key: SHA-256 with RSA, ECDSA P-256/SHA-256, P-384/SHA-384, or Ed25519.
    public static func algorithm(for key: Certificate.PublicKey) -> Certificate.SignatureAlgorithm {
        if _RSA.Signing.PublicKey(key) != nil { return .sha256WithRSAEncryption }
        if P256.Signing.PublicKey(key) != nil { return .ecdsaWithSHA256 }
        if P384.Signing.PublicKey(key) != nil { return .ecdsaWithSHA384 }
        if P521.Signing.PublicKey(key) != nil { return .ecdsaWithSHA512 }
        return .ed25519
    }

    public static func sign(_ bytes: [UInt8], with key: Certificate.PrivateKey) throws -> [UInt8] {
        try key.sign(bytes: bytes, signatureAlgorithm: algorithm(for: key.publicKey)).rawRepresentation
    }

    public static func isValid(_ signature: [UInt8], for bytes: [UInt8], by certificate: Certificate) -> Bool {
        certificate.publicKey.isValidSignature(signature, for: bytes, signatureAlgorithm: algorithm(for: certificate.publicKey))
    }
}

/// The manager certificates an agent trusts: pinned at enrollment from the bootstrap file,
/// plus any next certificate the manager announced inside an authenticated session.
public struct PinnedCertificates: Sendable, Codable, Equatable {
    /// PEM certificates: the manager's own, whose keys sign.
    public var pem: [String]
    /// PEM certificates of the authorities that issued a CA-signed manager certificate, up to
    /// its self-signed root. Trusted for TLS only, never for signatures.
    public var authorities: [String]

    public init(pem: [String], authorities: [String] = []) {
        self.pem = pem
        self.authorities = authorities
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        pem = try container.decode([String].self, forKey: .pem)
        authorities = try container.decodeIfPresent([String].self, forKey: .authorities) ?? []
    }

    enum CodingKeys: String, CodingKey { case pem, authorities }

    /// Every certificate a TLS connection to the manager may chain to.
    public var tlsTrustRoots: [String] { pem + authorities }

    /// Adds authorities for TLS (those not already held).
    public mutating func addAuthorities(_ certificatesPEM: [String]) {
        for candidate in certificatesPEM {
            guard let certificate = try? Certificate(pemEncoded: candidate),
                  !authorities.contains(where: { (try? Certificate(pemEncoded: $0)) == certificate }) else { continue }
            authorities.append(candidate)
        }
    }

    public var certificates: [Certificate] { pem.compactMap { try? Certificate(pemEncoded: $0) } }

    /// The pinned certificate with this PEM's fingerprint, if any.
    public func pinned(_ presented: String) -> Certificate? {
        guard let candidate = try? Certificate(pemEncoded: presented) else { return nil }
        return certificates.first { $0 == candidate }
    }

    /// Whether any pinned certificate made `signature` over `bytes`.
    public func verify(_ signature: [UInt8], over bytes: [UInt8]) -> Bool {
        certificates.contains { ManagerSignature.isValid(signature, for: bytes, by: $0) }
    }

    public mutating func add(_ certificatePEM: String) {
        guard let certificate = try? Certificate(pemEncoded: certificatePEM), !certificates.contains(certificate) else { return }
        pem.append(certificatePEM)
    }
}
