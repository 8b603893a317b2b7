import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing
import X509

import PorticoGateway
import PorticoServer

/// A gateway started from YAML in a temporary folder, every listener on 127.0.0.1 and a free port.
public struct RunningGateway: Sendable {
    public let gateway: Gateway
    public let dir: TemporaryDirectory
    public let identity: TestPKI.Pair

    public func port(_ role: ListenerName) async throws -> Int {
        try #require(await gateway.boundAddress(of: role)?.port)
    }

    public func url(_ role: ListenerName, _ path: String) async throws -> String {
        let scheme = role.rawValue == "client_plain" ? "http" : "https"
        return "\(scheme)://127.0.0.1:\(try await port(role))\(path)"
    }
}

public enum TestGateway {
    /// The server loops every gateway of a test run shares (one per core), made at the first
    /// gateway and never shut down: the tests run in one process.
    private static let loops = Result { try CoreEventLoopGroup.perCore() }

    public static func serverLoops() throws -> CoreEventLoopGroup {
        try loops.get()
    }

    /// The listeners block with every role on port 0; `extra` is appended per role.
    public static func listenersYAML(_ extra: [ListenerName: String] = [:]) -> String {
        var yaml = "listeners:\n"
        for role in TestListeners.names {
            yaml += "  \(role.rawValue):\n    bind: 127.0.0.1\n    port: 0\n"
            // Off unless a test asks for it.
            if extra[role]?.contains("access_log") != true { yaml += "    access_log: false\n" }
            if let more = extra[role] {
                yaml += more.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n") + "\n"
            }
        }
        return yaml
    }

    public static func configuration(yaml: String, dir: TemporaryDirectory) throws -> GatewayConfiguration {
        let file = try dir.write("portico.yaml", yaml)
        return try ConfigurationLoader(knownServices: BuiltinServices.names.union(TestServices.names), kinds: TestListeners.kinds).load(file: file)
    }

    /// Starts a gateway, runs `body`, and drains the gateway whatever happens.
    public static func with<T>(
        listeners: [ListenerName: String] = [:],
        body extraYAML: String = "",
        services: ServiceRegistry = TestServices.registry(),
        gracePeriod: String = "5s",
        _ run: (RunningGateway) async throws -> T
    ) async throws -> T {
        let dir = try TemporaryDirectory()
        let identity = try TestPKI.make(in: dir, name: "server")
        let yaml = """
            identity:
              certificate: server.crt
              private_key: server.key
              reload_interval: 1h
            shutdown:
              grace_period: \(gracePeriod)
            \(listenersYAML(listeners))
            \(extraYAML)
            """
        let cache = IdentityCache()
        let prepared = try ConfigurationCheck.prepare(try configuration(yaml: yaml, dir: dir), generateMissing: false, cache: cache)
        let file = dir.file("portico.yaml")
        let knownServices = BuiltinServices.names.union(TestServices.names)
        var logger = Logger(label: "portico-test")
        logger.logLevel = .critical
        let gateway = Gateway(
            configuration: prepared, identityCache: cache, serverLoops: try TestGateway.serverLoops(), services: services, logger: logger,
            source: { () throws(ConfigurationError) -> GatewayConfiguration in try ConfigurationLoader(knownServices: knownServices, kinds: TestListeners.kinds).load(file: file) }
        )
        try await gateway.start()
        let running = RunningGateway(gateway: gateway, dir: dir, identity: identity)
        do {
            let result = try await run(running)
            await gateway.stop()
            return result
        } catch {
            await gateway.stop()
            throw error
        }
    }
}
