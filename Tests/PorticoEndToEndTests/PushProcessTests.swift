import Foundation
import PorticoGateway
import PorticoServer
import PorticoTestSupport
import Testing

/// Push through the real executables: `portico-agent run` holds a wait at a manager and
/// carries out a lock queued through the API at once (the agents' check-in interval is an
/// hour), whichever manager of the site the lock was queued at; behind a proxy that cuts long
/// requests, the agent falls back to checking in at its interval.
@Suite(.serialized, .timeLimit(.minutes(3))) struct PushProcessTests {
    static let required = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil
    static var nginx: String? { ["/usr/sbin/nginx", "/usr/bin/nginx"].first { FileManager.default.isExecutableFile(atPath: $0) } }

    /// Enrolls `count` agents with `bootstrap` and starts `portico-agent run` for each.
    static func agents(_ count: Int, bootstrap: String, in dir: TemporaryDirectory) async throws -> [(id: String, process: ServerProcess)] {
        let executable = try #require(ServerProcess.executable(named: "portico-agent"))
        var started: [(id: String, process: ServerProcess)] = []
        for index in 0..<count {
            let state = dir.file("agent-\(index)")
            let enrolled = try await Tools.run(executable, ["enroll", "--bootstrap", bootstrap, "--state", state])
            #expect(enrolled.status == 0, "\(enrolled.output)")
            let id = try #require(enrolled.output.split(separator: " ").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })
            started.append((id, try ServerProcess(["run", "--state", state], executable: "portico-agent")))
        }
        return started
    }

    static func token(_ portico: String, config: String, url: String, bootstrap: String) async throws {
        let token = try await Tools.run(portico, ["token", "create", "--config", config, "--expires", "1h", "--unlimited"])
        #expect(token.status == 0, "\(token.output)")
        let export = try await Tools.run(portico, ["agent-config", "export", "--config", config, "--url", url, "--output", bootstrap,
                                                   "--token", token.output.trimmingCharacters(in: .whitespacesAndNewlines)])
        #expect(export.status == 0, "\(export.output)")
    }

    @Test(.enabled(if: TestPostgres.binaries != nil || required, "needs PostgreSQL's server (Debian package postgresql)"))
    func aLockQueuedAtOneManagerReachesAgentsHeldByTheOtherAtOnce() async throws {
        let dir = try TemporaryDirectory()
        let postgres = try await TestPostgres(in: dir)
        let portico = try #require(ServerProcess.executable(named: "portico"))
        try ManagerConfigFile.site("push", managers: 2, in: dir, postgres: postgres.url, listeners: { _ in [.client: "access_log: false", .webservices: "access_log: false"] },
                                   routes: ["{listener: client, path: /agent/v1/*, service: agent}", "{listener: webservices, path: /api/v1/*, service: api}"],
                                   more: "agents: {checkin_interval: 1h, push: {hold: 30s}}")
        let managers = try await ManagerConfigFile.startSite(managers: 2, listeners: 2, in: dir)
        defer { for manager in managers { manager.signal(SIGKILL) } }
        // The agents talk to the second manager only; the locks are queued at the first.
        let bootstrap = dir.file("bootstrap.json")
        try await Self.token(portico, config: dir.file("m2.yaml"), url: "https://127.0.0.1:\(try #require(managers[1].boundPort(.client)))", bootstrap: bootstrap)
        let agents = try await Self.agents(4, bootstrap: bootstrap, in: dir)
        defer { for agent in agents { agent.process.signal(SIGKILL) } }
        for agent in agents { await agent.process.waitFor("push: waits held up to 30 s") }

        let api = "https://127.0.0.1:\(try #require(managers[0].boundPort(.webservices)))/api/v1"
        try await APIClient.with { client in
            let token = try await client.login(api, "ops")
            // The first manager's API shows the devices held by the second.
            try await eventually("every agent's wait is held by m2", within: .seconds(30)) {
                let page = try await client.call(.GET, api + "/devices?limit=100", token: token)
                let held = (page.json["items"] as? [[String: Any]] ?? []).filter { $0["push_held_by"] as? String == "m2" }
                return held.count == agents.count
            }
            var locks: [String: String] = [:]
            for agent in agents {
                let queued = try await client.call(.POST, api + "/commands", token: token, json: #"{"device_id":"\#(agent.id)","kind":"lock"}"#)
                #expect(queued.status == 201, "\(queued.json)")
                locks[agent.id] = try #require(queued.json["id"] as? String)
            }
            // Carried out at once: the check-in interval is an hour.
            for agent in agents { await agent.process.waitFor("command lock \(locks[agent.id]!)") }
            for (_, id) in locks {
                try await eventually("lock \(id) is acknowledged", within: .seconds(30)) {
                    try await client.call(.GET, api + "/commands/\(id)", token: token).json["state"] as? String == "acknowledged"
                }
            }
        }
        for agent in agents { #expect(!agent.process.text.contains("push unavailable"), "\(agent.process.text)") }
    }

    /// A fleet held at once by `portico-agent hold`: every agent's wait is held, and locks
    /// queued through the API for random agents are all carried out.
    @Test func aFleetOfHeldAgentsCarriesOutLocksQueuedThroughTheAPI() async throws {
        let dir = try TemporaryDirectory()
        let bench = try #require(ServerProcess.executable(named: "portico-bench"))
        let agent = try #require(ServerProcess.executable(named: "portico-agent"))
        let enrolled = dir.file("fleet.json")
        let (serve, bootstrap, api) = try await FleetTests.manager(in: dir, api: true) { config in
            let run = try await Tools.run(bench, ["enroll-fleet", "--config", config, "--agents", "200", "--seed", "held", "--out", enrolled])
            #expect(run.status == 0, "\(run.output)")
        }
        defer { serve.signal(SIGKILL) }
        let hold = try await Tools.run(agent, ["hold", "--bootstrap", bootstrap, "--enrolled", enrolled, "--agents", "200", "--sources", "4", "--idle", "0",
                                               "--server-pid", String(serve.pid), "--api", try #require(api), "--operator-name", "ops", "--locks", "20"],
                                       input: "fleet password 1234\n")
        #expect(hold.status == 0, "\(hold.output)")
        let lines = hold.output.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("held\t200 agents") }, "\(hold.output)")
        #expect(lines.contains { $0.hasPrefix("locks\t20 queued") && $0.contains(", 20 carried out") }, "\(hold.output)")
        #expect(lines.contains { $0 == "errors\tnone" }, "\(hold.output)")
    }

    @Test(.enabled(if: nginx != nil || required, "nginx is not installed (apt-get install nginx)"))
    func behindAProxyThatCutsLongRequestsTheAgentChecksInAtItsInterval() async throws {
        let nginx = try #require(Self.nginx, "nginx is not installed")
        let dir = try TemporaryDirectory()
        let portico = try #require(ServerProcess.executable(named: "portico"))
        let config = try ManagerConfigFile.write(
            in: dir, listeners: [.clientPlain: "access_log: false", .webservices: "access_log: false"],
            routes: ["{listener: client_plain, path: /agent/v1/*, service: agent}", "{listener: webservices, path: /api/v1/*, service: api}"],
            more: "agents: {checkin_interval: 2s, push: {hold: 30s}}")
        let created = try await Tools.run(portico, ["admin", "create", "--config", config, "--name", "ops", "--role", "admin"], input: "site operator password\n")
        #expect(created.status == 0, "\(created.output)")
        let serve = try ServerProcess(["serve", "--config", config])
        defer { serve.signal(SIGKILL) }
        await serve.waitFor("listening", count: 2)
        // nginx in front of the plain listener, cutting any request not answered within 1 s.
        let port = try TestPorts.unused()
        try FileManager.default.createDirectory(atPath: dir.file("nginx/tmp"), withIntermediateDirectories: true)
        let conf = try dir.write("nginx/nginx.conf", """
            worker_processes 1;
            daemon off;
            pid \(dir.file("nginx/nginx.pid"));
            error_log \(dir.file("nginx/error.log")) warn;
            events { worker_connections 64; }
            http {
              access_log off;
              client_body_temp_path \(dir.file("nginx/tmp")); proxy_temp_path \(dir.file("nginx/tmp")); fastcgi_temp_path \(dir.file("nginx/tmp"));
              uwsgi_temp_path \(dir.file("nginx/tmp")); scgi_temp_path \(dir.file("nginx/tmp"));
              server {
                listen 127.0.0.1:\(port);
                location / {
                  proxy_pass http://127.0.0.1:\(try #require(serve.boundPort(.clientPlain)));
                  proxy_http_version 1.1;
                  proxy_set_header Connection "";
                  proxy_read_timeout 1s;
                }
              }
            }
            """ + "\n")
        let proxy = try ServerProcess(["-c", conf, "-p", dir.file("nginx")], executable: nginx)
        defer { proxy.signal(SIGKILL) }
        let bootstrap = dir.file("bootstrap.json")
        try await Self.token(portico, config: config, url: "http://127.0.0.1:\(port)", bootstrap: bootstrap)
        var agents: [(id: String, process: ServerProcess)] = []
        try await eventually("nginx forwards an enrollment", within: .seconds(20)) {
            agents = (try? await Self.agents(1, bootstrap: bootstrap, in: dir)) ?? []
            return !agents.isEmpty
        }
        let agent = try #require(agents.first)
        defer { agent.process.signal(SIGKILL) }
        // The wait is cut by nginx (504 after 1 s): the agent says so and pulls instead.
        await agent.process.waitFor("push unavailable")
        let api = "https://127.0.0.1:\(try #require(serve.boundPort(.webservices)))/api/v1"
        try await APIClient.with { client in
            let token = try await client.login(api, "ops")
            let queued = try await client.call(.POST, api + "/commands", token: token, json: #"{"device_id":"\#(agent.id)","kind":"lock"}"#)
            #expect(queued.status == 201, "\(queued.json)")
            let id = try #require(queued.json["id"] as? String)
            await agent.process.waitFor("command lock \(id)")
            // It checks in without waiting now: no manager holds it.
            try await eventually("the device reads as pulling", within: .seconds(20)) {
                try await client.call(.GET, api + "/devices/\(agent.id)", token: token).json["push_held_by"] == nil
            }
        }
    }
}
