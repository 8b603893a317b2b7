import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import PorticoAgent
import PorticoProtocol

/// Many agents in one process: each enrolls with its own keys, opens a session, then checks
/// in back to back for the duration. Prints progress each second and a final table.
struct Simulate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Load: many simulated agents checking in against a manager.")
    @Option(help: "The bootstrap file.") var bootstrap: String
    @Option(help: "A multi-use enrollment token (else the bootstrap file's).") var token: String?
    @Option(help: "How many agents.") var agents: Int = 100
    @Option(help: "How long to check in, in seconds.") var duration: Int = 10
    @Option(help: "A manager URL to use instead of the bootstrap file's first.") var url: String?

    func run() async throws {
        let file = try readBootstrap(bootstrap)
        guard let token = token ?? file.enrollmentToken else { throw ValidationError("no token: pass --token or put one in the bootstrap file") }
        let http = AgentClient.makeHTTPClient(pinned: file.pinned)
        let stats = Stats()
        let clock = ContinuousClock()
        let enrollStart = clock.now
        let clients = try await withThrowingTaskGroup(of: AgentClient.self) { group in
            for n in 0..<agents {
                group.addTask {
                    let state = try await AgentClient.enroll(bootstrap: file, token: token, hostname: "sim-\(n)", os: "simulated", managerURL: url, http: http)
                    let client = AgentClient(state: state, managerURL: url, http: http)
                    try await client.openSession()
                    return client
                }
            }
            return try await group.reduce(into: [AgentClient]()) { $0.append($1) }
        }
        print("enrolled \(clients.count) agents in \(format(clock.now - enrollStart))")

        let deadline = clock.now + .seconds(duration)
        let started = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for client in clients {
                group.addTask {
                    while clock.now < deadline {
                        let begin = clock.now
                        do {
                            _ = try await client.checkIn(status: "simulated")
                            stats.record(clock.now - begin)
                        } catch {
                            stats.fail()
                        }
                    }
                }
            }
            group.addTask {
                var last = 0
                for second in 1...duration {
                    try await Task.sleep(until: started + .seconds(second))
                    let total = stats.count
                    print("\(second)s: \(total - last) check-ins/s, \(stats.errors) errors")
                    last = total
                }
            }
            try await group.waitForAll()
        }
        let elapsed = seconds(clock.now - started)
        let latencies = stats.sortedMilliseconds
        func percentile(_ p: Double) -> Double { latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        print("agents\tcheck-ins\tcheck-ins/s\tp50 ms\tp99 ms\terrors")
        print(String(format: "%d\t%d\t%.0f\t%.2f\t%.2f\t%d", clients.count, latencies.count, Double(latencies.count) / elapsed, percentile(0.5), percentile(0.99), stats.errors))
        try await http.shutdown()
    }

    private func seconds(_ duration: Duration) -> Double { Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18 }
    private func format(_ duration: Duration) -> String { String(format: "%.1fs", seconds(duration)) }
}

/// Latencies and errors gathered from every simulated agent.
final class Stats: Sendable {
    private let state = NIOLockedValueBox<(latencies: [Double], errors: Int)>(([], 0))

    func record(_ duration: Duration) {
        let ms = Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
        state.withLockedValue { $0.latencies.append(ms) }
    }

    func fail() { state.withLockedValue { $0.errors += 1 } }
    var count: Int { state.withLockedValue { $0.latencies.count } }
    var errors: Int { state.withLockedValue { $0.errors } }
    var sortedMilliseconds: [Double] { state.withLockedValue { $0.latencies }.sorted() }
}
