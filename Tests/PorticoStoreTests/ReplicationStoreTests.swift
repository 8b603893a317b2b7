import Foundation
import SQLKit
import Testing

@testable import PorticoStore

/// The change stream between stores of different sites, without the network: pages read
/// from one site's log and applied at another, as the replication link does.
@Suite struct ReplicationStoreTests {
    /// Three sites, each on its own database of the engine.
    static func withSites(_ dialect: Dialect, _ body: (Store, Store, Store) async throws -> Void) async throws {
        try await Engines.withStore(dialect, site: "site-a") { a in
            try await Engines.withStore(dialect, site: "site-b") { b in
                try await Engines.withStore(dialect, site: "site-c") { c in try await body(a, b, c) }
            }
        }
    }

    /// Pulls everything `source` has for `target` (pages of `limit`), as the link does.
    @discardableResult
    static func sync(from source: Store, to target: Store, limit: Int = 1000) async throws -> ApplyOutcome {
        var total = ApplyOutcome()
        while true {
            let position = try await target.replicationCursors()[source.siteID]?.position ?? 0
            let batch = try await source.changeBatch(after: position, excludingOrigin: target.siteID, history: true, limit: limit)
            let outcome = try await target.apply(batch)
            total.applied += outcome.applied
            total.skipped += outcome.skipped
            total.renamed += outcome.renamed
            if batch.next >= batch.head { return total }
        }
    }

    static func current(_ store: Store, policyNamed name: String) async throws -> String? {
        guard let policy = try await store.policies().first(where: { $0.name == name }) else { return nil }
        return try await store.policyVersions(policyID: policy.id).first { $0.version == policy.currentVersion }?.document
    }

