import Foundation
import SQLKit
import Testing

@testable import PorticoStore

@Suite struct MigrationTests {
    @Test(arguments: Engines.all)
    func aFreshDatabaseGetsTheWholeSchema(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            #expect(try await store.schemaVersion() == Migrations.latest)
            let applied = try await store.appliedMigrations()
            #expect(applied.map(\.version) == Migrations.all.map(\.version))
            #expect(applied.first?.name == "core entities and change log")
            // Running again applies nothing.
            #expect(try await store.migrate().isEmpty)
        }
    }

    @Test(arguments: Engines.all)
    func aDatabaseOfThePreviousVersionIsUpgradedWithItsData(_ dialect: Dialect) async throws {
        try await Engines.withDatabase(dialect) { configuration in
            let old = try await Store.open(configuration, siteID: "s", logger: Engines.logger, migrateUpTo: Migrations.latest - 1)
            #expect(try await old.schemaVersion() == Migrations.latest - 1)
            try await old.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "h", os: "linux"))
            await old.close()

            let upgraded = try await Store.open(configuration, siteID: "s", logger: Engines.logger)
            #expect(try await upgraded.schemaVersion() == Migrations.latest)
            #expect(try await upgraded.device(id: "dev-1")?.hostname == "h")
            await upgraded.close()
        }
    }

    /// A write that arrives while the store closes (a replication link giving its lease
    /// back at shutdown) is refused with a reason, not lost or left hanging.
    @Test(arguments: Engines.all)
    func aWriteAfterCloseIsRefused(_ dialect: Dialect) async throws {
        try await Engines.withDatabase(dialect) { configuration in
            let store = try await Store.open(configuration, siteID: "s", logger: Engines.logger)
            await store.close()
            await #expect(throws: StoreError.unavailable("the store is closed")) {
                try await store.releaseReplicationLease(site: "peer", holder: "me")
            }
        }
    }

    @Test(arguments: Engines.all)
    func aDatabaseFromANewerBinaryIsRefused(_ dialect: Dialect) async throws {
        try await Engines.withDatabase(dialect) { configuration in
            let store = try await Store.open(configuration, siteID: "s", logger: Engines.logger)
            try await store.write { transaction in
                try await transaction.database.raw("INSERT INTO portico_schema (version, name, applied_ms) VALUES (\(bind: Migrations.latest + 7), 'from the future', 0)").run()
            }
            await store.close()
            do {
                _ = try await Store.open(configuration, siteID: "s", logger: Engines.logger)
                Issue.record("a database of a newer schema was opened")
            } catch let error as StoreError {
                #expect(error.kind == .schemaTooNew)
                #expect(error.message.contains("schema version \(Migrations.latest + 7), newer than this binary's \(Migrations.latest)"))
            }
        }
    }
}

@Suite struct EventTests {
    private func batch(_ device: String, _ ids: ClosedRange<Int>, kind: String = "malware.detected") -> [EventRecord] {
        ids.map { EventRecord(deviceID: device, eventID: "e\($0)", kind: kind, occurredMilliseconds: Int64($0), body: #"{"n":\#($0)}"#) }
    }

    @Test(arguments: Engines.all)
    func eventsAreStoredOnceWhateverTheRetries(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            let first = try await store.ingestEvents(batch("d1", 1...250))
            #expect(first.count == 250)
            // The agent retries an overlapping batch: only the new ones are stored.
            let retry = try await store.ingestEvents(batch("d1", 200...300))
            #expect(retry.sorted() == (251...300).map { "e\($0)" }.sorted())
            #expect(try await store.eventCount(device: "d1") == 300)
            // The same event id from another device is another event.
            #expect(try await store.ingestEvents(batch("d2", 1...1)) == ["e1"])
            let stored = try await store.events(device: "d1", limit: 2)
            #expect(stored.map(\.eventID) == ["e1", "e2"])
            #expect(stored.first?.body == #"{"n":1}"#)
        }
    }

    @Test(arguments: Engines.all)
    func invalidEventsAreRefusedWithTheFieldAndNothingIsStored(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            var events = batch("d1", 1...3)
            events[2].body = String(repeating: "x", count: EventRecord.maxBodyBytes + 1)
            await #expect(throws: StoreError.invalid("event.body", "is \(EventRecord.maxBodyBytes + 1) bytes long; the limit is \(EventRecord.maxBodyBytes)")) {
                try await store.ingestEvents(events)
            }
            var badID = batch("d1", 1...1)
            badID[0].eventID = "has space"
            await #expect(throws: StoreError.self) { try await store.ingestEvents(badID) }
            var badKind = batch("d1", 1...1)
            badKind[0].kind = String(repeating: "k", count: 65)
            await #expect(throws: StoreError.self) { try await store.ingestEvents(badKind) }
            let stored = try await store.eventCount()
            #expect(stored == 0)
        }
    }
}

