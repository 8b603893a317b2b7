import PorticoGateway
import PorticoServer

/// The listeners of the gateways the tests start: the manager's six, under the same names and
/// ports, so that a test reads as the product does (the gateway knows none of them itself).
public enum TestListeners {
    public static let kinds: [ListenerKind] = [
        ListenerKind("client", port: 8441),
        ListenerKind("client_plain", port: 8014, tls: false),
        ListenerKind("replication", port: 8444, clientAuth: .require),
        ListenerKind("console", port: 8443),
        ListenerKind("reporting", port: 8445),
        ListenerKind("webservices", port: 8446, servesMetrics: true),
    ]

    public static var names: [ListenerName] { kinds.map(\.name) }
}
