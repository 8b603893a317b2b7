import Logging
import PorticoGateway
import PorticoStore

/// The role services the manager mounts on the gateway, by the names routes use.
public enum ManagerServices {
    /// Names a config's routes may target besides the gateway's built-ins.
    public static let names: Set<String> = ["agent"]

    /// Every service name a route may target.
    public static var allNames: Set<String> { BuiltinServices.names.union(names) }

    /// Builds the registry for a prepared configuration and an open store.
    public static func registry(prepared: PreparedConfiguration, store: Store, logger: Logger) throws -> (ServiceRegistry, AgentService) {
        let configuration = prepared.configuration
        guard let identity = prepared.identity(of: .client) ?? ListenerRole.allCases.lazy.compactMap({ prepared.identity(of: $0) }).first else {
            throw ManagerError("no TLS listener is enabled, so there is no server identity to sign agent policies with; enable the client listener")
        }
        let keys = try ManagerKeys.loadOrCreate(in: configuration.dataDirectory)
        var settings = AgentService.Configuration()
        settings.sessionLifetimeMilliseconds = configuration.agents.sessionLifetime.nanoseconds / 1_000_000
        settings.checkInIntervalSeconds = Int(configuration.agents.checkInInterval.nanoseconds / 1_000_000_000)
        settings.clockSkewMilliseconds = configuration.agents.clockSkew.nanoseconds / 1_000_000
        let agent = AgentService(store: store, keys: keys, identity: { identity.current }, configuration: settings, logger: logger)
        var registry = ServiceRegistry()
        registry.register("agent", agent)
        return (registry, agent)
    }
}
