import Foundation
import Logging
import NIOConcurrencyHelpers
import PorticoServer
import PorticoStore
import Prometheus
import ServiceLifecycle

/// The fleet and the process in `/metrics`: devices by state and online now, commands by
/// state, the database's size (read from the store at an interval, not at each scrape), the
/// process's CPU, memory and descriptors, and `portico_build_info`. Check-ins, enrollments
/// and events are counted where they happen (``AgentService``).
public final class FleetMetrics: Service, Sendable {
    /// The program's version, as `portico_build_info{version}` gives it.
    public static let version = "0.9.0"

    let store: Store
    let interval: Duration
    let logger: Logger
    let devices: [DeviceState: Gauge]
    let online: Gauge
    let commands: [CommandState: Gauge]
    let databaseBytes: Gauge
    let process: (cpu: Gauge, resident: Gauge, virtual: Gauge, openFDs: Gauge, maxFDs: Gauge, start: Gauge)

    /// When the store was last read (milliseconds), so that scrapes read it at most once a second.
    private let lastRead = NIOLockedValueBox<Int64>(0)

    /// - Parameter metrics: the gateway's series; each scrape reads the process at once and
    ///   the store (at most once a second) for the next.
    public convenience init(store: Store, metrics: GatewayMetrics, interval: Duration = .seconds(15), logger: Logger = Logger(label: "portico.metrics")) {
        self.init(store: store, registry: metrics.registry, interval: interval, logger: logger)
        metrics.beforeScrape { [self] in
            recordProcess()
            let now = Int64(HybridLogicalClock.wallMilliseconds())
            let due = lastRead.withLockedValue { last in
                guard now - last >= 1000 else { return false }
                last = now
                return true
            }
            if due { Task { await self.refresh() } }
        }
    }

    public init(store: Store, registry: PrometheusCollectorRegistry, interval: Duration = .seconds(15), logger: Logger = Logger(label: "portico.metrics")) {
        self.store = store
        self.interval = interval
        self.logger = logger
        let deviceDescriptor = MetricNameDescriptor.portico("devices", unit: "", help: "Devices by state")
        devices = Dictionary(uniqueKeysWithValues: DeviceState.allCases.map { ($0, registry.makeGauge(descriptor: deviceDescriptor, labels: [("state", $0.rawValue)])) })
        online = registry.makeGauge(descriptor: .portico("devices_online", unit: "", help: "Devices that checked in within the last hour"))
        let commandDescriptor = MetricNameDescriptor.portico("commands", unit: "", help: "Commands by state")
        commands = Dictionary(uniqueKeysWithValues: CommandState.allCases.map { ($0, registry.makeGauge(descriptor: commandDescriptor, labels: [("state", $0.rawValue)])) })
        databaseBytes = registry.makeGauge(descriptor: .portico("database_size", unit: "bytes", help: "The database's size on disk"))
        registry.makeGauge(name: "portico_build_info", labels: [("version", Self.version)], help: "The program's version (always 1)").set(Int64(1))
        process = (registry.makeGauge(name: "process_cpu_seconds_total", help: "User and system CPU time the process has used, in seconds"),
                   registry.makeGauge(name: "process_resident_memory_bytes", help: "Resident memory"),
                   registry.makeGauge(name: "process_virtual_memory_bytes", help: "Virtual memory"),
                   registry.makeGauge(name: "process_open_fds", help: "Open file descriptors"),
                   registry.makeGauge(name: "process_max_fds", help: "The limit on open file descriptors"),
                   registry.makeGauge(name: "process_start_time_seconds", help: "When the process started, in seconds since 1970"))
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.refresh()
                try? await Task.sleep(for: self.interval)
            }
        }
    }

    /// Reads the fleet from the store and the process from /proc.
    func refresh() async {
        recordProcess()
        do {
            let counts = try await store.deviceCounts(onlineSince: Int64(HybridLogicalClock.wallMilliseconds()) - 3_600_000)
            for (state, gauge) in devices { gauge.set(Int64(counts.byState[state] ?? 0)) }
            online.set(Int64(counts.online))
            let byState = try await store.commandCounts()
            for (state, gauge) in commands { gauge.set(Int64(byState[state] ?? 0)) }
            databaseBytes.set(try await store.databaseBytes())
        } catch {
            logger.warning("fleet metrics not read", metadata: ["error": "\(error)"])
        }
    }

    func recordProcess() {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let page = Int64(sysconf(Int32(_SC_PAGESIZE)))
        if let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") {
            // Fields after the command name: 3 state ... 14 utime, 15 stime, 22 starttime, 23 vsize, 24 rss.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            func field(_ number: Int) -> Double { fields.count > number - 3 ? Double(fields[number - 3]) ?? 0 : 0 }
            process.cpu.set((field(14) + field(15)) / ticks)
            process.virtual.set(field(23))
            process.resident.set(field(24) * Double(page))
            if let uptime = try? String(contentsOfFile: "/proc/stat", encoding: .utf8).split(separator: "\n").first(where: { $0.hasPrefix("btime ") }),
               let boot = Double(uptime.dropFirst(6).trimmingCharacters(in: .whitespaces)) {
                process.start.set(boot + field(22) / ticks)
            }
        }
        process.openFDs.set(Int64((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0))
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 { process.maxFDs.set(Int64(limit.rlim_cur)) }
    }
}
