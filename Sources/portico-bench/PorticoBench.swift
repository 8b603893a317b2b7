import ArgumentParser
import Foundation
import Logging
import PorticoGateway
import PorticoAgent
import PorticoManager
import PorticoProtocol
import PorticoServer
import PorticoStore

/// `portico-bench`: the loads the benchmarks (bench/) and the crash test drive against a
/// manager's database. Not shipped to operators: their CLI is `portico`.
@main
struct PorticoBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "portico-bench",
        abstract: "Loads for benchmarks and tests, on the database a manager's config names.",
        subcommands: [IngestProbe.self, StoreBench.self, Seed.self, EnrollFleet.self]
    )
}

/// Writes a line to standard output at once, unbuffered: the crash test reads each
/// acknowledgement as it is written, and kills the process at any moment.
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// The config file whose database the load runs on.
struct BenchOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "The manager's config file.") var config: String

    func load() throws -> ManagerConfiguration {
        try ManagerConfiguration.load(file: config)
    }

    func open(_ configuration: ManagerConfiguration) async throws -> Store {
        var logger = Logger(label: "portico.store")
        logger.logLevel = .warning
        return try await Store.open(configuration.storeConfiguration, siteID: configuration.siteName, logger: logger)
    }
}

/// Writes event batches one after another and prints `acked N` once batch N is durable.
/// The crash test kills it at random moments and checks that every acknowledged batch
/// survived.
struct IngestProbe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ingest-probe", abstract: "Event batches, each acknowledged once durable, for the crash test.")
    @OptionGroup var options: BenchOptions
    @Option var firstBatch: Int = 0
    @Option var batches: Int = 1_000_000
    @Option var batchSize: Int = 50
    @Option var writers: Int = 4

    func run() async throws {
        let config = try options.load()
        let store = try await options.open(config)
        let (first, count, size, writers) = (firstBatch, batches, batchSize, self.writers)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<writers {
                group.addTask {
                    var batch = first + writer
                    while batch < first + count {
                        let events = (0..<size).map {
                            EventRecord(deviceID: "probe", eventID: "b\(batch)-\($0)", kind: "probe", occurredMilliseconds: Int64(batch), body: "{}")
                        }
                        try await store.ingestEvents(events)
                        // Unbuffered: the line must be out before a SIGKILL can land.
                        emit("acked \(batch)")
                        batch += writers
                    }
                }
            }
            try await group.waitForAll()
        }
        await store.close()
    }
}