    @Test(arguments: Engines.all)
    func everythingReachesAThirdSiteThroughASecondOnceAndTheDigestsAgree(_ dialect: Dialect) async throws {
        try await Self.withSites(dialect) { a, b, c in
            let policy = try await a.createPolicy(name: "Baseline", document: #"{"firewall":true}"#, by: "alice")
            try await a.publishPolicy(policyID: policy.id, version: 1)
            let group = try await a.createGroup(name: "Laptops")
            try await a.assignPolicy(policyID: policy.id, toGroup: group.id)
            try await a.addDevice(AdministrationTests.device("dev-1", hostname: "laptop-1"))
            try await a.write { try await $0.addExistingDevice("dev-1", toGroup: group.id) }
            try await a.setDeviceState(id: "dev-1", to: .locked)
            try await a.enqueueCommand(CommandRecord(deviceID: "dev-1", kind: .lock, issuedBy: "alice"))
            try await a.ingestEvents([EventRecord(deviceID: "dev-1", eventID: "e1", kind: "scan", occurredMilliseconds: 10, body: "{}"),
                                      EventRecord(deviceID: "dev-1", eventID: "e2", kind: "malware", occurredMilliseconds: 20, body: "{}")])
            try await a.audit(AuditEntry(actor: "operator:alice", action: "policy.create", target: policy.id, source: "127.0.0.1", result: "ok"))
            let serialBefore = try await c.policySerial()

            let first = try await Self.sync(from: a, to: b)
            #expect(first.applied > 0 && first.renamed == 0)
            try await Self.sync(from: b, to: c)

            #expect(try await Self.current(c, policyNamed: "Baseline") == #"{"firewall":true}"#)
            #expect(try await c.policy(id: policy.id)?.publishedVersion == 1)
            #expect(try await c.policyAssignments(policyID: policy.id) == [group.id])
            #expect(try await c.device(id: "dev-1")?.state == .locked)
            #expect(try await c.publishedPolicies(forDevice: "dev-1").map(\.policyID) == [policy.id])
            #expect(try await c.commands(deviceID: "dev-1").map(\.kind) == [.lock])
            #expect(try await c.eventCount() == 2)
            #expect(try await c.auditEntries(action: "policy.create").map(\.actor) == ["operator:alice"])
            #expect(try await c.policySerial() > serialBefore, "agents at the third site must see that policies changed")

            // Again, and the direct A -> C path too: nothing is applied twice, nothing duplicated.
            #expect(try await Self.sync(from: a, to: b).applied == 0)
            let direct = try await Self.sync(from: a, to: c)
            #expect(direct.applied == 0 && direct.skipped > 0)
            // B never gets its own relayed changes back, and C's relay back to A is empty of news.
            #expect(try await Self.sync(from: c, to: a).applied == 0)
            #expect(try await c.eventCount() == 2)
            #expect(try await c.auditEntries(action: "policy.create").count == 1)

            let digest = try await a.replicationDigest()
            #expect(digest["policy"]?.count == 1 && digest["device"]?.count == 1)
            #expect(try await b.replicationDigest() == digest)
            #expect(try await c.replicationDigest() == digest)
        }
    }

    @Test(arguments: Engines.all)
    func concurrentEditsOfOnePolicyConvergeOnTheLaterEverywhere(_ dialect: Dialect) async throws {
        try await Self.withSites(dialect) { a, b, _ in
            let policy = try await a.createPolicy(name: "Baseline", document: "v1", by: "alice")
            try await Self.sync(from: a, to: b)
            // Both sites edit before hearing of the other's edit.
            _ = try await a.addPolicyVersion(policyID: policy.id, document: "from-a", by: "alice")
            _ = try await b.addPolicyVersion(policyID: policy.id, document: "from-b", by: "bob")
            let versionA = try await Self.version(a, policy.id)
            let versionB = try await Self.version(b, policy.id)
            #expect(versionA != versionB)
            let winner = Transaction.newer(versionA, than: versionB) ? "from-a" : "from-b"

            try await Self.sync(from: a, to: b)
            try await Self.sync(from: b, to: a)
            try await Self.sync(from: a, to: b)

            #expect(try await Self.current(a, policyNamed: "Baseline") == winner)
            #expect(try await Self.current(b, policyNamed: "Baseline") == winner)
            #expect(try await a.replicationDigest() == b.replicationDigest())
        }
    }

    static func version(_ store: Store, _ policyID: String) async throws -> (UInt64, String) {
        try await store.read { db in
            let row = try await db.raw("SELECT hlc, origin_site FROM policies WHERE id = \(bind: policyID)").first()!
            return (UInt64(bitPattern: try row.decode(column: "hlc", as: Int64.self)), try row.decode(column: "origin_site", as: String.self))
        }
    }

    @Test(arguments: Engines.all)
    func sameNameCreationsAreBothKeptAndTheLaterIsRenamedOnEverySite(_ dialect: Dialect) async throws {
        try await Self.withSites(dialect) { a, b, c in
            let first = try await a.createGroup(name: "Laptops")
            let firstPolicy = try await a.createPolicy(name: "Baseline", document: "a", by: "alice")
            let second = try await b.createGroup(name: "Laptops")
            let secondPolicy = try await b.createPolicy(name: "Baseline", document: "b", by: "bob")
            // C hears from B first, then from A: the renaming does not depend on the order.
            let fromB = try await Self.sync(from: b, to: c)
            #expect(fromB.renamed == 0)
            #expect(try await Self.sync(from: a, to: c).renamed == 2)
            try await Self.sync(from: a, to: b)
            try await Self.sync(from: b, to: a)
            try await Self.sync(from: c, to: a)
            try await Self.sync(from: c, to: b)
            try await Self.sync(from: a, to: c)
            try await Self.sync(from: b, to: c)

            for store in [a, b, c] {
                let groups = try await store.groups().map { ($0.id, $0.name) }.sorted { $0.1 < $1.1 }
                #expect(groups.map(\.0) == [first.id, second.id], "site \(store.siteID)")
                #expect(groups.map(\.1) == ["Laptops", "Laptops ~1"], "site \(store.siteID)")
                let policies = try await store.policies().map { ($0.id, $0.name) }
                #expect(policies.map(\.0) == [firstPolicy.id, secondPolicy.id] && policies.map(\.1) == ["Baseline", "Baseline ~1"], "site \(store.siteID)")
            }
            #expect(try await a.replicationDigest() == b.replicationDigest())
            #expect(try await a.replicationDigest() == c.replicationDigest())
        }
    }

    @Test(arguments: Engines.all)
    func aDeleteBeatsAnOlderUpdateThatArrivesAfterIt(_ dialect: Dialect) async throws {
        try await Self.withSites(dialect) { a, b, _ in
            let group = try await a.createGroup(name: "Kiosks")
            try await Self.sync(from: a, to: b)
            _ = try await b.write { try await $0.updateGroup(id: group.id, name: nil, description: "older edit") }
            try await a.write { try await $0.deleteGroup(id: group.id) }
            // A hears of B's older edit after deleting: the group stays deleted.
            try await Self.sync(from: b, to: a)
            #expect(try await a.groups().isEmpty)
            try await Self.sync(from: a, to: b)
            #expect(try await b.groups().isEmpty)
            #expect(try await a.replicationDigest() == b.replicationDigest())
        }
    }

    @Test(arguments: Engines.all)
    func aMalformedPageIsRefusedWholeAndTheCursorStays(_ dialect: Dialect) async throws {
        try await Self.withSites(dialect) { a, b, _ in
            _ = try await a.createGroup(name: "Laptops")
            var batch = try await a.changeBatch(after: 0, excludingOrigin: b.siteID, history: true)
            #expect(!batch.changes.isEmpty)
            var bad = batch
            bad.changes[0].row?[0] = .integer(5)
            await #expect(throws: StoreError.self) { try await b.apply(bad) }
            bad = batch
            bad.changes.append(ReplicatedChange(sequence: 99, entity: "secrets", key: "x", op: "upsert", origin: "site-a", hlc: 1, row: []))
            await #expect(throws: StoreError.invalid("change.entity", "secrets is not something this manager replicates")) { try await b.apply(bad) }
            #expect(try await b.groups().isEmpty)
            #expect(try await b.replicationCursors().isEmpty)
            batch.siteID = b.siteID
            await #expect(throws: StoreError.self) { try await b.apply(batch) }
        }
    }

    @Test(arguments: Engines.all)
    func aPageSkipsTheAskersOwnChangesAndHistoryWhenNotWanted(_ dialect: Dialect) async throws {
        try await Self.withSites(dialect) { a, b, _ in
            _ = try await a.createGroup(name: "Laptops")
            try await a.ingestEvents([EventRecord(deviceID: "d", eventID: "1", kind: "scan", occurredMilliseconds: 1, body: "{}")])
            try await Self.sync(from: a, to: b)
            _ = try await b.createGroup(name: "Desktops")
            let withoutHistory = try await b.changeBatch(after: 0, excludingOrigin: a.siteID, history: false)
            #expect(withoutHistory.changes.map(\.entity) == ["group"])
            #expect(withoutHistory.changes.allSatisfy { $0.origin == b.siteID })
            #expect(withoutHistory.next == withoutHistory.head)
            let forC = try await b.changeBatch(after: 0, excludingOrigin: "site-c", history: true)
            #expect(Set(forC.changes.map(\.entity)) == ["group", "event"])
            #expect(Set(forC.changes.map(\.origin)) == [a.siteID, b.siteID])
            // A page boundary in the middle still moves forward.
            let small = try await b.changeBatch(after: 0, excludingOrigin: "site-c", history: true, limit: 1)
            #expect(small.changes.count == 1 && small.next == small.changes[0].sequence && small.next < small.head)
        }
    }

    /// A peer's long poll is answered when a change commits, also one committed by another
    /// manager sharing the PostgreSQL database.
    @Test(arguments: Engines.all)
    func theChangeFeedMovesWhenAChangeCommitsWhicheverManagerMadeIt(_ dialect: Dialect) async throws {
        try await Engines.withDatabase(dialect) { configuration in
            let listening = try await Store.open(configuration, siteID: "site-a", logger: Engines.logger)
            let writing = dialect == .postgres ? try await Store.open(configuration, siteID: "site-a", logger: Engines.logger) : listening
            // What a peer's long poll does first: listen (returns once the listener is in place).
            await listening.listenForChanges()
            let seen = listening.changeFeed.generation
            // Nothing logged, nothing moves.
            try await writing.recordCheckIn(CheckIn(deviceID: "nobody", atMilliseconds: 1, policySerial: 0, status: "ok"))
            #expect(listening.changeFeed.generation == seen || dialect == .postgres)
            async let waited: Void = listening.waitForChanges(past: seen, timeout: .seconds(20))
            _ = try await writing.createGroup(name: "Laptops")
            await waited
            #expect(listening.changeFeed.generation != seen)
            if writing !== listening { await writing.close() }
            await listening.close()
        }
    }

    /// Managers of one site sharing a database take turns pulling a peer: one holds the lease
    /// until it gives it up or lets it run out.
    @Test(arguments: Engines.all)
    func oneManagerOfASiteHoldsThePullLeaseAtATime(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            #expect(try await store.holdReplicationLease(site: "site-b", holder: "one", forMilliseconds: 30_000) == (true, "one"))
            #expect(try await store.holdReplicationLease(site: "site-b", holder: "two", forMilliseconds: 30_000) == (false, "one"))
            #expect(try await store.holdReplicationLease(site: "site-c", holder: "two", forMilliseconds: 30_000) == (true, "two"))
            #expect(try await store.holdReplicationLease(site: "site-b", holder: "one", forMilliseconds: -1) == (true, "one"), "renewed by its holder")
            // Run out (renewed into the past): the other takes it.
            #expect(try await store.holdReplicationLease(site: "site-b", holder: "two", forMilliseconds: 30_000) == (true, "two"))
            try await store.releaseReplicationLease(site: "site-b", holder: "one")
            #expect(try await store.holdReplicationLease(site: "site-b", holder: "one", forMilliseconds: 30_000) == (false, "two"), "only the holder releases")
            try await store.releaseReplicationLease(site: "site-b", holder: "two")
            #expect(try await store.holdReplicationLease(site: "site-b", holder: "one", forMilliseconds: 30_000) == (true, "one"))
        }
    }

    /// A wait ends when its task is cancelled (whoever raced several feeds has its answer),
    /// and a signal wakes every waiter. The waits' own timeout (10 minutes) is past the
    /// test's time limit, so a wait that ignored either would fail the test.
    @Test(.timeLimit(.minutes(1))) func aChangeFeedWaitEndsOnASignalOrWhenCancelled() async {
        let feed = ChangeFeed()
        let seen = feed.generation
        let cancelled = Task { await feed.wait(past: seen, timeout: .seconds(600)) }
        cancelled.cancel()
        await cancelled.value
        #expect(feed.generation == seen)
        async let first: Void = feed.wait(past: seen, timeout: .seconds(600))
        async let second: Void = feed.wait(past: seen, timeout: .seconds(600))
        feed.signal()
        _ = await (first, second)
        #expect(feed.generation == seen + 1)
        // A wait for a generation already passed returns at once.
        await feed.wait(past: seen, timeout: .seconds(600))
    }
}
