import Crypto
import Foundation
import PorticoProtocol

/// What an enrolled agent keeps between runs (written 0600 in its state folder).
public struct AgentState: Codable, Sendable, Equatable {
    public var deviceID: String
    /// Raw private keys, base64url.
    public var signingKey: String
    public var agreementKey: String
    /// The site policy key, base64url.
    public var siteKey: String
    public var pinned: PinnedCertificates
    public var managerURLs: [String]
    public var policySerial: Int64
    public var checkInIntervalSeconds: Int
    /// The manager's X25519 key (base64url) from its signed hello: remote help's responses
    /// are checked with it while the manager cannot be reached.
    public var managerAgreementKey: String?

    public init(deviceID: String, signingKey: String, agreementKey: String, siteKey: String, pinned: PinnedCertificates, managerURLs: [String],
                policySerial: Int64, checkInIntervalSeconds: Int, managerAgreementKey: String? = nil) {
        self.deviceID = deviceID
        self.signingKey = signingKey
        self.agreementKey = agreementKey
        self.siteKey = siteKey
        self.pinned = pinned
        self.managerURLs = managerURLs
        self.policySerial = policySerial
        self.checkInIntervalSeconds = checkInIntervalSeconds
        self.managerAgreementKey = managerAgreementKey
    }

    public var keys: DeviceKeys {
        get throws {
            guard let signing = Base64URL.decode(signingKey), let agreement = Base64URL.decode(agreementKey) else { throw ProtocolError(.malformed, "the agent state's keys are damaged") }
            return DeviceKeys(signing: try .init(rawRepresentation: signing), agreement: try .init(rawRepresentation: agreement))
        }
    }

    public var siteSymmetricKey: SymmetricKey {
        get throws {
            guard let bytes = Base64URL.decode(siteKey), bytes.count == 32 else { throw ProtocolError(.malformed, "the agent state's site key is damaged") }
            return SymmetricKey(data: bytes)
        }
    }

    enum CodingKeys: String, CodingKey {
        case deviceID = "device_id", signingKey = "signing_key", agreementKey = "agreement_key", siteKey = "site_key", pinned
        case managerURLs = "manager_urls", policySerial = "policy_serial", checkInIntervalSeconds = "checkin_interval_s", managerAgreementKey = "manager_agreement_key"
    }

    /// Reads the state file in `directory`.
    public static func load(from directory: String) throws -> AgentState {
        try JSONDecoder().decode(AgentState.self, from: Data(contentsOf: URL(fileURLWithPath: directory + "/state.json")))
    }

    /// Writes the state file atomically with mode 0600.
    public func save(to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.writePrivately(self, to: directory + "/state.json")
    }

    /// Writes `value` as JSON to `path` atomically, with mode 0600 (it holds keys).
    static func writePrivately<Value: Encodable>(_ value: Value, to path: String) throws {
        let temporary = path + ".tmp"
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard FileManager.default.createFile(atPath: temporary, contents: try encoder.encode(value), attributes: [.posixPermissions: 0o600]) else {
            throw ProtocolError(.malformed, "cannot write \(temporary)")
        }
        guard rename(temporary, path) == 0 else { throw ProtocolError(.malformed, "cannot replace \(path): \(String(cString: strerror(errno)))") }
    }
}
