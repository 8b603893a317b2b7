import Crypto
import Foundation
import PorticoServer
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
    public var listeners: [ListenerName]

    public init(_ identity: ServerIdentity, listeners: [ListenerName]) {
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

/// The next identity: staged beside the live one in `next/` until the switch, when the live
/// pair moves to `previous/` and the staged pair takes its place.
public enum StagedIdentity {
    /// What an operator chose when starting a rotation, kept beside the staged pair.
    public struct Plan: Codable, Sendable, Equatable {
        /// The share of active agents (0 to 1) that must have pinned the next certificate
        /// before the listeners switch by themselves.
        public var switchAt: Double
        /// Agents that checked in within this many seconds count as active.
        public var activeWindowSeconds: Int
        public var startedMilliseconds: Int64

        public init(switchAt: Double = 0.95, activeWindowSeconds: Int = 7 * 86_400, startedMilliseconds: Int64 = Int64(Date().timeIntervalSince1970 * 1000)) {
            self.switchAt = switchAt
            self.activeWindowSeconds = activeWindowSeconds
            self.startedMilliseconds = startedMilliseconds
        }

        enum CodingKeys: String, CodingKey {
            case switchAt = "switch_at", activeWindowSeconds = "active_window_s", startedMilliseconds = "started_ms"
        }
    }

    public static func paths(_ configuration: GatewayConfiguration) -> (certificate: String, key: String) {
        let folder = Paths.directory(of: configuration.identity.certificate) + "/next"
        return (folder + "/server.crt", folder + "/server.key")
    }

    public static func planPath(_ configuration: GatewayConfiguration) -> String {
        Paths.directory(of: configuration.identity.certificate) + "/next/rotation.json"
    }

    /// The staged identity, if one is there and loads.
    public static func load(_ configuration: GatewayConfiguration) -> ServerIdentity? {
        let staged = paths(configuration)
        guard FileManager.default.fileExists(atPath: staged.certificate) else { return nil }
        return try? ServerIdentity.load(certificatePath: staged.certificate, privateKeyPath: staged.key)
    }

    /// The rotation plan; a staged identity without one rotates with the defaults.
    public static func plan(_ configuration: GatewayConfiguration) -> Plan {
        guard let data = FileManager.default.contents(atPath: planPath(configuration)), let plan = try? JSONDecoder().decode(Plan.self, from: data) else { return Plan() }
        return plan
    }

    public static func writePlan(_ plan: Plan, _ configuration: GatewayConfiguration) throws(IdentityError) {
        let data = (try? JSONEncoder().encode(plan)) ?? Data()
        try SecureFile.write(Array(data), to: planPath(configuration), mode: 0o600)
    }

    /// Makes the staged pair live: the live pair is kept in `previous/`, then the staged key
    /// and certificate take its place (each by an atomic rename). Listeners pick the new pair
    /// up at their next reload.
    public static func promote(_ configuration: GatewayConfiguration) throws(IdentityError) {
        let staged = paths(configuration)
        let live = (configuration.identity.certificate, configuration.identity.privateKey)
        // Refuse a staged pair that would not load, before touching anything.
        _ = try ServerIdentity.load(certificatePath: staged.certificate, privateKeyPath: staged.key)
        let previous = Paths.directory(of: live.0) + "/previous"
        if let certificate = FileManager.default.contents(atPath: live.0), let key = FileManager.default.contents(atPath: live.1) {
            try SecureFile.write(Array(certificate), to: previous + "/server.crt", mode: 0o644)
            try SecureFile.write(Array(key), to: previous + "/server.key", mode: 0o600)
        }
        for (from, to) in [(staged.key, live.1), (staged.certificate, live.0)] where rename(from, to) != 0 {
            throw IdentityError.generation("cannot move \(from) to \(to): \(String(cString: strerror(errno)))")
        }
        try? FileManager.default.removeItem(atPath: planPath(configuration))
    }
}
