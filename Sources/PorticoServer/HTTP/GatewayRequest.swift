import NIOCore
import NIOHTTP1
import NIOSSL

/// A complete request as a service sees it, whichever HTTP version carried it.
public struct GatewayRequest: Sendable {
    public var method: HTTPMethod
    /// Path and query as sent.
    public var uri: String
    /// Request headers; for HTTP/2 the pseudo-headers are folded into the fields above.
    public var headers: HTTPHeaders
    /// The whole body (bounded by the route's limit).
    public var body: ByteBuffer
    /// `:authority` or `Host`.
    public var host: String?
    /// Values of `{param}` segments of the matched route.
    public var parameters: [String: String]
    /// The listener that accepted the request.
    public var listener: ListenerName
    /// 1 for HTTP/1.x, 2 for HTTP/2.
    public var httpMajorVersion: Int
    /// Whether the connection is TLS (to this listener; see ``forwardedProto``).
    public var isTLS: Bool
    /// The TCP peer, or the address a trusted PROXY header gave.
    public var peerAddress: SocketAddress?
    /// The client as far as it can be believed: the peer, or the nearest untrusted address in
    /// `X-Forwarded-For` when the peer is a trusted proxy.
    public var clientAddress: SocketAddress?
    /// Whether the peer is in the listener's `trusted_proxies`, so that its forwarding
    /// headers may be believed.
    public var peerIsTrustedProxy: Bool
    /// The verified client certificate on mutual-TLS listeners.
    public var clientCertificate: NIOSSLCertificate?
    /// `peerAddress` as text when the connection already formatted it.
    package var peerAddressText: String? = nil

    /// The path without the query.
    public var path: Substring {
        guard let question = uri.firstIndex(of: "?") else { return uri[...] }
        return uri[..<question]
    }

    /// `https` or `http` as the client used it.
    public var forwardedProto: String { isTLS ? "https" : "http" }
}

/// A complete response from a service.
public struct GatewayResponse: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: ByteBuffer
    /// Set for an answer given later (``later(_:)``): what the engine hands its promise to.
    package private(set) var deferred: (@Sendable (EventLoopPromise<GatewayResponse>) -> Void)?

    /// An answer given later, with no task waiting for it meanwhile: once the handler has
    /// returned this, the engine makes a promise on the request's loop and hands it to
    /// `start`, which keeps it and completes it when the answer is ready (an agent's held
    /// wait). The request stays open until then, as for any answer in progress.
    public static func later(_ start: @escaping @Sendable (EventLoopPromise<GatewayResponse>) -> Void) -> GatewayResponse {
        var response = GatewayResponse(status: .ok)
        response.deferred = start
        return response
    }

    public init(status: HTTPResponseStatus, headers: HTTPHeaders = [:], body: ByteBuffer = ByteBuffer()) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A response with a text body and its content type.
    public init(status: HTTPResponseStatus, contentType: String, body: String) {
        self.init(status: status, headers: ["content-type": contentType], body: ByteBuffer(string: body))
    }

    /// A short `text/plain` response, used for errors the gateway itself answers.
    package static func plain(_ status: HTTPResponseStatus, _ text: String? = nil, headers extra: HTTPHeaders = [:]) -> GatewayResponse {
        var response = GatewayResponse(status: status, contentType: "text/plain; charset=utf-8", body: (text ?? status.reasonPhrase) + "\n")
        response.headers.add(contentsOf: extra)
        return response
    }
}

extension EventLoopPromise where Value == GatewayResponse {
    /// Completes the promise an answer given later was handed (``GatewayResponse/later(_:)``)
    /// with what `body` answers, as the engine runs a handler: a task on the request's loop.
    public func answer(with body: @escaping @Sendable () async throws -> GatewayResponse) {
        RequestDispatch.answer(self, with: body)
    }
}
