import Crypto
import Foundation
import PorticoAgent
import PorticoGateway
import PorticoManager
import PorticoProtocol
import PorticoServer
import PorticoStore
import Testing
import X509

@Suite(.timeLimit(.minutes(2))) struct EnrollmentTests {
    @Test func anAgentEnrollsWithATokenAndItsIdComesFromItsKey() async throws {
        try await TestManager.with { manager in
            let group = try await manager.store.createGroup(name: "Laptops")
            let keys = DeviceKeys()
            let state = try await AgentClient.enroll(bootstrap: manager.bootstrap, token: try await manager.makeToken(group: group.id), keys: keys, hostname: "laptop-1", os: "windows 11")
            #expect(state.deviceID == keys.deviceID)
            #expect(state.deviceID.hasPrefix("d-") && state.deviceID.count == 34)
            let device = try #require(try await manager.store.device(id: state.deviceID))
            #expect(device.hostname == "laptop-1" && device.signingKey == Array(keys.signing.publicKey.rawRepresentation))
            #expect(try await manager.store.groupIDs(ofDevice: state.deviceID) == [group.id])
            // The site key arrived sealed to the agent and matches the manager's.
            let managerKeys = manager.keys
            #expect(state.siteKey == Base64URL.encode(managerKeys.siteKey.withUnsafeBytes { Array($0) }))
            // Two machines with the same hostname are two devices.
            let twin = try await AgentClient.enroll(bootstrap: manager.bootstrap, token: try await manager.makeToken(), hostname: "laptop-1", os: "windows 11")
            #expect(twin.deviceID != state.deviceID)
        }
    }

    @Test func reusedExpiredRevokedAndForgedTokensAreRefused() async throws {
        try await TestManager.with { manager in
            let token = try await manager.makeToken(usesAllowed: 1)
            _ = try await AgentClient.enroll(bootstrap: manager.bootstrap, token: token, hostname: "a", os: "linux")
            await #expect(throws: ProtocolError.self) { _ = try await AgentClient.enroll(bootstrap: manager.bootstrap, token: token, hostname: "b", os: "linux") }

            let expired = try await manager.makeToken(expiresInMilliseconds: -1)
            let revoked = try await manager.makeToken()
            try await manager.store.revokeEnrollmentToken(id: String(revoked.split(separator: ".")[0]))
            let forged = String(token.split(separator: ".")[0]) + "." + Base64URL.encode([UInt8](repeating: 7, count: 32))
            let unknown = "t-nosuchtoken." + Base64URL.encode([UInt8](repeating: 7, count: 32))
            let expectations = [
                (expired, "the enrollment token has expired"), (revoked, "the enrollment token was revoked"),
                // A wrong secret and an unknown id read the same to the caller.
                (forged, "the enrollment token was not accepted"), (unknown, "the enrollment token was not accepted"),
            ]
            for (candidate, message) in expectations {
                await #expect(throws: ProtocolError(.enrollmentRefused, message)) {
                    _ = try await AgentClient.enroll(bootstrap: manager.bootstrap, token: candidate, hostname: "c", os: "linux")
                }
            }
            let refusals = try await manager.store.auditEntries(action: "device.enroll").filter { $0.result == "refused" }
            #expect(Set(refusals.map(\.detail)) == ["usedUp", "expired", "revoked", "wrongSecret", "unknown"])
        }
    }

    @Test func anAgentRefusesAManagerItDidNotPin() async throws {
        try await TestManager.with { manager in
            let stranger = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "impostor")
            let bootstrap = BootstrapFile(site: "test-site", managerURLs: manager.bootstrap.managerURLs, pinned: PinnedCertificates(pem: [stranger.certificatePEM]))
            // Over plain HTTP (no TLS to stop it), the protocol's own signature check refuses.
            await #expect(throws: ProtocolError(.notPinned, "the manager's hello is not signed by a pinned certificate")) {
                _ = try await AgentClient.enroll(bootstrap: bootstrap, token: try await manager.makeToken(), hostname: "a", os: "linux", managerURL: manager.plainURL)
            }
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct SessionTests {
    @Test(arguments: [false, true])
    func checkInAndPolicyDownloadOverHTTPSAndPlainHTTP(plain: Bool) async throws {
        try await TestManager.with { manager in
            let group = try await manager.store.createGroup(name: "Servers")
            let url = plain ? manager.plainURL : manager.httpsURL
            try await withAgent(try await manager.enrolledAgent(url: url, group: group.id)) { agent in
                let quiet = try await agent.checkIn()
                #expect(!quiet.policyChanged && quiet.commands.isEmpty)
                #expect(quiet.nextCheckInSeconds >= 270 && quiet.nextCheckInSeconds <= 330)

                let policy = try await manager.store.createPolicy(name: "Baseline", document: #"{"firewall":"on"}"#, by: "admin")
                try await manager.store.publishPolicy(policyID: policy.id, version: 1)
                try await manager.store.assignPolicy(policyID: policy.id, toGroup: group.id)
                let changed = try await agent.checkIn()
                #expect(changed.policyChanged)
                let contents = try await agent.fetchPolicy()
                #expect(contents.policies.map(\.document) == [#"{"firewall":"on"}"#])
                #expect(contents.policies.first?.name == "Baseline")
                #expect(try await agent.checkIn().policyChanged == false)
                let device = try #require(try await manager.store.device(id: await agent.state.deviceID))
                #expect(device.policySerial == contents.serial && device.lastCheckInMilliseconds != nil)
            }
        }
    }

    /// Devices with the same policies get the same signed bundle (one signature per
    /// publication, not one per device); a new publication, or other policies, get their own.
    @Test func devicesWithTheSamePoliciesShareOneSignedBundle() async throws {
        try await TestManager.with { manager in
            let servers = try await manager.store.createGroup(name: "Servers")
            let laptops = try await manager.store.createGroup(name: "Laptops")
            let policy = try await manager.store.createPolicy(name: "Baseline", document: #"{"firewall":"on"}"#, by: "admin")
            try await manager.store.publishPolicy(policyID: policy.id, version: 1)
            try await manager.store.assignPolicy(policyID: policy.id, toGroup: servers.id)
            func bundle(_ agent: AgentClient) async throws -> PolicyBundle {
                guard case .policy(let bundle) = try await agent.send(.fetchPolicy) else { throw ProtocolError(.malformed, "no policy") }
                return bundle
            }
            try await withAgent(try await manager.enrolledAgent(url: manager.plainURL, group: servers.id)) { first in
                try await withAgent(try await manager.enrolledAgent(url: manager.plainURL, group: servers.id)) { second in
                    try await withAgent(try await manager.enrolledAgent(url: manager.plainURL, group: laptops.id)) { other in
                        let a = try await bundle(first)
                        let b = try await bundle(second)
                        #expect(a == b)
                        #expect(try await first.fetchPolicy().policies.map(\.name) == ["Baseline"])
                        let c = try await bundle(other)
                        #expect(c != a && c.serial == a.serial)
                        #expect(try await other.fetchPolicy().policies.isEmpty)
                        let next = try await manager.store.addPolicyVersion(policyID: policy.id, document: #"{"firewall":"off"}"#, by: "admin")
                        try await manager.store.publishPolicy(policyID: policy.id, version: next)
                        let d = try await bundle(second)
                        #expect(d != b && d.serial > b.serial)
                        #expect(try await second.fetchPolicy().policies.map(\.document) == [#"{"firewall":"off"}"#])
                    }
                }
            }
        }
    }

    @Test func replayedReorderedTamperedAndExpiredMessagesAreRefused() async throws {
        try await TestManager.with { manager in
            try await withAgent(try await manager.enrolledAgent(url: manager.plainURL)) { agent in
                try await agent.openSession()
                let checkIn = AgentMessage.checkIn(CheckInRequest(policySerial: 0, status: "ok"))
                let first = try await agent.seal(checkIn)
                #expect(try await agent.post(envelope: first).status == 200)
                // The same bytes again: a replay.
                let replay = try await agent.post(envelope: first)
                #expect(replay.status == 409)
                #expect(String(decoding: replay.body, as: UTF8.self).contains("replayed"))
                // Two messages delivered out of order: the later counter wins, the earlier is refused.
                let second = try await agent.seal(checkIn)
                let third = try await agent.seal(checkIn)
                #expect(try await agent.post(envelope: third).status == 200)
                #expect(try await agent.post(envelope: second).status == 409)
                // One flipped bit in the ciphertext.
                var tampered = try await agent.seal(checkIn)
                tampered[tampered.count - 20] ^= 0x01
                let altered = try await agent.post(envelope: tampered)
                #expect(altered.status == 400)
                #expect(String(decoding: altered.body, as: UTF8.self).contains("decryption_failed"))
                // Garbage is not a message.
                #expect(try await agent.post(envelope: Array("hello".utf8)).status == 400)
            }
        }
        var shortLived = AgentService.Configuration()
        shortLived.sessionLifetimeMilliseconds = -1
        try await TestManager.with(configuration: shortLived) { manager in
            try await withAgent(try await manager.enrolledAgent(url: manager.plainURL)) { agent in
                try await agent.openSession()
                let expired = try await agent.post(envelope: try await agent.seal(.checkIn(CheckInRequest(policySerial: 0, status: "ok"))))
                #expect(expired.status == 401)
                #expect(String(decoding: expired.body, as: UTF8.self).contains("session_expired"))
            }
        }
    }

    @Test func aRevokedDeviceCannotOpenASession() async throws {
        try await TestManager.with { manager in
            try await withAgent(try await manager.enrolledAgent()) { agent in
                _ = try await agent.checkIn()
                try await manager.store.setDeviceState(id: await agent.state.deviceID, to: .revoked)
                manager.agent.endSessions(ofDevice: await agent.state.deviceID)
                await #expect(throws: ProtocolError(.deviceRevoked, "this device was revoked")) { _ = try await agent.checkIn() }
            }
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct PolicyIntegrityTests {
    @Test func aBundleWithABadSignatureOrAlteredBytesIsRejectedByTheAgent() async throws {
        try await TestManager.with { manager in
            let group = try await manager.store.createGroup(name: "G")
            let policy = try await manager.store.createPolicy(name: "P", document: "{}", by: "admin")
            try await manager.store.publishPolicy(policyID: policy.id, version: 1)
            try await manager.store.assignPolicy(policyID: policy.id, toGroup: group.id)
            try await withAgent(try await manager.enrolledAgent(group: group.id)) { agent in
                guard case .policy(let genuine) = try await agent.send(.fetchPolicy) else { Issue.record("no policy"); return }
                let state = await agent.state
                let siteKey = try state.siteSymmetricKey
                #expect(try genuine.open(pinned: state.pinned, siteKey: siteKey).policies.count == 1)

                // Signed by someone else's key.
                let stranger = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "x")
                let strangerKey = try Certificate.PrivateKey(pemEncoded: stranger.privateKeyPEM)
                let forged = try PolicyBundle.make(.init(serial: genuine.serial, policies: [.init(id: "evil", name: "evil", version: 1, document: #"{"firewall":"off"}"#)]), siteKey: siteKey) {
                    try ManagerSignature.sign($0, with: strangerKey)
                }
                #expect(throws: ProtocolError(.badSignature, "the policy bundle is not signed by a pinned manager certificate")) { try forged.open(pinned: state.pinned, siteKey: siteKey) }
                // The manager's signature on altered ciphertext.
                var altered = genuine
                var bytes = try #require(Base64URL.decode(altered.sealed))
                bytes[20] ^= 0xFF
                altered.sealed = Base64URL.encode(bytes)
                #expect(throws: ProtocolError.self) { try altered.open(pinned: state.pinned, siteKey: siteKey) }
                // A replayed older serial under a new one.
                var relabelled = genuine
                relabelled.serial += 1
                #expect(throws: ProtocolError.self) { try relabelled.open(pinned: state.pinned, siteKey: siteKey) }
            }
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct CommandAndEventTests {
    @Test func lockWipeAndRemoteHelpRoundTrips() async throws {
        try await TestManager.with { manager in
            try await withAgent(try await manager.enrolledAgent()) { agent in
                let deviceID = await agent.state.deviceID
                try await manager.store.enqueueCommand(CommandRecord(id: "c-lock", deviceID: deviceID, kind: .lock, issuedBy: "op"))
                let reply = try await agent.checkIn()
                #expect(reply.commands.map(\.kind) == ["lock"])
                try await agent.reportResult(commandID: "c-lock", succeeded: true, detail: "screen locked")
                #expect(try await manager.store.command(id: "c-lock")?.state == .acknowledged)
                #expect(try await manager.store.device(id: deviceID)?.state == .locked)
                #expect(try await agent.checkIn().commands.isEmpty)

                // Remote help: the device shows a challenge; the operator gets the response from
                // the manager; the device accepts it, and not a wrong one.
                let challenge = RemoteHelp.makeChallenge(now: Int64(Date().timeIntervalSince1970 * 1000))
                let response = try await manager.agent.remoteHelpResponse(deviceID: deviceID, challenge: challenge)
                let managerKey = manager.keys.agreement.publicKey.rawRepresentation
                #expect(try await agent.verifyRemoteHelp(response: response, challenge: challenge, managerAgreementKey: Array(managerKey)))
                #expect(try await agent.verifyRemoteHelp(response: "00000000" == response ? "11111111" : "00000000", challenge: challenge, managerAgreementKey: Array(managerKey)) == false)

                try await manager.store.enqueueCommand(CommandRecord(id: "c-wipe", deviceID: deviceID, kind: .wipe, issuedBy: "op"))
                #expect(try await agent.checkIn().commands.map(\.id) == ["c-wipe"])
                try await agent.reportResult(commandID: "c-wipe", succeeded: true, detail: "wiped")
                #expect(try await manager.store.device(id: deviceID)?.state == .wiped)
                // A wiped device is done.
                await #expect(throws: ProtocolError.self) { _ = try await agent.checkIn() }
            }
        }
    }

    @Test func eventBatchesAreAcknowledgedWhenDurableAndStoredOnce() async throws {
        try await TestManager.with { manager in
            try await withAgent(try await manager.enrolledAgent(url: manager.plainURL)) { agent in
                let events = (1...50).map { AgentEvent(id: "ev-\($0)", kind: "malware.detected", occurredMilliseconds: Int64($0), body: #"{"file":"x"}"#) }
                let acknowledged = try await agent.report(events)
                #expect(acknowledged == events.map(\.id))
                // The agent did not hear the answer and sends the batch again, with more.
                let again = events + [AgentEvent(id: "ev-51", kind: "malware.detected", occurredMilliseconds: 51, body: "{}")]
                #expect(try await agent.report(again).count == 51)
                #expect(try await manager.store.eventCount(device: await agent.state.deviceID) == 51)
            }
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct RotationTests {
    @Test func anAnnouncedCertificateKeepsAnEnrolledAgentWorkingAcrossTheSwitch() async throws {
        try await TestManager.with { manager in
            try await withAgent(try await manager.enrolledAgent()) { agent in
                let group = try await manager.store.createGroup(name: "G")
                try await manager.store.addDevice(await agent.state.deviceID, toGroup: group.id)
                let next = try IdentityGenerator.generate(keyType: .rsa2048, commonName: "next")
                manager.agent.announceNextCertificate(next.certificatePEM)
                _ = try await agent.checkIn()
                #expect(await agent.state.pinned.pem.count == 2)

                // The switch: the files change and the listener picks them up.
                try IdentityGenerator.write(next, certificatePath: manager.identity.certificatePath, privateKeyPath: manager.identity.privateKeyPath)
                await manager.gateway.reloadIdentities()
                #expect(manager.identity.current.certificatePEM.contains(next.certificatePEM.split(separator: "\n")[1]))

                // A new session (new TLS connection, new handshake signature) and a policy signed
                // after the switch both verify against the pins.
                try await agent.openSession()
                let policy = try await manager.store.createPolicy(name: "after", document: "{}", by: "admin")
                try await manager.store.publishPolicy(policyID: policy.id, version: 1)
                try await manager.store.assignPolicy(policyID: policy.id, toGroup: group.id)
                #expect(try await agent.checkIn().policyChanged)
                #expect(try await agent.fetchPolicy().policies.map(\.name) == ["after"])
            }
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct OperatorEnrollmentTests {
    @Test func anOperatorCanEnrollADeviceAnAuditorCannotAndFailuresLockTheAccount() async throws {
        var configuration = AgentService.Configuration()
        configuration.lockAfterFailures = 3
        try await TestManager.with(configuration: configuration) { manager in
            try await manager.store.createOperator(OperatorRecord(name: "olive", passwordHash: try await PasswordHasher.hash("correct horse", logRounds: 10), role: .operator))
            try await manager.store.createOperator(OperatorRecord(name: "audrey", passwordHash: try await PasswordHasher.hash("battery staple", logRounds: 10), role: .auditor))

            let state = try await AgentClient.enroll(bootstrap: manager.bootstrap, credential: .operator(name: "olive", password: "correct horse"), hostname: "desk", os: "linux", managerURL: manager.plainURL)
            #expect(try await manager.store.device(id: state.deviceID) != nil)

            let refused = ProtocolError(.enrollmentRefused, "the operator credentials were not accepted")
            await #expect(throws: refused) {
                _ = try await AgentClient.enroll(bootstrap: manager.bootstrap, credential: .operator(name: "audrey", password: "battery staple"), hostname: "x", os: "linux")
            }
            await #expect(throws: refused) {
                _ = try await AgentClient.enroll(bootstrap: manager.bootstrap, credential: .operator(name: "nobody", password: "x"), hostname: "x", os: "linux")
            }
            for _ in 0..<3 {
                await #expect(throws: refused) {
                    _ = try await AgentClient.enroll(bootstrap: manager.bootstrap, credential: .operator(name: "olive", password: "wrong"), hostname: "x", os: "linux")
                }
            }
            // Locked now: even the right password is refused, and says why.
            await #expect(throws: ProtocolError(.enrollmentRefused, "the operator account is locked")) {
                _ = try await AgentClient.enroll(bootstrap: manager.bootstrap, credential: .operator(name: "olive", password: "correct horse"), hostname: "y", os: "linux")
            }
            let audit = try await manager.store.auditEntries(action: "device.enroll").filter { $0.result == "refused" }.map(\.detail)
            #expect(audit.contains("role auditor may not enroll devices") && audit.contains("locked") && audit.filter { $0 == "bad credentials" }.count == 4)
        }
    }

    @Test func passwordHashesAreSaltedAndVerifyOnlyTheRightPassword() async throws {
        let first = try await PasswordHasher.hash("s3cret")
        let second = try await PasswordHasher.hash("s3cret")
        #expect(first != second)
        #expect(first.hasPrefix("$scrypt$ln=15,r=8,p=1$"))
        #expect(await PasswordHasher.verify("s3cret", against: first))
        #expect(await PasswordHasher.verify("s3cret!", against: first) == false)
        #expect(await PasswordHasher.verify("s3cret", against: "$bcrypt$whatever") == false)
    }
}
