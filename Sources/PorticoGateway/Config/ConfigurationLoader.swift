import Crypto
import Foundation
import NIOCore
import PorticoServer
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
    /// Names of the services that routes may target.
    public var knownServices: Set<String>
    /// The listeners the program has, with their defaults.
    public var kinds: [ListenerKind]

    public init(knownServices: Set<String> = BuiltinServices.names, kinds: [ListenerKind]) {
        self.knownServices = knownServices
        self.kinds = kinds
    }

    /// Loads the file at `path`.
    public func load(file path: String) throws(ConfigurationError) -> GatewayConfiguration {
        var none = NoSections()
        return try load(file: path, sections: &none)
    }

    /// Loads YAML text as if it came from `file` (relative paths resolve against its folder).
    public func load(yaml text: String, file: String) throws(ConfigurationError) -> GatewayConfiguration {
        var none = NoSections()
        return try load(yaml: text, file: file, sections: &none)
    }

    /// Loads the file at `path`, with top-level keys the program reads itself.
    package func load<Sections: ConfigurationSections>(file path: String, sections: inout Sections) throws(ConfigurationError) -> GatewayConfiguration {
        let absolute = Paths.resolve(path, against: Paths.currentDirectory)
        let text: String
        do {
            text = try FileContents.readString(absolute)
        } catch {
            throw ConfigurationError([ConfigurationDiagnostic("cannot read the config file: \(error)", at: nil)])
        }
        return try load(yaml: text, file: absolute, sections: &sections)
    }

    /// Loads YAML text, with top-level keys the program reads itself: their problems are
    /// reported with the gateway's, in one list.
    package func load<Sections: ConfigurationSections>(yaml text: String, file: String, sections: inout Sections) throws(ConfigurationError) -> GatewayConfiguration {
        var reader = NodeReader(file: file)
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw ConfigurationError([reader.diagnostic(for: error)])
        } catch {
            throw ConfigurationError([ConfigurationDiagnostic("\(file): \(error)", at: nil)])
        }
        let base = Paths.directory(of: file)
        var config = GatewayConfiguration(baseDirectory: base, kinds: kinds)
        config.sourceFile = file
        var top: [String: (key: Node, value: Node)] = [:]
        if let root, let keys = reader.mapping(root, at: "the top level", keys: Self.topKeys + sections.keys) {
            top = keys
            read(top, into: &config, reader: &reader)
        }
        sections.read(top, base: base, reader: &reader, gateway: &config)
        validateReferences(config, reader: &reader)
        if !reader.diagnostics.isEmpty {
            throw ConfigurationError(reader.diagnostics)
        }
        return config
    }

    static let topKeys = ["identity", "listeners", "routes", "upstreams", "shutdown", "access_log", "metrics"]

    private func read(_ top: [String: (key: Node, value: Node)], into config: inout GatewayConfiguration, reader: inout NodeReader) {
        let base = Paths.directory(of: reader.file)
        if let shutdown = top["shutdown"], let keys = reader.mapping(shutdown.value, at: "shutdown", keys: ["grace_period"]) {
            if let grace = keys["grace_period"], let value = reader.duration(grace.value, at: "shutdown.grace_period") {
                config.shutdownGracePeriod = value
            }
        }
        if let log = top["access_log"], let keys = reader.mapping(log.value, at: "access_log", keys: ["file", "format"]) {
            if let file = keys["file"], let value = reader.string(file.value, at: "access_log.file") {
                config.accessLog.file = value == "-" ? value : Paths.resolve(value, against: base)
                config.locations["access_log.file"] = reader.location(file.value)
            }
            if let format = keys["format"], let value = reader.string(format.value, at: "access_log.format") {
                if let known = AccessLogConfiguration.Format(rawValue: value) {
                    config.accessLog.format = known
                } else {
                    reader.error("access_log.format must be text or json, not '\(value)'", at: format.value)
                }
            }
        }
        if let metrics = top["metrics"], let keys = reader.mapping(metrics.value, at: "metrics", keys: ["bearer_token_file"]),
           let file = keys["bearer_token_file"], let token = reader.secretFile(file.value, at: "metrics.bearer_token_file", base: base) {
            if token.utf8.count < 16 {
                reader.error("metrics.bearer_token_file must hold a token of at least 16 characters (openssl rand -hex 32)", at: file.value)
            } else {
                config.metricsTokenHash = Array(SHA256.hash(data: Array(token.utf8)))
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
        guard let named = reader.mapping(node, at: "listeners", keys: kinds.map(\.name.rawValue), what: "listener") else { return }
        for kind in kinds {
            guard let entry = named[kind.name.rawValue] else { continue }
            let path = "listeners.\(kind.name)"
            var listener = ListenerConfiguration(kind)
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
            if let v = keys["engine"] {
                // Known, so that a configuration written for an earlier release is told why.
                reader.error("\(path).engine is no longer a setting: every listener is served by the one server engine; remove the line", at: v.value)
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
            config.listeners[kind.name] = listener
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
            var listeners: [ListenerName] = []
            var names: [(String, Node)] = []
            if let v = keys["listener"], let s = reader.string(v.value, at: "\(path).listener") { names.append((s, v.value)) }
            if let v = keys["listeners"], let list = reader.sequence(v.value, at: "\(path).listeners") {
                for n in list { if let s = reader.string(n, at: "\(path).listeners") { names.append((s, n)) } }
            }
            for (name, n) in names {
                if kinds.contains(where: { $0.name.rawValue == name }) { listeners.append(ListenerName(name)) } else {
                    reader.error("\(path) names listener '\(name)', which does not exist; listeners are \(kinds.map(\.name.rawValue).joined(separator: ", "))", at: n)
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
            guard let target, !listeners.isEmpty else { continue }
            var route = RouteConfiguration(listeners: listeners, methods: methods, host: host, path: routePath, target: target, maxBodyBytes: bodyLimit)
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
        var seen: [String: ListenerName] = [:]
        for listener in config.enabledListeners where listener.port != 0 {
            let key = "\(listener.port)"
            if let other = seen[key] {
                // Named where the file sets one of the two ports; a listener left out of the
                // file keeps its default port, which the sentence says.
                let own = config.locations["listeners.\(listener.name).port"] ?? config.locations["listeners.\(listener.name)"]
                let others = config.locations["listeners.\(other).port"] ?? config.locations["listeners.\(other)"]
                let byDefault = config.locations["listeners.\(listener.name).port"] == nil ? " (its default)" : ""
                let otherByDefault = config.locations["listeners.\(other).port"] == nil ? " (its default)" : ""
                reader.diagnostics.append(ConfigurationDiagnostic(
                    "listener \(listener.name) uses port \(listener.port)\(byDefault), which listener \(other) already uses\(otherByDefault); each listener needs its own port",
                    at: own ?? others ?? SourceLocation(file: reader.file, line: 1, column: 1)))
            } else {
                seen[key] = listener.name
            }
        }
    }
}

/// Top-level keys of the config file that a program built on the gateway reads itself (the
/// manager's `site`, `storage`, `peers`, ...), with the gateway's reader, so that their
/// problems come in the same list with file, line and column.
package protocol ConfigurationSections {
    /// The keys, beside the gateway's.
    var keys: [String] { get }
    /// Reads the entries of `top` it owns; may set what the gateway takes from them (a
    /// listener's extra trust, the identity's common name).
    mutating func read(_ top: [String: (key: Node, value: Node)], base: String, reader: inout NodeReader, gateway: inout GatewayConfiguration)
}

/// A gateway on its own: no keys of a program's.
struct NoSections: ConfigurationSections {
    var keys: [String] { [] }
    func read(_ top: [String: (key: Node, value: Node)], base: String, reader: inout NodeReader, gateway: inout GatewayConfiguration) {}
}
