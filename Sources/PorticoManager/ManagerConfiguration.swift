import Foundation
import NIOCore
import PorticoGateway
import PorticoServer
import PorticoStore
import Yams

extension ListenerName {
    /// Endpoint agents over HTTPS.
    public static let client: ListenerName = "client"
    /// Endpoint agents over plain HTTP (messages are sealed end to end by the agent protocol).
    public static let clientPlain: ListenerName = "client_plain"
    /// Peer managers, mutual TLS.
    public static let replication: ListenerName = "replication"
    /// Operators in a browser.
    public static let console: ListenerName = "console"
    /// Reports and exports.
    public static let reporting: ListenerName = "reporting"
    /// REST API for automation; also serves `/metrics`.
    public static let webservices: ListenerName = "webservices"
}

/// The whole configuration of a manager, as read from `portico.yaml`: the gateway's
/// (listeners, identity, routes, upstreams, limits) and what the manager adds (its roles with
/// their ports, the site, storage, agents, peers). One file, read in one pass, its problems
/// reported together with file, line and column.
public struct ManagerConfiguration: Sendable, Equatable {
    /// The roles a manager listens for, one listener each, with their default ports.
    public static let roles: [ListenerKind] = [
        ListenerKind(.client, port: 8441),
        ListenerKind(.clientPlain, port: 8014, tls: false),
        ListenerKind(.replication, port: 8444, clientAuth: .require),
        ListenerKind(.console, port: 8443),
        ListenerKind(.reporting, port: 8445),
        ListenerKind(.webservices, port: 8446, servesMetrics: true),
    ]

    public var gateway: GatewayConfiguration
    /// `site.name`: the name of this manager's site, shown to operators and peers.
    public var siteName: String = "default-site"
    /// `site.manager`: this manager's name within its site (the host name by default), shown
    /// where it matters which manager did something, such as which one holds an agent's wait.
    public var managerName: String = ProcessInfo.processInfo.hostName
    /// `data_dir`: where the manager keeps its database and state.
    public var dataDirectory: String
    /// `storage`: where state is kept; SQLite under `data_dir` unless a PostgreSQL URL is set.
    public var storage = StorageSettings()
    /// `agents`: how the manager talks to endpoint agents.
    public var agents = AgentSettings()
    /// `peers`: managers of other sites this one replicates with; their certificates are
    /// trusted by the replication listener besides `listeners.replication.trust`.
    public var peers: [PeerConfiguration] = []
    /// `secrets`: where this manager finds the key that seals the site's secrets in the database.
    public var secrets = SecretsSettings()
    /// `notifications`: rules' checks, deliveries' retries, and the mail server.
    public var notifications = Notifier.Configuration()
    /// `directory`: the LDAP server, if any.
    public var directory: DirectorySettings?
    /// `endpoint_users`: users' sign-ins on devices (offline validity, lockouts, password rules).
    public var endpointUsers = UserSignIns.Configuration()

    /// This manager's copy of the peers' certificates the database holds, which its
    /// replication listener trusts besides `listeners.replication.trust`.
    public var peersFolder: String { dataDirectory + "/peers" }

    /// Has the replication listener trust ``peersFolder`` (once it exists).
    mutating func trustPeersFolder() {
        let folder = TrustedFile(file: peersFolder, key: "data_dir", optional: true)
        gateway.listeners[.replication]?.extraTrust.append(folder)
    }

    /// The embedded defaults, rooted at `baseDirectory`.
    public init(baseDirectory: String) {
        self.gateway = GatewayConfiguration(baseDirectory: baseDirectory, kinds: Self.roles)
        self.dataDirectory = Paths.resolve("data", against: baseDirectory)
        self.gateway.identity.commonName = siteName
    }

    /// What `portico serve` runs with no config file: the listeners with their default
    /// ports under `conf/`, data in `data/` of the current folder, and the manager's routes.
    public static func embeddedDefaults(in directory: String) -> ManagerConfiguration {
        var defaults = ManagerConfiguration(baseDirectory: Paths.resolve("conf", against: directory))
        defaults.dataDirectory = Paths.resolve("data", against: directory)
        defaults.gateway.routes = ManagerServices.defaultRoutes
        defaults.trustPeersFolder()
        return defaults
    }

