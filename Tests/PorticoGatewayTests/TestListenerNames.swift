import PorticoGateway
import PorticoServer
import PorticoTestSupport

/// The names of the test gateways' listeners (``TestListeners``), as the manager names its roles.
extension ListenerName {
    static let client: ListenerName = "client"
    static let clientPlain: ListenerName = "client_plain"
    static let replication: ListenerName = "replication"
    static let console: ListenerName = "console"
    static let reporting: ListenerName = "reporting"
    static let webservices: ListenerName = "webservices"
}
