import Crypto
import Foundation
import Logging
import PorticoAgent
import PorticoGateway
import PorticoManager
import PorticoProtocol
import PorticoServer
import PorticoStore
import PorticoTestSupport
import Testing

/// A real manager on loopback: gateway (client HTTPS and plain listeners), SQLite store and
/// the agent service, with a bootstrap file pinning its generated certificate.
struct TestManager {
    let gateway: Gateway
    let store: Store
    let agent: AgentService
    let directory: String
    let httpsURL: String
    let plainURL: String
    let bootstrap: BootstrapFile
    let identity: ReloadableIdentity
    let api: APIService
    let rotation: IdentityRotation
    /// `https://127.0.0.1:<port>/api/v1` on the webservices listener.
    let apiURL: String
    /// `https://127.0.0.1:<port>` on the console listener.
    let consoleURL: String
    /// `https://127.0.0.1:<port>` on the reporting listener.
    let reportingURL: String
    /// `https://127.0.0.1:<port>` on the replication listener (mutual TLS; trusts `ssl/peers/`).
    let replicationURL: String
    let links: PeerLinks
    /// The site's agent keys, as the database keeps them.
    let keys: ManagerKeys
    /// Notification rules; tests run its rounds themselves (``Notifier/tick(now:)``).
    let notifier: Notifier

    static var quiet: Logger {
        var logger = Logger(label: "portico-manager-test")
        logger.logLevel = .critical
        return logger
    }