@Suite struct DeviceTests {
    @Test(arguments: Engines.all)
    func checkInsUpdateKnownDevicesOnly(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.addDevice(DeviceRecord(id: "dev-1", signingKey: [1, 2, 3], agreementKey: [4], hostname: "laptop-7", os: "windows 11"))
            #expect(try await store.recordCheckIn(CheckIn(deviceID: "dev-1", atMilliseconds: 1_000, policySerial: 42, status: "ok")))
            #expect(try await store.recordCheckIn(CheckIn(deviceID: "nobody", atMilliseconds: 1_000, policySerial: 1, status: "ok")) == false)
            let device = try #require(try await store.device(id: "dev-1"))
            #expect(device.lastCheckInMilliseconds == 1_000)
            #expect(device.policySerial == 42)
            #expect(device.signingKey == [1, 2, 3])
            #expect(device.state == .active)
        }
    }

    @Test(arguments: Engines.all)
    func aNewDeviceIsInTheChangeLogWithItsOriginAndClock(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect, site: "north") { store in
            let before = store.clock.now()
            try await store.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "a", os: "linux"))
            try await store.addDevice(DeviceRecord(id: "dev-2", signingKey: [1], agreementKey: [2], hostname: "b", os: "linux"))
            let changes = try await store.changes(after: 0)
            #expect(changes.map(\.key) == ["dev-1", "dev-2"])
            #expect(changes.allSatisfy { $0.entity == "device" && $0.op == .upsert && $0.originSite == "north" })
            #expect(changes[0].hlc > before && changes[1].hlc > changes[0].hlc)
            #expect(try await store.changes(after: changes[0].sequence).map(\.key) == ["dev-2"])
        }
    }

    @Test(arguments: Engines.all)
    func aDuplicateDeviceIsRefusedAndLeavesNoChangeBehind(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            let device = DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "a", os: "linux")
            try await store.addDevice(device)
            await #expect(throws: (any Error).self) { try await store.addDevice(device) }
            #expect(try await store.changes(after: 0).count == 1)
        }
    }
}

@Suite struct GroupCommitTests {
    @Test(arguments: Engines.all)
    func concurrentWritersShareTransactionsAndAFailureStaysItsOwn(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "a", os: "linux"))
            let results = await withTaskGroup(of: (Int, Bool).self) { group in
                for writer in 0..<200 {
                    group.addTask {
                        do {
                            if writer % 10 == 0 {
                                // A write that fails half-way: its first insert must not survive.
                                try await store.write { transaction in
                                    try await transaction.database.raw("INSERT INTO events (device_id, event_id, kind, occurred_ms, received_ms, body, origin_site, hlc) VALUES ('dev-1', \(bind: "bad-\(writer)"), 'k', 0, 0, '', 's', 0)").run()
                                    try await transaction.database.raw("INSERT INTO no_such_table VALUES (1)").run()
                                }
                            } else {
                                _ = try await store.ingestEvents([EventRecord(deviceID: "dev-1", eventID: "ok-\(writer)", kind: "k", occurredMilliseconds: 0, body: "")])
                            }
                            return (writer, true)
                        } catch {
                            return (writer, false)
                        }
                    }
                }
                return await group.reduce(into: [Int: Bool]()) { $0[$1.0] = $1.1 }
            }
            #expect(results.filter { $0.value }.count == 180)
            #expect(results.filter { !$0.value }.keys.allSatisfy { $0 % 10 == 0 })
            #expect(try await store.eventCount() == 180)
            let bad = try await store.read { db in try await db.raw("SELECT COUNT(*) AS n FROM events WHERE event_id LIKE 'bad-%'").first()?.decode(column: "n", as: Int.self) }
            #expect(bad == 0)
        }
    }
}

@Suite struct ClockTests {
    @Test func timestampsNeverGoBackwardsAndFollowWhatIsObserved() {
        let frozen = HybridLogicalClock(physicalTime: { 1_000 })
        let a = frozen.now(), b = frozen.now()
        #expect(b > a)
        #expect(HybridLogicalClock.milliseconds(of: a) == 1_000)
        let remote: UInt64 = (5_000 << 16) + 3
        frozen.observe(remote)
        #expect(frozen.now() == remote + 1)
    }

    @Test func passwordsNeverAppearInADescription() {
        let configuration = StoreConfiguration.postgres(url: "postgres://portico:s3cret@db.example:5432/portico")
        #expect(configuration.redacted == "postgres://portico@db.example:5432/portico")
        #expect(!configuration.redacted.contains("s3cret"))
    }
}
