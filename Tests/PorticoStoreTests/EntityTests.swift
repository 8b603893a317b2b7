import Crypto
import Foundation
import SQLKit
import Testing

@testable import PorticoStore

private func sha256(_ text: String) -> [UInt8] { Array(SHA256.hash(data: Array(text.utf8))) }

@Suite struct EnrollmentTokenTests {
    @Test(arguments: Engines.all)
    func aOneTimeTokenEnrollsOnceEvenWhenAgentsRace(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.createEnrollmentToken(EnrollmentTokenRecord(id: "t1", secretHash: sha256("s3cret"), usesAllowed: 1, expiresMilliseconds: nil, createdBy: "admin"))
            let outcomes = await withTaskGroup(of: Bool.self) { group in
                for _ in 0..<8 {
                    group.addTask { (try? await store.consumeEnrollmentToken(id: "t1", secret: Array("s3cret".utf8))) != nil }
                }
                return await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            #expect(outcomes.filter { $0 }.count == 1)
            await #expect(throws: EnrollmentRefusal.usedUp) { try await store.consumeEnrollmentToken(id: "t1", secret: Array("s3cret".utf8)) }
        }
    }

    @Test(arguments: Engines.all)
    func wrongExpiredRevokedAndUnknownTokensAreRefusedEachForItsReason(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.createEnrollmentToken(EnrollmentTokenRecord(id: "multi", secretHash: sha256("a"), usesAllowed: nil, expiresMilliseconds: 10_000, createdBy: "admin"))
            #expect(try await store.consumeEnrollmentToken(id: "multi", secret: Array("a".utf8), now: 1_000).uses == 1)
            #expect(try await store.consumeEnrollmentToken(id: "multi", secret: Array("a".utf8), now: 2_000).uses == 2)
            await #expect(throws: EnrollmentRefusal.wrongSecret) { try await store.consumeEnrollmentToken(id: "multi", secret: Array("b".utf8), now: 1_000) }
            await #expect(throws: EnrollmentRefusal.expired) { try await store.consumeEnrollmentToken(id: "multi", secret: Array("a".utf8), now: 10_000) }
            try await store.revokeEnrollmentToken(id: "multi")
            await #expect(throws: EnrollmentRefusal.revoked) { try await store.consumeEnrollmentToken(id: "multi", secret: Array("a".utf8), now: 1_000) }
            await #expect(throws: EnrollmentRefusal.unknown) { try await store.consumeEnrollmentToken(id: "nope", secret: Array("a".utf8)) }
            let listed = try await store.enrollmentTokens()
            #expect(listed.map(\.id) == ["multi"] && listed[0].revoked && listed[0].uses == 2)
        }
    }
}

@Suite struct PolicyTests {
    @Test(arguments: Engines.all)
    func everyPolicyChangeMovesTheSiteSerialAndReachesDevicesThroughGroups(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            #expect(try await store.policySerial() == 0)
            let policy = try await store.createPolicy(name: "Baseline", document: #"{"firewall":true}"#, by: "admin")
            #expect(try await store.policySerial() == 1)
            let v2 = try await store.addPolicyVersion(policyID: policy.id, document: #"{"firewall":false}"#, by: "admin")
            #expect(v2 == 2)
            try await store.publishPolicy(policyID: policy.id, version: 2)
            let group = try await store.createGroup(name: "Laptops")
            try await store.assignPolicy(policyID: policy.id, toGroup: group.id)
            #expect(try await store.policySerial() == 4)

            try await store.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "a", os: "linux"))
            #expect(try await store.publishedPolicies(forDevice: "dev-1").isEmpty)
            try await store.addDevice("dev-1", toGroup: group.id)
            let applied = try await store.publishedPolicies(forDevice: "dev-1")
            #expect(applied.map(\.version) == [2] && applied[0].document == #"{"firewall":false}"#)
            #expect(try await store.policyVersions(policyID: policy.id).map(\.version) == [1, 2])
            #expect(try await store.policy(id: policy.id)?.publishedVersion == 2)

            await #expect(throws: StoreError.self) { _ = try await store.createPolicy(name: "Baseline", document: "{}", by: "admin") }
            await #expect(throws: StoreError.self) { try await store.publishPolicy(policyID: policy.id, version: 9) }
            let entities = Set(try await store.changes(after: 0).map(\.entity))
            #expect(entities.isSuperset(of: ["policy", "group", "policy_assignment", "group_member", "device"]))
        }
    }
}

