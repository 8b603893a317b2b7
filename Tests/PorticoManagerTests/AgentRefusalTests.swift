import Crypto
import Foundation
import PorticoAgent
import PorticoGateway
import PorticoManager
import PorticoProtocol
import PorticoServer
import PorticoStore
import Testing

/// What a hostile caller or an unlucky agent sends after enrollment: messages that do not
/// open, results sent twice, and the audit trail every refusal leaves.
@Suite(.timeLimit(.minutes(2))) struct AgentRefusalTests {
    @Test func aMessageThatDoesNotOpenLeavesTheSessionCounterAlone() async throws {
        try await TestManager.with { manager in
            try await withAgent(try await manager.enrolledAgent(url: manager.plainURL)) { agent in
                try await agent.openSession()
                let checkIn = AgentMessage.checkIn(CheckInRequest(policySerial: 0, status: "ok"))
                let genuine = try await agent.seal(checkIn)
                var tampered = genuine
                tampered[tampered.count - 20] ^= 0x01
                let altered = try await agent.post(envelope: tampered)
                #expect(altered.status == 400)
                #expect(String(decoding: altered.body, as: UTF8.self).contains("decryption_failed"))
                // The genuine message with the same counter still goes through.
                #expect(try await agent.post(envelope: genuine).status == 200)

                // Someone who saw only the session id sends the highest counter with random bytes.
                var forged = Envelope.magic + Array(genuine[4..<20])
                withUnsafeBytes(of: (UInt64(1) << 63).bigEndian) { forged += $0 }
                forged += (0..<48).map { _ in UInt8.random(in: 0...255) }
                #expect(try await agent.post(envelope: forged).status == 400)
                // ...and every later genuine message of the session is still accepted.
                #expect(try await agent.post(envelope: try await agent.seal(checkIn)).status == 200)
                #expect(try await agent.checkIn().commands.isEmpty)
            }
        }
    }

    @Test func aCommandResultSentAgainIsAnsweredOkAndAnUnknownOneIsASealedError() async throws {
        try await TestManager.with { manager in
            try await withAgent(try await manager.enrolledAgent()) { agent in
                let deviceID = await agent.state.deviceID
                try await manager.store.enqueueCommand(CommandRecord(id: "c-lock", deviceID: deviceID, kind: .lock, issuedBy: "op"))
                #expect(try await agent.checkIn().commands.map(\.id) == ["c-lock"])
                try await agent.reportResult(commandID: "c-lock", succeeded: true, detail: "screen locked")
                // The agent did not hear the answer and sends the same result again.
                try await agent.reportResult(commandID: "c-lock", succeeded: true, detail: "screen locked")
                #expect(try await manager.store.command(id: "c-lock")?.state == .acknowledged)
                #expect(try await manager.store.device(id: deviceID)?.state == .locked)

                // An unlock since: a late copy of the lock's result does not lock the device again.
                try await manager.store.enqueueCommand(CommandRecord(id: "c-unlock", deviceID: deviceID, kind: .unlock, issuedBy: "op"))
                #expect(try await agent.checkIn().commands.map(\.id) == ["c-unlock"])
                try await agent.reportResult(commandID: "c-unlock", succeeded: true, detail: "unlocked")
                try await agent.reportResult(commandID: "c-lock", succeeded: true, detail: "screen locked")
                #expect(try await manager.store.device(id: deviceID)?.state == .active)

                // An id the device was never given: a sealed refusal, not a server error.
                await #expect(throws: ProtocolError(.unknownCommand, "this device has no command c-none")) {
                    try await agent.reportResult(commandID: "c-none", succeeded: true, detail: "?")
                }
                try await agent.openSession()
                let raw = try await agent.post(envelope: try await agent.seal(.commandResult(CommandResult(commandID: "c-none", succeeded: false, detail: "?"))))
                #expect(raw.status == 200)
                #expect(Array(raw.body.prefix(4)) == Envelope.magic)

                // Another device's command is unknown to this one.
                try await withAgent(try await manager.enrolledAgent(hostname: "other")) { other in
                    let otherID = await other.state.deviceID
                    try await manager.store.enqueueCommand(CommandRecord(id: "c-other", deviceID: otherID, kind: .wipe, issuedBy: "op"))
                    await #expect(throws: ProtocolError(.unknownCommand, "this device has no command c-other")) {
                        try await agent.reportResult(commandID: "c-other", succeeded: true, detail: "wiped")
                    }
                    #expect(try await manager.store.command(id: "c-other")?.state == .pending)
                }
                let refusals = try await manager.store.auditEntries(actor: "device:" + deviceID, action: "device.message").filter { $0.result == "refused" }
                #expect(refusals.count == 3)
                #expect(refusals.allSatisfy { $0.detail.hasPrefix("unknown_command:") })
            }
        }
    }

    @Test func everyRefusedEnrollmentAndHandshakeIsAuditedWithItsReason() async throws {
        try await TestManager.with { manager in
            let managerKeys = manager.keys
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let request = { (keys: DeviceKeys, time: Int64, signed: Bool) in try Self.enrollRequest(keys, at: time, signed: signed) }
            let sealed = { (request: EnrollRequest, recipient: Curve25519.KeyAgreement.PublicKey) in try Self.sealed(request, to: recipient) }
            let managerKey = managerKeys.agreement.publicKey
            let revokedKeys = DeviceKeys()
            let wipedKeys = DeviceKeys()
            for (keys, state) in [(revokedKeys, DeviceState.revoked), (wipedKeys, .wiped)] {
                _ = try await AgentClient.enroll(bootstrap: manager.bootstrap, token: try await manager.makeToken(), keys: keys, hostname: "h", os: "linux")
                try await manager.store.setDeviceState(id: keys.deviceID, to: state)
            }
            let badSignature = DeviceKeys()
            let stale = DeviceKeys()
            let cases: [(body: String, code: String, actor: String)] = [
                (try sealed(try request(badSignature, now, false), managerKey), "bad_signature", "agent"),
                (try sealed(try request(stale, now - 3_600_000, true), managerKey), "stale_timestamp", "device:" + stale.deviceID),
                (try sealed(try request(DeviceKeys(), now, true), Curve25519.KeyAgreement.PrivateKey().publicKey), "decryption_failed", "agent"),
                ("this is not JSON", "malformed", "agent"),
                (try sealed(try request(revokedKeys, now, true), managerKey), "device_revoked", "device:" + revokedKeys.deviceID),
                (try sealed(try request(wipedKeys, now, true), managerKey), "device_revoked", "device:" + wipedKeys.deviceID),
            ]
            try await APICaller.with(manager) { caller in
                let plain = APICaller(client: caller.client, base: manager.plainURL)
                for (body, code, _) in cases {
                    let answer = try await plain.call(.POST, "/agent/v1/enroll", json: body)
                    #expect(answer.json["error"] as? String == code, "\(answer.text)")
                }
                // Handshakes: an unknown device, and a known one whose signature does not verify.
                let ghost = DeviceKeys()
                for (keys, signer) in [(ghost, ghost), (revokedKeys, DeviceKeys())] {
                    var handshake = SessionRequest(deviceID: keys.deviceID, ephemeralKey: Base64URL.encode(Curve25519.KeyAgreement.PrivateKey().publicKey.rawRepresentation),
                                                   timestampMilliseconds: now, nonce: Base64URL.encode((0..<16).map { _ in UInt8.random(in: 0...255) }))
                    handshake.signature = Base64URL.encode(try signer.signing.signature(for: handshake.transcript))
                    _ = try await plain.call(.POST, "/agent/v1/session", json: String(decoding: try JSONEncoder().encode(handshake), as: UTF8.self))
                }
            }
            let enrollRefusals = try await manager.store.auditEntries(action: "device.enroll").filter { $0.result == "refused" }
            #expect(enrollRefusals.map { $0.detail.prefix(while: { $0 != ":" }) }.sorted() == cases.map { Substring($0.code) }.sorted())
            for (_, code, actor) in cases {
                #expect(enrollRefusals.contains { $0.actor == actor && $0.detail.hasPrefix(code + ":") }, "\(code) by \(actor)")
            }
            #expect(enrollRefusals.allSatisfy { $0.source == "127.0.0.1" })
            let sessionRefusals = try await manager.store.auditEntries(action: "device.session").filter { $0.result == "refused" }
            #expect(Set(sessionRefusals.map { $0.detail.prefix(while: { $0 != ":" }) }) == ["unknown_device", "device_revoked"])
        }
    }

    /// An enrollment request from `keys`, signed over its transcript (or, unsigned, over other bytes).
    static func enrollRequest(_ keys: DeviceKeys, at time: Int64, signed: Bool) throws -> EnrollRequest {
        var request = EnrollRequest(token: nil, signingKey: Base64URL.encode(keys.signing.publicKey.rawRepresentation),
                                    agreementKey: Base64URL.encode(keys.agreement.publicKey.rawRepresentation), hostname: "h", os: "linux", timestampMilliseconds: time)
        request.signature = Base64URL.encode(try keys.signing.signature(for: signed ? request.transcript : Array("something else".utf8)))
        return request
    }

    /// The body of `POST /agent/v1/enroll`: the request sealed to `recipient`.
    static func sealed(_ request: EnrollRequest, to recipient: Curve25519.KeyAgreement.PublicKey) throws -> String {
        String(decoding: try JSONEncoder().encode(try SealedBox.seal(Array(try JSONEncoder().encode(request)), to: recipient, context: "portico-enroll-v1")), as: UTF8.self)
    }

    @Test func theAPIQueuesRemoteHelpAndTheAgentReceivesIt() async throws {
        try await TestManager.with { manager in
            try await withAgent(try await manager.enrolledAgent()) { agent in
                let deviceID = await agent.state.deviceID
                try await APICaller.with(manager) { api in
                    try await manager.makeOperator("helpdesk", role: .operator)
                    let token = try await manager.session(for: "helpdesk").access
                    let queued = try await api.call(.POST, "/commands", token: token, json: #"{"device_id":"\#(deviceID)","kind":"remote_help"}"#)
                    #expect(queued.status == 201, "\(queued.text)")
                    #expect(queued.json["kind"] as? String == "remote_help")
                }
                let commands = try await agent.checkIn().commands
                #expect(commands.map(\.kind) == ["remote_help"])
                try await agent.reportResult(commandID: try #require(commands.first).id, succeeded: true, detail: "user let in once")
            }
        }
    }
}
