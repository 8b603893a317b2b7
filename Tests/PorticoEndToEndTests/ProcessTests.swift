import Foundation
import Logging
import NIOCore
import PorticoStore
import PorticoManager
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

/// The `portico` executable end to end: its commands, signals and messages.
@Suite(.serialized, .timeLimit(.minutes(2))) struct ProcessTests {
    private func config(ports: [Int], extra: String = "", dir: TemporaryDirectory) throws -> String {
        var yaml = "identity: {certificate: ssl/server.crt, private_key: ssl/server.key, generate: ecdsa-p256}\nshutdown: {grace_period: 10s}\nlisteners:\n"
        for (role, port) in zip(ManagerConfiguration.roles.map(\.name), ports) {
            yaml += "  \(role.rawValue): {bind: 127.0.0.1, port: \(port)}\n"
        }
        return try dir.write("portico.yaml", yaml + extra)
    }

    @Test func configCheckPrintsOKOrEveryProblemWithItsLine() async throws {
        let dir = try TemporaryDirectory()
        let good = try config(ports: [18441, 18014, 18444, 18443, 18445, 18446], dir: dir)
        let ok = try ServerProcess(["config", "check", "--config", good])
        #expect(await ok.wait() == 0)
        #expect(ok.text.contains("OK"))
        #expect(ok.text.contains("serve will generate"))
        #expect(!FileManager.default.fileExists(atPath: dir.file("ssl/server.key")), "config check must not write files")

        let bad = try dir.write("bad.yaml", "listeners:\n  client:\n    prot: 1\n  console:\n    port: many\nroutes:\n  - {listener: nowhere, path: /x, service: health}\n")
        let failed = try ServerProcess(["config", "check", "--config", bad])
        #expect(await failed.wait() == 1)
        #expect(failed.text.contains("bad.yaml:3:5: unknown key 'prot'"))
        #expect(failed.text.contains("bad.yaml:5:11: listeners.console.port must be a whole number"))
        #expect(failed.text.contains("bad.yaml:7:16: routes[0] names listener 'nowhere'"))
        #expect(failed.text.contains("3 problems"))
    }

    @Test func aPortInUseStopsStartUpNamingTheRoleAndTheReason() async throws {
        let dir = try TemporaryDirectory()
        // Hold one port so that the console listener cannot have it; the others take any.
        let blocker = try await RawServer.listen()
        var ports = [0, 0, 0, 0, 0, 0]
        ports[3] = blocker.port
        let process = try ServerProcess(["serve", "--config", try config(ports: ports, dir: dir)])
        #expect(await process.wait() == 1)
        #expect(process.text.contains("listener console cannot listen on 127.0.0.1:\(blocker.port): address already in use"))
        await blocker.close()
    }

    @Test func sighupWithABrokenConfigKeepsServingAndAGoodOneApplies() async throws {
        let dir = try TemporaryDirectory()
        let file = try config(ports: [0, 0, 0, 0, 0, 0], dir: dir)
        let process = try ServerProcess(["serve", "--config", file])
        await process.waitFor("listening", count: 6)
        let plain = "http://127.0.0.1:\(try #require(process.boundPort(.clientPlain)))"
        try await TestClient.with(http2: false) { client in
            #expect(try await TestClient.get(client, plain + "/healthz").status == 200)

            try dir.write("portico.yaml", try String(contentsOfFile: file, encoding: .utf8) + "routes:\n  - {listener: client_plain, path: /h2, service: health}\nnonsense: true\n")
            process.signal(SIGHUP)
            await process.waitFor("configuration rejected")
            await process.waitFor("unknown key 'nonsense'")
            #expect(try await TestClient.get(client, plain + "/healthz").status == 200)
            #expect(try await TestClient.get(client, plain + "/h2").status == 404)

            try dir.write("portico.yaml", try String(contentsOfFile: file, encoding: .utf8).replacingOccurrences(of: "nonsense: true\n", with: ""))
            process.signal(SIGHUP)
            await process.waitFor("configuration reloaded")
            #expect(try await TestClient.get(client, plain + "/h2").status == 200)
        }
        process.signal(SIGTERM)
        #expect(await process.wait() == 0)
    }

    @Test func sigtermDuringASlowRequestLetsItFinish() async throws {
        let gate = Gate()
        let slowRoute = "routes:\n  - {listener: client_plain, path: /slow, service: slow}"
        try await TestGateway.with(body: slowRoute, services: TestServices.registry(gate: gate)) { backend in
            let dir = try TemporaryDirectory()
            let upstream = "upstreams:\n  slow: {targets: [\"http://127.0.0.1:\(try await backend.port(.clientPlain))\"], response_timeout: 60s}\nroutes:\n  - {listener: client_plain, path: /slow, upstream: slow}\n"
            let process = try ServerProcess(["serve", "--config", try config(ports: [0, 0, 0, 0, 0, 0], extra: upstream, dir: dir)])
            await process.waitFor("listening", count: 6)
            let plainPort = try #require(process.boundPort(.clientPlain))
            try await TestClient.with(http2: false) { client in
                async let answer = TestClient.get(client, "http://127.0.0.1:\(plainPort)/slow")
                await gate.waitForArrival()
                process.signal(SIGTERM)
                // The process has begun draining: the listeners it stops report it.
                await process.waitFor("listener=console [PorticoServer] stopped")
                gate.open()
                let result = try await answer
                #expect(result.status == 200)
                #expect(result.body == "finished")
            }
            #expect(await process.wait() == 0)
            #expect(process.text.contains("listener=client_plain [PorticoServer] stopped"))
        }
    }

    /// Out of descriptors, the core stops accepting for a moment rather than being woken for
    /// the same waiting connection again and again; once descriptors are free it accepts and
    /// serves again.
    @Test func acceptingResumesAfterTheProcessRanOutOfDescriptors() async throws {
        let dir = try TemporaryDirectory()
        let process = try ServerProcess(["serve", "--config", try config(ports: [0, 0, 0, 0, 0, 0], dir: dir)], descriptorLimit: 160)
        await process.waitFor("listening", count: 6)
        let port = try #require(process.boundPort(.clientPlain))
        // More connections than descriptors: the last ones wait in the backlog.
        var clients: [RawTCP] = []
        for _ in 0..<200 { clients.append(try await RawTCP.connect(port: port)) }
        for client in clients { try? await client.channel.close() }
        try await TestClient.with(http2: false) { client in
            let answer = try await TestClient.get(client, "http://127.0.0.1:\(port)/healthz")
            #expect(answer.status == 200)
        }
        process.signal(SIGTERM)
        #expect(await process.wait() == 0)
    }

    @Test func firstRunGeneratesAnIdentityWithAPrivateKey0600() async throws {
        let dir = try TemporaryDirectory()
        let process = try ServerProcess(["serve", "--config", try config(ports: [0, 0, 0, 0, 0, 0], dir: dir)])
        await process.waitFor("listening", count: 6)
        let attributes = try FileManager.default.attributesOfItem(atPath: dir.file("ssl/server.key"))
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let identity = try ServerIdentity.load(certificatePath: dir.file("ssl/server.crt"), privateKeyPath: dir.file("ssl/server.key"))
        let probe = try await TLSProbe.connect(port: try #require(process.boundPort(.client)))
        #expect(try probe.peerCertificate?.toDERBytes() == identity.chain[0].toDERBytes())
        await probe.close()
        process.signal(SIGINT)
        #expect(await process.wait() == 0)
    }
}

/// A listening socket that accepts nothing, to hold a port.
struct RawServer {
    let channel: any Channel
    var port: Int { channel.localAddress?.port ?? 0 }

    static func listen() async throws -> RawServer {
        RawServer(channel: try await NIOPosix.ServerBootstrap(group: NIOPosix.MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get())
    }

    func close() async { try? await channel.close() }
}

import NIOPosix

/// The operator's path to a first agent, through the real executables.
@Suite(.serialized, .timeLimit(.minutes(2))) struct FirstAgentTests {
    @Test func serveTokenBootstrapEnrollRunAndStatus() async throws {
        let dir = try TemporaryDirectory()
        // /metrics behind a bearer token.
        let metricsToken = "metrics-" + UUID().uuidString.lowercased()
        let tokenFile = try dir.write("metrics.token", metricsToken + "\n")
        chmod(tokenFile, 0o600)
        let config = try ManagerConfigFile.write(in: dir, listeners: [.client: "", .clientPlain: "", .webservices: ""],
                                                 routes: ["{listeners: [client, client_plain], path: /agent/v1/*, service: agent}"],
                                                 more: "metrics: {bearer_token_file: metrics.token}")
        let serve = try ServerProcess(["serve", "--config", config])
        await serve.waitFor("listening", count: 3)
        let https = "https://127.0.0.1:\(try #require(serve.boundPort(.client)))"
        let metricsURL = "https://127.0.0.1:\(try #require(serve.boundPort(.webservices)))/metrics"

        let tokenRun = try ServerProcess(["token", "create", "--config", config, "--expires", "1h"])
        #expect(await tokenRun.wait() == 0)
        let token = tokenRun.text.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.hasPrefix("t-") && token.contains("."))

        let bootstrap = dir.file("bootstrap.json")
        let export = try ServerProcess(["agent-config", "export", "--config", config, "--url", https, "--token", token, "--output", bootstrap])
        #expect(await export.wait() == 0)
        let attributes = try FileManager.default.attributesOfItem(atPath: bootstrap)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)

        let state = dir.file("agent")
        let enroll = try ServerProcess(["enroll", "--bootstrap", bootstrap, "--state", state], executable: "portico-agent")
        #expect(await enroll.wait() == 0, "enroll said: \(enroll.text)")
        #expect(enroll.text.hasPrefix("enrolled as d-"))
        let run = try ServerProcess(["run", "--state", state, "--once"], executable: "portico-agent")
        #expect(await run.wait() == 0, "run said: \(run.text)")
        let status = try ServerProcess(["status", "--state", state], executable: "portico-agent")
        #expect(await status.wait() == 0)
        #expect(status.text.contains("pinned certificates: 1"))
        // The one-time token is spent: a second machine cannot use it.
        let again = try ServerProcess(["enroll", "--bootstrap", bootstrap, "--state", dir.file("agent2")], executable: "portico-agent")
        #expect(await again.wait() != 0)
        #expect(again.text.contains("used as often as it allows"))

        // The fleet in /metrics, for whoever holds the token only.
        let refused = try await Tools.run("curl", ["-sk", "-o", "/dev/null", "-w", "%{http_code}", metricsURL])
        #expect(refused.output == "401")
        var scraped = ""
        try await eventually("the enrolled device is counted in /metrics", within: .seconds(20)) {
            scraped = try await Tools.run("curl", ["-sk", "-H", "Authorization: Bearer \(metricsToken)", metricsURL]).output
            return scraped.contains("portico_devices{state=\"active\"} 1")
        }
        for series in ["portico_agent_enrollments_total 1", "portico_agent_checkins_total 1", "portico_devices_online 1", "portico_commands{state=\"pending\"} 0",
                       "portico_build_info{version=", "process_resident_memory_bytes ", "process_open_fds ", "portico_database_size_bytes "] {
            #expect(scraped.contains(series), "no \(series) in /metrics")
        }

        serve.signal(SIGTERM)
        #expect(await serve.wait() == 0)
    }
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct ExpiryWarningTests {
    @Test func aCertificateNearItsEndIsWarnedAboutInTheLog() async throws {
        let dir = try TemporaryDirectory()
        let soon = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "soon", days: 10)
        try IdentityGenerator.write(soon, certificatePath: dir.file("ssl/server.crt"), privateKeyPath: dir.file("ssl/server.key"))
        var yaml = "data_dir: data\nlisteners:\n"
        for role in ManagerConfiguration.roles.map(\.name) { yaml += "  \(role.rawValue): {bind: 127.0.0.1, port: 0}\n" }
        let process = try ServerProcess(["serve", "--config", try dir.write("portico.yaml", yaml)])
        await process.waitFor("the server certificate expires soon")
        #expect(process.text.contains("days_left=9") || process.text.contains("days_left=10"))
        process.signal(SIGTERM)
        #expect(await process.wait() == 0)
    }
}

