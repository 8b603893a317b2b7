import Logging
import NIOCore
import NIOHTTP1

/// What both HTTP versions do with a routed request.
package enum RequestDispatch {
    /// The answer to a request: ready now, or later.
    package enum Outcome {
        case fixed(FixedResponse)
        case response(GatewayResponse)
        case pending(EventLoopFuture<GatewayResponse>)
    }

    /// Runs an endpoint. Services run as tasks; their result is delivered on `eventLoop`.
    package static func run(_ endpoint: Endpoint, request: @autoclosure () -> GatewayRequest, eventLoop: any EventLoop, logger: Logger) -> Outcome {
        switch endpoint {
        case .fixed(let fixed):
            return .fixed(fixed)
        case .immediate(let respond):
            return .response(respond(request()))
        case .route(let route):
            let request = request()
            let future = run(on: eventLoop) { try await route.handler(request) }
            return .pending(future.flatMapError { error in
                logger.error("service failed", metadata: ["error": "\(error)", "path": "\(request.path)"])
                return eventLoop.makeFutureWithTask { await route.service.refusal(.failed, for: request) }
            })
        case .refusal(let service, let refusal):
            let request = request()
            return .pending(eventLoop.makeFutureWithTask { await service.refusal(refusal, for: request) })
        case .upstream(let pool):
            return .pending(pool.forward(request(), on: eventLoop))
        }
    }

    /// A service's work as a task (``answer(_:with:)``).
    private static func run(on eventLoop: any EventLoop, _ body: @escaping @Sendable () async throws -> GatewayResponse) -> EventLoopFuture<GatewayResponse> {
        let promise = eventLoop.makePromise(of: GatewayResponse.self)
        answer(promise, with: body)
        return promise.futureResult
    }

    /// Completes `promise` with what `body` answers, as a task: on the core's loops, one that
    /// prefers the promise's loop, so that the request does not cross threads unless its work
    /// does. An answer given later (``GatewayResponse/later(_:)``) is handed the same promise
    /// once the task has ended.
    static func answer(_ promise: EventLoopPromise<GatewayResponse>, with body: @escaping @Sendable () async throws -> GatewayResponse) {
        let work: @Sendable () async -> Void = {
            do {
                let response = try await body()
                if let start = response.deferred { start(promise) } else { promise.succeed(response) }
            } catch {
                promise.fail(error)
            }
        }
        if let loop = promise.futureResult.eventLoop as? CoreEventLoop {
            Task(executorPreference: loop, operation: work)
        } else {
            Task(operation: work)
        }
    }

    /// Where a request head goes, decided the same way for both HTTP versions.
    package enum Decision {
        /// A route, its parameters, and the body limit that applies to it.
        case route(Router<Endpoint>.Route, parameters: [(String, Substring)], bodyLimit: Int)
        /// An answer given without running anything: 405 with `Allow`, or (`early`) 413 for a
        /// declared length over the route's limit, answered before the body is read.
        case answer(GatewayResponse, early: Bool)
        /// No route: the listener's 404.
        case notFound
    }

    package static func decide(method: String, host: @autoclosure () -> String?, target: String, contentLength: Int?, snapshot: ListenerSnapshot) -> Decision {
        let router = snapshot.router
        switch router.match(method: method, host: router.routesByHost ? host().map(hostWithoutPort) : nil, path: path(of: target)) {
        case .found(let route, let parameters):
            let limit = route.maxBodyBytes ?? snapshot.limits.maxBodyBytes
            if let length = contentLength, length > limit {
                return .answer(.plain(.payloadTooLarge, "request body is larger than \(limit) bytes"), early: true)
            }
            return .route(route, parameters: parameters, bodyLimit: limit)
        case .methodNotAllowed(let allow):
            return .answer(.plain(.methodNotAllowed, "method \(method) is not allowed here", headers: ["allow": allow]), early: false)
        case .methodNotAllowedWithin(let fallback, let allow):
            // The service of the fallback says it, in its own kind of document.
            guard case .refusal(let service, _) = fallback.target else {
                return .answer(.plain(.methodNotAllowed, "method \(method) is not allowed here", headers: ["allow": allow]), early: false)
            }
            let refusing = Router<Endpoint>.Route(target: .refusal(service, .methodNotAllowed(allow: allow)), pattern: fallback.pattern, maxBodyBytes: fallback.maxBodyBytes)
            let limit = fallback.maxBodyBytes ?? snapshot.limits.maxBodyBytes
            if let length = contentLength, length > limit {
                return .answer(.plain(.payloadTooLarge, "request body is larger than \(limit) bytes"), early: true)
            }
            return .route(refusing, parameters: [], bodyLimit: limit)
        case .notFound:
            return .notFound
        }
    }

    /// The `Host` without its port. Searched as bytes: `lastIndex(of:)` on the characters
    /// of a `String` walks grapheme clusters.
    package static func hostWithoutPort(_ host: String) -> Substring {
        let utf8 = host.utf8
        if utf8.first == UInt8(ascii: "[") {
            guard let end = utf8.firstIndex(of: UInt8(ascii: "]")) else { return host[...] }
            return host[...end]
        }
        guard let colon = utf8.lastIndex(of: UInt8(ascii: ":")) else { return host[...] }
        return host[..<colon]
    }

    /// The path of a request target, without the query.
    package static func path(of uri: String) -> Substring {
        guard let question = uri.utf8.firstIndex(of: UInt8(ascii: "?")) else { return uri[...] }
        return uri[..<question]
    }
}
