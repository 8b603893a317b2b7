import NIOSSL
import Crypto
import Foundation
import Logging
import PorticoGateway
import PorticoServer
import PorticoStore

/// The role services the manager mounts on the gateway, by the names routes use.
public enum ManagerServices {
    /// Names a config's routes may target besides the gateway's built-ins.
    public static let names: Set<String> = ["agent", "api", "console", "reporting", "replication"]

    /// Every service name a route may target.
    public static var allNames: Set<String> { BuiltinServices.names.union(names) }

    /// Builds the registry for a prepared configuration and an open store.
    /// What the embedded defaults route: agents on both client listeners, the API on webservices.
    public static let defaultRoutes: [RouteConfiguration] = [
        RouteConfiguration(listeners: [.client, .clientPlain], path: "/agent/v1/*", target: .service("agent"), maxBodyBytes: 2 << 20),
        RouteConfiguration(listeners: [.webservices], path: "/api/v1/*", target: .service("api")),
        RouteConfiguration(listeners: [.console], path: "/*", target: .service("console")),
        RouteConfiguration(listeners: [.console, .reporting], path: "/reports/*", target: .service("reporting")),
        RouteConfiguration(listeners: [.reporting], path: "/*", target: .service("reporting")),
        RouteConfiguration(listeners: [.replication], path: "/replication/v1/*", target: .service("replication")),
    ]

    /// Records the peers the config file names (new ones added, URL and certificate brought up
    /// to date); peers added with `portico peer add` stay as they are.
    public static func syncConfiguredPeers(_ configuration: ManagerConfiguration, store: Store) async throws {
        for peer in configuration.peers {
            let pem = try FileContents.read(peer.certificate)
            guard let leaf = try NIOSSLCertificate.fromPEMBytes(pem).first else { throw ManagerError("\(peer.certificate) holds no certificate") }
            let fingerprint = try leaf.sha256Hex()
            try await ManagerOperations(store: store, agent: nil).configurePeer(PeerRecord(name: peer.name, url: peer.url, certificateFingerprint: fingerprint, history: PeerHistory(rawValue: peer.history) ?? .both,
                                                                               certificatePEM: String(decoding: pem, as: UTF8.self)))
        }
    }