    /// The loader of the gateway's part, with the manager's roles and services.
    public static var gatewayLoader: ConfigurationLoader {
        ConfigurationLoader(knownServices: ManagerServices.allNames, kinds: roles)
    }

    /// Loads the file at `path`.
    public static func load(file path: String) throws(ConfigurationError) -> ManagerConfiguration {
        var sections = ManagerSections()
        let gateway = try gatewayLoader.load(file: path, sections: &sections)
        return sections.configuration(gateway)
    }

    /// Loads YAML text as if it came from `file` (relative paths resolve against its folder).
    public static func load(yaml text: String, file: String) throws(ConfigurationError) -> ManagerConfiguration {
        var sections = ManagerSections()
        let gateway = try gatewayLoader.load(yaml: text, file: file, sections: &sections)
        return sections.configuration(gateway)
    }

    /// The store this configuration names: PostgreSQL when `storage.postgres.url` is set,
    /// else SQLite under `data_dir`.
    public var storeConfiguration: StoreConfiguration {
        if let url = storage.postgresURL { return .postgres(url: url, poolSize: storage.postgresPoolSize) }
        return .sqlite(path: dataDirectory + "/portico.sqlite")
    }
}

/// `storage`: the database settings.
public struct StorageSettings: Sendable, Equatable {
    /// `storage.postgres.url`: e.g. `postgres://portico:secret@db:5432/portico?sslmode=require`.
    /// When absent, SQLite at `data_dir/portico.sqlite`.
    public var postgresURL: String?
    /// `storage.postgres.pool_size`: connections per manager.
    public var postgresPoolSize: Int = 8

    public init() {}
}

/// `agents`: settings of the agent protocol.
public struct AgentSettings: Sendable, Equatable {
    /// `agents.session_lifetime`: how long a conversation's keys are good for.
    public var sessionLifetime: TimeAmount = .minutes(15)
    /// `agents.checkin_interval`: the interval handed to agents, before jitter.
    public var checkInInterval: TimeAmount = .minutes(5)
    /// `agents.clock_skew`: how far an agent's clock may be from the manager's.
    public var clockSkew: TimeAmount = .minutes(5)
    /// `agents.push.enabled`: whether agents may hold a `wait` open, to hear of a command at
    /// once rather than at their next check-in.
    public var pushEnabled = true
    /// `agents.push.hold`: the longest a wait is held before it is answered with nothing new
    /// (below the read timeout of any proxy in front of the client listeners).
    public var pushHold: TimeAmount = .seconds(45)
    /// `agents.push.wake_rate`: held waits answered per second when every agent has news
    /// (policies published), so that their fetches do not arrive at once.
    public var pushWakeRate = 5_000

    public init() {}
}

/// One entry of `peers`.
public struct PeerConfiguration: Sendable, Equatable {
    /// `name`: how this site calls the peer.
    public var name: String
    /// `url`: the peer's replication listener, `https://host:8444`.
    public var url: String
    /// `certificate`: the peer's server certificate (PEM file), trusted for its connections.
    public var certificate: String
    /// `history`: which way events and audit entries go with this peer: `both` (default),
    /// `send` (this site sends its own, takes none), `receive`, or `none`.
    public var history: String

    public static let historyModes = ["both", "send", "receive", "none"]

    public init(name: String, url: String, certificate: String, history: String = "both") {
        self.name = name
        self.url = url
        self.certificate = certificate
        self.history = history
    }
}

/// The manager's top-level keys, read with the gateway's reader.
struct ManagerSections: ConfigurationSections {
    var siteName = "default-site"
    var managerName: String?
    var dataDirectory: String?
    var storage = StorageSettings()
    var agents = AgentSettings()
    var peers: [PeerConfiguration] = []
    var secrets = SecretsSettings()
    var notifications = Notifier.Configuration()
    var directory: DirectorySettings?
    var endpointUsers = UserSignIns.Configuration()

