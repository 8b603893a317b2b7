import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing
import X509

@testable import PorticoGateway

/// A fresh folder under the system temp dir, removed when the test ends.
final class TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        let base = FileManager.default.temporaryDirectory.path
        path = base + "/portico-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    func file(_ name: String) -> String { path + "/" + name }

    @discardableResult
    func write(_ name: String, _ text: String) throws -> String {
        let target = file(name)
        try FileManager.default.createDirectory(atPath: Paths.directory(of: target), withIntermediateDirectories: true)
        try text.write(toFile: target, atomically: true, encoding: .utf8)
        return target
    }
}

/// Identities made by the code under test, written to a folder.
enum TestPKI {
    struct Pair {
        let certificatePath: String
        let keyPath: String
        let certificate: NIOSSLCertificate
        let key: NIOSSLPrivateKey
        let serialHex: String
    }

    static func make(in dir: TemporaryDirectory, name: String, keyType: KeyType = .ecdsaP256, commonName: String = "portico-test") throws -> Pair {
        let generated = try IdentityGenerator.generate(keyType: keyType, commonName: commonName)
        let cert = dir.file("\(name).crt")
        let key = dir.file("\(name).key")
        try IdentityGenerator.write(generated, certificatePath: cert, privateKeyPath: key)
        let identity = try ServerIdentity.load(certificatePath: cert, privateKeyPath: key)
        return Pair(certificatePath: cert, keyPath: key, certificate: identity.chain[0], key: identity.privateKey, serialHex: identity.serialHex)
    }
}

/// A gateway started from YAML in a temporary folder, every listener on 127.0.0.1 and a free port.
struct RunningGateway {
    let gateway: Gateway
    let dir: TemporaryDirectory
    let identity: TestPKI.Pair

    func port(_ role: ListenerRole) async throws -> Int {
        try #require(await gateway.boundAddress(of: role)?.port)
    }

    func url(_ role: ListenerRole, _ path: String) async throws -> String {
        let scheme = role == .clientPlain ? "http" : "https"
        return "\(scheme)://127.0.0.1:\(try await port(role))\(path)"
    }
}

enum TestGateway {
    /// The listeners block with every role on port 0; `extra` is appended per role.
    static func listenersYAML(_ extra: [ListenerRole: String] = [:], engine: ListenerEngine? = nil) -> String {
        var yaml = "listeners:\n"
        for role in ListenerRole.allCases {
            yaml += "  \(role.rawValue):\n    bind: 127.0.0.1\n    port: 0\n    access_log: false\n"
            if let engine { yaml += "    engine: \(engine)\n" }
            if let more = extra[role] {
                yaml += more.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n") + "\n"
            }
        }
        return yaml
    }

    static func configuration(yaml: String, dir: TemporaryDirectory) throws -> GatewayConfiguration {
        let file = try dir.write("portico.yaml", yaml)
        return try ConfigurationLoader(knownServices: BuiltinServices.names.union(TestServices.names)).load(file: file)
    }

