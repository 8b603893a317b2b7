/// A listener's name: its key under `listeners` in the config, and how routes, logs and
/// metrics name it. Which names exist, and their defaults, are the program's (``ListenerKind``).
public struct ListenerName: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    public var description: String { rawValue }

    public static func < (lhs: ListenerName, rhs: ListenerName) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A listener the program built on the gateway has, with its defaults: the config may set
/// each of them, and need not mention the listener at all.
public struct ListenerKind: Sendable, Equatable {
    public var name: ListenerName
    /// The port it listens on when the config does not say.
    public var defaultPort: Int
    /// Whether it speaks TLS unless the config says otherwise.
    public var defaultTLS: Bool
    /// Its client-certificate policy unless the config says otherwise.
    public var defaultClientAuth: ClientAuthentication
    /// Whether it answers `/metrics` (every listener answers `/healthz`, `/readyz` and
    /// `/statusz`) unless a route takes the path.
    public var servesMetrics: Bool

    public init(_ name: ListenerName, port: Int, tls: Bool = true, clientAuth: ClientAuthentication = .none, servesMetrics: Bool = false) {
        self.name = name
        self.defaultPort = port
        self.defaultTLS = tls
        self.defaultClientAuth = clientAuth
        self.servesMetrics = servesMetrics
    }
}

/// Whether a TLS listener asks for a client certificate.
public enum ClientAuthentication: String, Sendable, Hashable, CaseIterable {
    /// No client certificate is requested.
    case none
    /// A certificate is requested; when one is sent it must chain to the listener's trust bundle.
    case optional
    /// A certificate chaining to the listener's trust bundle is required to complete the handshake.
    case require
}