    var keys: [String] { ["site", "data_dir", "storage", "agents", "peers", "secrets", "notifications", "directory", "endpoint_users"] }

    func configuration(_ gateway: GatewayConfiguration) -> ManagerConfiguration {
        let base = gateway.sourceFile.map { Paths.directory(of: $0) } ?? Paths.currentDirectory
        var configuration = ManagerConfiguration(baseDirectory: base)
        configuration.gateway = gateway
        configuration.siteName = siteName
        if let managerName { configuration.managerName = managerName }
        if let dataDirectory { configuration.dataDirectory = dataDirectory }
        configuration.storage = storage
        configuration.agents = agents
        configuration.peers = peers
        configuration.secrets = secrets
        configuration.notifications = notifications
        configuration.directory = directory
        configuration.endpointUsers = endpointUsers
        configuration.trustPeersFolder()
        return configuration
    }

    mutating func read(_ top: [String: (key: Node, value: Node)], base: String, reader: inout NodeReader, gateway: inout GatewayConfiguration) {
        if let site = top["site"], let keys = reader.mapping(site.value, at: "site", keys: ["name", "manager"]) {
            if let manager = keys["manager"], let value = reader.string(manager.value, at: "site.manager") {
                if value.isEmpty || value.utf8.count > 64 || !value.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) {
                    reader.error("site.manager '\(value)' must be 1 to 64 printable characters without spaces", at: manager.value)
                } else {
                    managerName = value
                }
            }
            if let name = keys["name"], let value = reader.string(name.value, at: "site.name") {
                if value.isEmpty { reader.error("site.name must not be empty", at: name.value) } else { siteName = value }
            }
        }
        // A generated certificate is named for the site.
        gateway.identity.commonName = siteName
        if let section = top["notifications"] { readNotifications(section.value, base: base, reader: &reader) }
        if let section = top["directory"] { readDirectory(section.value, base: base, reader: &reader) }
        if let section = top["endpoint_users"] { readEndpointUsers(section.value, reader: &reader) }
        if let dataDir = top["data_dir"], let value = reader.string(dataDir.value, at: "data_dir") {
            dataDirectory = Paths.resolve(value, against: base)
        }
        if let storage = top["storage"], let keys = reader.mapping(storage.value, at: "storage", keys: ["postgres"]),
           let postgres = keys["postgres"], let settings = reader.mapping(postgres.value, at: "storage.postgres", keys: ["url", "pool_size"]) {
            if let url = settings["url"], let value = reader.string(url.value, at: "storage.postgres.url") {
                if value.hasPrefix("postgres://") || value.hasPrefix("postgresql://") {
                    self.storage.postgresURL = value
                } else {
                    // The value is not echoed: it may hold a password.
                    reader.error("storage.postgres.url must start with postgres:// (postgres://user:password@host:5432/database)", at: url.value)
                }
            }
            if let size = settings["pool_size"], let value = reader.int(size.value, at: "storage.postgres.pool_size") {
                if (1...256).contains(value) { self.storage.postgresPoolSize = value } else { reader.error("storage.postgres.pool_size must be between 1 and 256", at: size.value) }
            }
        }
        if let agents = top["agents"], let keys = reader.mapping(agents.value, at: "agents", keys: ["session_lifetime", "checkin_interval", "clock_skew", "push"]) {
            if let push = keys["push"], let settings = reader.mapping(push.value, at: "agents.push", keys: ["enabled", "hold", "wake_rate"]) {
                if let enabled = settings["enabled"], let value = reader.bool(enabled.value, at: "agents.push.enabled") { self.agents.pushEnabled = value }
                if let hold = settings["hold"], let value = reader.duration(hold.value, at: "agents.push.hold") {
                    if value.nanoseconds < 1_000_000_000 || value.nanoseconds > 3_600_000_000_000 {
                        reader.error("agents.push.hold must be between 1s and 1h", at: hold.value)
                    } else {
                        self.agents.pushHold = value
                    }
                }
                if let rate = settings["wake_rate"], let value = reader.int(rate.value, at: "agents.push.wake_rate") {
                    if (1...1_000_000).contains(value) { self.agents.pushWakeRate = value } else { reader.error("agents.push.wake_rate must be between 1 and 1000000 a second", at: rate.value) }
                }
            }
            for (key, keyPath) in [("session_lifetime", \AgentSettings.sessionLifetime), ("checkin_interval", \.checkInInterval), ("clock_skew", \.clockSkew)] {
                guard let entry = keys[key], let value = reader.duration(entry.value, at: "agents.\(key)") else { continue }
                if value.nanoseconds < 1_000_000_000 {
                    reader.error("agents.\(key) must be at least 1s", at: entry.value)
                } else {
                    self.agents[keyPath: keyPath] = value
                }
            }
        }
        if let node = top["secrets"], let keys = reader.mapping(node.value, at: "secrets", keys: ["key_file", "key_env"]) {
            if keys["key_file"] != nil && keys["key_env"] != nil {
                reader.error("secrets names both key_file and key_env; give one", at: node.value)
            }
            if let file = keys["key_file"], let value = reader.string(file.value, at: "secrets.key_file") {
                if value.isEmpty { reader.error("secrets.key_file must not be empty", at: file.value) } else { secrets.keyFile = Paths.resolve(value, against: base) }
            }
            if let variable = keys["key_env"], let value = reader.string(variable.value, at: "secrets.key_env") {
                if value.isEmpty || !value.utf8.allSatisfy({ $0 == UInt8(ascii: "_") || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) }) {
                    reader.error("secrets.key_env '\(value)' must be the name of an environment variable (letters, digits and _)", at: variable.value)
                } else {
                    secrets.keyEnvironment = value
                }
            }
        }
        if let peers = top["peers"] {
            readPeers(peers.value, base: base, reader: &reader, gateway: &gateway)
        }
        // The replication listener trusts the peers' certificates besides its own `trust`.
        gateway.listeners[.replication]?.extraTrust = self.peers.enumerated().map { index, peer in
            TrustedFile(file: peer.certificate, key: "peers[\(index)].certificate")
        }
    }

    private mutating func readPeers(_ node: Node, base: String, reader: inout NodeReader, gateway: inout GatewayConfiguration) {
        guard let list = reader.sequence(node, at: "peers") else { return }
        var seen: Set<String> = []
        for (index, item) in list.enumerated() {
            let path = "peers[\(index)]"
            guard let keys = reader.mapping(item, at: path, keys: ["name", "url", "certificate", "history"]) else { continue }
            guard let nameNode = keys["name"], let name = reader.string(nameNode.value, at: "\(path).name") else {
                if keys["name"] == nil { reader.error("\(path) needs a name", at: item) }
                continue
            }
            if name.isEmpty || name.utf8.count > 64 || !name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") }) {
                reader.error("\(path).name '\(name)' must be 1 to 64 printable characters without spaces or '/'", at: nameNode.value)
                continue
            }
            if !seen.insert(name).inserted { reader.error("\(path).name '\(name)' is used by another peer", at: nameNode.value) }
            guard let urlNode = keys["url"], let url = reader.string(urlNode.value, at: "\(path).url") else {
                if keys["url"] == nil { reader.error("\(path) needs a url, https://host:8444", at: item) }
                continue
            }
            guard url.hasPrefix("https://"), !url.dropFirst(8).prefix(while: { $0 != "/" && $0 != ":" }).isEmpty else {
                reader.error("\(path).url '\(url)' must be an https:// URL of the peer's replication listener", at: urlNode.value)
                continue
            }
            guard let certificateNode = keys["certificate"], let certificate = reader.string(certificateNode.value, at: "\(path).certificate") else {
                if keys["certificate"] == nil { reader.error("\(path) needs the peer's certificate (a PEM file)", at: item) }
                continue
            }
            var history = "both"
            if let historyNode = keys["history"], let mode = reader.string(historyNode.value, at: "\(path).history") {
                guard PeerConfiguration.historyModes.contains(mode) else {
                    reader.error("\(path).history '\(mode)' must be one of \(PeerConfiguration.historyModes.joined(separator: ", ")): which way events and audit entries go", at: historyNode.value)
                    continue
                }
                history = mode
            }
            peers.append(PeerConfiguration(name: name, url: url.hasSuffix("/") ? String(url.dropLast()) : url, certificate: Paths.resolve(certificate, against: base), history: history))
            gateway.locations["\(path).certificate"] = reader.location(certificateNode.value)
        }
    }
}

