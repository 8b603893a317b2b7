import Foundation
import PorticoGateway
import PorticoManager
import PorticoServer
import PorticoTestSupport
import Testing

/// `portico-agent fleet` against `portico serve`: agents enrolled once check in on their
/// schedule, each on a fresh TCP and TLS connection that resumes its TLS session.
@Suite(.serialized, .timeLimit(.minutes(2))) struct FleetTests {
    @Test func agentsCheckInOnFreshConnectionsThatResumeTheirSessions() async throws {
        let dir = try TemporaryDirectory()
        let (serve, bootstrap, _) = try await Self.manager(in: dir, api: false)

        let fleet = try ServerProcess(["fleet", "--bootstrap", bootstrap, "--agents", "12", "--interval", "1", "--duration", "3", "--sources", "4",
                                       "--concurrency", "8", "--server-pid", "\(serve.pid)", "--database", dir.file("data/portico.sqlite")],
                                      executable: "portico-agent")
        #expect(await fleet.wait() == 0, "fleet said: \(fleet.text)")
        let lines = fleet.text.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("enrolled 12 agents") }, "\(fleet.text)")
        // agents, target/s, achieved/s, p50, p99, max, connections, resumed, errors
        let header = try #require(lines.firstIndex { $0.hasPrefix("agents\ttarget/s") }, "\(fleet.text)")
        let table = lines[header + 1].split(separator: "\t")
        #expect(table.count == 9 && table[0] == "12", "\(table)")
        let connections = try #require(Int(table[6]))
        let resumed = try #require(Double(table[7].dropLast()))
        // About one check-in per agent a second for three seconds, each on its own connection
        // (the first of each agent's also opens a protocol session).
        #expect(connections >= 24, "\(fleet.text)")
        #expect(resumed >= 90, "\(fleet.text)")
        #expect(table[8] == "0", "\(fleet.text)")
        #expect(lines.contains { $0.hasPrefix("server\t") && $0.contains("us CPU per check-in") }, "\(fleet.text)")
        #expect(lines.contains { $0.hasPrefix("database\t") }, "\(fleet.text)")

        serve.signal(SIGTERM)
        #expect(await serve.wait() == 0)
    }

    /// Mid-run, through the API: a policy published reaches every agent, locks queued for some
    /// of them are carried out, and a share of check-ins report events.
    @Test func aPolicyPublishedAndLocksQueuedMidRunReachTheAgents() async throws {
        let dir = try TemporaryDirectory()
        let agent = try #require(ServerProcess.executable(named: "portico-agent"))
        let (serve, bootstrap, api) = try await Self.manager(in: dir, api: true)

        // Long enough for the locks to be carried out at the agents' next check-ins even when
        // the sign-in before them is slow (the whole suite running at once).
        let fleet = try await Tools.run(agent, ["fleet", "--bootstrap", bootstrap, "--agents", "12", "--interval", "1", "--duration", "20", "--sources", "4",
                                                "--concurrency", "8", "--api", try #require(api), "--operator-name", "ops", "--publish-at", "1", "--lock-at", "1",
                                                "--locks", "5", "--event-share", "0.5"], input: "fleet password 1234\n")
        #expect(fleet.status == 0, "\(fleet.output)")
        let lines = fleet.output.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("policy\t12 of 12 agents fetched it\t99% reached in ") && !$0.hasSuffix("not reached") }, "\(fleet.output)")
        #expect(lines.contains { $0.hasPrefix("locks\t5 queued, 5 carried out") }, "\(fleet.output)")
        #expect(lines.contains { $0.hasPrefix("events\t") }, "\(fleet.output)")
        let table = try #require(lines.firstIndex { $0.hasPrefix("agents\ttarget/s") }.map { lines[$0 + 1].split(separator: "\t") })
        #expect(table.last == "0", "\(fleet.output)")

        serve.signal(SIGTERM)
        #expect(await serve.wait() == 0)
    }

    /// A fleet enrolled straight into the database before the manager starts (keys derived
    /// from a seed) checks in as agents enrolled through the endpoint do.
    @Test func aFleetEnrolledInTheDatabaseChecksIn() async throws {
        let dir = try TemporaryDirectory()
        let bench = try #require(ServerProcess.executable(named: "portico-bench"))
        let enrolled = dir.file("fleet.json")
        let (serve, bootstrap, _) = try await Self.manager(in: dir, api: false) { config in
            let run = try await Tools.run(bench, ["enroll-fleet", "--config", config, "--agents", "200", "--seed", "test", "--out", enrolled])
            #expect(run.status == 0 && run.output.hasPrefix("enrolled 200 devices"), "\(run.output)")
        }
        let attributes = try FileManager.default.attributesOfItem(atPath: enrolled)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let fleet = try ServerProcess(["fleet", "--bootstrap", bootstrap, "--enrolled", enrolled, "--agents", "200", "--interval", "1", "--duration", "3",
                                       "--sources", "4", "--concurrency", "16"], executable: "portico-agent")
        #expect(await fleet.wait() == 0, "fleet said: \(fleet.text)")
        let lines = fleet.text.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("loaded 200 agents") }, "\(fleet.text)")
        let table = try #require(lines.firstIndex { $0.hasPrefix("agents\ttarget/s") }.map { lines[$0 + 1].split(separator: "\t") }, "\(fleet.text)")
        // Agents whose keys were derived, not enrolled through the endpoint, open sessions and
        // check in, and none is refused. (How many get through in 3 s depends on the machine.)
        #expect(try #require(Int(table[6])) > 0, "\(fleet.text)")
        #expect(table[8] == "0", "\(fleet.text)")
        serve.signal(SIGTERM)
        #expect(await serve.wait() == 0)
    }

    /// `portico serve` with the agents' listener (and the API with an admin, `ops`, when
    /// asked), an unlimited token, and a bootstrap file for it.
    /// `before` runs with the config file's path before the manager starts.
    static func manager(in dir: TemporaryDirectory, api: Bool, before: (String) async throws -> Void = { _ in }) async throws -> (serve: ServerProcess, bootstrap: String, api: String?) {
        var listeners: [ListenerName: String] = [.client: "access_log: false"]
        if api { listeners[.webservices] = "access_log: false" }
        let config = try ManagerConfigFile.write(in: dir, listeners: listeners, routes: [
            "{listener: client, path: /agent/v1/*, service: agent}", "{listener: webservices, path: /api/v1/*, service: api}",
        ])
        let portico = try #require(ServerProcess.executable(named: "portico"))
        if api {
            let admin = try await Tools.run(portico, ["admin", "create", "--config", config, "--name", "ops", "--role", "admin"], input: "fleet password 1234\n")
            #expect(admin.status == 0, "\(admin.output)")
        }
        try await before(config)
        let serve = try ServerProcess(["serve", "--config", config])
        await serve.waitFor("listening", count: api ? 2 : 1)
        let https = "https://127.0.0.1:\(try #require(serve.boundPort(.client)))"
        let token = try await Tools.run(portico, ["token", "create", "--config", config, "--expires", "1h", "--unlimited"])
        #expect(token.status == 0, "\(token.output)")
        let bootstrap = dir.file("bootstrap.json")
        let export = try await Tools.run(portico, ["agent-config", "export", "--config", config, "--url", https, "--output", bootstrap,
                                                   "--token", token.output.trimmingCharacters(in: .whitespacesAndNewlines)])
        #expect(export.status == 0, "\(export.output)")
        return (serve, bootstrap, api ? "https://127.0.0.1:\(try #require(serve.boundPort(.webservices)))" : nil)
    }
}
