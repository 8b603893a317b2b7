import ArgumentParser
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import Foundation
import NIOConcurrencyHelpers
import PorticoAgent
import PorticoProtocol

#if canImport(Glibc)
import Glibc
#endif

/// A fleet as it reaches a manager in the field: agents enrolled once, each checking in on
/// its own schedule (the interval the manager asks for, with its jitter) on a fresh TCP and
/// TLS connection that resumes the agent's TLS session, from many loopback source addresses
/// so that ports never run out. Sessions of the protocol expire and are opened again as the
/// agents' own. A progress line each second, and a table at the end.
struct Fleet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load at fleet scale: agents on fresh connections with TLS resumption, each on its own schedule.")
    @Option(help: "The bootstrap file.") var bootstrap: String
    @Option(help: "A multi-use enrollment token (else the bootstrap file's).") var token: String?
    @Option(help: "Agents enrolled already by `portico-bench enroll-fleet` (its file): no enrollment through the manager.") var enrolled: String?
    @Option(help: "How many agents.") var agents: Int = 1000
    @Option(help: "Seconds between an agent's check-ins (jittered by 10%); default: what the manager asks.") var interval: Int?
    @Option(help: "How long to check in, in seconds, after enrollment.") var duration: Int = 60
    @Option(help: "Loopback source addresses to connect from (127.0.1.1 and on).") var sources: Int = 64
    @Option(help: "Requests in flight at most.") var concurrency: Int = 256
    @Option(help: "The manager's process id, for its CPU per check-in and its memory.") var serverPid: Int32?
    @Option(help: "The manager's database file, for its size.") var database: String?
    @Option(help: "A manager URL to use instead of the bootstrap file's first (an IPv4 address).") var url: String?
    @Option(help: "The newest TLS version to offer: 1.3 (resumption with a fresh key exchange) or 1.2 (resumption by ticket alone).") var tls: String = "1.3"
    @Option(help: "The manager's API (https://127.0.0.1:8446), for the events below; the operator's password is read from PORTICO_FLEET_PASSWORD, else from standard input.") var api: String?
    @Option(help: "The operator the API calls sign in as.") var operatorName: String?
    @Option(help: "Second at which a policy is published through the API; every agent fetches it.") var publishAt: Int?
    @Option(help: "Second at which lock commands are queued through the API for random agents.") var lockAt: Int?
    @Option(help: "How many agents get a lock command.") var locks: Int = 1000
    @Option(help: "The share of check-ins that also report a batch of 10 events (0 to 1).") var eventShare: Double = 0

    func validate() throws {
        guard agents > 0, duration > 0, sources > 0, sources <= 65_000, concurrency > 0 else {
            throw ValidationError("agents, duration, sources and concurrency must be positive (sources at most 65000)")
        }
        if let interval, interval <= 0 { throw ValidationError("interval must be positive") }
        if (publishAt != nil || lockAt != nil) && (api == nil || operatorName == nil) {
            throw ValidationError("--publish-at and --lock-at need --api and --operator-name (and the password in PORTICO_FLEET_PASSWORD or on standard input)")
        }
        guard (0...1).contains(eventShare) else { throw ValidationError("--event-share must be between 0 and 1") }
        guard tls == "1.3" || tls == "1.2" else { throw ValidationError("--tls must be 1.3 or 1.2") }
    }

    func run() async throws {
        let file = try readBootstrap(bootstrap)
        let preEnrolled = try enrolled.map { try JSONDecoder().decode(FleetEnrollment.self, from: Data(contentsOf: URL(fileURLWithPath: $0))) }
        if let preEnrolled, preEnrolled.agents < agents { throw ValidationError("\(enrolled ?? "") holds \(preEnrolled.agents) agents, fewer than --agents \(agents)") }
        let token = token ?? file.enrollmentToken
        guard preEnrolled != nil || token != nil else { throw ValidationError("no token: pass --token or put one in the bootstrap file, or --enrolled") }
        let managerURL = url ?? file.managerURLs.first ?? ""
        let target = try FleetTarget(url: managerURL)
        let tls = try FreshConnectionTLS(pinned: file.pinned, threads: concurrency, newest: self.tls == "1.2" ? .tls12 : .tls13)
        let sourceAddresses = (0..<sources).map { Self.source($0) }
        let clock = ContinuousClock()
        let server = serverPid.map(ServerProcessStats.init)
        let stats = FleetStats()

        // Enrollment, once per agent, on the same kind of connections.
        let enrollStart = clock.now
        let limiter = Limiter(concurrency)
        var clients = [AgentClient?](repeating: nil, count: agents)
        if let preEnrolled {
            for n in 0..<agents {
                let transport = FreshConnectionTransport(client: tls, target: target, source: sourceAddresses[n % sourceAddresses.count])
                clients[n] = AgentClient(state: preEnrolled.state(n, pinned: file.pinned, managerURL: managerURL), managerURL: managerURL, transport: transport)
            }
        } else { try await withThrowingTaskGroup(of: (Int, AgentClient).self) { group in
            for n in 0..<agents {
                await limiter.acquire()
                group.addTask {
                    let transport = FreshConnectionTransport(client: tls, target: target, source: sourceAddresses[n % sourceAddresses.count])
                    do {
                        let state = try await AgentClient.enroll(transport: transport, bootstrap: file, credential: .token(token ?? ""), keys: DeviceKeys(),
                                                                 hostname: "fleet-\(n)", os: "simulated", managerURL: managerURL)
                        await limiter.release()
                        return (n, AgentClient(state: state, managerURL: managerURL, transport: transport))
                    } catch {
                        await limiter.release()
                        throw error
                    }
                }
            }
            for try await (index, client) in group { clients[index] = client }
        } }
        let fleet = clients.map { $0! }
        let enrollSeconds = Self.seconds(clock.now - enrollStart)
        emit(String(format: "%@ %d agents in %.1fs (%.0f/s)", preEnrolled == nil ? "enrolled" : "loaded", fleet.count, enrollSeconds, Double(fleet.count) / enrollSeconds))

        let managerInterval = await fleet[0].state.checkInIntervalSeconds
        let fixedInterval = interval
        let every = Double(fixedInterval ?? managerInterval)
        let targetRate = Double(agents) / every
        emit(String(format: "checking in for %ds: %d agents every %.0fs (target %.0f check-ins/s), %d source addresses, %d in flight at most",
                     duration, agents, every, targetRate, sources, concurrency))

        let schedule = Schedule(slotMilliseconds: 100)
        let start = clock.now
        // The first check-ins spread over one interval.
        for index in fleet.indices { schedule.add(index, at: Double.random(in: 0..<every) * 1000) }
        let simulator = ServerProcessStats(getpid())
        let baseline = (server?.cpuTicks(), tls.counts, simulator.cpuTicks())
        let end = start + .seconds(duration)
        let events = FleetEvents()
        let password = self.api == nil ? "" : ProcessInfo.processInfo.environment["PORTICO_FLEET_PASSWORD"] ?? readLine(strippingNewline: true) ?? ""
        let api = try self.api.map { try FleetAPI(url: $0, pinned: file.pinned, name: operatorName ?? "", password: password) }
        let eventShare = self.eventShare
        let (publishAt, lockAt, locks) = (self.publishAt, self.lockAt, self.locks)
        await withDiscardingTaskGroup { group in
            if let api {
                group.addTask {
                    if let publishAt {
                        try? await Task.sleep(until: start + .seconds(publishAt))
                        // From the moment the request leaves: an agent may fetch the policy
                        // before the API's answer is back here.
                        events.published(at: clock.now)
                        do {
                            try await api.publishPolicy(named: "fleet-\(UInt32.random(in: 0...UInt32.max))")
                        } catch {
                            events.published(at: nil)
                            emit("publish failed: \(error)")
                        }
                    }
                    if let lockAt {
                        try? await Task.sleep(until: start + .seconds(lockAt))
                        var chosen = Set<Int>()
                        while chosen.count < min(locks, fleet.count) { chosen.insert(Int.random(in: fleet.indices)) }
                        var ids: [String] = []
                        for index in chosen { ids.append(await fleet[index].state.deviceID) }
                        await api.lock(ids, events: events, clock: clock)
                    }
                }
            }
            group.addTask {
                var last = (count: 0, ticks: baseline.0 ?? 0)
                for second in 1...duration {
                    try? await Task.sleep(until: start + .seconds(second))
                    let count = stats.count
                    let ticks = server?.cpuTicks() ?? 0
                    var line = String(format: "%ds: %d check-ins/s (target %.0f), p99 %.1f ms, %d errors", second, count - last.count, targetRate,
                                      stats.recentPercentile(0.99), stats.errorCount)
                    if let server, count > last.count {
                        line += String(format: ", server %.0f us/check-in, RSS %.0f MB", server.microseconds(ticks: ticks - last.ticks) / Double(count - last.count), server.rssMegabytes())
                    }
                    emit(line)
                    last = (count, ticks)
                }
            }
            while clock.now < end {
                let due = schedule.take(upTo: Self.milliseconds(clock.now - start))
                for index in due {
                    // Behind schedule, the due list can outlast the run: it ends on time.
                    if clock.now >= end { break }
                    await limiter.acquire()
                    let client = fleet[index]
                    group.addTask {
                        let began = clock.now
                        var next = every
                        do {
                            let reply = try await client.checkIn(status: "ok")
                            stats.record(clock.now - began)
                            if fixedInterval == nil { next = Double(reply.nextCheckInSeconds) }
                            // What an agent does with the answer: fetch a changed policy, carry
                            // out its commands, and report what it saw.
                            if reply.policyChanged {
                                _ = try await client.fetchPolicy()
                                events.fetched(by: index, at: clock.now)
                            }
                            for command in reply.commands {
                                try await client.reportResult(commandID: command.id, succeeded: true, detail: "simulated")
                                events.acknowledged(command.id, at: clock.now)
                            }
                            if eventShare > 0, Double.random(in: 0..<1) < eventShare {
                                let now = Int64(Date().timeIntervalSince1970 * 1000)
                                _ = try await client.report((0..<10).map { AgentEvent(id: "\(now)-\(index)-\($0)", kind: "process.started", occurredMilliseconds: now, body: #"{"path":"/usr/bin/true"}"#) })
                                events.reported()
                            }
                        } catch {
                            stats.fail(Self.kind(of: error))
                        }
                        if fixedInterval != nil { next *= Double.random(in: 0.9...1.1) }
                        schedule.add(index, at: Self.milliseconds(clock.now - start) + next * 1000)
                        await limiter.release()
                    }
                }
                try? await Task.sleep(for: .milliseconds(schedule.slotMilliseconds))
            }
        }
        let elapsed = Self.seconds(clock.now - start)
        let counts = tls.counts
        let connections = counts.connections - baseline.1.connections
        let resumed = counts.resumed - baseline.1.resumed
        let latencies = stats.sortedMilliseconds
        func percentile(_ p: Double) -> Double { latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        emit("agents\ttarget/s\tachieved/s\tp50 ms\tp99 ms\tmax ms\tconnections\tresumed\terrors")
        emit(String(format: "%d\t%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%d\t%.1f%%\t%d", agents, targetRate, Double(latencies.count) / elapsed, percentile(0.5), percentile(0.99),
                     latencies.last ?? 0, connections, connections == 0 ? 0 : Double(resumed) * 100 / Double(connections), stats.errorCount))
        for (kind, count) in stats.errorsByKind.sorted(by: { $0.key < $1.key }) { emit("error\t\(kind)\t\(count)") }
        if let server, let before = baseline.0, !latencies.isEmpty {
            let ticks = server.cpuTicks() - before
            emit(String(format: "server\t%.0f us CPU per check-in (connections and session openings included)\t%.2f cores\t%.0f MB RSS",
                         server.microseconds(ticks: ticks) / Double(latencies.count), server.microseconds(ticks: ticks) / 1e6 / elapsed, server.rssMegabytes()))
        }
        if !latencies.isEmpty {
            // Where the simulator's own CPU is what limits, this says so.
            let ticks = simulator.cpuTicks() - baseline.2
            emit(String(format: "simulator\t%.0f us CPU per check-in\t%.2f cores", simulator.microseconds(ticks: ticks) / Double(latencies.count), simulator.microseconds(ticks: ticks) / 1e6 / elapsed))
        }
        for line in events.summary(agents: agents) { emit(line) }
        if let database {
            // SQLite keeps recent writes in its write-ahead log beside the file.
            let bytes = ["", "-wal"].compactMap { try? FileManager.default.attributesOfItem(atPath: database + $0)[.size] as? NSNumber }.reduce(0.0) { $0 + $1.doubleValue }
            emit(String(format: "database\t%.1f MB\t%.0f bytes per agent", bytes / 1_048_576, bytes / Double(agents)))
        }
        await api?.shutdown()
        try await tls.pool.shutdownGracefully()
    }

    /// 127.0.1.1, 127.0.1.2, ... in network order.
    static func source(_ n: Int) -> in_addr_t {
        let value = UInt32(0x7F00_0101) + UInt32(n)
        return in_addr_t(value.bigEndian)
    }

    static func kind(of error: any Error) -> String {
        switch error {
        case let error as FleetError: error.kind
        case let error as ProtocolError: error.code.rawValue
        default: "other"
        }
    }

    static func seconds(_ duration: Duration) -> Double { Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18 }
    static func milliseconds(_ duration: Duration) -> Double { seconds(duration) * 1000 }
}

/// Agents due at each moment, in slots of a fixed length.
final class Schedule: Sendable {
    let slotMilliseconds: Int
    private let slots = NIOLockedValueBox<(taken: Int, due: [Int: [Int]])>((0, [:]))

    init(slotMilliseconds: Int) { self.slotMilliseconds = slotMilliseconds }

    func add(_ index: Int, at milliseconds: Double) {
        let slot = Int(milliseconds) / slotMilliseconds
        slots.withLockedValue { state in state.due[max(slot, state.taken), default: []].append(index) }
    }

    /// Every agent due up to `milliseconds` from the start.
    func take(upTo milliseconds: Double) -> [Int] {
        let last = Int(milliseconds) / slotMilliseconds
        return slots.withLockedValue { state in
            var due: [Int] = []
            while state.taken <= last {
                if let agents = state.due.removeValue(forKey: state.taken) { due += agents }
                state.taken += 1
            }
            return due
        }
    }
}

/// At most `limit` at once; the rest wait their turn in order.
actor Limiter {
    private var available: Int
    private var waiters: [CheckedContinuation<Void, Never>] = []

    init(_ limit: Int) { available = limit }

    func acquire() async {
        if available > 0 {
            available -= 1
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func release() {
        if waiters.isEmpty { available += 1 } else { waiters.removeFirst().resume() }
    }
}

/// Latencies and errors of the fleet, with the last second's for the progress line.
final class FleetStats: Sendable {
    private struct State {
        var latencies: [Double] = []
        var recent: [Double] = []
        var errors: [String: Int] = [:]
    }
    private let state = NIOLockedValueBox(State())

    func record(_ duration: Duration) {
        let milliseconds = Fleet.milliseconds(duration)
        state.withLockedValue {
            $0.latencies.append(milliseconds)
            $0.recent.append(milliseconds)
        }
    }

    func fail(_ kind: String) { state.withLockedValue { $0.errors[kind, default: 0] += 1 } }

    var count: Int { state.withLockedValue { $0.latencies.count } }
    var errorCount: Int { state.withLockedValue { $0.errors.values.reduce(0, +) } }
    var errorsByKind: [String: Int] { state.withLockedValue { $0.errors } }
    var sortedMilliseconds: [Double] { state.withLockedValue { $0.latencies }.sorted() }

    /// A percentile of the latencies since the last call.
    func recentPercentile(_ p: Double) -> Double {
        let recent = state.withLockedValue { state in
            defer { state.recent.removeAll(keepingCapacity: true) }
            return state.recent
        }.sorted()
        return recent.isEmpty ? 0 : recent[min(recent.count - 1, Int(Double(recent.count) * p))]
    }
}

/// A process's CPU time and memory, from /proc (the manager's, or the simulator's own).
struct ServerProcessStats: Sendable {
    let pid: Int32

    init(_ pid: Int32) { self.pid = pid }

    /// User and system time in clock ticks.
    func cpuTicks() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return 0 }
        // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Int(fields[11]), let system = Int(fields[12]) else { return 0 }
        return user + system
    }

    func microseconds(ticks: Int) -> Double { Double(ticks) * 1_000_000 / Double(sysconf(Int32(_SC_CLK_TCK))) }

    func rssMegabytes() -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kilobytes = Double(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kilobytes / 1024
    }
}

/// What happens to a fleet mid-run: a policy published and fetched, locks queued and carried
/// out, events reported.
final class FleetEvents: Sendable {
    private struct State {
        var published: ContinuousClock.Instant?
        /// Each agent's latest fetch since the publication began (creating the policy moves the
        /// serial too, so an agent may fetch twice).
        var fetches: [Int: ContinuousClock.Instant] = [:]
        var queued: [String: ContinuousClock.Instant] = [:]
        /// Carried out before the API's answer naming the command was back here (push).
        var early: [String: ContinuousClock.Instant] = [:]
        var acknowledgements: [Double] = []
        var batches = 0
    }
    private let state = NIOLockedValueBox(State())

    func published(at instant: ContinuousClock.Instant?) { state.withLockedValue { $0.published = instant } }
    func fetched(by agent: Int, at instant: ContinuousClock.Instant) { state.withLockedValue { if $0.published != nil { $0.fetches[agent] = instant } } }
    func queued(_ commandID: String, at instant: ContinuousClock.Instant) {
        state.withLockedValue { state in
            if let done = state.early.removeValue(forKey: commandID) {
                state.acknowledgements.append(Fleet.seconds(done - instant))
            } else {
                state.queued[commandID] = instant
            }
        }
    }
    func reported() { state.withLockedValue { $0.batches += 1 } }

    func acknowledged(_ commandID: String, at instant: ContinuousClock.Instant) {
        state.withLockedValue { state in
            guard let queued = state.queued.removeValue(forKey: commandID) else {
                state.early[commandID] = instant
                return
            }
            state.acknowledgements.append(Fleet.seconds(instant - queued))
        }
    }

    /// Locks queued and not carried out yet, and the seconds each carried out one took.
    var locks: (waiting: Int, carriedOut: [Double]) {
        state.withLockedValue { ($0.queued.count, $0.acknowledgements) }
    }

    /// Lines for the final table.
    func summary(agents: Int) -> [String] {
        let state = self.state.withLockedValue { $0 }
        var lines: [String] = []
        if let published = state.published {
            let fetches = state.fetches.values.sorted()
            let needed = Int((Double(agents) * 0.99).rounded(.up))
            let reached = fetches.count >= needed ? String(format: "%.1f s", Fleet.seconds(fetches[needed - 1] - published)) : "not reached"
            lines.append("policy\t\(fetches.count) of \(agents) agents fetched it\t99% reached in \(reached)")
        }
        if !state.acknowledgements.isEmpty || !state.queued.isEmpty {
            let times = state.acknowledgements.sorted()
            func percentile(_ p: Double) -> Double { times.isEmpty ? 0 : times[min(times.count - 1, Int(Double(times.count) * p))] }
            lines.append(String(format: "locks\t%d queued, %d carried out\tp50 %.1f s, p99 %.1f s, max %.1f s from queued to carried out",
                                times.count + state.queued.count, times.count, percentile(0.5), percentile(0.99), times.last ?? 0))
        }
        if state.batches > 0 { lines.append("events\t\(state.batches) batches of 10 reported") }
        return lines
    }
}

/// The manager's API, as an operator's automation calls it, for the fleet's mid-run events.
final class FleetAPI: Sendable {
    private let base: String
    private let client: HTTPClient
    private let name: String
    private let password: String
    /// The access token of the first sign-in, kept for the run's later calls: a sign-in is
    /// a password hash on the manager, slow on purpose.
    private let token = NIOLockedValueBox<String?>(nil)

    init(url: String, pinned: PinnedCertificates, name: String, password: String) throws {
        self.base = url.hasSuffix("/") ? String(url.dropLast()) : url
        self.client = AgentClient.makeHTTPClient(pinned: pinned)
        self.name = name
        self.password = password
    }

    func shutdown() async { try? await client.shutdown() }

    private func call(_ method: HTTPMethod, _ path: String, token: String?, body: [String: Any]) async throws -> [String: Any] {
        var request = HTTPClientRequest(url: base + "/api/v1" + path)
        request.method = method
        request.headers.add(name: "content-type", value: "application/json")
        if let token { request.headers.add(name: "authorization", value: "Bearer \(token)") }
        request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
        let response = try await client.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        guard (200..<300).contains(response.status.code) else { throw FleetError.io("API \(method.rawValue) \(path): \(response.status.code) \(String(buffer: bytes))") }
        return (try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView)) as? [String: Any]) ?? [:]
    }

    private func signIn() async throws -> String {
        if let kept = token.withLockedValue({ $0 }) { return kept }
        guard let made = try await call(.POST, "/auth/login", token: nil, body: ["name": name, "password": password])["access_token"] as? String else {
            throw FleetError.io("the API's sign-in gave no access token")
        }
        token.withLockedValue { $0 = made }
        return made
    }

    func publishPolicy(named policyName: String) async throws {
        let token = try await signIn()
        guard let id = try await call(.POST, "/policies", token: token, body: ["name": policyName, "document": ["usb_storage": "block"]])["id"] as? String else {
            throw FleetError.io("the API made no policy id")
        }
        _ = try await call(.POST, "/policies/\(id)/publish", token: token, body: ["version": 1])
    }

    /// Queues a lock for each device, 32 at a time, recording when each was queued.
    func lock(_ deviceIDs: [String], events: FleetEvents, clock: ContinuousClock) async {
        guard let token = try? await signIn() else { emit("locks: the API's sign-in failed"); return }
        await withTaskGroup(of: Void.self) { group in
            for (n, id) in deviceIDs.enumerated() {
                if n >= 32 { await group.next() }
                group.addTask {
                    let queued = clock.now
                    if let command = try? await self.call(.POST, "/commands", token: token, body: ["device_id": id, "kind": "lock"]), let commandID = command["id"] as? String {
                        events.queued(commandID, at: queued)
                    }
                }
            }
        }
    }
}

/// Writes a line to standard output at once (a progress line, or an agent's log line, is read
/// as it comes; `print` buffers when standard output is a pipe or journald).
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
