import Crypto
import Foundation
import PorticoProtocol
import Testing

@testable import PorticoAgent

/// What an enrolled agent keeps between runs: its keys, the site key and the pinned manager
/// certificates, in a file only its owner can read.
@Suite struct AgentStateTests {
    static func folder() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("portico-agent-\(UUID().uuidString)").path
    }

    static func state(keys: DeviceKeys = DeviceKeys(), siteKey: [UInt8] = (0..<32).map { _ in UInt8.random(in: 0...255) }) -> AgentState {
        AgentState(deviceID: keys.deviceID, signingKey: Base64URL.encode(Array(keys.signing.rawRepresentation)),
                   agreementKey: Base64URL.encode(Array(keys.agreement.rawRepresentation)), siteKey: Base64URL.encode(siteKey),
                   pinned: PinnedCertificates(pem: ["-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"]),
                   managerURLs: ["https://manager.example:8441"], policySerial: 7, checkInIntervalSeconds: 300)
    }

    @Test func aSavedStateLoadsBackWithItsKeysInAFileOnlyItsOwnerReads() throws {
        let dir = Self.folder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let keys = DeviceKeys()
        let saved = Self.state(keys: keys)
        try saved.save(to: dir)
        let loaded = try AgentState.load(from: dir)
        #expect(loaded == saved)
        #expect(try loaded.keys.deviceID == keys.deviceID)
        #expect(try loaded.keys.agreement.publicKey.rawRepresentation == keys.agreement.publicKey.rawRepresentation)
        #expect(try loaded.siteSymmetricKey.withUnsafeBytes { Array($0) } == Base64URL.decode(saved.siteKey))
        let attributes = try FileManager.default.attributesOfItem(atPath: dir + "/state.json")
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        #expect(!FileManager.default.fileExists(atPath: dir + "/state.json.tmp"))
        // The file names its fields as the protocol document's snake case.
        let text = try String(contentsOfFile: dir + "/state.json", encoding: .utf8)
        #expect(text.contains("\"device_id\"") && text.contains("\"checkin_interval_s\" : 300") && text.contains("\"policy_serial\" : 7"))
    }

    @Test func savingAgainReplacesTheWholeState() throws {
        let dir = Self.folder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.state().save(to: dir)
        var next = Self.state()
        next.policySerial = 8
        next.managerURLs = ["https://a.example:8441", "http://a.example:8014"]
        try next.save(to: dir)
        #expect(try AgentState.load(from: dir) == next)
    }

    @Test func damagedKeysAreRefusedWithAReason() throws {
        var state = Self.state()
        state.signingKey = "not base64url!"
        #expect(throws: ProtocolError.self) { _ = try state.keys }
        state = Self.state(siteKey: [1, 2, 3])
        do {
            _ = try state.siteSymmetricKey
            Issue.record("a 3-byte site key was accepted")
        } catch let error as ProtocolError {
            #expect(error.code == .malformed && error.message.contains("site key"))
        }
    }

    @Test func aMissingOrUnreadableStateFileIsAnError() throws {
        let dir = Self.folder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(throws: (any Error).self) { _ = try AgentState.load(from: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "{\"device_id\": 3}".write(toFile: dir + "/state.json", atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) { _ = try AgentState.load(from: dir) }
    }
}