@Suite struct CommandTests {
    @Test(arguments: Engines.all)
    func commandsAreDeliveredUntilAcknowledgedAndExpire(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "a", os: "linux"))
            try await store.enqueueCommand(CommandRecord(id: "c-lock", deviceID: "dev-1", kind: .lock, issuedBy: "op", issuedMilliseconds: 1))
            try await store.enqueueCommand(CommandRecord(id: "c-help", deviceID: "dev-1", kind: .remoteHelp, arguments: "challenge=123", issuedBy: "op", issuedMilliseconds: 2, expiresMilliseconds: 500))
            await #expect(throws: StoreError.self) { try await store.enqueueCommand(CommandRecord(deviceID: "ghost", kind: .wipe, issuedBy: "op")) }

            let first = try await store.takeCommands(forDevice: "dev-1", now: 100)
            #expect(first.map(\.id) == ["c-lock", "c-help"] && first.allSatisfy { $0.state == .delivered })
            // Not acknowledged yet: given again at the next check-in.
            #expect(try await store.takeCommands(forDevice: "dev-1", now: 200).count == 2)
            try await store.acknowledgeCommand(id: "c-lock", deviceID: "dev-1", succeeded: true, result: "locked", now: 300)
            // The same result again (an agent that did not hear the answer) changes nothing.
            #expect(try await store.acknowledgeCommand(id: "c-lock", deviceID: "dev-1", succeeded: false, result: "again") == false)
            #expect(try await store.command(id: "c-lock")?.result == "locked")
            // A command the device was never given is not found.
            await #expect(throws: StoreError.self) { try await store.acknowledgeCommand(id: "c-lock", deviceID: "dev-2", succeeded: true, result: "x") }
            await #expect(throws: StoreError.self) { try await store.acknowledgeCommand(id: "c-none", deviceID: "dev-1", succeeded: true, result: "x") }
            #expect(try await store.expireCommands(now: 600) == 1)
            #expect(try await store.takeCommands(forDevice: "dev-1", now: 700).isEmpty)
            #expect(try await store.command(id: "c-lock")?.state == .acknowledged)
            #expect(try await store.command(id: "c-help")?.state == .expired)
        }
    }
}

@Suite struct OperatorTests {
    @Test(arguments: Engines.all)
    func repeatedFailuresLockAnAccountUntilAnAdminUnlocksIt(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.createOperator(OperatorRecord(name: "alice", passwordHash: "$2b$12$hash", role: .operator))
            for attempt in 1...4 {
                let account = try #require(try await store.recordLoginFailure(name: "alice", now: 1_000, lockAfter: 5, lockFor: 60_000))
                #expect(account.failedLogins == attempt && !account.isLocked(at: 1_000))
            }
            let locked = try #require(try await store.recordLoginFailure(name: "alice", now: 1_000, lockAfter: 5, lockFor: 60_000))
            #expect(locked.isLocked(at: 1_000) && !locked.isLocked(at: 61_000))
            try await store.unlockOperator(name: "alice")
            let unlocked = try #require(try await store.operatorAccount(named: "alice"))
            #expect(!unlocked.isLocked(at: 1_000) && unlocked.failedLogins == 0 && unlocked.role == .operator)
            #expect(try await store.recordLoginFailure(name: "nobody", now: 0, lockAfter: 1, lockFor: 1) == nil)
        }
    }

    @Test(arguments: Engines.all)
    func apiTokensAndSessionsAreFoundByHashOnly(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.createAPIToken(APITokenRecord(id: "tok1", secretHash: sha256("x"), name: "ci", role: .auditor, scopes: ["events:read"], expiresMilliseconds: 5_000, createdBy: "admin"))
            let token = try #require(try await store.apiToken(id: "tok1"))
            #expect(token.isUsable(at: 1_000) && !token.isUsable(at: 5_000) && token.scopes == ["events:read"])
            try await store.revokeAPIToken(id: "tok1")
            #expect(try await store.apiToken(id: "tok1")?.isUsable(at: 1_000) == false)

            let session = ConsoleSessionRecord(idHash: sha256("cookie"), operatorName: "alice", csrfToken: "csrf", createdMilliseconds: 0, expiresMilliseconds: 1_000, source: "127.0.0.1")
            try await store.createConsoleSession(session)
            #expect(try await store.consoleSession(idHash: sha256("cookie"), now: 500) == session)
            #expect(try await store.consoleSession(idHash: sha256("cookie"), now: 1_000) == nil)
            try await store.deleteConsoleSession(idHash: sha256("cookie"))
            #expect(try await store.consoleSession(idHash: sha256("cookie"), now: 500) == nil)
        }
    }
}

