import Crypto
import Foundation
import Testing

@testable import PorticoStore

/// The store operations the web services API stands on, on every engine.
@Suite struct AdministrationTests {
    static func device(_ id: String, hostname: String, os: String = "linux") -> DeviceRecord {
        DeviceRecord(id: id, signingKey: [1, 2, 3], agreementKey: [4, 5, 6], hostname: hostname, os: os)
    }

    @Test(arguments: Engines.all)
    func devicesFilterAndPageByID(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            for (id, host, os) in [("a1", "Laptop-01", "linux"), ("a2", "laptop_02", "macos"), ("a3", "desk%03", "linux"), ("a4", "server", "linux")] {
                try await store.addDevice(Self.device(id, hostname: host, os: os))
            }
            let group = try await store.createGroup(name: "Laptops")
            try await store.write { try await $0.addExistingDevice("a2", toGroup: group.id) }
            try await store.recordCheckIn(CheckIn(deviceID: "a4", atMilliseconds: 5_000, policySerial: 0, status: "ok"))
            try await store.setDeviceState(id: "a3", to: .locked)

            #expect(try await store.devices(DeviceFilter(hostname: "LAPTOP")).map(\.id) == ["a1", "a2"])
            // LIKE's wildcards in the filter are literal characters.
            #expect(try await store.devices(DeviceFilter(hostname: "_0")).map(\.id) == ["a2"])
            #expect(try await store.devices(DeviceFilter(hostname: "%")).map(\.id) == ["a3"])
            #expect(try await store.devices(DeviceFilter(os: "macos")).map(\.id) == ["a2"])
            #expect(try await store.devices(DeviceFilter(groupID: group.id)).map(\.id) == ["a2"])
            #expect(try await store.devices(DeviceFilter(state: .locked)).map(\.id) == ["a3"])
            #expect(try await store.devices(DeviceFilter(lastCheckInBefore: 6_000)).map(\.id) == ["a1", "a2", "a3", "a4"])
            #expect(try await store.devices(DeviceFilter(lastCheckInBefore: 4_000)).map(\.id) == ["a1", "a2", "a3"])
            #expect(try await store.devices(after: "a2", limit: 1).map(\.id) == ["a3"])
            // Parts of three characters or more go through the trigram index; a device renamed
            // or deleted is found by its new name only, or not at all.
            #expect(try await store.devices(DeviceFilter(hostname: "aptop-0")).map(\.id) == ["a1"])
            #expect(try await store.devices(DeviceFilter(hostname: "SERV")).map(\.id) == ["a4"])
            try await store.write { try await $0.database.raw("UPDATE devices SET hostname = 'printer-7' WHERE id = 'a4'").run() }
            #expect(try await store.devices(DeviceFilter(hostname: "serv")).isEmpty)
            #expect(try await store.devices(DeviceFilter(hostname: "inter-7")).map(\.id) == ["a4"])
            try await store.write { try await $0.deleteDevice(id: "a1") }
            #expect(try await store.devices(DeviceFilter(hostname: "laptop")).map(\.id) == ["a2"])
            try await store.addDevice(Self.device("a1", hostname: "Laptop-01"))
            let counts = try await store.deviceCounts(onlineSince: 1_000)
            #expect(counts.total == 4 && counts.online == 1 && counts.byState[.locked] == 1)

            try await store.write { try await $0.deleteDevice(id: "a2") }
            #expect(try await store.device(id: "a2") == nil)
            #expect(try await store.groupSizes()[group.id] == nil)
            await #expect(throws: StoreError.notFound("device a2")) { try await store.write { try await $0.deleteDevice(id: "a2") } }
        }
    }

    @Test(arguments: Engines.all)
    func eventsAndAuditEntriesQueryNewestFirstByFilter(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.ingestEvents([
                EventRecord(deviceID: "d1", eventID: "1", kind: "scan", occurredMilliseconds: 100, body: "{}"),
                EventRecord(deviceID: "d1", eventID: "2", kind: "malware", occurredMilliseconds: 200, body: "{}"),
                EventRecord(deviceID: "d2", eventID: "3", kind: "scan", occurredMilliseconds: 200, body: "{}"),
                EventRecord(deviceID: "d2", eventID: "4", kind: "scan", occurredMilliseconds: 300, body: "{}"),
            ])
            #expect(try await store.events(EventFilter()).map(\.eventID) == ["4", "3", "2", "1"])
            #expect(try await store.events(EventFilter(kind: "scan", since: 150)).map(\.eventID) == ["4", "3"])
            #expect(try await store.events(EventFilter(deviceID: "d1", until: 200)).map(\.eventID) == ["1"])
            #expect(try await store.events(EventFilter(), before: (200, "d2", "3"), limit: 10).map(\.eventID) == ["2", "1"])

            for (actor, action, result) in [("operator:a", "group.create", "ok"), ("operator:b", "group.create", "denied"), ("token:t", "policy.publish", "ok")] {
                try await store.audit(AuditEntry(atMilliseconds: 1_000, actor: actor, action: action, target: "x", source: "127.0.0.1", result: result))
            }
            #expect(try await store.auditEntries(AuditFilter(action: "group.create")).map(\.actor) == ["operator:b", "operator:a"])
            #expect(try await store.auditEntries(AuditFilter(result: "ok")).map(\.action) == ["policy.publish", "group.create"])
            #expect(try await store.auditEntries(AuditFilter(since: 1_001)).isEmpty)
            let newest = try #require(try await store.auditEntries(AuditFilter()).first?.id)
            #expect(try await store.auditEntries(AuditFilter(), beforeID: newest, limit: 1).map(\.actor) == ["operator:b"])
        }
    }

    @Test(arguments: Engines.all)
    func groupsPoliciesAndCommandsChangeWithTheirAuditInOneTransaction(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.addDevice(Self.device("d1", hostname: "one"))
            let group = try await store.createGroup(name: "Kiosks")
            let policy = try await store.createPolicy(name: "Locked down", document: "{}", by: "test")
            let serial = try await store.policySerial()
            try await store.write { transaction in
                try await transaction.addExistingDevice("d1", toGroup: group.id)
                try await transaction.assignExistingPolicy(policyID: policy.id, toGroup: group.id)
                try await transaction.audit(AuditEntry(actor: "operator:a", action: "policy.assign", target: policy.id, source: "-", result: "ok"))
            }
            #expect(try await store.policySerial() > serial)
            #expect(try await store.policyAssignments(policyID: policy.id) == [group.id])
            // A failure inside the transaction leaves neither the change nor its audit entry.
            await #expect(throws: StoreError.self) {
                try await store.write { transaction in
                    try await transaction.audit(AuditEntry(actor: "operator:a", action: "group.update", target: group.id, source: "-", result: "ok"))
                    _ = try await transaction.updateGroup(id: group.id, name: "Renamed", description: nil)
                    try await transaction.unassignPolicy(policyID: policy.id, fromGroup: "no-such-group")
                }
            }
            #expect(try await store.group(id: group.id)?.name == "Kiosks")
            #expect(try await store.auditEntries(AuditFilter(action: "group.update")).isEmpty)

            let renamed = try await store.write { try await $0.updateGroup(id: group.id, name: "Renamed", description: "all kiosks") }
            #expect(renamed.description == "all kiosks")
            let other = try await store.createGroup(name: "Other")
            await #expect(throws: StoreError(kind: .conflict, message: "a group named Renamed already exists")) {
                _ = try await store.write { try await $0.updateGroup(id: other.id, name: "Renamed", description: nil) }
            }
            try await store.write { try await $0.deleteGroup(id: group.id) }
            #expect(try await store.policyAssignments(policyID: policy.id).isEmpty)
            #expect(try await store.groupIDs(ofDevice: "d1").isEmpty)
            #expect(try await store.policies().map(\.name) == ["Locked down"])

            let first = CommandRecord(id: "c1", deviceID: "d1", kind: .lock, issuedBy: "a", issuedMilliseconds: 10)
            let second = CommandRecord(id: "c2", deviceID: "d1", kind: .unlock, issuedBy: "a", issuedMilliseconds: 20)
            try await store.enqueueCommand(first)
            try await store.enqueueCommand(second)
            #expect(try await store.commands(deviceID: "d1").map(\.id) == ["c2", "c1"])
            #expect(try await store.commands(before: (20, "c2")).map(\.id) == ["c1"])
            #expect(try await store.commands(state: .acknowledged).isEmpty)
        }
    }

    @Test(arguments: Engines.all)
    func operatorsAndSessionsLifecycle(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.createOperator(OperatorRecord(name: "ada", passwordHash: "h1", role: .admin))
            try await store.createOperator(OperatorRecord(name: "olive", passwordHash: "h2", role: .operator))
            let session = AuthSessionRecord(id: "s1", operatorName: "olive", accessHash: Array(repeating: 1, count: 32), accessExpiresMilliseconds: 10,
                                            refreshHash: Array(repeating: 2, count: 32), refreshExpiresMilliseconds: 20, source: "127.0.0.1")
            try await store.write { try await $0.createAuthSession(session) }
            #expect(try await store.authSession(id: "s1") == session)
            try await store.write { try await $0.renewAuthSession(id: "s1", accessHash: Array(repeating: 3, count: 32), accessExpiresMilliseconds: 30, refreshHash: Array(repeating: 4, count: 32)) }
            #expect(try await store.authSession(id: "s1")?.accessExpiresMilliseconds == 30)

            let updated = try await store.write { try await $0.updateOperator(name: "olive", role: .auditor, passwordHash: "h3") }
            #expect(updated.role == .auditor && updated.passwordHash == "h3")
            // A new password ends the operator's sessions.
            #expect(try await store.authSession(id: "s1")?.revoked == true)
            #expect(try await store.write { try await $0.activeAdminCount() } == 1)
            try await store.write { _ = try await $0.updateOperator(name: "ada", disabled: true) }
            #expect(try await store.write { try await $0.activeAdminCount() } == 0)
            try await store.write { try await $0.deleteOperator(name: "olive") }
            #expect(try await store.operators().map(\.name) == ["ada"])
            try await store.write { try await $0.pruneAuthSessions(now: 100) }
            #expect(try await store.authSession(id: "s1") == nil)
        }
    }

    @Test(arguments: Engines.all)
    func reportQueriesCountOnEveryEngine(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            let now: Int64 = 1_763_769_600_000  // 2025-11-22T00:00:00Z
            let group = try await store.createGroup(name: "Fleet")
            let policy = try await store.createPolicy(name: "Base", document: "{}", by: "t")
            try await store.publishPolicy(policyID: policy.id, version: 1)
            try await store.assignPolicy(policyID: policy.id, toGroup: group.id)
            let serial = try await store.policySerial()
            for id in ["a", "b", "c"] {
                try await store.addDevice(Self.device(id, hostname: id))
                try await store.addDevice(id, toGroup: group.id)
            }
            try await store.recordCheckIn(CheckIn(deviceID: "a", atMilliseconds: now - 60_000, policySerial: serial, status: "ok", pinned: [String(repeating: "ab", count: 32)]))
            try await store.recordCheckIn(CheckIn(deviceID: "b", atMilliseconds: now - 2 * 86_400_000, policySerial: 0, status: "ok"))

            let summary = try await store.fleetSummary(onlineSince: now - 3_600_000, staleBefore: now - 7 * 86_400_000)
            #expect(summary.total == 3 && summary.online == 1 && summary.stale == 1 && summary.compliant == 1 && summary.policySerial == serial)
            try await store.recordFleetSnapshot(summary, at: now)
            var later = summary
            later.compliant = 3
            try await store.recordFleetSnapshot(later, at: now + 1_000)
            let snapshots = try await store.fleetSnapshots(from: "2025-11-01", to: "2025-11-30")
            #expect(snapshots.count == 1 && snapshots[0].day == "2025-11-22" && snapshots[0].summary.compliant == 3)

            let freshness = try await store.checkInFreshness(now: now)
            #expect(freshness.map(\.devices) == [1, 0, 1, 0, 1])
            let rollout = try await store.policyRollout()
            #expect(rollout.count == 1 && rollout[0].targeted == 3 && rollout[0].current == 1)
            // A device in two groups the policy is assigned to counts once.
            let more = try await store.createGroup(name: "More")
            try await store.assignPolicy(policyID: try #require(try await store.policies().first?.id), toGroup: more.id)
            try await store.addDevice("a", toGroup: more.id)
            #expect(try await store.policyRollout().map(\.targeted) == [3])
            #expect(try await store.devicesByPolicySerial().map(\.devices).reduce(0, +) == 3)
            #expect(try await store.pinProgress(fingerprint: String(repeating: "AB", count: 32), activeSince: now - 86_400_000) == (1, 1))

            try await store.ingestEvents([
                EventRecord(deviceID: "a", eventID: "1", kind: "scan", occurredMilliseconds: now - 1, body: "{}"),
                EventRecord(deviceID: "a", eventID: "2", kind: "scan", occurredMilliseconds: now + 5, body: "{}"),
            ])
            let days = try await store.eventCountsByDay(since: now - 86_400_000, until: now + 86_400_000)
            #expect(days.map { "\($0.day) \($0.kind) \($0.events)" } == ["2025-11-21 scan 1", "2025-11-22 scan 1"])
            try await store.enqueueCommand(CommandRecord(id: "c1", deviceID: "a", kind: .lock, issuedBy: "t", issuedMilliseconds: now))
            #expect(try await store.commandOutcomes(since: now - 1, until: now + 1).map { "\($0.kind)/\($0.state)=\($0.commands)" } == ["lock/pending=1"])
        }
    }
}