/// `portico cert rotate` against a running manager with a real agent: announced at a
/// check-in, acknowledged at the next, switched by the manager itself; the agent carries on.
@Suite(.serialized, .timeLimit(.minutes(2))) struct RotationProcessTests {
    @Test func aRotationSwitchesOnceTheAgentPinnedTheNextIdentityAndTheAgentCarriesOn() async throws {
        let dir = try TemporaryDirectory()
        let config = try ManagerConfigFile.write(in: dir, listeners: [.client: ""], routes: ["{listeners: [client], path: /agent/v1/*, service: agent}"])
        let serve = try ServerProcess(["serve", "--config", config])
        await serve.waitFor("listening")
        let port = try #require(serve.boundPort(.client))
        let tokenRun = try ServerProcess(["token", "create", "--config", config, "--expires", "1h"])
        #expect(await tokenRun.wait() == 0)
        let bootstrap = dir.file("bootstrap.json")
        let export = try ServerProcess(["agent-config", "export", "--config", config, "--url", "https://127.0.0.1:\(port)",
                                        "--token", tokenRun.text.trimmingCharacters(in: .whitespacesAndNewlines), "--output", bootstrap])
        #expect(await export.wait() == 0)
        let state = dir.file("agent")
        let enroll = try ServerProcess(["enroll", "--bootstrap", bootstrap, "--state", state], executable: "portico-agent")
        #expect(await enroll.wait() == 0, "enroll said: \(enroll.text)")
        func checkIn() async throws {
            let run = try ServerProcess(["run", "--state", state, "--once"], executable: "portico-agent")
            #expect(await run.wait() == 0, "run said: \(run.text)")
        }
        try await checkIn()

        let rotate = try ServerProcess(["cert", "rotate", "--config", config, "--key", "ecdsa-p256", "--switch-at", "100"])
        #expect(await rotate.wait() == 0, "rotate said: \(rotate.text)")
        let staged = try ServerIdentity.load(certificatePath: dir.file("ssl/next/server.crt"), privateKeyPath: dir.file("ssl/next/server.key"))
        await serve.waitFor("announcing the staged identity to agents")
        try await checkIn()   // learns of it and pins it
        let status = try ServerProcess(["status", "--state", state], executable: "portico-agent")
        #expect(await status.wait() == 0)
        #expect(status.text.contains("pinned certificates: 2"), "\(status.text)")
        try await checkIn()   // reports it pinned: 1 of 1 active agents
        await serve.waitFor("the staged identity is live")

        let probe = try await TLSProbe.connect(port: port)
        #expect(try probe.peerCertificate?.toDERBytes() == staged.chain[0].toDERBytes())
        await probe.close()
        try await checkIn()   // over TLS with the new certificate
        let after = try ServerProcess(["cert", "rotate", "--config", config, "--status"])
        #expect(await after.wait() == 0)
        #expect(after.text.contains("no rotation under way"), "\(after.text)")

        serve.signal(SIGTERM)
        #expect(await serve.wait() == 0)
    }
}