    /// Starts a gateway, runs `body`, and drains the gateway whatever happens. `engine`, when
    /// given, serves every listener.
    static func with<T>(
        engine: ListenerEngine? = nil,
        listeners: [ListenerRole: String] = [:],
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
            \(listenersYAML(listeners, engine: engine))
            \(extraYAML)
            """
        let cache = IdentityCache()
        let prepared = try ConfigurationCheck.prepare(try configuration(yaml: yaml, dir: dir), generateMissing: false, cache: cache)
        let file = dir.file("portico.yaml")
        let knownServices = BuiltinServices.names.union(TestServices.names)
        var logger = Logger(label: "portico-test")
        logger.logLevel = .critical
        let gateway = Gateway(
            configuration: prepared, identityCache: cache, services: services, logger: logger,
            source: { () throws(ConfigurationError) -> GatewayConfiguration in try ConfigurationLoader(knownServices: knownServices).load(file: file) }
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

/// Services tests route to.
enum TestServices {
    static let names: Set<String> = ["echo", "slow", "whoami", "switch", "library", "shelf"]

    static func registry(name: String = "backend", gate: Gate? = nil, health: HealthSwitch = HealthSwitch()) -> ServiceRegistry {
        var registry = ServiceRegistry()
        registry.register("switch", health)
        registry.register("echo", Echo(name: name))
        registry.register("slow", Slow(gate: gate ?? Gate()))
        registry.register("whoami", WhoAmI())
        registry.register("library", Library(name: "library"))
        registry.register("shelf", Library(name: "shelf"))
        return registry
    }

    /// Answers with its name, the method, the URI and the request headers it saw.
    struct Echo: CatchAllService {
        let name: String
        func respond(to request: GatewayRequest) async throws -> GatewayResponse {
            var lines = ["backend=\(name)", "method=\(request.method.rawValue)", "uri=\(request.uri)", "body=\(String(buffer: request.body))"]
            for (key, value) in request.parameters.sorted(by: { $0.key < $1.key }) { lines.append("param.\(key)=\(value)") }
            for (header, value) in request.headers { lines.append("header.\(header.lowercased())=\(value)") }
            return GatewayResponse(status: .ok, contentType: "text/plain", body: lines.joined(separator: "\n"))
        }
    }

    /// Waits until its gate opens, so a test can hold a request in flight.
    struct Slow: CatchAllService {
        let gate: Gate
        func respond(to request: GatewayRequest) async throws -> GatewayResponse {
            gate.arrived()
            await gate.wait()
            return GatewayResponse(status: .ok, contentType: "text/plain", body: "finished")
        }
    }

    /// Declares its routes as a service of the manager does, and answers its refusals in a
    /// document of its own (`<name> refused: ...`).
    struct Library: HTTPService {
        let name: String
        var routes: [ServiceRoute] {
            [
                ServiceRoute(.GET, "/books") { _ in GatewayResponse(status: .ok, contentType: "text/plain", body: "\(name): list") },
                ServiceRoute(.POST, "/books") { request in GatewayResponse(status: .created, contentType: "text/plain", body: "\(name): added \(String(buffer: request.body))") },
                ServiceRoute(.GET, "/books/{id}") { request in
                    GatewayResponse(status: .ok, contentType: "text/plain", body: "\(name): book \(request.parameters["id"] ?? "-")")
                },
                ServiceRoute(.DELETE, "/books/{id}/pages/{page}") { request in
                    GatewayResponse(status: .ok, contentType: "text/plain", body: "\(name): torn \(request.parameters["page"] ?? "-") of \(request.parameters["id"] ?? "-")")
                },
                ServiceRoute(.GET, "/books/broken") { _ in throw CancellationError() },
            ]
        }

        func refusal(_ refusal: RouteRefusal, for request: GatewayRequest) async -> GatewayResponse {
            var response = GatewayResponse(status: .notFound, contentType: "text/x-library", body: "\(name) refused: \(refusal) \(request.method.rawValue) \(request.path)")
            switch refusal {
            case .notFound: break
            case .methodNotAllowed(let allow):
                response.status = .methodNotAllowed
                response.headers.add(name: "allow", value: allow)
            case .failed: response.status = .internalServerError
            }
            return response
        }
    }

    /// Reports the client address and certificate the gateway believed.
    struct WhoAmI: CatchAllService {
        func respond(to request: GatewayRequest) async throws -> GatewayResponse {
            let cert = request.clientCertificate.flatMap { try? Certificate(derEncoded: $0.toDERBytes()) }
            let text = "client=\(request.clientAddress?.ipAddress ?? "-")\npeer=\(request.peerAddress?.ipAddress ?? "-")\ncert=\(cert?.subject.description ?? "-")\nhttp=\(request.httpMajorVersion)"
            return GatewayResponse(status: .ok, contentType: "text/plain", body: text)
        }
    }
}

/// A test service that answers every path and method the config route gives it.
protocol CatchAllService: HTTPService {
    func respond(to request: GatewayRequest) async throws -> GatewayResponse
}

extension CatchAllService {
    var routes: [ServiceRoute] { [ServiceRoute(methods: [], "/*") { request in try await respond(to: request) }] }
}

/// A health endpoint a test turns on and off.
final class HealthSwitch: CatchAllService {
    private let healthy = NIOLockedValueBox(true)
    func set(_ value: Bool) { healthy.withLockedValue { $0 = value } }
    func respond(to request: GatewayRequest) async throws -> GatewayResponse {
        healthy.withLockedValue { $0 } ? GatewayResponse(status: .ok, contentType: "text/plain", body: "up") : GatewayResponse(status: .serviceUnavailable, contentType: "text/plain", body: "down")
    }
}

/// A one-shot gate: requests wait on it, the test opens it, and the test can wait for a
/// request to have arrived.
final class Gate: Sendable {
    private let state = GateState()

    func arrived() { state.arrive() }
    func wait() async { await state.waitOpen() }
    func open() { state.open() }
    func waitForArrival() async { await state.waitArrival() }
}

import NIOConcurrencyHelpers
final class GateState: Sendable {
    private struct S {
        var isOpen = false
        var arrivals = 0
        var openWaiters: [CheckedContinuation<Void, Never>] = []
        var arrivalWaiters: [CheckedContinuation<Void, Never>] = []
    }
    private let box = NIOLockedValueBox(S())

    func arrive() {
        let waiters = box.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
            s.arrivals += 1
            defer { s.arrivalWaiters = [] }
            return s.arrivalWaiters
        }
        waiters.forEach { $0.resume() }
    }

    func open() {
        let waiters = box.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
            s.isOpen = true
            defer { s.openWaiters = [] }
            return s.openWaiters
        }
        waiters.forEach { $0.resume() }
    }

    func waitOpen() async {
        await withCheckedContinuation { c in
            let now = box.withLockedValue { s -> Bool in
                if s.isOpen { return true }
                s.openWaiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    func waitArrival() async {
        await withCheckedContinuation { c in
            let now = box.withLockedValue { s -> Bool in
                if s.arrivals > 0 { return true }
                s.arrivalWaiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }
}

/// HTTP clients for tests.
enum TestClient {
    static func make(trusting certificate: NIOSSLCertificate? = nil, http2: Bool = true, clientIdentity: TestPKI.Pair? = nil) -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let certificate {
            tls.trustRoots = .certificates([certificate])
        } else {
            tls.certificateVerification = .none
        }
        if let clientIdentity {
            tls.certificateChain = [.certificate(clientIdentity.certificate)]
            tls.privateKey = .privateKey(clientIdentity.key)
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.httpVersion = http2 ? .automatic : .http1Only
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(20))
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    struct Answer {
        let status: Int
        let body: String
        let headers: HTTPHeaders
        let version: HTTPVersion
    }

    static func get(_ client: HTTPClient, _ url: String, method: HTTPMethod = .GET, headers: HTTPHeaders = [:], body: String? = nil) async throws -> Answer {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers = headers
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await client.execute(request, timeout: .seconds(20))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        return Answer(status: Int(response.status.code), body: String(buffer: bytes), headers: response.headers, version: response.version)
    }

    /// Whether a TCP connection to a loopback port is accepted (no retries, unlike HTTP clients).
    /// A TLS client context offering only h2 and trusting any certificate, for the raw
    /// HTTP/2 clients of the tests.
    static func http2TLSContext() throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        tls.applicationProtocols = ["h2"]
        return try NIOSSLContext(configuration: tls)
    }

    static func canConnect(port: Int) async -> Bool {
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
            // A connect to a closed port in the ephemeral range can pick that very port as its
            // own source and connect to itself (TCP simultaneous open): nobody listened.
            let connectedToItself = channel.localAddress?.port == channel.remoteAddress?.port
            try? await channel.close()
            return !connectedToItself
        } catch {
            return false
        }
    }

    /// Runs `body` with a client and shuts it down after.
    static func with<T>(trusting certificate: NIOSSLCertificate? = nil, http2: Bool = true, clientIdentity: TestPKI.Pair? = nil, _ body: (HTTPClient) async throws -> T) async throws -> T {
        let client = make(trusting: certificate, http2: http2, clientIdentity: clientIdentity)
        do {
            let result = try await body(client)
            try await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }
}

/// Whether an outside program is on the PATH, for tests that drive real clients.
enum Tools {
    static func path(of tool: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(dir)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    static func has(_ tool: String) -> Bool { path(of: tool) != nil }

    struct Result {
        let status: Int32
        let output: String
    }

    /// Runs a program to completion, capturing stdout and stderr together, on a thread of
    /// its own so that the concurrency pool is never blocked.
    static func run(_ tool: String, _ arguments: [String], input: String? = nil) async throws -> Result {
        let executable = tool.hasPrefix("/") ? tool : try #require(path(of: tool), "\(tool) is not installed")
        return try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                do {
                    let child = try ChildProcess.start(executable, arguments, withInput: true)
                    child.send(input ?? "")  // closes the child's input even when there is none
                    var output: [UInt8] = []
                    child.readOutput { output += $0 }
                    let status = child.wait()
                    continuation.resume(returning: Result(status: status, output: String(decoding: output, as: UTF8.self)))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }
}
