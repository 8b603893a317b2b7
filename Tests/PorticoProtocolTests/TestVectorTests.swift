import Crypto
import Foundation
import Testing

@testable import PorticoProtocol

/// The test vectors of docs/agent-protocol.md, read from the document itself and recomputed
/// with the code both sides run: an implementer who matches them matches Portico.
@Suite struct TestVectorTests {
    /// `name = value` lines of the appendix's fenced blocks.
    static let vectors: [String: String] = {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/agent-protocol.md").path
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), let start = text.range(of: "## Appendix: test vectors") else { return [:] }
        var values: [String: String] = [:]
        var inBlock = false
        for line in text[start.upperBound...].split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```") { inBlock.toggle(); continue }
            guard inBlock, let equals = line.range(of: " = ") else { continue }
            values[String(line[..<equals.lowerBound])] = String(line[equals.upperBound...])
        }
        return values
    }()

    static func value(_ name: String) throws -> String {
        try #require(vectors[name], "docs/agent-protocol.md has no test vector \(name)")
    }

    static func bytes(_ name: String) throws -> [UInt8] {
        let hex = try value(name)
        var result: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            result.append(try #require(UInt8(hex[index..<next], radix: 16), "\(name) is not hex"))
            index = next
        }
        return result
    }

    static func hex(_ bytes: some Sequence<UInt8>) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    /// Checks a documented value against the computed one, naming both when they differ.
    static func check(_ name: String, _ computed: String) {
        #expect(vectors[name] == computed, "\(name) = \(computed)")
    }

    @Test func theHandshakeAndTheSessionKeys() throws {
        let signing = try Curve25519.Signing.PrivateKey(rawRepresentation: try Self.bytes("device_signing_private"))
        let agentEphemeral = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: try Self.bytes("agent_ephemeral_private"))
        let managerEphemeral = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: try Self.bytes("manager_ephemeral_private"))
        let deviceID = DeviceID.derive(fromSigningKey: Array(signing.publicKey.rawRepresentation))
        Self.check("device_signing_key", Base64URL.encode(signing.publicKey.rawRepresentation))
        Self.check("device_id", deviceID)
        var request = SessionRequest(deviceID: deviceID, ephemeralKey: Base64URL.encode(agentEphemeral.publicKey.rawRepresentation),
                                     timestampMilliseconds: try #require(Int64(try Self.value("timestamp_ms"))), nonce: Base64URL.encode(try Self.bytes("nonce_bytes")))
        Self.check("agent_ephemeral_key", request.ephemeralKey)
        Self.check("nonce", request.nonce)
        Self.check("session_transcript", String(decoding: request.transcript, as: UTF8.self))
        // Ed25519 signatures are deterministic (RFC 8032): the documented one is the one made.
        request.signature = Base64URL.encode(try signing.signature(for: request.transcript))
        Self.check("session_signature", request.signature)
        let sessionID = try Self.bytes("session_id_bytes")
        let response = SessionResponse(sessionID: Base64URL.encode(sessionID), ephemeralKey: Base64URL.encode(managerEphemeral.publicKey.rawRepresentation),
                                       expiresMilliseconds: try #require(Int64(try Self.value("expires_ms"))), certificate: "")
        Self.check("session_id", response.sessionID)
        Self.check("manager_ephemeral_key", response.ephemeralKey)
        let transcript = response.transcript(request: request)
        Self.check("accept_transcript", String(decoding: transcript, as: UTF8.self))
        let agentShared = try agentEphemeral.sharedSecretFromKeyAgreement(with: managerEphemeral.publicKey)
        let managerShared = try managerEphemeral.sharedSecretFromKeyAgreement(with: agentEphemeral.publicKey)
        Self.check("shared_secret", agentShared.withUnsafeBytes { Self.hex($0) })
        let keys = SessionKeys.derive(sharedSecret: agentShared, sessionID: sessionID, transcript: transcript)
        let managerKeys = SessionKeys.derive(sharedSecret: managerShared, sessionID: sessionID, transcript: transcript)
        Self.check("agent_to_manager_key", keys.agentToManager.withUnsafeBytes { Self.hex($0) })
        Self.check("manager_to_agent_key", keys.managerToAgent.withUnsafeBytes { Self.hex($0) })
        #expect(managerKeys.agentToManager.withUnsafeBytes { Self.hex($0) } == keys.agentToManager.withUnsafeBytes { Self.hex($0) })

        // A sealed message in that session, and the manager's answer with the same counter.
        let counter = try #require(UInt64(try Self.value("message_counter")))
        let envelope = try Envelope.seal(Array(try Self.value("message_plaintext").utf8), keys: keys, counter: counter, direction: .agentToManager)
        Self.check("message_envelope", Self.hex(envelope))
        let opened = try Envelope.open(try Self.bytes("message_envelope"), keys: managerKeys, direction: .agentToManager)
        #expect(opened.counter == counter)
        #expect(try JSONDecoder().decode(AgentMessage.self, from: Data(opened.plaintext)) == .fetchPolicy)
        let answer = try Envelope.seal(Array(try Self.value("answer_plaintext").utf8), keys: managerKeys, counter: counter, direction: .managerToAgent)
        Self.check("answer_envelope", Self.hex(answer))
        #expect(try JSONDecoder().decode(ManagerMessage.self, from: Data(try Envelope.open(answer, keys: keys, direction: .managerToAgent).plaintext)) == .ok)
    }

    @Test func thePolicyBox() throws {
        let siteKey = SymmetricKey(data: try Self.bytes("site_key"))
        let plaintext = Array(try Self.value("policy_plaintext").utf8)
        let box = try AES.GCM.seal(plaintext, using: siteKey, nonce: try AES.GCM.Nonce(data: try Self.bytes("policy_nonce")))
        let sealed = Base64URL.encode(box.nonce + box.ciphertext + box.tag)
        Self.check("policy_sealed", sealed)
        let contents = try PolicyBundle.decrypt(try Self.value("policy_sealed"), siteKey: siteKey)
        #expect(contents.serial == 13)
        #expect(contents.policies.first?.document == #"{"usb_storage":"block"}"#)
        Self.check("policy_transcript", String(decoding: PolicyBundle.transcript(serial: contents.serial, sealed: sealed), as: UTF8.self))
    }

    @Test func theRemoteHelpResponse() throws {
        let device = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: try Self.bytes("device_agreement_private"))
        let manager = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: try Self.bytes("manager_agreement_private"))
        let deviceID = try Self.value("remote_help_device_id")
        let secret = RemoteHelp.deviceSecret(try device.sharedSecretFromKeyAgreement(with: manager.publicKey), deviceID: deviceID)
        let managerSecret = RemoteHelp.deviceSecret(try manager.sharedSecretFromKeyAgreement(with: device.publicKey), deviceID: deviceID)
        Self.check("remote_help_secret", secret.withUnsafeBytes { Self.hex($0) })
        #expect(managerSecret.withUnsafeBytes { Self.hex($0) } == secret.withUnsafeBytes { Self.hex($0) })
        let challenge = try Self.value("remote_help_challenge")
        Self.check("remote_help_response", RemoteHelp.response(to: challenge, secret: secret))
    }

    @Test func theUserUnlockAndTheUsersSignedResult() throws {
        let device = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: try Self.bytes("device_agreement_private"))
        let manager = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: try Self.bytes("manager_agreement_private"))
        let secret = RemoteHelp.deviceSecret(try device.sharedSecretFromKeyAgreement(with: manager.publicKey), deviceID: try Self.value("remote_help_device_id"))
        let challenge = try Self.value("remote_help_challenge")
        Self.check("unlock_user_response", RemoteHelp.response(to: challenge, secret: secret, unlockingUser: try Self.value("unlock_user")))
        #expect(!RemoteHelp.verify(response: try Self.value("remote_help_response"), challenge: challenge, secret: secret, now: 29_921_761 * 60_000,
                                   unlockingUser: try Self.value("unlock_user")))
        let verifier = try Self.value("user_verifier")
        #expect(PasswordVerifier.matches(try Self.value("user_password"), verifier))
        #expect(!PasswordVerifier.matches("alice password 2", verifier))
        let result = UserSignInResult(deviceID: try Self.value("device_id"), user: "alice", nonce: try Self.value("nonce"), outcome: .allowed, message: "signed in",
                                      displayName: "Alice Example", groups: ["laptop-users", "portico-admins"], offlineSeconds: 604_800, offlineVerifier: verifier,
                                      offlineUntilMilliseconds: 1_795_910_400_000, issuedMilliseconds: Int64(try Self.value("timestamp_ms"))!)
        Self.check("user_result_transcript", String(decoding: result.transcript, as: UTF8.self))
    }

    @Test func base64URLHasOneSpellingPerValue() {
        #expect(Base64URL.decode("AQID") == [1, 2, 3])
        #expect(Base64URL.decode("AQI") == [1, 2])
        for refused in ["AQI=", "AQ+/", "AQ I", "A", "AQ\n"] { #expect(Base64URL.decode(refused) == nil, "\(refused)") }
        // Found by fuzzing: unused low bits set in the last character spelled the same bytes
        // another way (`Sequeg` is the one spelling of these).
        #expect(Base64URL.decode("Sequeg") == [0x49, 0xEA, 0xAE, 0x7A])
        #expect(Base64URL.decode("Sequei") == nil)
    }
}
