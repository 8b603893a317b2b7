import Foundation
import Testing

@testable import PorticoStore

/// What managers of one site share through the database: sealed secrets with versions, and
/// agent sessions whose counters and handshake nonces every manager respects.
@Suite struct SiteSharingTests {
    @Test(arguments: Engines.all)
    func aSecretIsCreatedOnceAndItsVersionMovesWithEachReplacement(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            #expect(try await store.sealedSecret("identity") == nil)
            let first = SealedSecret(sealed: [0, 1, 2, 255], keyID: "k1")
            #expect(try await store.write { try await $0.insertSecretIfAbsent("identity", first) })
            // A second manager starting at the same time keeps the first one's.
            #expect(try await store.write { try await $0.insertSecretIfAbsent("identity", SealedSecret(sealed: [9], keyID: "k1")) } == false)
            #expect(try await store.sealedSecret("identity") == SealedSecret(sealed: [0, 1, 2, 255], keyID: "k1", version: 1))
            let version = try await store.write { try await $0.replaceSecret("identity", SealedSecret(sealed: [7, 7], keyID: "k1")) }
            #expect(version == 2)
            #expect(try await store.sealedSecret("identity")?.sealed == [7, 7])
            #expect(try await store.secretVersions() == ["identity": 2])
        }
    }

    @Test(arguments: Engines.all)
    func aSessionsCountersAreTakenOnceWhicheverManagerAsks(_ dialect: Dialect) async throws {
        try await Engines.withDatabase(dialect) { configuration in
            // Two managers: two stores on one database.
            let a = try await Store.open(configuration, siteID: "s", logger: Engines.logger)
            let b = try await Store.open(configuration, siteID: "s", logger: Engines.logger)
            try await a.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "h", os: "linux"))
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let id: [UInt8] = Array(0..<16)
            let session = AgentSessionRecord(id: id, deviceID: "dev-1", sealedKeys: [5, 6, 7], expiresMilliseconds: now + 60_000)
            #expect(try await a.openAgentSession(session, nonce: "n-1", now: now))
            // The same handshake at the other manager: its nonce was seen.
            #expect(try await b.openAgentSession(AgentSessionRecord(id: Array(16..<32), deviceID: "dev-1", sealedKeys: [1], expiresMilliseconds: now + 60_000), nonce: "n-1", now: now) == false)
            #expect(try await b.agentSession(id: id) == session)

            let checkIn = CheckIn(deviceID: "dev-1", atMilliseconds: now, policySerial: 0, status: "ok", pinned: [])
            #expect(try await a.checkIn(checkIn, advancing: SessionAdvance(sessionID: id, counter: 1, nowMilliseconds: now)) != nil)
            #expect(try await b.checkIn(checkIn, advancing: SessionAdvance(sessionID: id, counter: 2, nowMilliseconds: now)) != nil)
            // Counter 2 again, at either manager: refused, and the check-in it carried changes nothing.
            for store in [a, b] {
                await #expect(throws: SessionRefusal.replayed) {
                    _ = try await store.checkIn(CheckIn(deviceID: "dev-1", atMilliseconds: now + 5, policySerial: 9, status: "replayed", pinned: []),
                                                advancing: SessionAdvance(sessionID: id, counter: 2, nowMilliseconds: now))
                }
            }
            #expect(try await a.device(id: "dev-1")?.status == "ok")
            #expect(try await a.agentSession(id: id)?.lastCounter == 2)
            await #expect(throws: SessionRefusal.replayed) { try await b.advanceSession(SessionAdvance(sessionID: id, counter: 1, nowMilliseconds: now)) }
            try await b.advanceSession(SessionAdvance(sessionID: id, counter: 3, nowMilliseconds: now))
            // An unknown or expired session has ended.
            await #expect(throws: SessionRefusal.ended) { try await a.advanceSession(SessionAdvance(sessionID: Array(32..<48), counter: 1, nowMilliseconds: now)) }
            await #expect(throws: SessionRefusal.ended) { try await a.advanceSession(SessionAdvance(sessionID: id, counter: 4, nowMilliseconds: now + 60_000)) }
            // A revoked device's sessions end on every manager.
            try await a.write { transaction in
                try await transaction.setDeviceState(id: "dev-1", to: .revoked)
                try await transaction.endAgentSessions(ofDevice: "dev-1")
            }
            await #expect(throws: SessionRefusal.ended) { try await b.advanceSession(SessionAdvance(sessionID: id, counter: 5, nowMilliseconds: now)) }
            // Ended sessions are removed with their nonces once the window has passed.
            #expect(try await a.removeEndedAgentSessions(before: now) == 1)
            #expect(try await b.agentSession(id: id) == nil)
            #expect(try await a.openAgentSession(AgentSessionRecord(id: Array(48..<64), deviceID: "dev-1", sealedKeys: [1], expiresMilliseconds: now + 60_000), nonce: "n-1", now: now))
            await a.close()
            await b.close()
        }
    }
}