extension ManagerSections {
    /// `notifications`: how often rules are checked, the retries, and the mail server.
    mutating func readNotifications(_ node: Node, base: String, reader: inout NodeReader) {
        guard let keys = reader.mapping(node, at: "notifications", keys: ["check_interval", "retry", "attempts", "webhook_timeout", "smtp"]) else { return }
        for (key, keyPath) in [("check_interval", \Notifier.Configuration.checkInterval), ("retry", \.retryBase), ("webhook_timeout", \.webhookTimeout)] {
            guard let entry = keys[key], let value = reader.duration(entry.value, at: "notifications.\(key)") else { continue }
            if value.nanoseconds < 100_000_000 || value.nanoseconds > 86_400_000_000_000 {
                reader.error("notifications.\(key) must be between 100ms and 24h", at: entry.value)
            } else {
                notifications[keyPath: keyPath] = .nanoseconds(value.nanoseconds)
            }
        }
        if let entry = keys["attempts"], let value = reader.int(entry.value, at: "notifications.attempts") {
            if (1...50).contains(value) { notifications.attempts = value } else { reader.error("notifications.attempts must be between 1 and 50", at: entry.value) }
        }
        guard let smtp = keys["smtp"],
              let settings = reader.mapping(smtp.value, at: "notifications.smtp", keys: ["host", "port", "security", "username", "password_file", "trust", "from"]) else { return }
        guard let hostEntry = settings["host"], let host = reader.string(hostEntry.value, at: "notifications.smtp.host"), !host.isEmpty else {
            reader.error("notifications.smtp needs host: the mail server's name or address", at: smtp.value)
            return
        }
        guard let fromEntry = settings["from"], let from = reader.string(fromEntry.value, at: "notifications.smtp.from"), from.contains("@") else {
            reader.error("notifications.smtp needs from: the address mail is sent from (portico@example.com)", at: smtp.value)
            return
        }
        var mail = SMTPSettings(host: host, from: from)
        if let entry = settings["security"], let value = reader.string(entry.value, at: "notifications.smtp.security") {
            if let security = SMTPSettings.Security(rawValue: value) { mail.security = security } else {
                reader.error("notifications.smtp.security must be starttls, tls or none (none only for a lab's mail sink)", at: entry.value)
            }
        }
        mail.port = mail.security == .tls ? 465 : 587
        if let entry = settings["port"], let value = reader.int(entry.value, at: "notifications.smtp.port") {
            if (1...65535).contains(value) { mail.port = value } else { reader.error("notifications.smtp.port must be between 1 and 65535", at: entry.value) }
        }
        if let entry = settings["username"], let value = reader.string(entry.value, at: "notifications.smtp.username") { mail.username = value }
        if let entry = settings["trust"], let value = reader.string(entry.value, at: "notifications.smtp.trust") {
            let path = Paths.resolve(value, against: base)
            if FileManager.default.isReadableFile(atPath: path) { mail.trust = path } else { reader.error("notifications.smtp.trust \(path) cannot be read", at: entry.value) }
        }
        if let entry = settings["password_file"], let value = reader.secretFile(entry.value, at: "notifications.smtp.password_file", base: base) { mail.password = value }
        if mail.username != nil, mail.password == nil { reader.error("notifications.smtp.username needs password_file", at: smtp.value) }
        notifications.smtp = mail
    }
}