/// `portico cert import` into a running manager: the open connection keeps its session and
/// goes on answering; new connections meet the imported certificate.
@Suite(.serialized, .timeLimit(.minutes(2))) struct LiveImportProcessTests {
    @Test func anImportSwapsTheLiveIdentityWithoutDroppingAnOpenConnection() async throws {
        let dir = try TemporaryDirectory()
        let config = try ManagerConfigFile.write(in: dir, identity: "{generate: ecdsa-p256, reload_interval: 1s}", listeners: [.client: ""])
        let serve = try ServerProcess(["serve", "--config", config])
        await serve.waitFor("listening")
        let port = try #require(serve.boundPort(.client))
        let before = try ServerIdentity.load(certificatePath: dir.file("ssl/server.crt"), privateKeyPath: dir.file("ssl/server.key"))
        let open = try await TLSProbe.connect(port: port)
        #expect(try open.peerCertificate?.toDERBytes() == before.chain[0].toDERBytes())
        #expect(try await open.get("/healthz").contains("200"))

        let next = try IdentityGenerator.generate(keyType: .rsa2048, commonName: "imported")
        let cert = try dir.write("imported.crt", next.certificatePEM)
        let key = try dir.write("imported.key", next.privateKeyPEM)
        let result = try await Tools.run(ServerProcess.executable(named: "portico") ?? "portico", ["cert", "import", "--config", config, "--certificate", cert, "--key", key])
        #expect(result.status == 0, "\(result.output)")
        await serve.waitFor("server certificate reloaded")

        // The open connection carries on; a new one gets the imported certificate.
        #expect(try await open.get("/healthz").contains("200"))
        await open.close()
        let fresh = try await TLSProbe.connect(port: port)
        #expect(try fresh.peerCertificate?.toDERBytes() == ServerIdentity.parse(certificatePEM: Array(next.certificatePEM.utf8), privateKeyPEM: Array(next.privateKeyPEM.utf8)).chain[0].toDERBytes())
        await fresh.close()
        serve.signal(SIGTERM)
        #expect(await serve.wait() == 0)
    }
}

