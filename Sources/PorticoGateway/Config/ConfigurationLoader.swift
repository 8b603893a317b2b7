import NIOCore
import Yams

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads `portico.yaml` into a ``GatewayConfiguration``, reporting every problem with its
/// file, line and column rather than stopping at the first.
///
/// The loader checks the shape of the file and the references inside it (routes naming
/// listeners, upstreams and services). Files the config names (certificates, keys, trust
/// bundles) are read by ``ConfigurationCheck``, which also builds the TLS material.
public struct ConfigurationLoader: Sendable {
    /// Names of built-in services that routes may target.
    public var knownServices: Set<String>

    public init(knownServices: Set<String> = BuiltinServices.names) {
        self.knownServices = knownServices
    }

    /// Loads the file at `path`.
    public func load(file path: String) throws(ConfigurationError) -> GatewayConfiguration {
        let absolute = Paths.resolve(path, against: Paths.currentDirectory)
        let text: String
        do {
            text = try FileContents.readString(absolute)
        } catch {
            throw ConfigurationError([ConfigurationDiagnostic("cannot read the config file: \(error)", at: nil)])
        }
        return try load(yaml: text, file: absolute)
    }

    /// Loads YAML text as if it came from `file` (relative paths resolve against its folder).
    public func load(yaml text: String, file: String) throws(ConfigurationError) -> GatewayConfiguration {
        var reader = NodeReader(file: file)
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw ConfigurationError([reader.diagnostic(for: error)])
        } catch {
            throw ConfigurationError([ConfigurationDiagnostic("\(file): \(error)", at: nil)])
        }
        var config = GatewayConfiguration(baseDirectory: Paths.directory(of: file))
        config.sourceFile = file
        if let root {
            read(root, into: &config, reader: &reader)
        }
        validateReferences(config, reader: &reader)
        if !reader.diagnostics.isEmpty {
            throw ConfigurationError(reader.diagnostics)
        }
        return config
    }

    private func read(_ root: Node, into config: inout GatewayConfiguration, reader: inout NodeReader) {
        let base = Paths.directory(of: reader.file)
        guard let top = reader.mapping(root, at: "the top level", keys: ["site", "data_dir", "storage", "agents", "identity", "listeners", "routes", "upstreams", "shutdown", "peers"]) else { return }
        if let site = top["site"], let keys = reader.mapping(site.value, at: "site", keys: ["name"]) {
            if let name = keys["name"], let value = reader.string(name.value, at: "site.name") {
                if value.isEmpty { reader.error("site.name must not be empty", at: name.value) } else { config.siteName = value }
            }
        }
        if let dataDir = top["data_dir"], let value = reader.string(dataDir.value, at: "data_dir") {
            config.dataDirectory = Paths.resolve(value, against: base)
        }
        if let storage = top["storage"], let keys = reader.mapping(storage.value, at: "storage", keys: ["postgres"]),
           let postgres = keys["postgres"], let settings = reader.mapping(postgres.value, at: "storage.postgres", keys: ["url", "pool_size"]) {
            if let url = settings["url"], let value = reader.string(url.value, at: "storage.postgres.url") {
                if value.hasPrefix("postgres://") || value.hasPrefix("postgresql://") {
                    config.storage.postgresURL = value
                } else {
                    // The value is not echoed: it may hold a password.
                    reader.error("storage.postgres.url must start with postgres:// (postgres://user:password@host:5432/database)", at: url.value)
                }
            }
            if let size = settings["pool_size"], let value = reader.int(size.value, at: "storage.postgres.pool_size") {
                if (1...256).contains(value) { config.storage.postgresPoolSize = value } else { reader.error("storage.postgres.pool_size must be between 1 and 256", at: size.value) }
            }
        }
        if let agents = top["agents"], let keys = reader.mapping(agents.value, at: "agents", keys: ["session_lifetime", "checkin_interval", "clock_skew"]) {
            for (key, keyPath) in [("session_lifetime", \AgentSettings.sessionLifetime), ("checkin_interval", \.checkInInterval), ("clock_skew", \.clockSkew)] {
                guard let entry = keys[key], let value = reader.duration(entry.value, at: "agents.\(key)") else { continue }
                if value.nanoseconds < 1_000_000_000 {
                    reader.error("agents.\(key) must be at least 1s", at: entry.value)
                } else {
                    config.agents[keyPath: keyPath] = value
                }
            }
        }
        if let shutdown = top["shutdown"], let keys = reader.mapping(shutdown.value, at: "shutdown", keys: ["grace_period"]) {
            if let grace = keys["grace_period"], let value = reader.duration(grace.value, at: "shutdown.grace_period") {
                config.shutdownGracePeriod = value
            }
        }
        if let identity = top["identity"] {
            readIdentity(identity.value, into: &config, base: base, reader: &reader)
        }
        if let listeners = top["listeners"] {
            readListeners(listeners.value, into: &config, base: base, reader: &reader)
        }
        if let upstreams = top["upstreams"] {
            readUpstreams(upstreams.value, into: &config, base: base, reader: &reader)
        }
        if let routes = top["routes"] {
            readRoutes(routes.value, into: &config, reader: &reader)
        }
        if let peers = top["peers"] {
            readPeers(peers.value, into: &config, base: base, reader: &reader)
        }
    }

    private func readPeers(_ node: Node, into config: inout GatewayConfiguration, base: String, reader: inout NodeReader) {
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
            config.peers.append(PeerConfiguration(name: name, url: url.hasSuffix("/") ? String(url.dropLast()) : url, certificate: Paths.resolve(certificate, against: base), history: history))
            config.locations["\(path).certificate"] = reader.location(certificateNode.value)
        }
    }

    private func readIdentity(_ node: Node, into config: inout GatewayConfiguration, base: String, reader: inout NodeReader) {
        guard let keys = reader.mapping(node, at: "identity", keys: ["certificate", "private_key", "generate", "names", "reload_interval"]) else { return }
        if let entry = keys["certificate"], let value = reader.string(entry.value, at: "identity.certificate") {
            config.identity.certificate = Paths.resolve(value, against: base)
            config.locations["identity.certificate"] = reader.location(entry.value)
        }
        if let entry = keys["private_key"], let value = reader.string(entry.value, at: "identity.private_key") {
            config.identity.privateKey = Paths.resolve(value, against: base)
            config.locations["identity.private_key"] = reader.location(entry.value)
        }
        if let entry = keys["generate"], let value = reader.string(entry.value, at: "identity.generate") {
            if value == "never" {
                config.identity.generate = nil
            } else if let type = KeyType(rawValue: value) {
                config.identity.generate = type
            } else {
                reader.error("identity.generate must be one of \(KeyType.allCases.map(\.rawValue).joined(separator: ", ")) or never, not '\(value)'", at: entry.value)
            }
        }
        if let entry = keys["names"], let names = reader.stringList(entry.value, at: "identity.names") {
            config.identity.names = names
        }
        if let entry = keys["reload_interval"], let value = reader.duration(entry.value, at: "identity.reload_interval") {
            config.identity.reloadInterval = value
        }
    }

    private static let listenerKeys = [
        "enabled", "port", "bind", "tls", "client_auth", "trust", "certificate", "private_key",
        "http2", "tls12_ciphers", "proxy_protocol", "trusted_proxies", "limits", "access_log", "engine",
    ]
    private static let limitKeys = [
        "max_connections", "max_header_bytes", "max_headers", "max_body_bytes",
        "header_timeout", "body_timeout", "idle_timeout",
    ]

    private func readListeners(_ node: Node, into config: inout GatewayConfiguration, base: String, reader: inout NodeReader) {
        guard let roles = reader.mapping(node, at: "listeners", keys: ListenerRole.allCases.map(\.rawValue), what: "listener role") else { return }
        for role in ListenerRole.allCases {
            guard let entry = roles[role.rawValue] else { continue }
            let path = "listeners.\(role)"
            var listener = ListenerConfiguration(role: role)
            config.locations[path] = reader.location(entry.key)
            guard let keys = reader.mapping(entry.value, at: path, keys: Self.listenerKeys) else { continue }
            if let v = keys["enabled"], let b = reader.bool(v.value, at: "\(path).enabled") { listener.enabled = b }
            if let v = keys["port"], let port = reader.int(v.value, at: "\(path).port") {
                if (0...65535).contains(port) { listener.port = port } else { reader.error("\(path).port must be between 0 and 65535, not \(port)", at: v.value) }
                config.locations["\(path).port"] = reader.location(v.value)
            }
            if let v = keys["bind"], let s = reader.string(v.value, at: "\(path).bind") { listener.bind = s }
            if let v = keys["tls"], let b = reader.bool(v.value, at: "\(path).tls") { listener.tls = b }
            if let v = keys["client_auth"], let s = reader.string(v.value, at: "\(path).client_auth") {
                if let auth = ClientAuthentication(rawValue: s) { listener.clientAuth = auth } else {
                    reader.error("\(path).client_auth must be none, optional or require, not '\(s)'", at: v.value)
                }
            }
            for (key, keyPath) in [("trust", \ListenerConfiguration.trust), ("certificate", \.certificate), ("private_key", \.privateKey)] {
                if let v = keys[key], let s = reader.string(v.value, at: "\(path).\(key)") {
                    listener[keyPath: keyPath] = Paths.resolve(s, against: base)
                    config.locations["\(path).\(key)"] = reader.location(v.value)
                }
            }
            if let v = keys["http2"], let b = reader.bool(v.value, at: "\(path).http2") { listener.http2 = b }
            if let v = keys["tls12_ciphers"], let list = reader.sequence(v.value, at: "\(path).tls12_ciphers") {
                var names: [String] = []
                for item in list {
                    guard let name = reader.string(item, at: "\(path).tls12_ciphers") else { continue }
                    if TLSCipherPolicy.known.contains(name) { names.append(name) } else {
                        reader.error("'\(name)' in \(path).tls12_ciphers is not a TLS 1.2 cipher suite Portico offers; choose from \(TLSCipherPolicy.intermediate.joined(separator: ", ")) (or, for old clients, \(TLSCipherPolicy.legacy.joined(separator: ", ")))", at: item)
                    }
                }
                if list.isEmpty { reader.error("\(path).tls12_ciphers is empty: TLS 1.2 clients could not connect; leave it out for the default", at: v.value) }
                listener.tls12Ciphers = names
            }
            if let v = keys["proxy_protocol"], let b = reader.bool(v.value, at: "\(path).proxy_protocol") { listener.proxyProtocol = b }
            if let v = keys["access_log"], let b = reader.bool(v.value, at: "\(path).access_log") { listener.accessLog = b }
            if let v = keys["engine"], let s = reader.string(v.value, at: "\(path).engine") {
                if let engine = ListenerEngine(rawValue: s) { listener.engine = engine } else {
                    reader.error("\(path).engine must be nio or core, not '\(s)'", at: v.value)
                }
                config.locations["\(path).engine"] = reader.location(v.value)
            }
            if let v = keys["trusted_proxies"], let list = reader.sequence(v.value, at: "\(path).trusted_proxies") {
                for item in list {
                    guard let s = reader.string(item, at: "\(path).trusted_proxies") else { continue }
                    if let cidr = CIDR(s) { listener.trustedProxies.append(cidr) } else {
                        reader.error("'\(s)' in \(path).trusted_proxies is not an IP address or CIDR network such as 10.0.0.0/8", at: item)
                    }
                }
            }
            if let v = keys["limits"], let limits = reader.mapping(v.value, at: "\(path).limits", keys: Self.limitKeys) {
                let p = "\(path).limits"
                for (key, keyPath) in [("max_connections", \ListenerLimits.maxConnections), ("max_header_bytes", \.maxHeaderBytes), ("max_headers", \.maxHeaderCount), ("max_body_bytes", \.maxBodyBytes)] {
                    if let n = limits[key], let value = reader.int(n.value, at: "\(p).\(key)") {
                        if value > 0 { listener.limits[keyPath: keyPath] = value } else { reader.error("\(p).\(key) must be greater than 0", at: n.value) }
                    }
                }
                for (key, keyPath) in [("header_timeout", \ListenerLimits.headerTimeout), ("body_timeout", \.bodyTimeout), ("idle_timeout", \.idleTimeout)] {
                    if let n = limits[key], let value = reader.duration(n.value, at: "\(p).\(key)") { listener.limits[keyPath: keyPath] = value }
                }
            }
            if listener.clientAuth != .none && !listener.tls {
                reader.error("\(path).client_auth needs tls: true; a plain listener cannot ask for client certificates", at: keys["client_auth"]?.value ?? entry.value)
            }
            if listener.proxyProtocol && listener.trustedProxies.isEmpty {
                reader.error("\(path).proxy_protocol is on but trusted_proxies is empty, so every connection would be refused; list the proxies' addresses", at: keys["proxy_protocol"]?.value ?? entry.value)
            }
            if (listener.certificate == nil) != (listener.privateKey == nil) {
                reader.error("\(path) names a certificate without a private_key or the other way round; give both or neither", at: entry.value)
            }
            config.listeners[role] = listener
        }
    }

    private func readUpstreams(_ node: Node, into config: inout GatewayConfiguration, base: String, reader: inout NodeReader) {
        guard case .mapping(let mapping) = node else {
            reader.error("upstreams must be a mapping of names to upstream settings", at: node)
            return
        }
        let allowed = ["targets", "connect_timeout", "response_timeout", "retries", "health_check", "passive", "max_response_bytes", "keepalive", "trust"]
        for (keyNode, valueNode) in mapping {
            guard let name = reader.string(keyNode, at: "upstreams") else { continue }
            let path = "upstreams.\(name)"
            guard let keys = reader.mapping(valueNode, at: path, keys: allowed) else { continue }
            var upstream = UpstreamConfiguration(name: name, targets: [])
            if let v = keys["targets"], let list = reader.sequence(v.value, at: "\(path).targets") {
                for item in list {
                    guard let s = reader.string(item, at: "\(path).targets") else { continue }
                    if UpstreamTarget(url: s) == nil {
                        reader.error("'\(s)' in \(path).targets is not a URL such as http://127.0.0.1:9000 or https://backend:8443", at: item)
                    } else {
                        upstream.targets.append(s)
                    }
                }
            }
            if upstream.targets.isEmpty && keys["targets"] == nil {
                reader.error("\(path) has no targets; list at least one URL under targets", at: keyNode)
            }
            if let v = keys["trust"], let s = reader.string(v.value, at: "\(path).trust") {
                upstream.trust = Paths.resolve(s, against: base)
                config.locations["\(path).trust"] = reader.location(v.value)
            }
            if let v = keys["connect_timeout"], let d = reader.duration(v.value, at: "\(path).connect_timeout") { upstream.connectTimeout = d }
            if let v = keys["response_timeout"], let d = reader.duration(v.value, at: "\(path).response_timeout") { upstream.responseTimeout = d }
            if let v = keys["retries"], let n = reader.int(v.value, at: "\(path).retries") {
                if n >= 0 { upstream.retries = n } else { reader.error("\(path).retries must not be negative", at: v.value) }
            }
            if let v = keys["max_response_bytes"], let n = reader.int(v.value, at: "\(path).max_response_bytes") {
                if n > 0 { upstream.maxResponseBytes = n } else { reader.error("\(path).max_response_bytes must be greater than 0", at: v.value) }
            }
            if let v = keys["keepalive"], let keepalive = reader.mapping(v.value, at: "\(path).keepalive", keys: ["idle_connections", "idle_timeout"]) {
                if let n = keepalive["idle_connections"], let value = reader.int(n.value, at: "\(path).keepalive.idle_connections") {
                    if value >= 0 { upstream.keepaliveConnections = value } else { reader.error("\(path).keepalive.idle_connections must not be negative (0 opens a connection per request)", at: n.value) }
                }
                if let n = keepalive["idle_timeout"], let d = reader.duration(n.value, at: "\(path).keepalive.idle_timeout") {
                    if d > .zero { upstream.keepaliveTimeout = d } else { reader.error("\(path).keepalive.idle_timeout must be longer than 0s", at: n.value) }
                }
            }
            if let v = keys["passive"], let passive = reader.mapping(v.value, at: "\(path).passive", keys: ["max_failures", "eject_for"]) {
                if let n = passive["max_failures"], let value = reader.int(n.value, at: "\(path).passive.max_failures") {
                    if value > 0 { upstream.passiveMaxFailures = value } else { reader.error("\(path).passive.max_failures must be greater than 0", at: n.value) }
                }
                if let n = passive["eject_for"], let d = reader.duration(n.value, at: "\(path).passive.eject_for") { upstream.passiveEjectFor = d }
            }
            if let v = keys["health_check"], let hc = reader.mapping(v.value, at: "\(path).health_check", keys: ["path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold"]) {
                var check = HealthCheckConfiguration()
                let p = "\(path).health_check"
                if let n = hc["path"], let s = reader.string(n.value, at: "\(p).path") {
                    if s.hasPrefix("/") { check.path = s } else { reader.error("\(p).path must start with /", at: n.value) }
                }
                if let n = hc["interval"], let d = reader.duration(n.value, at: "\(p).interval") { check.interval = d }
                if let n = hc["timeout"], let d = reader.duration(n.value, at: "\(p).timeout") { check.timeout = d }
                for (key, keyPath) in [("healthy_threshold", \HealthCheckConfiguration.healthyThreshold), ("unhealthy_threshold", \.unhealthyThreshold)] {
                    if let n = hc[key], let value = reader.int(n.value, at: "\(p).\(key)") {
                        if value > 0 { check[keyPath: keyPath] = value } else { reader.error("\(p).\(key) must be greater than 0", at: n.value) }
                    }
                }
                upstream.healthCheck = check
            }
            config.upstreams[name] = upstream
            config.locations[path] = reader.location(keyNode)
        }
    }

    private func readRoutes(_ node: Node, into config: inout GatewayConfiguration, reader: inout NodeReader) {
        guard let list = reader.sequence(node, at: "routes") else { return }
        let allowed = ["listener", "listeners", "methods", "host", "path", "service", "upstream", "max_body_bytes"]
        for (index, item) in list.enumerated() {
            let path = "routes[\(index)]"
            guard let keys = reader.mapping(item, at: path, keys: allowed) else { continue }
            var roles: [ListenerRole] = []
            var names: [(String, Node)] = []
            if let v = keys["listener"], let s = reader.string(v.value, at: "\(path).listener") { names.append((s, v.value)) }
            if let v = keys["listeners"], let list = reader.sequence(v.value, at: "\(path).listeners") {
                for n in list { if let s = reader.string(n, at: "\(path).listeners") { names.append((s, n)) } }
            }
            for (name, n) in names {
                if let role = ListenerRole(rawValue: name) { roles.append(role) } else {
                    reader.error("\(path) names listener '\(name)', which does not exist; listeners are \(ListenerRole.allCases.map(\.rawValue).joined(separator: ", "))", at: n)
                }
            }
            if names.isEmpty { reader.error("\(path) needs a listener (or listeners) to apply to", at: item) }
            var routePath = "/"
            if let v = keys["path"], let s = reader.string(v.value, at: "\(path).path") {
                if let problem = RoutePattern.problem(in: s) { reader.error("\(path).path '\(s)': \(problem)", at: v.value) } else { routePath = s }
            } else if keys["path"] == nil {
                reader.error("\(path) needs a path such as /healthz, /api/* or /devices/{id}", at: item)
            }
            var target: RouteTarget? = nil
            switch (keys["service"], keys["upstream"]) {
            case (let s?, nil):
                if let name = reader.string(s.value, at: "\(path).service") {
                    if knownServices.contains(name) { target = .service(name) } else {
                        reader.error("\(path) names service '\(name)', which does not exist; services are \(knownServices.sorted().joined(separator: ", "))", at: s.value)
                    }
                }
            case (nil, let u?):
                if let name = reader.string(u.value, at: "\(path).upstream") {
                    target = .upstream(name)
                    config.locations["\(path).upstream"] = reader.location(u.value)
                }
            case (.some, .some):
                reader.error("\(path) names both a service and an upstream; a route has one target", at: item)
            case (nil, nil):
                reader.error("\(path) needs a target: service or upstream", at: item)
            }
            var methods: [String] = []
            if let v = keys["methods"], let list = reader.sequence(v.value, at: "\(path).methods") {
                for n in list {
                    guard let m = reader.string(n, at: "\(path).methods") else { continue }
                    if m.isEmpty || !m.utf8.allSatisfy({ (65...90).contains($0) }) {
                        reader.error("'\(m)' in \(path).methods is not an HTTP method such as GET or POST", at: n)
                    } else {
                        methods.append(m)
                    }
                }
            }
            var host: String? = nil
            if let v = keys["host"], let s = reader.string(v.value, at: "\(path).host") { host = s.lowercased() }
            var bodyLimit: Int? = nil
            if let v = keys["max_body_bytes"], let n = reader.int(v.value, at: "\(path).max_body_bytes") {
                if n >= 0 { bodyLimit = n } else { reader.error("\(path).max_body_bytes must not be negative", at: v.value) }
            }
            guard let target, !roles.isEmpty else { continue }
            var route = RouteConfiguration(listeners: roles, methods: methods, host: host, path: routePath, target: target, maxBodyBytes: bodyLimit)
            route.location = reader.location(item)
            config.routes.append(route)
        }
    }

    private func validateReferences(_ config: GatewayConfiguration, reader: inout NodeReader) {
        for route in config.routes {
            if case .upstream(let name) = route.target, config.upstreams[name] == nil {
                let known = config.upstreams.keys.sorted()
                let list = known.isEmpty ? "no upstreams are defined" : "upstreams are \(known.joined(separator: ", "))"
                reader.diagnostics.append(ConfigurationDiagnostic("route \(route.path) names upstream '\(name)', which does not exist; \(list)", at: route.location))
            }
        }
        var seen: [String: ListenerRole] = [:]
        for listener in config.enabledListeners where listener.port != 0 {
            let key = "\(listener.port)"
            if let other = seen[key] {
                // Named where the file sets one of the two ports; a listener left out of the
                // file keeps its default port, which the sentence says.
                let own = config.locations["listeners.\(listener.role).port"] ?? config.locations["listeners.\(listener.role)"]
                let others = config.locations["listeners.\(other).port"] ?? config.locations["listeners.\(other)"]
                let byDefault = config.locations["listeners.\(listener.role).port"] == nil ? " (its default)" : ""
                let otherByDefault = config.locations["listeners.\(other).port"] == nil ? " (its default)" : ""
                reader.diagnostics.append(ConfigurationDiagnostic(
                    "listener \(listener.role) uses port \(listener.port)\(byDefault), which listener \(other) already uses\(otherByDefault); each listener needs its own port",
                    at: own ?? others ?? SourceLocation(file: reader.file, line: 1, column: 1)))
            } else {
                seen[key] = listener.role
            }
        }
    }
}
