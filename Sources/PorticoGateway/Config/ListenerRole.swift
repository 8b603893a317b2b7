/// The roles a Portico process listens for, one listener each.
public enum ListenerRole: String, CaseIterable, Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Endpoint agents over HTTPS.
    case client
    /// Endpoint agents over plain HTTP (messages are sealed end to end by the agent protocol).
    case clientPlain = "client_plain"
    /// Peer managers, mutual TLS.
    case replication
    /// Operators in a browser.
    case console
    /// Reports and exports.
    case reporting
    /// REST API for automation; also serves `/metrics`.
    case webservices

    public var description: String { self.rawValue }

    /// The port a role listens on when the config does not say.
    public var defaultPort: Int {
        switch self {
        case .client: 8441
        case .clientPlain: 8014
        case .replication: 8444
        case .console: 8443
        case .reporting: 8445
        case .webservices: 8446
        }
    }

    /// Whether the role speaks TLS unless the config says otherwise.
    public var defaultTLS: Bool { self != .clientPlain }

    /// The client-certificate policy of a role unless the config says otherwise.
    public var defaultClientAuth: ClientAuthentication { self == .replication ? .require : .none }

    public static func < (lhs: ListenerRole, rhs: ListenerRole) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
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
