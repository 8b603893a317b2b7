import NIOCore

/// The whole configuration of a gateway, as read from `portico.yaml`.
///
/// Every path in it is already absolute (relative paths in the file resolve against the
/// folder of the file). Build it with ``ConfigurationLoader``; the defaults here are the
/// embedded defaults that `portico serve` uses with no config file.
public struct GatewayConfiguration: Sendable, Equatable {
    /// The listeners the program has, in the order it lists them, with their defaults.
    public var kinds: [ListenerKind]
    /// `identity`: the server certificate shared by every TLS listener.
    public var identity: IdentityConfiguration
    /// `listeners.<name>`: one listener per kind.
    public var listeners: [ListenerName: ListenerConfiguration]
    /// `routes`: what each listener sends where, in file order.
    public var routes: [RouteConfiguration] = []
    /// `upstreams.<name>`: HTTP backends that routes may target.
    public var upstreams: [String: UpstreamConfiguration] = [:]
    /// `shutdown.grace_period`: how long a drain waits for in-flight requests before closing.
    public var shutdownGracePeriod: TimeAmount = .seconds(30)
    /// `access_log`: where the listeners that log (`listeners.<name>.access_log`) write one
    /// line per request, and in which format.
    public var accessLog = AccessLogConfiguration()
    /// `metrics.bearer_token_file`: the SHA-256 of the token `/metrics` then requires
    /// (`Authorization: Bearer <token>`); nil serves it to anyone who reaches the listener.
    public var metricsTokenHash: [UInt8]?
    /// The file this configuration was read from, if any.
    public var sourceFile: String?
    /// Where keys were written (`identity.certificate`, `listeners.client.port`, ...), for messages
    /// about what they name.
    public var locations: [String: SourceLocation] = [:]

    /// The embedded defaults, rooted at `baseDirectory`: each of `kinds` listening with its
    /// defaults, no routes.
    public init(baseDirectory: String, kinds: [ListenerKind]) {
        self.kinds = kinds
        self.identity = IdentityConfiguration(
            certificate: Paths.resolve("ssl/server.crt", against: baseDirectory),
            privateKey: Paths.resolve("ssl/server.key", against: baseDirectory)
        )
        var listeners: [ListenerName: ListenerConfiguration] = [:]
        for kind in kinds {
            listeners[kind.name] = ListenerConfiguration(kind)
        }
        self.listeners = listeners
    }

    /// The listener names, in the program's order.
    public var names: [ListenerName] { kinds.map(\.name) }

    /// The listeners that are enabled, in the program's order.
    public var enabledListeners: [ListenerConfiguration] {
        kinds.compactMap { listeners[$0.name] }.filter(\.enabled)
    }
}

/// Which key type a generated identity uses.
public enum KeyType: String, Sendable, Hashable, CaseIterable {
    case rsa2048 = "rsa-2048"
    case rsa3072 = "rsa-3072"
    case ecdsaP256 = "ecdsa-p256"
}

/// `identity`: the shared server certificate and key.
public struct IdentityConfiguration: Sendable, Equatable {
    /// `identity.certificate`: PEM certificate chain, leaf first.
    public var certificate: String
    /// `identity.private_key`: PEM private key, written 0600 when generated.
    public var privateKey: String
    /// `identity.generate`: key type to generate on first run when both files are missing;
    /// `nil` (`never`) makes missing files an error.
    public var generate: KeyType? = .rsa2048
    /// `identity.names`: extra DNS names or IP addresses for a generated certificate.
    public var names: [String] = []
    /// `identity.reload_interval`: how often the files are checked for changes (SIGHUP checks at once).
    public var reloadInterval: TimeAmount = .seconds(10)
    /// The common name of a generated certificate (the program's: the manager's site name).
    public var commonName: String = "portico"

    public init(certificate: String, privateKey: String) {
        self.certificate = certificate
        self.privateKey = privateKey
    }
}

