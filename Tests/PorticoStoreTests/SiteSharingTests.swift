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

            func advance(_ counter: UInt64, session: [UInt8] = id) -> SessionAdvance { SessionAdvance(deviceID: "dev-1", sessionID: session, counter: counter) }
            let checkIn = CheckIn(deviceID: "dev-1", atMilliseconds: now, policySerial: 0, status: "ok", pinned: [])
            #expect(try await a.checkIn(checkIn, advancing: advance(1)) != nil)
            #expect(try await b.checkIn(checkIn, advancing: advance(2)) != nil)
            // Counter 2 again, at either manager: refused, and the check-in it carried changes nothing.
            for store in [a, b] {
                await #expect(throws: SessionRefusal.replayed) {
                    _ = try await store.checkIn(CheckIn(deviceID: "dev-1", atMilliseconds: now + 5, policySerial: 9, status: "replayed", pinned: []), advancing: advance(2))
                }
            }
            #expect(try await a.device(id: "dev-1")?.status == "ok")
            await #expect(throws: SessionRefusal.replayed) { try await b.advanceSession(advance(1)) }
            try await b.advanceSession(advance(3))
            // Events take their counter with them.
            #expect(try await a.ingestEvents([EventRecord(deviceID: "dev-1", eventID: "e1", kind: "k", occurredMilliseconds: now, body: "{}")], advancing: advance(4)) == ["e1"])
            await #expect(throws: SessionRefusal.replayed) {
                _ = try await b.ingestEvents([EventRecord(deviceID: "dev-1", eventID: "e2", kind: "k", occurredMilliseconds: now, body: "{}")], advancing: advance(4))
            }
            #expect(try await a.events(device: "dev-1").map(\.eventID) == ["e1"])
            // A session that is not the device's current one has ended.
            await #expect(throws: SessionRefusal.ended) { try await a.advanceSession(advance(5, session: Array(32..<48))) }
            // A newer session ends the one before, at every manager.
            let newer: [UInt8] = Array(64..<80)
            #expect(try await b.openAgentSession(AgentSessionRecord(id: newer, deviceID: "dev-1", sealedKeys: [1], expiresMilliseconds: now + 60_000), nonce: "n-2", now: now))
            await #expect(throws: SessionRefusal.ended) { try await a.advanceSession(advance(5)) }
            try await a.advanceSession(advance(1, session: newer))
            // A revoked device's session ends on every manager.
            try await a.write { transaction in
                try await transaction.setDeviceState(id: "dev-1", to: .revoked)
                try await transaction.endAgentSessions(ofDevice: "dev-1")
            }
            await #expect(throws: SessionRefusal.ended) { try await b.advanceSession(advance(2, session: newer)) }
            #expect(try await b.agentSession(id: newer)?.expiresMilliseconds == 0)
            // Ended sessions are removed with their nonces once the window has passed.
            #expect(try await a.removeEndedAgentSessions(before: now) == 2)
            #expect(try await b.agentSession(id: newer) == nil)
            #expect(try await a.openAgentSession(AgentSessionRecord(id: Array(48..<64), deviceID: "dev-1", sealedKeys: [1], expiresMilliseconds: now + 60_000), nonce: "n-2", now: now))
            await a.close()
            await b.close()
        }
    }
}
