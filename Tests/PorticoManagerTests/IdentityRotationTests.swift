import Foundation
import PorticoAgent
@testable import PorticoManager
import PorticoGateway
import PorticoProtocol
import PorticoStore
import Testing

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
