import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

/// The gateway's configuration knows no program: the listeners, their defaults and the
/// services are what the program gives it.
@Suite struct GatewayConfigurationTests {
    static let kinds = [
        ListenerKind("edge", port: 9080, tls: false),
        ListenerKind("admin", port: 9443, clientAuth: .optional, servesMetrics: true),
    ]
    static let loader = ConfigurationLoader(knownServices: BuiltinServices.names, kinds: kinds)

    @Test func theProgramsListenersGetTheirDefaults() throws {
        let config = try Self.loader.load(yaml: "listeners:\n  admin: {port: 9444}\n", file: "/srv/conf/gw.yaml")
        #expect(config.enabledListeners.map(\.name) == ["edge", "admin"])
        #expect(config.listeners["edge"]?.port == 9080 && config.listeners["edge"]?.tls == false)
        #expect(config.listeners["admin"]?.port == 9444 && config.listeners["admin"]?.clientAuth == .optional)
    }

    @Test func otherListenersAndTheManagersKeysAreUnknownToIt() {
        do {
            _ = try Self.loader.load(yaml: """
                site: {name: a}
                listeners:
                  client: {port: 1}
                routes:
                  - {listener: console, path: /x, service: health}
                """, file: "/srv/conf/gw.yaml")
            Issue.record("the manager's keys were accepted by the gateway alone")
        } catch {
            #expect(error.diagnostics.map { $0.location?.line } == [1, 3, 5], "\(error.diagnostics)")
            #expect(error.diagnostics[0].message.contains("unknown key 'site'"))
            #expect(error.diagnostics[2].message.contains("listeners are edge, admin"))
        }
    }

    @Test func metricsAreImplicitOnlyWhereTheProgramSaysSo() {
        #expect(BuiltinServices.implicitRoutes(servingMetrics: true).map(\.path) == ["/healthz", "/readyz", "/statusz", "/metrics"])
        #expect(BuiltinServices.implicitRoutes(servingMetrics: false).map(\.path) == ["/healthz", "/readyz", "/statusz"])
    }
}
