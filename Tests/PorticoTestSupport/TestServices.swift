import AsyncHTTPClient
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing
import X509

import PorticoGateway
import PorticoServer

/// Services tests route to.
public enum TestServices {
    public static let names: Set<String> = ["echo", "slow", "whoami", "switch", "library", "shelf"]

    public static func registry(name: String = "backend", gate: Gate? = nil, health: HealthSwitch = HealthSwitch()) -> ServiceRegistry {
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
    public struct Echo: CatchAllService {
        public let name: String
        public init(name: String) { self.name = name }
        public func respond(to request: GatewayRequest) async throws -> GatewayResponse {
            var lines = ["backend=\(name)", "method=\(request.method.rawValue)", "uri=\(request.uri)", "body=\(String(buffer: request.body))"]
            for (key, value) in request.parameters.sorted(by: { $0.key < $1.key }) { lines.append("param.\(key)=\(value)") }
            for (header, value) in request.headers { lines.append("header.\(header.lowercased())=\(value)") }
            return GatewayResponse(status: .ok, contentType: "text/plain", body: lines.joined(separator: "\n"))
        }
    }

    /// Waits until its gate opens, so a test can hold a request in flight.
    public struct Slow: CatchAllService {
        public let gate: Gate
        public init(gate: Gate) { self.gate = gate }
        public func respond(to request: GatewayRequest) async throws -> GatewayResponse {
            gate.arrived()
            await gate.wait()
            return GatewayResponse(status: .ok, contentType: "text/plain", body: "finished")
        }
    }

    /// Declares its routes as a service of the manager does, and answers its refusals in a
    /// document of its own (`<name> refused: ...`).
    public struct Library: HTTPService {
        public let name: String
        public init(name: String) { self.name = name }
        public var routes: [ServiceRoute] {
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

        public func refusal(_ refusal: RouteRefusal, for request: GatewayRequest) async -> GatewayResponse {
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
    public struct WhoAmI: CatchAllService {
        public init() {}
        public func respond(to request: GatewayRequest) async throws -> GatewayResponse {
            let cert = request.clientCertificate.flatMap { try? Certificate(derEncoded: $0.toDERBytes()) }
            let text = "client=\(request.clientAddress?.ipAddress ?? "-")\npeer=\(request.peerAddress?.ipAddress ?? "-")\ncert=\(cert?.subject.description ?? "-")\nhttp=\(request.httpMajorVersion)"
            return GatewayResponse(status: .ok, contentType: "text/plain", body: text)
        }
    }
}

/// A test service that answers every path and method the config route gives it.
public protocol CatchAllService: HTTPService {
    func respond(to request: GatewayRequest) async throws -> GatewayResponse
}

extension CatchAllService {
    public var routes: [ServiceRoute] { [ServiceRoute(methods: [], "/*") { request in try await respond(to: request) }] }
}

/// A health endpoint a test turns on and off.
public final class HealthSwitch: CatchAllService {
    private let healthy = NIOLockedValueBox(true)
    public init() {}
    public func set(_ value: Bool) { healthy.withLockedValue { $0 = value } }
    public func respond(to request: GatewayRequest) async throws -> GatewayResponse {
        healthy.withLockedValue { $0 } ? GatewayResponse(status: .ok, contentType: "text/plain", body: "up") : GatewayResponse(status: .serviceUnavailable, contentType: "text/plain", body: "down")
    }
}
