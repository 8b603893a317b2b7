import Crypto
import Foundation
import X509
import _CryptoExtras

/// What an operator wants to know about an identity certificate, for `portico cert show`
/// and the web services API alike.
public struct IdentitySummary: Sendable, Equatable {
    public var subject: String
    public var issuer: String
    public var selfSigned: Bool
    /// Subject alternative names, `DNS:name` or `IP:address`.
    public var names: [String]
    /// `RSA 2048 bits`, `ECDSA P-256`, ...
    public var key: String
    public var serialHex: String
    public var notBefore: Date
    public var notAfter: Date
    /// Upper-case hex pairs joined by colons, as `openssl x509 -fingerprint -sha256` prints them.
    public var fingerprint: String
    /// The listeners serving it; empty for a staged identity.
    public var listeners: [ListenerRole]

    public init(_ identity: ServerIdentity, listeners: [ListenerRole]) {
        let leaf = identity.leaf
        var names: [String] = []
        if let sans = try? leaf.extensions.subjectAlternativeNames {
            for name in sans {
                switch name {
                case .dnsName(let dns): names.append("DNS:\(dns)")
                case .ipAddress(let bytes): names.append("IP:\(Self.ipText(Array(bytes.bytes)))")
                default: names.append("\(name)")
                }
            }
        }
        self.subject = "\(leaf.subject)"
        self.issuer = "\(leaf.issuer)"
        self.selfSigned = leaf.issuer == leaf.subject
        self.names = names
        self.key = Self.keyDescription(leaf.publicKey)
        self.serialHex = identity.serialHex
        self.notBefore = leaf.notValidBefore
        self.notAfter = leaf.notValidAfter
        self.fingerprint = identity.fingerprint.map { String(format: "%02X", $0) }.joined(separator: ":")
        self.listeners = listeners
    }

    /// Whole days until the certificate expires (negative once it has).
    public func daysRemaining(now: Date = Date()) -> Int { Int((notAfter.timeIntervalSince(now) / 86_400).rounded(.down)) }

    public static func keyDescription(_ key: Certificate.PublicKey) -> String {
        if let rsa = _RSA.Signing.PublicKey(key) { return "RSA \(rsa.keySizeInBits) bits" }
        if P256.Signing.PublicKey(key) != nil { return "ECDSA P-256" }
        if P384.Signing.PublicKey(key) != nil { return "ECDSA P-384" }
        if P521.Signing.PublicKey(key) != nil { return "ECDSA P-521" }
        return "Ed25519"
    }

    static func ipText(_ bytes: [UInt8]) -> String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        return stride(from: 0, to: bytes.count, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }.joined(separator: ":")
    }
}

/// Where a staged identity waits until it goes live: beside the live one, in `next/`.
public enum StagedIdentity {
    public static func paths(_ configuration: GatewayConfiguration) -> (certificate: String, key: String) {
        let folder = Paths.directory(of: configuration.identity.certificate) + "/next"
        return (folder + "/server.crt", folder + "/server.key")
    }
}
