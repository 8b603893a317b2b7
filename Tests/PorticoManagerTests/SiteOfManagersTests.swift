import Foundation
import PorticoAgent
import PorticoGateway
import PorticoManager
import PorticoProtocol
import PorticoServer
import PorticoStore
import Testing

/// Two managers of one site, each with its own folder and listeners, sharing the database
/// and nothing else (each given a copy of the secrets key), as behind a load balancer.
@Suite struct SiteOfManagersTests {
    static let checkIn = AgentMessage.checkIn(CheckInRequest(policySerial: 0, status: "ok"))

    @Test func anAgentsSessionContinuesOnTheOtherManagerAndAReplayThereIsRefused() async throws {
        try await TestManager.with { a in
            try await TestManager.with(sharing: a) { b in
                try await withAgent(try await a.enrolledAgent(url: a.plainURL)) { agent in
                    let atB = AgentClient(state: await agent.state, managerURL: b.plainURL)
                    defer { Task { await atB.shutdown() } }
                    try await agent.openSession()
                    let first = try await agent.seal(Self.checkIn)
                    #expect(try await agent.post(envelope: first).status == 200)
                    // The session's next message at the other manager: taken, no new handshake.
                    let second = try await agent.seal(Self.checkIn)
                    let answered = try await atB.post(envelope: second)
                    #expect(answered.status == 200, "\(String(decoding: answered.body, as: UTF8.self))")
                    #expect(b.agent.openSessions == 1)
                    // Each replayed to the manager that did not take it: refused.
                    for (envelope, client) in [(first, atB), (second, agent)] {
                        let replay = try await client.post(envelope: envelope)
                        #expect(replay.status == 409, "\(String(decoding: replay.body, as: UTF8.self))")
                        #expect(String(decoding: replay.body, as: UTF8.self).contains("replayed"))
                    }
                    // The agent carries on at either.
                    #expect(try await atB.post(envelope: try await agent.seal(Self.checkIn)).status == 200)
                    #expect(try await agent.post(envelope: try await agent.seal(Self.checkIn)).status == 200)
                    // Revoked at one manager: the session ends at the other too.
                    let deviceID = await agent.state.deviceID
                    try await ManagerOperations(store: b.store, agent: b.agent).revokeDevice(id: deviceID, by: .init(name: "test", source: "local"))
                    let afterRevoke = try await agent.post(envelope: try await agent.seal(Self.checkIn))
                    #expect(afterRevoke.status == 401, "\(String(decoding: afterRevoke.body, as: UTF8.self))")
                }
            }
        }
    }

    @Test func theSecondManagerServesTheSitesIdentityAndItsRotationReachesTheOther() async throws {
        try await TestManager.with { a in
            try await TestManager.with(sharing: a) { b in
                // No file was copied: b took the identity and the agent keys from the database.
                #expect(b.identity.current.fingerprint == a.identity.current.fingerprint)
                #expect(b.keys.agreement.publicKey.rawRepresentation == a.keys.agreement.publicKey.rawRepresentation)
                // An agent enrolled at one manager opens a session at the other over HTTPS,
                // which checks the pinned certificate.
                try await withAgent(try await a.enrolledAgent(url: b.httpsURL)) { agent in
                    let reply = try await agent.checkIn()
                    #expect(reply.commands.isEmpty)
                }
                // A rotation staged at a is announced by b after b's next step.
                let staged = try await a.rotation.stage(keyType: .ecdsaP256, days: 30, names: [], plan: .init(switchAt: 0.5))
                #expect(b.agent.announcedCertificate == nil)
                try await b.rotation.tick()
                #expect(b.agent.announcedCertificate == a.agent.announcedCertificate)
                #expect(b.agent.announcedCertificate != nil)
                // Switched at a: b serves the new identity after its next step, without a restart.
                try a.rotation.switchNow()
                try await a.rotation.exchange()
                try await b.rotation.tick()
                #expect(b.identity.current.fingerprintHex == staged.fingerprintHex)
                #expect(a.identity.current.fingerprintHex == staged.fingerprintHex)
                #expect(b.agent.announcedCertificate == nil)
            }
        }
    }

    @Test func aPeerAddedAtOneManagerIsTrustedByTheOther() async throws {
        try await TestManager.with { a in
            try await TestManager.with(sharing: a) { b in
                let peer = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "site-b")
                let fingerprint = try ServerIdentity.parse(certificatePEM: Array(peer.certificatePEM.utf8), privateKeyPEM: Array(peer.privateKeyPEM.utf8)).fingerprintHex
                try await ManagerOperations(store: a.store, agent: nil).addPeer(
                    PeerRecord(name: "site-b", url: "https://127.0.0.1:1", certificateFingerprint: fingerprint, certificatePEM: peer.certificatePEM), by: .init(name: "test", source: "local"))
                _ = try await b.links.checkAll()
                #expect(try String(contentsOfFile: b.directory + "/data/peers/site-b.pem", encoding: .utf8) == peer.certificatePEM)
                try await ManagerOperations(store: a.store, agent: nil).removePeer(name: "site-b", by: .init(name: "test", source: "local"))
                _ = try await b.links.checkAll()
                #expect(!FileManager.default.fileExists(atPath: b.directory + "/data/peers/site-b.pem"))
            }
        }
    }

    @Test func aManagerGivenAnotherSecretsKeyRefusesToStartAndSaysWhy() async throws {
        try await TestManager.with { a in
            let config = try ManagerConfiguration.load(yaml: "data_dir: data\nsecrets: {key_env: PORTICO_TEST_SECRETS_KEY}\n", file: a.directory + "/other/portico.yaml")
            let vault = SiteVault(store: a.store, key: try SecretsKey.load(config.secrets, dataDirectory: config.dataDirectory,
                                                                        environment: ["PORTICO_TEST_SECRETS_KEY": Data(repeating: 7, count: 32).base64EncodedString()]))
            do {
                _ = try await ManagerKeys.load(from: vault, legacyDirectory: nil)
                Issue.record("the site's keys opened with another secrets key")
            } catch let error as ManagerError {
                #expect(error.description.contains("was sealed with the secrets key"), "\(error)")
                #expect(error.description.contains("give it the site's key"), "\(error)")
            }
            #expect(throws: ManagerError.self) { try SecretsKey.load(config.secrets, dataDirectory: config.dataDirectory, environment: [:]) }
            #expect(throws: ManagerError.self) {
                try SecretsKey.load(config.secrets, dataDirectory: config.dataDirectory, environment: ["PORTICO_TEST_SECRETS_KEY": "too short"])
            }
            let named = SecretsSettings(keyFile: a.directory + "/missing.key")
            #expect(throws: ManagerError.self) { try SecretsKey.load(named, dataDirectory: config.dataDirectory) }
            // The config names one source of the key, as the name of a file or of a variable.
            do {
                _ = try ManagerConfiguration.load(yaml: "data_dir: data\nsecrets:\n  key_file: k\n  key_env: 'not a name'\n", file: a.directory + "/bad.yaml")
                Issue.record("a secrets section with both keys was accepted")
            } catch let error as ConfigurationError {
                #expect(error.diagnostics.map { $0.location?.line } == [3, 4], "\(error)")
                #expect(error.description.contains("secrets names both key_file and key_env"), "\(error)")
                #expect(error.description.contains("must be the name of an environment variable"), "\(error)")
            }
        }
    }
}
