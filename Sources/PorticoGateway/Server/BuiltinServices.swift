import Crypto
import NIOCore
import NIOHTTP1
import PorticoServer

/// The services every gateway has, which routes may name: `health`, `ready`, `status`, `metrics`.
public enum BuiltinServices {
    public static let names: Set<String> = ["health", "ready", "status", "metrics"]

    /// Routes every listener gets unless the config routes the same path itself.
    static func implicitRoutes(servingMetrics: Bool) -> [(path: String, service: String)] {
        var routes = [("/healthz", "health"), ("/readyz", "ready"), ("/statusz", "status")]
        if servingMetrics { routes.append(("/metrics", "metrics")) }
        return routes
    }

    /// - Parameter metricsTokenHash: the SHA-256 of the bearer token `/metrics` requires, if any.
    static func endpoint(named name: String, metrics: GatewayMetrics, readiness: ReadinessFlag, metricsTokenHash: [UInt8]? = nil) -> Endpoint? {
        switch name {
        case "health":
            return .fixed(FixedResponse(GatewayResponse(status: .ok, contentType: "text/plain; charset=utf-8", body: "ok\n")))
        case "ready":
            let ready = GatewayResponse(status: .ok, contentType: "text/plain; charset=utf-8", body: "ready\n")
            let notReady = GatewayResponse(status: .serviceUnavailable, contentType: "text/plain; charset=utf-8", body: "not ready\n")
            return .immediate { _ in readiness.isReady ? ready : notReady }
        case "status":
            // Readiness as JSON, for monitors that parse it, naming the listener that answered
            // (made per request: no precomputed answer, unlike health).
            let headers: HTTPHeaders = ["content-type": "application/json"]
            return .immediate { request in
                let ready = readiness.isReady
                // Written into one buffer: an interpolated string and a header list per answer
                // were three allocations more.
                var body = ByteBufferAllocator().buffer(capacity: 64)
                body.writeStaticString(ready ? #"{"status":"ready","listener":""# : #"{"status":"not ready","listener":""#)
                body.writeString(request.listener.rawValue)
                body.writeStaticString(#""}"#)
                return GatewayResponse(status: ready ? .ok : .serviceUnavailable, headers: headers, body: body)
            }
        case "metrics":
            return .immediate { request in
                if let expected = metricsTokenHash, !presents(request, tokenHashed: expected) {
                    return GatewayResponse(status: .unauthorized, headers: ["content-type": "text/plain; charset=utf-8", "www-authenticate": "Bearer realm=\"metrics\""],
                                           body: ByteBuffer(string: "send Authorization: Bearer <the token of metrics.bearer_token_file>\n"))
                }
                return GatewayResponse(status: .ok, headers: ["content-type": "text/plain; version=0.0.4; charset=utf-8"], body: ByteBuffer(bytes: metrics.emit()))
            }
        default:
            return nil
        }
    }
}

/// Whether the request's bearer token hashes to `expected`, compared in constant time.
private func presents(_ request: GatewayRequest, tokenHashed expected: [UInt8]) -> Bool {
    guard let header = request.headers.first(name: "authorization"), header.count > 7, header.prefix(7).lowercased() == "bearer " else { return false }
    let hash = Array(SHA256.hash(data: Array(header.dropFirst(7).trimmingCharacters(in: .whitespaces).utf8)))
    guard hash.count == expected.count else { return false }
    var difference: UInt8 = 0
    for index in hash.indices { difference |= hash[index] ^ expected[index] }
    return difference == 0
}

/// Services a program built on the gateway adds, by the name routes use.
public struct ServiceRegistry: Sendable {
    /// A service with its routes, read once.
    struct Registered: Sendable {
        let service: any HTTPService
        let routes: [ServiceRoute]
    }

    var services: [String: Registered] = [:]

    public init() {}

    public mutating func register(_ name: String, _ service: any HTTPService) {
        services[name] = Registered(service: service, routes: service.routes)
    }

    /// Every name a route may target: these services and the built-ins.
    public var names: Set<String> { BuiltinServices.names.union(services.keys) }
}