extension ManagerSections {
    /// `directory`: the LDAP server. TLS is required (LDAPS, or StartTLS) unless `security:
    /// none` says otherwise for a lab, and the server is verified against `trust` (or the
    /// system's roots).
    mutating func readDirectory(_ node: Node, base: String, reader: inout NodeReader) {
        let known = ["url", "security", "trust", "bind_dn", "bind_password_file", "base_dn", "timeout", "user_attribute", "user_filter", "group_filter", "group_attribute", "account_filter",
                     "active_directory", "pool_size", "sync_interval", "operator_roles"]
        guard let keys = reader.mapping(node, at: "directory", keys: known) else { return }
        guard let urlEntry = keys["url"], let url = reader.string(urlEntry.value, at: "directory.url") else {
            reader.error("directory needs url: ldaps://directory.example.com:636 (or ldap:// with security: starttls)", at: node)
            return
        }
        guard let baseEntry = keys["base_dn"], let baseDN = reader.string(baseEntry.value, at: "directory.base_dn"), !baseDN.isEmpty else {
            reader.error("directory needs base_dn: where users and groups are (dc=example,dc=com)", at: node)
            return
        }
        var settings = DirectorySettings(url: url, baseDN: baseDN)
        let scheme = url.split(separator: ":").first.map { $0.lowercased() } ?? ""
        guard scheme == "ldap" || scheme == "ldaps" else {
            reader.error("directory.url must start with ldaps:// or ldap://", at: urlEntry.value)
            return
        }
        settings.security = scheme == "ldaps" ? .ldaps : .starttls
        if let entry = keys["security"], let value = reader.string(entry.value, at: "directory.security") {
            switch (DirectorySettings.Security(rawValue: value), scheme) {
            case (nil, _): reader.error("directory.security must be ldaps, starttls or none (none sends passwords in the clear: for a lab only)", at: entry.value)
            case (.ldaps?, "ldap"): reader.error("directory.security ldaps needs an ldaps:// url", at: entry.value)
            case (.starttls?, "ldaps"), (DirectorySettings.Security.none?, "ldaps"): reader.error("directory.security \(value) needs an ldap:// url", at: entry.value)
            case (let security?, _): settings.security = security
            }
        }
        if let entry = keys["trust"], let value = reader.string(entry.value, at: "directory.trust") {
            let path = Paths.resolve(value, against: base)
            if FileManager.default.isReadableFile(atPath: path) { settings.trust = path } else { reader.error("directory.trust \(path) cannot be read", at: entry.value) }
        }
        if let entry = keys["bind_dn"], let value = reader.string(entry.value, at: "directory.bind_dn") { settings.bindDN = value }
        if let entry = keys["bind_password_file"], let value = reader.secretFile(entry.value, at: "directory.bind_password_file", base: base) { settings.bindPassword = value }
        if settings.bindDN != nil, settings.bindPassword == nil { reader.error("directory.bind_dn needs bind_password_file", at: node) }
        if let entry = keys["timeout"], let value = reader.duration(entry.value, at: "directory.timeout") {
            let seconds = Int(value.nanoseconds / 1_000_000_000)
            if (1...300).contains(seconds) { settings.timeoutSeconds = seconds } else { reader.error("directory.timeout must be between 1s and 5m", at: entry.value) }
        }
        for (key, keyPath) in [("user_attribute", \DirectorySettings.userAttribute), ("user_filter", \.userFilter), ("group_filter", \.groupFilter), ("group_attribute", \.groupAttribute)] {
            guard let entry = keys[key], let value = reader.string(entry.value, at: "directory.\(key)") else { continue }
            if value.isEmpty { reader.error("directory.\(key) must not be empty", at: entry.value) } else { settings[keyPath: keyPath] = value }
        }
        if let entry = keys["account_filter"], let value = reader.string(entry.value, at: "directory.account_filter") { settings.accountFilter = value }
        for key in ["user_filter", "group_filter", "account_filter"] {
            if let entry = keys[key], let value = reader.string(entry.value, at: "directory.\(key)"), !value.isEmpty, !(value.hasPrefix("(") && value.hasSuffix(")")) {
                reader.error("directory.\(key) must be an LDAP filter in parentheses, such as (objectClass=inetOrgPerson)", at: entry.value)
            }
        }
        if let entry = keys["active_directory"], let value = reader.bool(entry.value, at: "directory.active_directory") {
            settings.activeDirectory = value
            // Active Directory's own names, unless the config gives others.
            if value, keys["user_attribute"] == nil { settings.userAttribute = "sAMAccountName" }
            if value, keys["user_filter"] == nil { settings.userFilter = "(&(objectCategory=person)(objectClass=user))" }
            if value, keys["group_filter"] == nil { settings.groupFilter = "(&(objectClass=group)(member={dn}))" }
            if value, keys["account_filter"] == nil { settings.accountFilter = "(!(userAccountControl:1.2.840.113556.1.4.803:=2))" }
        }
        if let entry = keys["pool_size"], let value = reader.int(entry.value, at: "directory.pool_size") {
            if (1...64).contains(value) { settings.poolSize = value } else { reader.error("directory.pool_size must be between 1 and 64", at: entry.value) }
        }
        if let entry = keys["sync_interval"], let value = reader.duration(entry.value, at: "directory.sync_interval") {
            let seconds = Int(value.nanoseconds / 1_000_000_000)
            if seconds == 0 || (60...7 * 86_400).contains(seconds) { settings.syncIntervalSeconds = seconds } else {
                reader.error("directory.sync_interval must be 0 (no sync) or between 1m and 7d", at: entry.value)
            }
        }
        if let entry = keys["operator_roles"] {
            // Directory group name to operator role; the first group that maps gives the role,
            // in the order of the file.
            if case .mapping(let mapping) = entry.value {
                for (key, value) in mapping {
                    guard case .scalar(let group) = key, let role = reader.string(value, at: "directory.operator_roles.\(group.string)") else { continue }
                    if let parsed = OperatorRole(rawValue: role) { settings.operatorRoles.append(.init(group: group.string, role: parsed)) } else {
                        reader.error("directory.operator_roles.\(group.string) must be admin, operator or auditor", at: value)
                    }
                }
            } else if !(reader.mapping(entry.value, at: "directory.operator_roles", keys: [])?.isEmpty ?? false) {
                reader.error("directory.operator_roles must map directory groups to roles (portico-admins: admin)", at: entry.value)
            }
        }
        directory = settings
    }