/// `listeners.<name>`: one listening socket and its TLS policy and limits.
public struct ListenerConfiguration: Sendable, Equatable {
    public var name: ListenerName
    /// `enabled`: whether the role listens at all.
    public var enabled: Bool = true
    /// `bind`: address to bind, IPv4 or IPv6 literal or a host name.
    public var bind: String = "0.0.0.0"
    /// `port`: TCP port; 0 asks the OS for a free one (tests).
    public var port: Int
    /// `tls`: whether the listener speaks TLS (HTTP/1.1 and HTTP/2 by ALPN).
    public var tls: Bool
    /// `client_auth`: `none`, `optional` or `require` a client certificate.
    public var clientAuth: ClientAuthentication
    /// `trust`: PEM bundle (file) or folder of PEM files that client certificates must chain to.
    public var trust: String?
    /// Certificates trusted besides `trust`, from elsewhere in the config (the manager's
    /// peers): each file with the key that named it, for messages.
    public var extraTrust: [TrustedFile] = []
    /// `certificate` / `private_key`: a listener's own identity instead of the shared one.
    public var certificate: String?
    public var privateKey: String?
    /// `http2`: offer h2 by ALPN (TLS listeners only).
    public var http2: Bool = true
    /// `tls12_ciphers`: the cipher suites offered to TLS 1.2 clients, by their OpenSSL names,
    /// in order of preference. The default is Mozilla's "intermediate" profile: ECDHE key
    /// exchange with AES-GCM or ChaCha20-Poly1305 only, no CBC and no static RSA. (TLS 1.3's
    /// suites are all AEAD and are not configurable.)
    public var tls12Ciphers: [String] = TLSCipherPolicy.intermediate
    /// `proxy_protocol`: accept a PROXY protocol v1/v2 header, only from `trusted_proxies`.
    public var proxyProtocol: Bool = false
    /// `trusted_proxies`: CIDRs whose PROXY headers and `X-Forwarded-For` are believed.
    public var trustedProxies: [CIDR] = []
    /// `limits`: what one client may hold or send.
    public var limits: ListenerLimits = ListenerLimits()
    /// `access_log`: write one line per request.
    public var accessLog: Bool = true

    public init(_ kind: ListenerKind) {
        self.name = kind.name
        self.port = kind.defaultPort
        self.tls = kind.defaultTLS
        self.clientAuth = kind.defaultClientAuth
    }

    /// Whether two configurations need the socket to be bound again.
    package func needsRebind(comparedTo other: ListenerConfiguration) -> Bool {
        bind != other.bind || port != other.port || tls != other.tls || proxyProtocol != other.proxyProtocol
    }
}

/// `listeners.<name>.limits`: bounds on what one client may hold or send.
public struct ListenerLimits: Sendable, Equatable {
    /// `max_connections`: open connections beyond this are closed at accept and counted.
    public var maxConnections: Int = 10_000
    /// `max_header_bytes`: request line plus headers; larger gets 431.
    public var maxHeaderBytes: Int = 16 * 1024
    /// `max_headers`: header count; more gets 431.
    public var maxHeaderCount: Int = 100
    /// `max_body_bytes`: default request body limit; larger gets 413. Routes may override.
    public var maxBodyBytes: Int = 1024 * 1024
    /// `header_timeout`: time to receive a complete request head.
    public var headerTimeout: TimeAmount = .seconds(10)
    /// `body_timeout`: time to receive a complete request body.
    public var bodyTimeout: TimeAmount = .seconds(30)
    /// `idle_timeout`: time a keep-alive connection may sit with no request.
    public var idleTimeout: TimeAmount = .seconds(60)

    public init() {}
}

/// One entry of `routes`.
public struct RouteConfiguration: Sendable, Equatable {
    /// `listener` or `listeners`: the listeners this route applies to.
    public var listeners: [ListenerName]
    /// `methods`: allowed methods; empty means any.
    public var methods: [String] = []
    /// `host`: exact host (without port) the request must name; `nil` matches any.
    public var host: String?
    /// `path`: `/exact`, `/prefix/*` or with `{param}` segments.
    public var path: String
    /// `service` or `upstream`: where matching requests go.
    public var target: RouteTarget
    /// `max_body_bytes`: overrides the listener's body limit.
    public var maxBodyBytes: Int?
    /// Where the route was written, for messages.
    public var location: SourceLocation?

    public init(listeners: [ListenerName], methods: [String] = [], host: String? = nil, path: String, target: RouteTarget, maxBodyBytes: Int? = nil) {
        self.listeners = listeners
        self.methods = methods
        self.host = host
        self.path = path
        self.target = target
        self.maxBodyBytes = maxBodyBytes
    }
}

