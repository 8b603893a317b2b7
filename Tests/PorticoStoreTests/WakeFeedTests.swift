import Foundation
import Testing

@testable import PorticoStore

/// Devices woken by writes: a command queued wakes its device, a publication every device,
/// once the write has committed, at this manager and (PostgreSQL) at every manager sharing
/// the database.
@Suite(.timeLimit(.minutes(2))) struct WakeFeedTests {
    /// What a store's wake feed delivers, in order.
    final class Heard: Sendable {
        let stream: AsyncStream<WakeFeed.Target>
        private let continuation: AsyncStream<WakeFeed.Target>.Continuation

        init(_ store: Store) {
            (stream, continuation) = AsyncStream.makeStream(of: WakeFeed.Target.self)
            let continuation = self.continuation
            store.wakes.subscribe { continuation.yield($0) }
        }

        /// The next target delivered, or nil after `timeout`.
        func next(within timeout: Duration = .seconds(20)) async -> WakeFeed.Target? {
            await withTaskGroup(of: WakeFeed.Target?.self) { group in
                group.addTask { [stream] in
                    var iterator = stream.makeAsyncIterator()
                    return await iterator.next()
                }
                group.addTask {
                    try? await Task.sleep(for: timeout)
                    return nil
                }
                let first = await group.next() ?? nil
                group.cancelAll()
                return first
            }
        }
    }

    static func command(_ id: String, device: String) -> CommandRecord {
        CommandRecord(id: id, deviceID: device, kind: .lock, issuedBy: "test", issuedMilliseconds: Int64(Date().timeIntervalSince1970 * 1000))
    }

    @Test(arguments: Engines.all)
    func aQueuedCommandWakesItsDeviceAndAPublicationEveryDevice(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            let heard = Heard(store)
            try await store.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "h", os: "linux"))
            try await store.enqueueCommand(Self.command("c-1", device: "dev-1"))
            #expect(await heard.next() == .device("dev-1"))
            let policy = try await store.createPolicy(name: "p", document: "{}", by: "test")
            try await store.publishPolicy(policyID: policy.id, version: 1)
            #expect(await heard.next() == .everyDevice)
        }
    }

    /// A command queued at a peer site arrives by replication and wakes the device's wait
    /// here; the same command arriving again, answered, wakes nothing.
    @Test(arguments: Engines.all)
    func aCommandQueuedAtAPeerSiteWakesTheDeviceWhenItArrives(_ dialect: Dialect) async throws {
        try await ReplicationStoreTests.withSites(dialect) { a, b, _ in
            let heard = Heard(b)
            try await a.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "h", os: "linux"))
            try await a.enqueueCommand(Self.command("c-1", device: "dev-1"))
            try await ReplicationStoreTests.sync(from: a, to: b)
            #expect(await heard.next() == .device("dev-1"))
            try await a.acknowledgeCommand(id: "c-1", deviceID: "dev-1", succeeded: true, result: "locked")
            try await ReplicationStoreTests.sync(from: a, to: b)
            #expect(try await b.commands(deviceID: "dev-1").first?.state == .acknowledged)
            #expect(await heard.next(within: .milliseconds(500)) == nil, "an answered command woke its device")
        }
    }

    @Test(.enabled(if: Engines.postgresURL != nil, "needs PostgreSQL: set PORTICO_TEST_POSTGRES_URL (CI does)"))
    func aCommandQueuedAtOneManagerWakesTheDeviceAtTheOther() async throws {
        try await Engines.withDatabase(.postgres) { configuration in
            let a = try await Store.open(configuration, siteID: "s", logger: Engines.logger)
            let b = try await Store.open(configuration, siteID: "s", logger: Engines.logger)
            let heardAtA = Heard(a)
            let heardAtB = Heard(b)
            await b.listenForChanges()
            try await a.addDevice(DeviceRecord(id: "dev-1", signingKey: [1], agreementKey: [2], hostname: "h", os: "linux"))
            try await a.enqueueCommand(Self.command("c-1", device: "dev-1"))
            #expect(await heardAtB.next() == .device("dev-1"))
            // A hears its own write once (at commit), not again through the notification.
            #expect(await heardAtA.next() == .device("dev-1"))
            try await b.enqueueCommand(Self.command("c-2", device: "dev-1"))
            #expect(await heardAtB.next() == .device("dev-1"))
            await a.listenForChanges()
            try await b.enqueueCommand(Self.command("c-3", device: "dev-1"))
            #expect(await heardAtA.next() == .device("dev-1"))
            #expect(await heardAtB.next() == .device("dev-1"))
            #expect(await heardAtA.next(within: .milliseconds(500)) == nil, "a manager heard one write twice")
            await a.close()
            await b.close()
        }
    }
}