    /// `endpoint_users`: how users sign in on devices.
    mutating func readEndpointUsers(_ node: Node, reader: inout NodeReader) {
        let known = ["offline_sign_in", "lock_after_failures", "device_lock_after_failures", "lockout", "min_password_length"]
        guard let keys = reader.mapping(node, at: "endpoint_users", keys: known) else { return }
        if let entry = keys["offline_sign_in"], let value = reader.duration(entry.value, at: "endpoint_users.offline_sign_in") {
            let seconds = Int(value.nanoseconds / 1_000_000_000)
            if (0...365 * 86_400).contains(seconds) { endpointUsers.offlineSeconds = seconds } else { reader.error("endpoint_users.offline_sign_in must be between 0 (never) and 365d", at: entry.value) }
        }
        for (key, keyPath, range) in [("lock_after_failures", \UserSignIns.Configuration.lockAfterFailures, 1...100), ("device_lock_after_failures", \.deviceLockAfterFailures, 1...1000),
                                      ("min_password_length", \.minimumPasswordLength, 8...128)] {
            guard let entry = keys[key], let value = reader.int(entry.value, at: "endpoint_users.\(key)") else { continue }
            if range.contains(value) { endpointUsers[keyPath: keyPath] = value } else {
                reader.error("endpoint_users.\(key) must be between \(range.lowerBound) and \(range.upperBound)", at: entry.value)
            }
        }
        if let entry = keys["lockout"], let value = reader.duration(entry.value, at: "endpoint_users.lockout") {
            let milliseconds = value.nanoseconds / 1_000_000
            if (60_000...86_400_000).contains(milliseconds) { endpointUsers.lockoutMilliseconds = milliseconds } else { reader.error("endpoint_users.lockout must be between 1m and 24h", at: entry.value) }
        }
    }
}