/// `portico peer add|list|remove`: recorded in the database with the peer's certificate,
/// which a running manager's replication listener then trusts, and stops trusting, by itself.
@Suite(.serialized, .timeLimit(.minutes(2))) struct PeerCommandTests {
    @Test func peersAreAddedListedAndRemovedWithTheirCertificates() async throws {
        let dir = try TemporaryDirectory()
        let portico = try #require(ServerProcess.executable(named: "portico"))
        let peer = try TestPKI.make(in: dir, name: "site-b", commonName: "site-b")
        let certificate = peer.certificatePath
        let config = try ManagerConfigFile.write(in: dir, listeners: [.client: "", .replication: ""],
                                                 routes: ["{listener: replication, path: /replication/v1/*, service: replication}"])
        let serve = try ServerProcess(["serve", "--config", config])
        defer { serve.signal(SIGKILL) }
        await serve.waitFor("listening", count: 2)
        let port = try #require(serve.boundPort(.replication))
        /// Whether the replication listener takes a connection with the peer's certificate.
        func accepted() async -> Bool {
            do {
                let probe = try await TLSProbe.connect(port: port, clientIdentity: peer)
                // With TLS 1.3 the refusal of a client certificate arrives on the first read.
                let answer = try await probe.get("/replication/v1/digest", keepAlive: false)
                await probe.close()
                return answer.hasPrefix("HTTP/1.1")
            } catch {
                return false
            }
        }
        #expect(await !accepted())

        let notPEM = try await Tools.run(portico, ["peer", "add", "--config", config, "--name", "site-b", "--url", "https://b.example:8444", "--certificate", config])
        #expect(notPEM.status == 1 && notPEM.output.contains("is not a PEM certificate"), "\(notPEM.output)")
        let added = try await Tools.run(portico, ["peer", "add", "--config", config, "--name", "site-b", "--url", "https://b.example:8444", "--certificate", certificate])
        #expect(added.status == 0, "\(added.output)")
        await serve.waitFor("peers' certificates changed")
        #expect(await accepted())
        let fingerprint = try peer.certificate.sha256Hex()
        let listed = try await Tools.run(portico, ["peer", "list", "--config", config])
        #expect(listed.output.contains("site-b\thttps://b.example:8444\t\(fingerprint)"), "\(listed.output)")
        let again = try await Tools.run(portico, ["peer", "add", "--config", config, "--name", "site-b", "--url", "https://b.example:8444", "--certificate", certificate])
        #expect(again.status != 0 && again.output.contains("already exists"), "\(again.output)")
        let removed = try await Tools.run(portico, ["peer", "remove", "--config", config, "site-b"])
        #expect(removed.status == 0, "\(removed.output)")
        await serve.waitFor("peers' certificates changed", count: 2)
        #expect(await !accepted())
        #expect(!(try await Tools.run(portico, ["peer", "list", "--config", config])).output.contains("site-b"))
        serve.signal(SIGTERM)
        #expect(await serve.wait() == 0)
    }
}