    /// - Parameters:
    ///   - site: the site's name (and id).
    ///   - before: runs with the manager's folder before anything is loaded (to place identity or peer files).
    ///   - sharing: another manager of the same site, whose database and secrets key this one
    ///     is given (its own folder, files and listeners otherwise), as a second `serve` would.
    static func with<T>(configuration: AgentService.Configuration = AgentService.Configuration(), api apiConfiguration: APIService.Configuration = APIService.Configuration(),
                        site: String = "test-site", before: (String) throws -> Void = { _ in }, extraYAML: String = "", linkTiming: PeerLinks.Timing = .fast,
                        sharing other: TestManager? = nil, notifications: Notifier.Configuration = Notifier.Configuration(),
                        users: UserSignIns.Configuration = .forTests, directoryServer: DirectorySettings? = nil,
                        _ body: (TestManager) async throws -> T) async throws -> T {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("portico-manager-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory + "/ssl/peers", withIntermediateDirectories: true)
        try before(directory)
        if let other {
            // Each manager of a site is given its own copy of the site's secrets key.
            try FileManager.default.copyItem(atPath: other.directory + "/data/secrets.key", toPath: directory + "/secrets.key")
        }
        let yaml = """
            site: {name: \(site)}
            data_dir: data
            \(other == nil ? "" : "secrets: {key_file: secrets.key}")
            identity: {generate: ecdsa-p256, reload_interval: 1h}
            listeners:
              client: {bind: 127.0.0.1, port: 0, access_log: false}
              client_plain: {bind: 127.0.0.1, port: 0, access_log: false}
              replication: {bind: 127.0.0.1, port: 0, access_log: false, trust: ssl/peers/}
              console: {bind: 127.0.0.1, port: 0, access_log: false}
              reporting: {bind: 127.0.0.1, port: 0, access_log: false}
              webservices: {bind: 127.0.0.1, port: 0, access_log: false}
            routes:
              - {listeners: [client, client_plain], path: /agent/v1/*, service: agent}
              - {listener: webservices, path: /api/v1/*, service: api}
              - {listener: console, path: /*, service: console}
              - {listeners: [console, reporting], path: /reports/*, service: reporting}
              - {listener: reporting, path: /*, service: reporting}
              - {listener: replication, path: /replication/v1/*, service: replication}
            \(extraYAML)
            """
        try yaml.write(toFile: directory + "/portico.yaml", atomically: true, encoding: .utf8)
        let config = try ManagerConfiguration.load(file: directory + "/portico.yaml")
        let cache = IdentityCache()
        // As `serve` does: the site's identity from the database, or this one's to it.
        let store = try await Store.open(.sqlite(path: (other?.directory ?? directory) + "/data/portico.sqlite"), siteID: config.siteName, logger: quiet)
        let vault = try ManagerServices.vault(config, store: store)
        let sync = IdentitySync(vault: vault, configuration: config.gateway, dataDirectory: config.dataDirectory)
        try await sync.exchange()
        let prepared = try ConfigurationCheck.prepare(config.gateway, generateMissing: true, cache: cache)
        try await sync.exchange()
        let identity = try #require(prepared.identity(of: .client))
        let keys = try await ManagerKeys.load(from: vault, legacyDirectory: config.dataDirectory)
        let directoryClient = directoryServer.map { DirectoryClient($0) }
        let signIns = UserSignIns(store: store, directory: directoryClient, configuration: users, logger: quiet)
        let agent = AgentService(store: store, keys: keys, secrets: vault.key, identity: { identity.current }, configuration: configuration, users: signIns, logger: quiet)
        var services = ServiceRegistry()
        services.register("agent", agent)
        let rotation = IdentityRotation(configuration: config.gateway, identities: ManagerServices.liveIdentities(prepared), agent: agent, store: store,
                                        sync: sync, logger: quiet)
        try await ManagerServices.syncConfiguredPeers(config, store: store)
        let metrics = GatewayMetrics()
        let links = PeerLinks(store: store, identity: { identity.current }, trustFolder: directory + "/ssl/peers", configured: config.peers, peersFolder: config.peersFolder, timing: linkTiming,
                              metrics: metrics.registry, logger: quiet)
        let api = APIService(store: store, agent: agent, rotation: rotation, links: links, identityStatus: { ManagerServices.identityStatus(prepared) }, configuration: apiConfiguration,
                             users: signIns, logger: quiet)
        services.register("api", api)
        let notifier = Notifier(store: store, secrets: vault.key, identityStatus: { ManagerServices.identityStatus(prepared) }, configuration: notifications, logger: quiet)
        let console = try ConsoleService(store: store, agent: agent, api: api, identityStatus: { ManagerServices.identityStatus(prepared) }, reportsURL: "/reports", links: links,
                                         notifier: notifier, logger: quiet)
        services.register("console", console)
        services.register("reporting", try ReportingService(store: store, api: api, console: console, logger: quiet))
        services.register("replication", ReplicationService(store: store, logger: quiet))
        let gateway = Gateway(configuration: prepared, identityCache: cache, serverLoops: try TestGateway.serverLoops(), services: services, logger: quiet, metrics: metrics)
        try await gateway.start()
        let https = "https://127.0.0.1:\(try #require(await gateway.boundAddress(of: .client)?.port))"
        let plain = "http://127.0.0.1:\(try #require(await gateway.boundAddress(of: .clientPlain)?.port))"
        let apiURL = "https://127.0.0.1:\(try #require(await gateway.boundAddress(of: .webservices)?.port))/api/v1"
        let consoleURL = "https://127.0.0.1:\(try #require(await gateway.boundAddress(of: .console)?.port))"
        let reportingURL = "https://127.0.0.1:\(try #require(await gateway.boundAddress(of: .reporting)?.port))"
        let replicationURL = "https://127.0.0.1:\(try #require(await gateway.boundAddress(of: .replication)?.port))"
        let manager = TestManager(
            gateway: gateway, store: store, agent: agent, directory: directory, httpsURL: https, plainURL: plain,
            bootstrap: BootstrapFile(site: config.siteName, managerURLs: [https, plain], pinned: PinnedCertificates(pem: [identity.current.certificatePEM], authorities: identity.current.authorityPEMs)),
            identity: identity, api: api, rotation: rotation, apiURL: apiURL, consoleURL: consoleURL, reportingURL: reportingURL,
            replicationURL: replicationURL, links: links, keys: keys, notifier: notifier)
        do {
            let result = try await body(manager)
            links.stopPullers()
            await gateway.stop()
            await store.close()
            return result
        } catch {
            links.stopPullers()
            await gateway.stop()
            await store.close()
            throw error
        }
    }

    /// Creates an enrollment token and returns what an installer would hand the agent.
    func makeToken(usesAllowed: Int? = 1, expiresInMilliseconds: Int64? = 3_600_000, group: String? = nil) async throws -> String {
        let id = "t-\(UUID().uuidString.prefix(8).lowercased())"
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        try await store.createEnrollmentToken(EnrollmentTokenRecord(
            id: id, secretHash: Array(SHA256.hash(data: secret)), groupID: group, usesAllowed: usesAllowed,
            expiresMilliseconds: expiresInMilliseconds.map { now + $0 }, createdBy: "test"))
        return id + "." + Base64URL.encode(secret)
    }

    /// Enrolls a new agent and returns a client for it on `url`.
    func enrolledAgent(url: String? = nil, group: String? = nil, hostname: String = "laptop") async throws -> AgentClient {
        let state = try await AgentClient.enroll(bootstrap: bootstrap, token: try await makeToken(group: group), hostname: hostname, os: "linux", managerURL: url ?? httpsURL)
        return AgentClient(state: state, managerURL: url ?? httpsURL)
    }
}

/// Runs `body` with an agent client and shuts it down after.
func withAgent<T>(_ client: AgentClient, _ body: (AgentClient) async throws -> T) async throws -> T {
    do {
        let result = try await body(client)
        await client.shutdown()
        return result
    } catch {
        await client.shutdown()
        throw error
    }
}

extension UserSignIns.Configuration {
    /// Cheap offline verifiers (scrypt's N = 2^10), so that sign-ins in tests are quick.
    static var forTests: Self {
        var configuration = Self()
        configuration.verifierLogRounds = 10
        return configuration
    }
}

extension PeerLinks.Timing {
    /// Short intervals, so that tests see links come up and digests compared quickly.
    static var fast: Self {
        var timing = Self()
        timing.hello = .milliseconds(200)
        timing.longPoll = .seconds(5)
        timing.digest = .milliseconds(500)
        return timing
    }
}

/// Waits for `condition` to hold: it is checked again whenever one of the managers' stores
/// commits a replicated change or one of their peer links changes status, and the test fails
/// if it does not hold within `limit`.
func eventually(_ what: String, watching managers: [TestManager], within limit: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
    let feeds = managers.flatMap { [$0.store.changeFeed, $0.links.changes] }
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        // Generations first, then the check: a change in between wakes the wait at once.
        let seen = feeds.map(\.generation)
        if try await condition() { return }
        let remaining = deadline - ContinuousClock.now
        await withTaskGroup(of: Void.self) { group in
            for (feed, generation) in zip(feeds, seen) { group.addTask { await feed.wait(past: generation, timeout: remaining) } }
            await group.next()
            group.cancelAll()
        }
    }
    Issue.record("\(what): not within \(limit)")
    throw CancellationError()
}
