import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import NIOSSL
import PorticoAgent
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoTestSupport
import Testing

/// A site of two managers behind HAProxy (Debian's) sharing one PostgreSQL and no file, as
/// `deploy/compose.yaml` runs them: agents on fresh connections alternate between them; one
/// manager is killed with SIGKILL mid-run and the agents carry on through the other; the
/// database is stopped as a crash would and started again, and both managers recover by
/// themselves. Throughout, every event a manager acknowledged is in the database and no
/// command comes back to an agent after its result was taken.
@Suite(.serialized, .timeLimit(.minutes(5))) struct SiteFaultTests {
    static let required = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil
    static var haproxy: String? { Tools.path(of: "haproxy") ?? (FileManager.default.isExecutableFile(atPath: "/usr/sbin/haproxy") ? "/usr/sbin/haproxy" : nil) }
    static var usable: Bool { (haproxy != nil && TestPostgres.binaries != nil && Tools.has("psql")) || required }

    /// What the agents saw, for the checks at the end.
    struct Ledger {
        var acknowledged: Set<String> = []
        var completed: Set<String> = []
        var violations: [String] = []
        var errors: [String] = []
        var checkIns = 0
    }

    @Test(.enabled(if: usable, "needs HAProxy and PostgreSQL's server and psql (Debian packages haproxy, postgresql)"))
    func agentsCarryOnThroughAKilledManagerAndARestartedDatabaseAndNothingIsLost() async throws {
        let dir = try TemporaryDirectory()
        let postgres = try await TestPostgres(in: dir)
        let portico = try #require(ServerProcess.executable(named: "portico"))
        let ports = try (0..<3).map { _ in try TestPorts.unused() }
        try ManagerConfigFile.site("fault", managers: 2, in: dir, postgres: postgres.url,
                                   listeners: { [.client: "port: \(ports[$0 - 1])", .webservices: "access_log: false"] },
                                   routes: ["{listener: client, path: /agent/v1/*, service: agent}", "{listener: webservices, path: /api/v1/*, service: api}"])
        var managers = try await ManagerConfigFile.startSite(managers: 2, listeners: 2, in: dir)
        defer { for manager in managers { manager.signal(SIGKILL) } }
        try dir.write("haproxy.cfg", """
            global
              log stdout format raw local0 info
            defaults
              mode tcp
              log global
              timeout connect 2s
              timeout client 30s
              timeout server 30s
              retries 3
              option redispatch 1
            frontend agents
              bind 127.0.0.1:\(ports[2])
              default_backend managers
            backend managers
              balance roundrobin
              timeout check 2s
              server m1 127.0.0.1:\(ports[0]) check inter 300ms fall 3 rise 2
              server m2 127.0.0.1:\(ports[1]) check inter 300ms fall 3 rise 2
            """ + "\n")
        let balancer = try ServerProcess(["-db", "-f", dir.file("haproxy.cfg")], executable: try #require(Self.haproxy))
        defer { balancer.signal(SIGKILL) }
        let front = "https://127.0.0.1:\(ports[2])"
        do {
            try await eventually("HAProxy accepts connections", within: .seconds(30)) {
                guard let probe = try? await TLSProbe.connect(port: ports[2]) else { return false }
                await probe.close()
                return probe.peerCertificate != nil
            }
        } catch {
            Issue.record("HAProxy: \(balancer.text)\nfirst manager: \(managers[0].text.suffix(3000))\nsecond manager: \(managers[1].text.suffix(3000))")
            throw error
        }

        // Agents enrolled through the balancer, each request on a new connection.
        let token = try await Tools.run(portico, ["token", "create", "--config", dir.file("m1.yaml"), "--expires", "1h", "--unlimited"])
        #expect(token.status == 0, "\(token.output)")
        let bootstrapFile = dir.file("bootstrap.json")
        let export = try await Tools.run(portico, ["agent-config", "export", "--config", dir.file("m1.yaml"), "--url", front, "--output", bootstrapFile,
                                                   "--token", token.output.trimmingCharacters(in: .whitespacesAndNewlines)])
        #expect(export.status == 0, "\(export.output)")
        let bootstrap = try JSONDecoder().decode(BootstrapFile.self, from: Data(contentsOf: URL(fileURLWithPath: bootstrapFile)))
        var agents: [AgentClient] = []
        for index in 0..<6 {
            let enrolling = Self.freshConnections(bootstrap.pinned)
            let state: AgentState
            do {
                state = try await AgentClient.enroll(bootstrap: bootstrap, token: try #require(bootstrap.enrollmentToken), hostname: "fault-\(index)", os: "linux",
                                                     managerURL: front, http: enrolling)
                try await enrolling.shutdown()
            } catch {
                try? await enrolling.shutdown()
                throw error
            }
            agents.append(AgentClient(state: state, managerURL: front, http: Self.freshConnections(state.pinned)))
        }
        defer { for agent in agents { Task { await agent.shutdown() } } }
        let ledger = NIOLockedValueBox(Ledger())
        let sequence = NIOLockedValueBox(0)
        /// One round: every agent checks in, carries out its commands and reports an event.
        func round() async {
            await withTaskGroup(of: Void.self) { group in
                for agent in agents {
                    group.addTask {
                        let deviceID = await agent.state.deviceID
                        do {
                            let reply = try await agent.checkIn()
                            ledger.withLockedValue { $0.checkIns += 1 }
                            for command in reply.commands {
                                if ledger.withLockedValue({ $0.completed.contains(command.id) }) {
                                    ledger.withLockedValue { $0.violations.append("command \(command.id) came back to \(deviceID) after its result was taken") }
                                }
                                _ = try await agent.send(.commandResult(CommandResult(commandID: command.id, succeeded: true, detail: "done")))
                                ledger.withLockedValue { _ = $0.completed.insert(command.id) }
                            }
                            let id = "e-" + String(sequence.withLockedValue { $0 += 1; return $0 })
                            let accepted = try await agent.report([AgentEvent(id: id, kind: "fault.test", occurredMilliseconds: Int64(Date().timeIntervalSince1970 * 1000), body: "{}")])
                            ledger.withLockedValue { $0.acknowledged.formUnion(accepted.map { deviceID + "/" + $0 }) }
                        } catch {
                            ledger.withLockedValue { $0.errors.append("\(error)") }
                        }
                    }
                }
            }
        }
        /// Rounds until `rounds` in a row had every agent check in.
        func settle(_ what: String, rounds: Int = 3) async throws {
            var clean = 0
            try await eventually(what, within: .seconds(60)) {
                let before = ledger.withLockedValue { ($0.checkIns, $0.errors.count) }
                await round()
                let after = ledger.withLockedValue { ($0.checkIns, $0.errors.count) }
                clean = after.0 - before.0 == agents.count && after.1 == before.1 ? clean + 1 : 0
                return clean >= rounds
            }
        }

        try await settle("the agents check in through the balancer")
        // Round robin over fresh connections: both managers answer agents.
        try await eventually("both managers answer agents", within: .seconds(30)) {
            if managers.allSatisfy({ $0.text.contains("/agent/v1/message") }) { return true }
            await round()
            return false
        }

        // Locks queued for every agent, then the second manager killed mid-run.
        let api = "https://127.0.0.1:\(try #require(managers[0].boundPort(.webservices)))/api/v1"
        try await APIClient.with { client in
            let session = try await client.login(api, "ops")
            for agent in agents {
                let issued = try await client.call(.POST, api + "/commands", token: session, json: #"{"device_id":"\#(await agent.state.deviceID)","kind":"lock"}"#)
                #expect(issued.status == 201, "\(issued.json)")
            }
        }
        await round()
        managers[1].signal(SIGKILL)
        _ = await managers[1].wait()
        try await settle("the agents carry on through the remaining manager")

        // The killed manager comes back; then the database crashes and comes back.
        let restarted = try ServerProcess(["serve", "--config", dir.file("m2.yaml")])
        managers[1] = restarted
        await restarted.waitFor("listening", count: 2)
        try await settle("the agents use both managers again")
        try await postgres.stop(immediate: true)
        let failedBefore = ledger.withLockedValue { $0.errors.count }
        await round()
        // Nothing can be acknowledged while the database is down, and the agents are told so
        // at once (503, come back later) rather than held until they give up.
        let outage = ledger.withLockedValue { Array($0.errors.dropFirst(failedBefore)) }
        #expect(!outage.isEmpty)
        #expect(outage.contains { $0.contains("overloaded") } && !outage.contains { $0.contains("deadline") }, "\(outage)")
        // The API says so too.
        try await APIClient.with { client in
            let refused = try await client.call(.POST, api + "/auth/login", json: #"{"name":"ops","password":"site operator password"}"#)
            #expect(refused.status == 503 && refused.json["type"] as? String == "urn:portico:problem:unavailable", "\(refused)")
        }
        try await postgres.start()
        let before = managers.map { $0.text.components(separatedBy: "/agent/v1/message").count - 1 }
        try await settle("both managers recover from the database's restart by themselves", rounds: 4)
        let after = managers.map { $0.text.components(separatedBy: "/agent/v1/message").count - 1 }
        #expect(zip(before, after).allSatisfy { $0 < $1 }, "messages per manager before and after the restart: \(before) \(after)")

        // Every lock was carried out once; every acknowledged event is in the database.
        let seen = ledger.withLockedValue { $0 }
        #expect(seen.violations.isEmpty, "\(seen.violations)")
        #expect(seen.completed.count == agents.count, "commands completed: \(seen.completed.count)")
        let stored = try await Tools.run("psql", [postgres.url, "-tAc", "SELECT device_id || '/' || event_id FROM events"])
        #expect(stored.status == 0, "\(stored.output)")
        let inDatabase = Set(stored.output.split(separator: "\n").map(String.init))
        let lost = seen.acknowledged.subtracting(inDatabase)
        #expect(lost.isEmpty, "acknowledged but not stored: \(lost.sorted())")
        #expect(seen.acknowledged.count > agents.count * 10, "acknowledged: \(seen.acknowledged.count)")
        let locked = try await Tools.run("psql", [postgres.url, "-tAc", "SELECT count(*) FROM devices WHERE state = 'locked'"])
        #expect(locked.output.trimmingCharacters(in: .whitespacesAndNewlines) == "\(agents.count)", "\(locked.output)")
        for manager in managers { manager.signal(SIGTERM) }
        for manager in managers { #expect(await manager.wait() == 0, "\(manager.text.suffix(2000))") }
    }

    /// An HTTP client that trusts the pinned certificates and opens a new connection for
    /// every request, as agents do, so that the balancer picks a manager each time.
    static func freshConnections(_ pinned: PinnedCertificates) -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(pinned.tlsTrustRoots.compactMap { try? NIOSSLCertificate(bytes: Array($0.utf8), format: .pem) })
        tls.certificateVerification = .noHostnameVerification
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.maximumUsesPerConnection = 1
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(30))
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }
}