/// What a route sends requests to.
public enum RouteTarget: Sendable, Equatable {
    /// A built-in service registered by name.
    case service(String)
    /// A named entry of `upstreams`.
    case upstream(String)
}

/// `upstreams.<name>`: a pool of HTTP(S) backends.
public struct UpstreamConfiguration: Sendable, Equatable {
    public var name: String
    /// `targets`: base URLs such as `http://127.0.0.1:9000`.
    public var targets: [String]
    /// `connect_timeout`
    public var connectTimeout: TimeAmount = .seconds(2)
    /// `response_timeout`: time for the whole upstream response.
    public var responseTimeout: TimeAmount = .seconds(30)
    /// `retries`: further targets tried for an idempotent request after a connect failure or 5xx-free error.
    public var retries: Int = 1
    /// `health_check`: active probing; `nil` disables it.
    public var healthCheck: HealthCheckConfiguration? = nil
    /// `passive.max_failures` / `passive.eject_for`: consecutive failures before a target is
    /// taken out, and for how long.
    public var passiveMaxFailures: Int = 3
    public var passiveEjectFor: TimeAmount = .seconds(30)
    /// `max_response_bytes`: bound on a buffered upstream response.
    public var maxResponseBytes: Int = 16 * 1024 * 1024
    /// `keepalive.idle_connections`: kept-alive connections each event loop keeps per
    /// `http://` target between requests (0: a connection per request).
    public var keepaliveConnections: Int = 64
    /// `keepalive.idle_timeout`: an idle kept-alive connection is closed after this long;
    /// keep it below the upstream's own keep-alive timeout (Node's is 5 s, nginx's 75 s), so
    /// that a request is rarely sent on a connection the upstream is closing.
    public var keepaliveTimeout: TimeAmount = .seconds(4)
    /// `trust`: PEM certificates (a CA or the targets' own) that `https://` targets are
    /// verified against instead of the system's store; host names are still checked.
    public var trust: String? = nil

    public init(name: String, targets: [String]) {
        self.name = name
        self.targets = targets
    }
}

/// `upstreams.<name>.health_check`.
public struct HealthCheckConfiguration: Sendable, Equatable {
    /// `path`: requested with GET; 2xx and 3xx are healthy.
    public var path: String = "/healthz"
    /// `interval`
    public var interval: TimeAmount = .seconds(5)
    /// `timeout`
    public var timeout: TimeAmount = .seconds(2)
    /// `healthy_threshold`: consecutive successes to bring a target back.
    public var healthyThreshold: Int = 2
    /// `unhealthy_threshold`: consecutive failures to take a target out.
    public var unhealthyThreshold: Int = 3

    public init() {}
}

/// A place in a config file.
public struct SourceLocation: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// A certificate file a listener trusts, and the config key that named it.
public struct TrustedFile: Sendable, Equatable {
    public var file: String
    public var key: String
    /// Skipped while it does not exist (a folder the program fills at run time).
    public var optional: Bool

    public init(file: String, key: String, optional: Bool = false) {
        self.file = file
        self.key = key
        self.optional = optional
    }
}

/// Where access-log lines go and how they are written.
public struct AccessLogConfiguration: Sendable, Equatable {
    public enum Format: String, Sendable, Equatable, CaseIterable {
        /// The Common Log Format that log tools read, then the listener and the time taken.
        case text
        /// One JSON object per line, for log pipelines.
        case json
    }

    /// `file`: a path, or `-` (the default) for standard output.
    public var file: String = "-"
    public var format: Format = .text

    public init() {}

    /// Standard output rather than a file.
    public var toStandardOutput: Bool { file == "-" }
}

/// The TLS 1.2 cipher suites a listener may offer.
public enum TLSCipherPolicy {
    /// Mozilla's "intermediate" server profile without its finite-field DHE suites (slow, and
    /// every client that offers them offers ECDHE too).
    public static let intermediate = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ]

    /// Older suites an operator may add for clients that know no better: CBC with SHA-1 MACs
    /// and static RSA key exchange (no forward secrecy).
    public static let legacy = [
        "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
        "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "AES256-SHA",
    ]

    /// Every name `tls12_ciphers` accepts.
    public static let known = Set(intermediate + legacy)

    /// The list as the TLS library takes it.
    package static func cipherString(_ names: [String]) -> String { names.joined(separator: ":") }
}
