import NIOHTTP1

/// Something a route of the config can target by name: the routes it answers, and its
/// error documents.
///
/// The gateway compiles a service's routes into the listener's route table, under the config
/// route that names the service; no service routes a request itself. A request inside the
/// config route's path that none of the service's routes takes is refused by the service's
/// ``refusal(_:for:)``, so that each kind of listener has one way of saying 404, 405 and 500
/// (RFC 9457 documents for the API, pages for the console).
public protocol HTTPService: Sendable {
    /// The routes it answers, by absolute path. Read once, when the service is registered.
    var routes: [ServiceRoute] { get }

    /// Its answer when no route of it takes the request, or when a route failed.
    func refusal(_ refusal: RouteRefusal, for request: GatewayRequest) async -> GatewayResponse
}

extension HTTPService {
    public func refusal(_ refusal: RouteRefusal, for request: GatewayRequest) async -> GatewayResponse {
        switch refusal {
        case .notFound: .plain(.notFound, "no route for \(request.path)")
        case .methodNotAllowed(let allow): .plain(.methodNotAllowed, "method \(request.method.rawValue) is not allowed here", headers: ["allow": allow])
        case .failed: .plain(.internalServerError, "the service failed to answer")
        }
    }
}

/// Why a service is asked for an error document instead of running a route.
public enum RouteRefusal: Sendable, Equatable {
    /// No route of the service has the path.
    case notFound
    /// Routes have the path, with other methods (`allow` lists them for the `Allow` header).
    case methodNotAllowed(allow: String)
    /// The route's handler threw.
    case failed
}

/// One route a service answers: its methods, a path pattern, the scope it needs where the
/// service has scopes, and the handler, which finds the pattern's `{params}` in
/// ``GatewayRequest/parameters``.
///
/// A pattern is an absolute path of literal segments and `{name}` segments, optionally ending
/// in `/*` for every path below it. `HEAD` is answered by a `GET` route.
public struct ServiceRoute: Sendable {
    /// The methods it answers; empty for any.
    public var methods: [HTTPMethod]
    public var pattern: String
    /// The permission a caller needs, for services that have them (the service checks it).
    public var scope: String?
    public var handler: @Sendable (GatewayRequest) async throws -> GatewayResponse

    public init(_ method: HTTPMethod, _ pattern: String, scope: String? = nil, _ handler: @escaping @Sendable (GatewayRequest) async throws -> GatewayResponse) {
        self.init(methods: [method], pattern, scope: scope, handler)
    }

    public init(methods: [HTTPMethod], _ pattern: String, scope: String? = nil, _ handler: @escaping @Sendable (GatewayRequest) async throws -> GatewayResponse) {
        self.methods = methods
        self.pattern = pattern
        self.scope = scope
        self.handler = handler
    }
}

/// A service's route as the route table holds it (a class: an endpoint is copied per request).
package final class ServiceEndpoint: Sendable {
    package let handler: @Sendable (GatewayRequest) async throws -> GatewayResponse
    package let service: any HTTPService

    package init(handler: @escaping @Sendable (GatewayRequest) async throws -> GatewayResponse, service: any HTTPService) {
        self.handler = handler
        self.service = service
    }
}