    /// The folder of peers' certificates: the replication listener's `trust`, when it is a folder.
    public static func peerTrustFolder(_ configuration: GatewayConfiguration) -> String? {
        guard let trust = configuration.listeners[.replication]?.trust else { return nil }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: trust, isDirectory: &isDirectory), isDirectory.boolValue else { return nil }
        return trust.hasSuffix("/") ? String(trust.dropLast()) : trust
    }

    /// The site's secrets in `store`, opened with the key the configuration names.
    public static func vault(_ configuration: ManagerConfiguration, store: Store) throws -> SiteVault {
        SiteVault(store: store, key: try SecretsKey.load(configuration.secrets, dataDirectory: configuration.dataDirectory))
    }

    /// What `serve` runs besides the gateway.
    public struct Runtime: Sendable {
        public let registry: ServiceRegistry
        public let agent: AgentService
        public let api: APIService
        public let console: ConsoleService
        public let rotation: IdentityRotation
        public let history: FleetHistory
        public let links: PeerLinks
        public let notifier: Notifier
        /// The fleet and the process in `/metrics`, when the gateway keeps metrics.
        public let fleetMetrics: FleetMetrics?
        /// The directory's sync of users and check of operators, when there is a directory.
        public let directorySync: DirectorySync?
    }

    /// - Parameters:
    ///   - vault: the site's secrets in the database.
    ///   - sync: the site's identity in the database, exchanged by the rotation's steps.
    public static func registry(_ configuration: ManagerConfiguration, prepared: PreparedConfiguration, store: Store, vault: SiteVault, sync: IdentitySync?,
                                metrics: GatewayMetrics? = nil, logger: Logger) async throws -> Runtime {
        guard let identity = prepared.identity(of: .client) ?? prepared.configuration.names.lazy.compactMap({ prepared.identity(of: $0) }).first else {
            throw ManagerError("no TLS listener is enabled, so there is no server identity to sign agent policies with; enable the client listener")
        }
        let keys = try await ManagerKeys.load(from: vault, legacyDirectory: configuration.dataDirectory)
        var settings = AgentService.Configuration()
        settings.sessionLifetimeMilliseconds = configuration.agents.sessionLifetime.nanoseconds / 1_000_000
        settings.checkInIntervalSeconds = Int(configuration.agents.checkInInterval.nanoseconds / 1_000_000_000)
        settings.clockSkewMilliseconds = configuration.agents.clockSkew.nanoseconds / 1_000_000
        settings.pushEnabled = configuration.agents.pushEnabled
        settings.pushHoldSeconds = Int(configuration.agents.pushHold.nanoseconds / 1_000_000_000)
        settings.pushWakeRate = configuration.agents.pushWakeRate
        settings.managerName = configuration.managerName
        let directory = configuration.directory.map { DirectoryClient($0) }
        let users = UserSignIns(store: store, directory: directory, configuration: configuration.endpointUsers)
        let agent = AgentService(store: store, keys: keys, secrets: vault.key, identity: { identity.current }, configuration: settings, users: users, metrics: metrics?.registry,
                                 logger: logger)
        let rotation = IdentityRotation(configuration: prepared.configuration, identities: liveIdentities(prepared), agent: agent, store: store, sync: sync,
                                        logger: Logger(label: "portico.identity"))
        let links = PeerLinks(store: store, identity: { identity.current }, trustFolder: peerTrustFolder(prepared.configuration), configured: configuration.peers,
                              peersFolder: configuration.peersFolder, metrics: metrics?.registry, logger: Logger(label: "portico.replication"))
        var apiSettings = APIService.Configuration()
        apiSettings.minimumUserPasswordLength = configuration.endpointUsers.minimumPasswordLength
        let api = APIService(store: store, agent: agent, rotation: rotation, links: links, identityStatus: { identityStatus(prepared) }, configuration: apiSettings,
                             users: users, logger: Logger(label: "portico.api"))
        var registry = ServiceRegistry()
        registry.register("agent", agent)
        registry.register("api", api)
        let notifier = Notifier(store: store, secrets: vault.key, identityStatus: { identityStatus(prepared) }, configuration: configuration.notifications,
                                logger: Logger(label: "portico.notifications"))
        let directorySync = directory.map { DirectorySync(store: store, directory: $0, logger: Logger(label: "portico.directory")) }
        let console = try ConsoleService(store: store, agent: agent, api: api, identityStatus: { identityStatus(prepared) }, reportsURL: "/reports", links: links,
                                         notifier: notifier, directorySync: directorySync, logger: Logger(label: "portico.console"))
        registry.register("console", console)
        let consoleListener = prepared.configuration.listeners["console"].flatMap { $0.enabled && $0.tls && $0.port != 0 ? $0 : nil }
        registry.register("reporting", try ReportingService(store: store, api: api, console: console, consolePort: consoleListener?.port, logger: Logger(label: "portico.reporting")))
        registry.register("replication", ReplicationService(store: store, logger: Logger(label: "portico.replication")))
        return Runtime(registry: registry, agent: agent, api: api, console: console, rotation: rotation, history: FleetHistory(store: store), links: links, notifier: notifier,
                       fleetMetrics: metrics.map { FleetMetrics(store: store, metrics: $0) },
                       directorySync: directorySync)
    }

    /// The identities loaded from the configured identity files (the ones a rotation replaces).
    public static func liveIdentities(_ prepared: PreparedConfiguration) -> [ReloadableIdentity] {
        var found: [ReloadableIdentity] = []
        for name in prepared.configuration.names {
            guard let identity = prepared.identity(of: name), identity.certificatePath == prepared.configuration.identity.certificate,
                  !found.contains(where: { $0 === identity }) else { continue }
            found.append(identity)
        }
        return found
    }

    /// The identity the client listener serves (or the first TLS listener's), and the staged
    /// next one if `ssl/next/` holds one.
    public static func identityStatus(_ prepared: PreparedConfiguration) -> APIService.IdentityStatus? {
        let configuration = prepared.configuration
        var servedBy: [ListenerName] = []
        var current: ServerIdentity?
        for listener in configuration.enabledListeners where listener.tls {
            guard let identity = prepared.identity(of: listener.name)?.current else { continue }
            if current == nil { current = identity }
            if identity.fingerprint == current?.fingerprint { servedBy.append(listener.name) }
        }
        guard let current else { return nil }
        let next = StagedIdentity.load(configuration)
        return APIService.IdentityStatus(current: IdentitySummary(current, listeners: servedBy), staged: next.map { IdentitySummary($0, listeners: []) })
    }
}