@Suite struct AuditTests {
    @Test(arguments: Engines.all)
    func anAuditEntryCommitsOrRollsBackWithItsChange(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.write { transaction in
                try await transaction.database.raw("INSERT INTO counters (name, value) VALUES ('x', 1)").run()
                try await transaction.audit(AuditEntry(atMilliseconds: 1, actor: "alice", action: "counter.create", target: "x", source: "10.0.0.1", result: "ok"))
            }
            await #expect(throws: (any Error).self) {
                try await store.write { transaction in
                    try await transaction.audit(AuditEntry(atMilliseconds: 2, actor: "bob", action: "counter.create", target: "x", source: "10.0.0.2", result: "ok"))
                    try await transaction.database.raw("INSERT INTO counters (name, value) VALUES ('x', 2)").run()  // duplicate key
                }
            }
            try await store.audit(AuditEntry(atMilliseconds: 3, actor: "bob", action: "login", target: "bob", source: "10.0.0.2", result: "failed"))
            let entries = try await store.auditEntries()
            #expect(entries.map(\.actor) == ["bob", "alice"])
            #expect(entries.map(\.action) == ["login", "counter.create"])
            #expect(try await store.auditEntries(actor: "alice").count == 1)
            #expect(try await store.auditEntries(beforeID: entries[0].id).map(\.actor) == ["alice"])
        }
    }
}

@Suite struct SiteTests {
    @Test(arguments: Engines.all)
    func sitesPeersAndDeviceStates(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect, site: "hq") { store in
            try await store.registerSite(name: "Headquarters")
            try await store.registerSite(name: "HQ")
            #expect(try await store.sites().map(\.name) == ["HQ"])

            let fingerprint = String(repeating: "ab", count: 32)
            try await store.addPeer(PeerRecord(name: "branch", url: "https://branch.example:8444", certificateFingerprint: fingerprint))
            await #expect(throws: StoreError.self) { try await store.addPeer(PeerRecord(name: "branch", url: "https://x:8444", certificateFingerprint: fingerprint)) }
            await #expect(throws: StoreError.invalid("peer.url", "must be an https:// URL")) { try await store.addPeer(PeerRecord(name: "p2", url: "http://x", certificateFingerprint: fingerprint)) }
            #expect(try await store.peers().map(\.name) == ["branch"])
            try await store.removePeer(name: "branch")
            #expect(try await store.peers().isEmpty)

            try await store.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "a", os: "linux"))
            try await store.setDeviceState(id: "dev-1", to: .locked)
            #expect(try await store.device(id: "dev-1")?.state == .locked)
            await #expect(throws: StoreError.notFound("device ghost")) { try await store.setDeviceState(id: "ghost", to: .wiped) }
        }
    }
}

@Suite struct CheckInTests {
    @Test(arguments: Engines.all)
    func aCheckInRecordsReadsTheSerialAndTakesCommandsInOneWrite(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            #expect(try await store.checkIn(CheckIn(deviceID: "ghost", atMilliseconds: 1, policySerial: 0, status: "ok")) == nil)
            try await store.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "a", os: "linux"))
            _ = try await store.createPolicy(name: "P", document: "{}", by: "admin")
            try await store.enqueueCommand(CommandRecord(id: "c1", deviceID: "dev-1", kind: .lock, issuedBy: "op", issuedMilliseconds: 1))
            let first = try #require(try await store.checkIn(CheckIn(deviceID: "dev-1", atMilliseconds: 10, policySerial: 0, status: "ok")))
            #expect(first.policySerial == 1)
            #expect(first.commands.map(\.id) == ["c1"] && first.commands[0].state == .delivered)
            #expect(try await store.command(id: "c1")?.state == .delivered)
            #expect(try await store.device(id: "dev-1")?.lastCheckInMilliseconds == 10)
            // Delivered but not acknowledged: given again.
            #expect(try await store.checkIn(CheckIn(deviceID: "dev-1", atMilliseconds: 20, policySerial: 1, status: "ok"))?.commands.count == 1)
        }
    }

    /// The usual check-in finds no command waiting; an expired one is not given either.
    @Test(arguments: Engines.all)
    func aCheckInWithNothingWaitingGetsNoCommands(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.addDevice(DeviceRecord(id: "dev-2", signingKey: [1], agreementKey: [2], hostname: "b", os: "linux"))
            let quiet = try #require(try await store.checkIn(CheckIn(deviceID: "dev-2", atMilliseconds: 10, policySerial: 0, status: "ok")))
            #expect(quiet.policySerial == 0 && quiet.commands.isEmpty)
            try await store.enqueueCommand(CommandRecord(id: "old", deviceID: "dev-2", kind: .lock, issuedBy: "op", issuedMilliseconds: 1, expiresMilliseconds: 15))
            #expect(try await store.checkIn(CheckIn(deviceID: "dev-2", atMilliseconds: 20, policySerial: 0, status: "ok"))?.commands.isEmpty == true)
            #expect(try await store.command(id: "old")?.state == .pending)
            try await store.enqueueCommand(CommandRecord(id: "new", deviceID: "dev-2", kind: .unlock, issuedBy: "op", issuedMilliseconds: 21, expiresMilliseconds: 1_000))
            #expect(try await store.checkIn(CheckIn(deviceID: "dev-2", atMilliseconds: 30, policySerial: 0, status: "ok"))?.commands.map(\.id) == ["new"])
        }
    }
}
