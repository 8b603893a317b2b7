import ArgumentParser
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PorticoAgent
import PorticoProtocol

/// Load for push: every agent of a fleet holds a wait open at the manager, on a kept-alive
/// connection of its own; then the manager is left alone (its CPU while nothing happens), then
/// locks are queued through the API for random agents and timed from the call until the agent
/// has its command.
struct Hold: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load for push: agents each holding a wait open; locks through the API timed until the agent has them.")
    @Option(help: "The bootstrap file.") var bootstrap: String
    @Option(help: "Agents enrolled by `portico-bench enroll-fleet` (its file).") var enrolled: String
    @Option(help: "How many agents.") var agents: Int = 1000
    @Option(help: "A manager URL to use instead of the bootstrap file's first (an IPv4 address; http:// for the plain listener).") var url: String?
    @Option(help: "Loopback source addresses to connect from (127.0.1.1 and on).") var sources: Int = 8
    @Option(help: "Sessions opened at once while the agents arrive.") var concurrency: Int = 64
    @Option(help: "Event loop threads of the simulator.") var threads: Int = 1
    @Option(help: "The manager's process id, for its memory and CPU.") var serverPid: Int32?
    @Option(help: "Seconds with every wait held and nothing happening, for the manager's idle CPU.") var idle: Int = 20
    @Option(help: "The manager's API (https://127.0.0.1:8446); the operator's password is read from PORTICO_FLEET_PASSWORD, else from standard input.") var api: String?
    @Option(help: "The operator the API calls sign in as.") var operatorName: String?
    @Option(help: "How many locks to queue, each for a random agent.") var locks: Int = 1000

    func validate() throws {
        guard agents > 0, sources > 0, sources <= 65_000, concurrency > 0, threads > 0, idle >= 0 else {
            throw ValidationError("agents, sources, concurrency and threads must be positive (sources at most 65000)")
        }
        if locks > 0 && (api == nil || operatorName == nil) { throw ValidationError("--locks needs --api and --operator-name (or pass --locks 0)") }
    }

    func run() async throws {
        let file = try readBootstrap(bootstrap)
        let fleetFile = try JSONDecoder().decode(FleetEnrollment.self, from: Data(contentsOf: URL(fileURLWithPath: enrolled)))
        guard fleetFile.agents >= agents else { throw ValidationError("\(enrolled) holds \(fleetFile.agents) agents, fewer than --agents \(agents)") }
        let managerURL = url ?? file.managerURLs.first ?? ""
        guard let parsed = URLComponents(string: managerURL), let host = parsed.host, let scheme = parsed.scheme else { throw ValidationError("\(managerURL) is not a URL") }
        let port = parsed.port ?? (scheme == "https" ? 443 : 80)
        let target = try SocketAddress(ipAddress: host, port: port)
        var tlsContext: NIOSSLContext?
        if scheme == "https" {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(file.pinned.tlsTrustRoots.compactMap { try? NIOSSLCertificate(bytes: Array($0.utf8), format: .pem) })
            tls.certificateVerification = .noHostnameVerification
            tlsContext = try NIOSSLContext(configuration: tls)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let clock = ContinuousClock()
        let server = serverPid.map(ServerProcessStats.init)
        let simulator = ServerProcessStats(getpid())
        let password = api == nil ? "" : ProcessInfo.processInfo.environment["PORTICO_FLEET_PASSWORD"] ?? readLine(strippingNewline: true) ?? ""
        let fleetAPI = try api.map { try FleetAPI(url: $0, pinned: file.pinned, name: operatorName ?? "", password: password) }

        let tls = tlsContext
        let states = (0..<agents).map { fleetFile.state($0, pinned: file.pinned, managerURL: managerURL) }
        let deviceIDs = states.map(\.deviceID)
        let fleet = try states.enumerated().map { n, state in
            let source = try SocketAddress(ipAddress: "127.0.1.\(n % sources + 1)", port: 0)
            let transport = HeldConnectionTransport(group: group, target: target, source: source, hostHeader: "\(host):\(port)", tls: tls)
            return AgentClient(state: state, managerURL: managerURL, transport: transport)
        }
        let rssBefore = server?.rssMegabytes() ?? 0
        let progress = HoldProgress()
        let events = FleetEvents()
        let limiter = Limiter(concurrency)
        let start = clock.now
        emit("\(agents) agents arriving, \(concurrency) sessions opened at once, from \(sources) source addresses")

        do { try await withThrowingDiscardingTaskGroup { group in
            for client in fleet {
                group.addTask {
                    await limiter.acquire()
                    var hold: Int?
                    do {
                        hold = try await client.checkIn().push?.holdSeconds
                    } catch {
                        progress.failed("\(Fleet.kind(of: error))")
                    }
                    await limiter.release()
                    guard let hold else {
                        // Answered, but without an offer to wait: push is off or the manager is loaded.
                        progress.failed("no push offered")
                        return
                    }
                    progress.arrived()
                    // Each wait in turn until the run ends: a lock is carried out at once.
                    while !Task.isCancelled {
                        do {
                            progress.waiting(+1)
                            let reply = try await client.wait(holdSeconds: hold)
                            progress.waiting(-1)
                            for command in reply.commands {
                                events.acknowledged(command.id, at: clock.now)
                                try await client.reportResult(commandID: command.id, succeeded: true, detail: "simulated")
                            }
                        } catch {
                            progress.waiting(-1)
                            if Task.isCancelled { break }
                            progress.failed("\(Fleet.kind(of: error))")
                            try? await Task.sleep(for: .seconds(1))
                        }
                    }
                }
            }
            group.addTask {
                // Every agent arrived and waiting: the manager holds them all.
                while progress.snapshot.waiting + progress.snapshot.errors["no push offered", default: 0] < agents && clock.now - start < .seconds(600) {
                    try await Task.sleep(for: .seconds(1))
                    let now = progress.snapshot
                    emit(String(format: "%.0fs\t%d arrived\t%d waiting\t%d errors\tmanager RSS %.0f MB", Fleet.seconds(clock.now - start), now.arrived, now.waiting,
                                now.errors.values.reduce(0, +), server?.rssMegabytes() ?? 0))
                }
                try await Task.sleep(for: .seconds(2))
                let rssHeld = server?.rssMegabytes() ?? 0
                let held = progress.snapshot.waiting
                emit(String(format: "held\t%d agents in %.1fs\tmanager RSS %.0f MB before, %.0f MB held: %.1f KiB per held agent", held, Fleet.seconds(clock.now - start),
                            rssBefore, rssHeld, (rssHeld - rssBefore) * 1024 / Double(max(1, held))))
                if let server, idle > 0 {
                    let ticks = server.cpuTicks()
                    let idleStart = clock.now
                    try await Task.sleep(for: .seconds(idle))
                    let cores = server.microseconds(ticks: server.cpuTicks() - ticks) / 1_000_000 / Fleet.seconds(clock.now - idleStart)
                    emit(String(format: "idle\t%ds with every wait held and nothing to say\tmanager CPU %.4f cores (%.2f ms a second)", idle, cores, cores * 1000))
                }
                if let fleetAPI, locks > 0 {
                    let chosen = (0..<locks).map { _ in deviceIDs.randomElement()! }
                    let lockStart = clock.now
                    let ticks = server?.cpuTicks() ?? 0
                    await fleetAPI.lock(chosen, events: events, clock: clock)
                    while events.locks.carriedOut.count < locks && clock.now - lockStart < .seconds(60) {
                        try await Task.sleep(for: .milliseconds(200))
                    }
                    let elapsed = Fleet.seconds(clock.now - lockStart)
                    let times = events.locks.carriedOut.sorted()
                    func percentile(_ p: Double) -> Double { times.isEmpty ? 0 : times[min(times.count - 1, Int(Double(times.count) * p))] * 1000 }
                    emit(String(format: "locks\t%d queued in %.1fs, %d carried out\tp50 %.0f ms, p99 %.0f ms, max %.0f ms from the API call to the agent",
                                locks, elapsed, times.count, percentile(0.5), percentile(0.99), (times.last ?? 0) * 1000))
                    if let server {
                        emit(String(format: "manager\t%.0f us of CPU per lock (queued, delivered, acknowledged)", server.microseconds(ticks: server.cpuTicks() - ticks) / Double(max(1, times.count))))
                    }
                }
                let final = progress.snapshot
                emit("errors\t" + (final.errors.isEmpty ? "none" : final.errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")))
                emit(String(format: "simulator\tRSS %.0f MB", simulator.rssMegabytes()))
                // Closing the connections ends the waits in flight; the group then ends.
                for client in fleet { await client.shutdown() }
                throw HoldFinished()
            }
        } } catch is HoldFinished {}
        await fleetAPI?.shutdown()
        try await group.shutdownGracefully()
    }
}

/// The run is over: ends the agents' loops.
struct HoldFinished: Error {}

/// How far the agents have come, for the progress lines.
final class HoldProgress: Sendable {
    struct Snapshot {
        var arrived = 0
        var waiting = 0
        var errors: [String: Int] = [:]
    }
    private let state = NIOLockedValueBox(Snapshot())
    var snapshot: Snapshot { state.withLockedValue { $0 } }
    func arrived() { state.withLockedValue { $0.arrived += 1 } }
    func waiting(_ change: Int) { state.withLockedValue { $0.waiting += change } }
    func failed(_ kind: String) { state.withLockedValue { $0.errors[kind, default: 0] += 1 } }
}
