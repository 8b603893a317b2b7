import Crypto
import Foundation
import PorticoAgent
@testable import PorticoManager
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore
import Testing
import X509

/// A full rotation with agents: staged, announced, pinned, switched; nobody stranded.
@Suite(.timeLimit(.minutes(3))) struct IdentityRotationTests {
    @Test func everyEnrolledAgentKeepsWorkingBeforeDuringAndAfterTheSwitch() async throws {
        try await TestManager.with { manager in
            let group = try await manager.store.createGroup(name: "Fleet")
            let policy = try await manager.store.createPolicy(name: "Baseline", document: #"{"v":1}"#, by: "admin")
            try await manager.store.publishPolicy(policyID: policy.id, version: 1)
            try await manager.store.assignPolicy(policyID: policy.id, toGroup: group.id)
            var agents: [AgentClient] = []
            for index in 0..<4 {
                // Half over HTTPS (TLS pinned to the certificate), half over plain HTTP.
                agents.append(try await manager.enrolledAgent(url: index % 2 == 0 ? manager.httpsURL : manager.plainURL, group: group.id, hostname: "a\(index)"))
            }
            let admin = try await manager.apiToken(role: .admin)
            let before = manager.identity.current.fingerprint
            do {
                for agent in agents { _ = try await agent.checkIn() }

                try await APICaller.with(manager, trustAny: true) { api in
                    let staged = try await api.call(.POST, "/identity/rotate", token: admin, json: #"{"key":"ecdsa-p256","days":90,"switch_at":1}"#)
                    #expect(staged.status == 201, "\(staged.text)")
                    let rotation = try #require(staged.json["rotation"] as? [String: Any])
                    #expect(rotation["active"] as? Int == 4 && rotation["acknowledged"] as? Int == 0)
                    #expect(try await api.call(.POST, "/identity/rotate", token: admin, json: "{}").status == 409)

                    // During: three agents learn of it at one check-in and report it pinned at
                    // the next; not enough to switch.
                    for agent in agents.prefix(3) {
                        _ = try await agent.checkIn()
                        _ = try await agent.checkIn()
                    }
                    let partway = try #require(try await manager.rotation.tick())
                    #expect(partway.acknowledged == 3 && partway.active == 4 && !partway.isReady)
                    #expect(manager.identity.current.fingerprint == before)
                    let shown = try await api.call(.GET, "/identity", token: admin)
                    #expect((shown.json["rotation"] as? [String: Any])?["share"] as? Double == 0.75)

                    // The last one pins it; the next check switches the listeners.
                    _ = try await agents[3].checkIn()
                    #expect(try await manager.rotation.tick()?.isReady == false)
                    _ = try await agents[3].checkIn()
                    let ready = try #require(try await manager.rotation.tick())
                    #expect(ready.isReady)
                    let after = manager.identity.current
                    #expect(after.fingerprint != before)
                    #expect(after.fingerprintHex == ready.fingerprintHex)
                    #expect(try await manager.rotation.tick() == nil)
                    let current = try await api.call(.GET, "/identity", token: admin)
                    #expect((current.json["current"] as? [String: Any])?["key"] as? String == "ECDSA P-256")
                    #expect(current.json["staged"] == nil && current.json["rotation"] == nil)
                }

                // After: every agent still checks in, and a policy signed by the new key verifies.
                _ = try await manager.store.addPolicyVersion(policyID: policy.id, document: #"{"v":2}"#, by: "admin")
                try await manager.store.publishPolicy(policyID: policy.id, version: 2)
                for agent in agents {
                    #expect(try await agent.checkIn().policyChanged)
                    #expect(try await agent.fetchPolicy().policies.map(\.document) == [#"{"v":2}"#])
                }
                // Fresh connections too (a restarted agent): TLS now meets the new certificate,
                // which each agent picks out among its pins.
                for (index, agent) in agents.enumerated() {
                    let restarted = AgentClient(state: await agent.state, managerURL: index % 2 == 0 ? manager.httpsURL : manager.plainURL)
                    let reply = try await withAgent(restarted) { try await $0.checkIn() }
                    #expect(!reply.policyChanged)
                }
                #expect(try await manager.store.auditEntries(AuditFilter(action: "identity.rotate", result: "ok")).count == 1)
            } catch {
                for agent in agents { await agent.shutdown() }
                throw error
            }
            for agent in agents { await agent.shutdown() }
        }
    }

    @Test func anOperatorCanForceTheSwitchAndAnEmptyFleetNeverSwitchesByItself() async throws {
        try await TestManager.with { manager in
            let before = manager.identity.current.fingerprint
            let status = try await manager.rotation.stage(keyType: .ecdsaP256, days: 30, names: [], plan: .init(switchAt: 0.5))
            #expect(status.active == 0 && !status.isReady)
            #expect(manager.agent.announcedCertificate != nil)
            #expect(try await manager.rotation.tick()?.isReady == false)
            #expect(manager.identity.current.fingerprint == before)
            let admin = try await manager.apiToken(role: .admin)
            try await APICaller.with(manager, trustAny: true) { api in
                let switched = try await api.call(.POST, "/identity/switch", token: admin)
                #expect(switched.status == 200)
                #expect(manager.identity.current.fingerprintHex == status.fingerprintHex)
                #expect(manager.agent.announcedCertificate == nil)
                #expect(try await api.call(.POST, "/identity/switch", token: admin).status == 409)
                let audit = try await manager.store.auditEntries(AuditFilter(action: "identity.switch", result: "ok"))
                #expect(audit.first?.target == status.fingerprintHex && audit.first?.detail == "forced at 0 of 0 agents")
            }
            // The old pair is kept beside the live one.
            let previous = try ServerIdentity.load(certificatePath: manager.directory + "/ssl/previous/server.crt", privateKeyPath: manager.directory + "/ssl/previous/server.key")
            #expect(previous.fingerprint == before)
        }
    }
}

/// A certificate from a corporate CA through the API: a CSR for the live key, the signed
/// certificate imported with its chain (staged, then switched), and bad imports refused.
@Suite(.timeLimit(.minutes(2))) struct IdentityImportAPITests {
    @Test func aCSRSignedByACAImportsWithoutItsKeyAndBadImportsChangeNothing() async throws {
        try await TestManager.with { manager in
            let admin = try await manager.apiToken(role: .admin)
            try await APICaller.with(manager, trustAny: true) { api in
                let requested = try await api.call(.POST, "/identity/csr", token: admin, json: #"{"names":["portico.corp.example","10.1.2.3"]}"#)
                let pem = try #require(requested.json["csr"] as? String)
                let csr = try CertificateSigningRequest(pemEncoded: pem)
                #expect(csr.publicKey == manager.identity.current.leaf.publicKey)
                #expect(pem.hasPrefix("-----BEGIN CERTIFICATE REQUEST-----"))

                // A corporate CA signs it.
                let caKey = P256.Signing.PrivateKey()
                let caName = try DistinguishedName { CommonName("Corp CA") }
                let now = Date()
                let ca = try Certificate(version: .v3, serialNumber: .init(), publicKey: .init(caKey.publicKey), notValidBefore: now - 60, notValidAfter: now + 86_400 * 365,
                                         issuer: caName, subject: caName, signatureAlgorithm: .ecdsaWithSHA256,
                                         extensions: try .init { Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil)) }, issuerPrivateKey: .init(caKey))
                let leaf = try Certificate(version: .v3, serialNumber: .init(), publicKey: csr.publicKey, notValidBefore: now - 60, notValidAfter: now + 86_400 * 90,
                                           issuer: caName, subject: csr.subject, signatureAlgorithm: .ecdsaWithSHA256,
                                           extensions: try .init { SubjectAlternativeNames([.dnsName("portico.corp.example")]) }, issuerPrivateKey: .init(caKey))
                let chain = try leaf.serializeAsPEM().pemString + "\n" + (try ca.serializeAsPEM().pemString) + "\n"

                // Refused, each for its reason, and nothing staged.
                let stranger = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "stranger")
                func body(_ fields: [String: String]) -> String { String(decoding: try! JSONSerialization.data(withJSONObject: fields), as: UTF8.self) }
                let mismatched = try await api.call(.POST, "/identity/import", token: admin, json: body(["certificate": chain, "key": stranger.privateKeyPEM]))
                #expect(mismatched.status == 422, "\(mismatched.text)")
                let unsigned = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "unsigned")
                let noKey = try await api.call(.POST, "/identity/import", token: admin, json: body(["certificate": unsigned.certificatePEM]))
                #expect(noKey.status == 422 && (noKey.json["detail"] as? String)?.contains("neither the live nor the staged key") == true, "\(noKey.text)")
                let expired = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "old", days: 1, now: Date(timeIntervalSinceNow: -5 * 86_400))
                #expect(try await api.call(.POST, "/identity/import", token: admin, json: body(["certificate": expired.certificatePEM, "key": expired.privateKeyPEM])).status == 422)
                #expect(try await api.call(.POST, "/identity/import", token: admin, json: body(["pkcs12": "bm90IGEgYnVuZGxl", "password": "x"])).status == 422)
                #expect(try await api.call(.POST, "/identity/import", token: admin, json: body(["certificate": chain, "pkcs12": "AA=="])).status == 422)
                let rootless = try await api.call(.POST, "/identity/import", token: admin, json: body(["certificate": try leaf.serializeAsPEM().pemString]))
                #expect(rootless.status == 422 && (rootless.json["detail"] as? String)?.contains("root CA certificate") == true, "\(rootless.text)")
                #expect(try await api.call(.GET, "/identity", token: admin).json["staged"] == nil)

                // The CA's certificate, without a key: it goes with the live key, staged.
                let imported = try await api.call(.POST, "/identity/import", token: admin, json: body(["certificate": chain]))
                #expect(imported.status == 200, "\(imported.text)")
                let staged = try #require(imported.json["staged"] as? [String: Any])
                #expect(staged["issuer"] as? String == "CN=Corp CA" && staged["self_signed"] as? Bool == false)
                #expect(imported.json["rotation"] != nil)
                #expect(manager.agent.announcedCertificate != nil)
                // An agent pins the CA-signed certificate before the switch ...
                let agent = try await manager.enrolledAgent()
                _ = try await withAgent(agent) { try await $0.checkIn() }
                #expect(try await api.call(.POST, "/identity/switch", token: admin).status == 200)
                #expect(manager.identity.current.leaf.issuer == caName)
                #expect(manager.identity.current.chain.count == 2)
                // ... and, restarted, reaches the manager serving it over TLS.
                let restarted = AgentClient(state: await agent.state, managerURL: manager.httpsURL)
                #expect(try await withAgent(restarted) { try await $0.checkIn() }.nextCertificate == nil)
                let audit = try await manager.store.auditEntries(AuditFilter(action: "identity.import"))
                #expect(audit.filter { $0.result == "ok" }.count == 1 && audit.filter { $0.result == "failed" }.count == 6)
            }
        }
    }
}