/// Measures durable event ingestion and check-in updates on the configured database.
/// `bench/store.sh` runs it for both engines.
struct StoreBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "store", abstract: "Durable event ingestion and check-in updates per second.")
    @OptionGroup var options: BenchOptions
    @Option var events: Int = 200_000
    @Option var eventBatch: Int = 100
    @Option var eventWriters: Int = 16
    @Option var checkins: Int = 50_000
    @Option var checkinWriters: Int = 256
    @Option var devices: Int = 10_000

    func run() async throws {
        let config = try options.load()
        let store = try await options.open(config)
        let run = "\(UInt32.random(in: 0...UInt32.max))"
        // Devices to check in.
        let deviceCount = self.devices
        for chunk in stride(from: 0, to: deviceCount, by: 500) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for n in chunk..<min(chunk + 500, deviceCount) {
                    group.addTask {
                        try await store.addDevice(DeviceRecord(id: "bench-\(run)-\(n)", signingKey: [1], agreementKey: [2], hostname: "host-\(n)", os: "linux"))
                    }
                }
                try await group.waitForAll()
            }
        }

        let (events, eventBatch, eventWriters) = (self.events, self.eventBatch, self.eventWriters)
        let clock = ContinuousClock()
        let eventsStart = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<eventWriters {
                group.addTask {
                    var batch = writer
                    while batch * eventBatch < events {
                        let records = (0..<eventBatch).map {
                            EventRecord(deviceID: "bench-\(run)-\(batch % 1000)", eventID: "\(run)-\(batch)-\($0)", kind: "process.started", occurredMilliseconds: Int64(batch), body: #"{"path":"/usr/bin/true","user":"root"}"#)
                        }
                        try await store.ingestEvents(records)
                        batch += eventWriters
                    }
                }
            }
            try await group.waitForAll()
        }
        let eventsSeconds = Self.seconds(clock.now - eventsStart)

        let (checkins, checkinWriters, devices) = (self.checkins, self.checkinWriters, self.devices)
        let checkinStart = clock.now
        let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
            for writer in 0..<checkinWriters {
                group.addTask {
                    var latencies: [Double] = []
                    var n = writer
                    while n < checkins {
                        let started = clock.now
                        try await store.recordCheckIn(CheckIn(deviceID: "bench-\(run)-\(n % devices)", atMilliseconds: Int64(n), policySerial: Int64(n), status: "ok"))
                        latencies.append(Self.seconds(clock.now - started) * 1000)
                        n += checkinWriters
                    }
                    return latencies
                }
            }
            return try await group.reduce(into: [Double]()) { $0 += $1 }.sorted()
        }
        let checkinSeconds = Self.seconds(clock.now - checkinStart)
        await store.close()

        func percentile(_ p: Double) -> Double { latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        emit("engine\tevents/s\tcheck-ins/s\tcheck-in p50 ms\tcheck-in p99 ms")
        emit(String(format: "%@\t%.0f\t%.0f\t%.2f\t%.2f", config.storage.postgresURL == nil ? "sqlite" : "postgres",
                         Double(events) / eventsSeconds, Double(checkins) / checkinSeconds, percentile(0.5), percentile(0.99)))
    }

    static func seconds(_ duration: Swift.Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

/// Writes replicated changes as fast as the store takes them: groups, and events from a
/// thousand devices. `bench/replication.sh` uses it to give a peer something to catch up
/// with.
struct Seed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "seed", abstract: "Replicated changes for a peer to catch up with.")
    @OptionGroup var options: BenchOptions
    @Option var groups: Int = 10_000
    @Option var events: Int = 90_000

    func run() async throws {
        let config = try options.load()
        let store = try await options.open(config)
        let run = "\(UInt32.random(in: 0...UInt32.max))"
        let groups = self.groups
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<8 {
                group.addTask {
                    for n in stride(from: writer, to: groups, by: 8) { _ = try await store.createGroup(name: "seed-\(run)-\(n)") }
                }
            }
            try await group.waitForAll()
        }
        let events = self.events
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<8 {
                group.addTask {
                    var batch = writer
                    while batch * 100 < events {
                        try await store.ingestEvents((0..<min(100, events - batch * 100)).map {
                            EventRecord(deviceID: "seed-\(run)-\(batch % 1000)", eventID: "\(batch)-\($0)", kind: "process.started", occurredMilliseconds: Int64(batch),
                                        body: #"{"path":"/usr/bin/true","user":"root"}"#)
                        })
                        batch += 8
                    }
                }
            }
            try await group.waitForAll()
        }
        emit("\(try await store.changeLogHead())")
        await store.close()
    }
}

/// Devices for `portico-agent fleet --enrolled`, written straight into the database before the
/// manager starts: their keys derive from a seed (``DeviceKeys/init(fleetSeed:index:)``), so a
/// fleet of a million is enrolled in minutes, where the real endpoint takes about half an hour.
/// Writes the file the fleet reads: the seed, the count, and the site key agents get at
/// enrollment.
struct EnrollFleet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "enroll-fleet", abstract: "Simulated devices in the database, for a fleet at scale.")
    @OptionGroup var options: BenchOptions
    @Option(help: "How many devices.") var agents: Int = 1_000_000
    @Option(help: "The seed their keys derive from.") var seed: String = "fleet"
    @Option(help: "Where to write the file for `portico-agent fleet --enrolled`.") var out: String

    func run() async throws {
        let config = try options.load()
        let store = try await options.open(config)
        let keys = try await ManagerKeys.load(from: try ManagerServices.vault(config, store: store), legacyDirectory: config.dataDirectory)
        let (count, seed) = (agents, self.seed)
        let clock = ContinuousClock()
        let start = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<64 {
                group.addTask {
                    for index in stride(from: writer, to: count, by: 64) {
                        let device = DeviceKeys(fleetSeed: seed, index: index)
                        do {
                            try await store.addDevice(DeviceRecord(id: device.deviceID, signingKey: Array(device.signing.publicKey.rawRepresentation),
                                                                   agreementKey: Array(device.agreement.publicKey.rawRepresentation), hostname: "fleet-\(index)", os: "simulated"))
                        } catch let error as StoreError where error.kind == .conflict {
                            // Enrolled by an earlier run with the same seed.
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        await store.close()
        let enrolled = FleetEnrollment(seed: seed, agents: count, siteKey: Base64URL.encode(keys.siteKey.withUnsafeBytes { Array($0) }),
                                     checkInIntervalSeconds: Int(config.agents.checkInInterval.nanoseconds / 1_000_000_000))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        // It holds the site key: readable by its owner only.
        guard FileManager.default.createFile(atPath: out, contents: try encoder.encode(enrolled), attributes: [.posixPermissions: 0o600]) else {
            throw ValidationError("cannot write \(out)")
        }
        emit(String(format: "enrolled %d devices in %.1fs", count, StoreBench.seconds(clock.now - start)))
    }
}
