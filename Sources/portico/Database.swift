import ArgumentParser
import Foundation
import Logging
import PorticoGateway
import PorticoStore

extension GatewayConfiguration {
    /// The store this configuration names: PostgreSQL when `storage.postgres.url` is set,
    /// else SQLite under `data_dir`.
    var storeConfiguration: StoreConfiguration {
        if let url = storage.postgresURL { return .postgres(url: url, poolSize: storage.postgresPoolSize) }
        return .sqlite(path: dataDirectory + "/portico.sqlite")
    }
}

struct Database: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db", abstract: "Work with the manager's database.", subcommands: [Migrate.self, Status.self, IngestProbe.self, Bench.self, Seed.self])

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Apply the schema migrations this binary knows to the database.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            try await withStore(options, migrate: false) { store, config in
                let before = try await store.schemaVersion()
                let applied = try await store.migrate()
                writeLine(applied.isEmpty ? "already at schema version \(before)" : "migrated \(config.storeConfiguration.redacted) from schema version \(before) to \(applied.last!)")
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the database, its schema version and what this binary would apply.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            try await withStore(options, migrate: false) { store, config in
                let version = try await store.schemaVersion()
                writeLine("database: \(config.storeConfiguration.redacted)")
                writeLine("schema version: \(version) (this binary: \(Store.latestSchemaVersion))")
                for migration in try await store.appliedMigrations() {
                    writeLine("  applied \(migration.version): \(migration.name)")
                }
                let pending = Store.latestSchemaVersion - version
                writeLine(pending > 0 ? "pending: \(pending) migration\(pending == 1 ? "" : "s") (run portico db migrate, or start serve)" : "pending: none")
            }
        }
    }

    /// Writes event batches one after another and prints `acked N` once batch N is durable.
    /// The crash test kills it at random moments and checks that every acknowledged batch
    /// survived. Not for operators.
    struct IngestProbe: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ingest-probe", shouldDisplay: false)
        @OptionGroup var options: ConfigOptions
        @Option var firstBatch: Int = 0
        @Option var batches: Int = 1_000_000
        @Option var batchSize: Int = 50
        @Option var writers: Int = 4

        func run() async throws {
            let config = try loadOrExit(options)
            let store = try await openOrExit(config, migrate: true)
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
                            writeLine("acked \(batch)")
                            batch += writers
                        }
                    }
                }
                try await group.waitForAll()
            }
            await store.close()
        }
    }
}

/// Measures durable event ingestion and check-in updates on the configured database.
/// `bench/store.sh` runs it for both engines. Not for operators.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", shouldDisplay: false)
    @OptionGroup var options: ConfigOptions
    @Option var events: Int = 200_000
    @Option var eventBatch: Int = 100
    @Option var eventWriters: Int = 16
    @Option var checkins: Int = 50_000
    @Option var checkinWriters: Int = 256
    @Option var devices: Int = 10_000

    func run() async throws {
        let config = try loadOrExit(options)
        let store = try await openOrExit(config, migrate: true)
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
        writeLine("engine\tevents/s\tcheck-ins/s\tcheck-in p50 ms\tcheck-in p99 ms")
        writeLine(String(format: "%@\t%.0f\t%.0f\t%.2f\t%.2f", config.storage.postgresURL == nil ? "sqlite" : "postgres",
                         Double(events) / eventsSeconds, Double(checkins) / checkinSeconds, percentile(0.5), percentile(0.99)))
    }

    static func seconds(_ duration: Swift.Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

/// Opens the configured store, runs `body`, and closes the store whatever happens; an error
/// is printed as a sentence and becomes exit status 1.
func withStore<T>(_ options: ConfigOptions, migrate: Bool = true, _ body: (Store, GatewayConfiguration) async throws -> T) async throws -> T {
    let config = try loadOrExit(options)
    let store = try await openOrExit(config, migrate: migrate)
    do {
        let result = try await body(store, config)
        await store.close()
        return result
    } catch let exit as ExitCode {
        await store.close()
        throw exit
    } catch {
        await store.close()
        printError("portico: \(error)")
        throw ExitCode(1)
    }
}

func loadOrExit(_ options: ConfigOptions) throws -> GatewayConfiguration {
    do {
        return try options.load()
    } catch {
        printError("portico: the configuration from \(options.sourceDescription) cannot be used:\n\(error)")
        throw ExitCode(1)
    }
}

func openOrExit(_ config: GatewayConfiguration, migrate: Bool) async throws -> Store {
    var logger = Logger(label: "portico.store")
    logger.logLevel = .warning
    do {
        return try await Store.open(config.storeConfiguration, siteID: config.siteName, logger: logger, migrate: migrate)
    } catch {
        printError("portico: cannot open the database \(config.storeConfiguration.redacted): \(error)")
        throw ExitCode(1)
    }
}

/// Writes replicated changes as fast as the store takes them: groups, and events from a
/// thousand devices. `bench/replication.sh` uses it to give a peer something to catch up
/// with. Not for operators.
struct Seed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "seed", shouldDisplay: false)
    @OptionGroup var options: ConfigOptions
    @Option var groups: Int = 10_000
    @Option var events: Int = 90_000

    func run() async throws {
        let config = try loadOrExit(options)
        let store = try await openOrExit(config, migrate: true)
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
        writeLine("\(try await store.changeLogHead())")
        await store.close()
    }
}