/// `portico admin` and `portico token` change the store through the manager's one write path:
/// audited as the operating system's user, with the actions, details and token ids the API
/// and the console give.
@Suite(.serialized, .timeLimit(.minutes(2))) struct CommandLineWriteTests {
    @Test func commandLineChangesAreAuditedAsTheAPIsAre() async throws {
        let dir = try TemporaryDirectory()
        let portico = try #require(ServerProcess.executable(named: "portico"))
        let config = try dir.write("portico.yaml", "data_dir: data\n")
        let admin = try await Tools.run(portico, ["admin", "create", "--config", config, "--name", "ada", "--role", "admin"], input: "correct horse battery\n")
        #expect(admin.status == 0, "\(admin.output)")
        let token = try await Tools.run(portico, ["token", "create", "--config", config, "--expires", "2h", "--unlimited"])
        #expect(token.status == 0, "\(token.output)")
        let id = String(token.output.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ".")[0])
        // The id the API and the console make: t- and 12 hexadecimal digits.
        #expect(id.count == 14 && id.hasPrefix("t-") && id.dropFirst(2).allSatisfy(\.isHexDigit), "\(id)")
        #expect(try await Tools.run(portico, ["token", "revoke", "--config", config, id]).status == 0)
        #expect(try await Tools.run(portico, ["admin", "unlock", "--config", config, "ada"]).status == 0)

        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let store = try await Store.open(.sqlite(path: dir.file("data/portico.sqlite")), siteID: "default-site", logger: logger)
        let entries = try await store.auditEntries(AuditFilter(), limit: 10).reversed()
        let tokenRecord = try await store.enrollmentToken(id: id)
        await store.close()
        let actor = "cli:\(NSUserName())"
        #expect(entries.map(\.action) == ["operator.create", "enrollment_token.create", "enrollment_token.revoke", "operator.unlock"])
        #expect(entries.allSatisfy { $0.actor == actor && $0.source == "local" && $0.result == "ok" })
        #expect(entries.map(\.detail) == ["role admin", "uses unlimited, group -", "", ""])
        #expect(tokenRecord?.usesAllowed == nil && tokenRecord?.revoked == true && tokenRecord?.createdBy == actor)
    }
}

