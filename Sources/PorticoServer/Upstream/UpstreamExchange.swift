import Logging
import NIOCore
import NIOHTTP1

/// A plain-HTTP upstream's response as the gateway's own client read it.
package struct UpstreamResponse {
    package var status: HTTPResponseStatus
    /// The upstream's header lines as they came (a slice of the bytes read, not copied):
    /// the fields passed on are picked as they are written (``forEachField(_:)``).
    package var fields: ByteBuffer
    /// A `Connection` field names other fields, which are not passed on either.
    package var namesConnectionFields = false
    package var body: ByteBuffer
    /// The `Content-Length` of the answer to a HEAD request (whose body is not sent).
    package var headLength: Int? = nil

    /// Calls `body` with each field passed on to the client: not connection-level fields or
    /// those the upstream's `Connection` names (RFC 9110 7.6.1), not framing (the gateway sets
    /// its own), not `Date` (the gateway writes its own).
    package func forEachField(_ body: (_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Void) {
        fields.withUnsafeReadableBytes { raw in
            // The names a `Connection` field lists; looked for only when there are any.
            var listed: [[UInt8]] = []
            if namesConnectionFields {
                HTTP1Fields.forEach(raw, from: 0) { name, value in
                    guard HTTP1Parser.equalsLowercase(name, "connection") else { return }
                    HTTP1Parser.forEachToken(value) { token in
                        listed.append(token.map { byte in byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte })
                    }
                }
            }
            HTTP1Fields.forEach(raw, from: 0) { name, value in
                guard UpstreamEncoding.passesBack(name) else { return }
                if !listed.isEmpty && listed.contains(where: { HTTP1Parser.equalsLowercase(name, $0) }) { return }
                body(name, value)
            }
        }
    }

    /// The fields passed on, as `name: value\r\n` lines; `out` has room for ``fieldsBound``.
    package func writeFields(into out: inout ByteWriter) {
        forEachField { name, value in
            out.write(name)
            out.write(": ")
            out.write(value)
            out.write("\r\n")
        }
    }

    /// Each line written grows by at most two bytes (`": "` and CRLF for `:` and LF).
    package var fieldsBound: Int { 2 * fields.readableBytes }

    package var headers: HTTPHeaders {
        var headers = HTTPHeaders()
        forEachField { name, value in
            headers.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
        }
        return headers
    }

    package var gatewayResponse: GatewayResponse {
        GatewayResponse(status: status, headers: headers, body: body)
    }
}

/// How an exchange with an upstream pool ended.
package enum UpstreamAnswer {
    /// A plain-HTTP target's response, its header lines kept as bytes.
    case relayed(UpstreamResponse)
    /// An HTTPS target's response, or the gateway's own 502, 503 or 504.
    case response(GatewayResponse)

    package var status: HTTPResponseStatus {
        switch self {
        case .relayed(let response): response.status
        case .response(let response): response.status
        }
    }

    package var gatewayResponse: GatewayResponse {
        switch self {
        case .relayed(let response): response.gatewayResponse
        case .response(let response): response
        }
    }
}

/// Told how an upstream exchange ended, on the event loop that started it.
package protocol UpstreamResponder: AnyObject {
    /// The answer is handed over (consumed): its header lines and body, slices of what the
    /// upstream connection read, move along the way rather than being copied at each step.
    func upstreamAnswered(_ answer: consuming UpstreamAnswer)
    /// Whether it takes the body in pieces (an ``UpstreamStreamingResponder``). A requirement
    /// rather than a cast: asked for every relayed request.
    var streamsBody: Bool { get }
}

extension UpstreamResponder {
    package var streamsBody: Bool { false }
}

/// What the client's connection knows about the client, for the `X-Forwarded-*` fields.
package struct ForwardedClient {
    /// The peer's address as text.
    package var peer: String?
    /// Whether the peer's own `X-Forwarded-For` may be believed and extended.
    package var peerIsTrustedProxy: Bool
    package var isTLS: Bool
}

/// A request on its way to an upstream.
package enum UpstreamRequest {
    /// An HTTP/1.1 request as it arrived: its header lines are copied to the upstream as bytes.
    /// The connection's own request object, read in place: copying its head out retained
    /// each of its parts, several times per request.
    case http1(HTTP1Request)
    /// A request from HTTP/2 or a service, its fields as `HTTPHeaders`.
    case request(GatewayRequest)

    package var method: String {
        switch self {
        case .http1(let request): request.head.method
        case .request(let request): request.method.rawValue
        }
    }
}

/// One request's way through an upstream pool: the target, retries of idempotent requests on
/// another target, passive health, and the gateway's own answer when no target answers.
///
/// It lives on the event loop of the client connection that asked. Plain-HTTP targets are
/// served by ``UpstreamConnection``s of that loop, which call the exchange back directly, and
/// the exchange calls its responder: no future or promise when a kept-alive connection is
/// waiting (a proxied request made five of each, a fifth of the gateway's own CPU per request).
package final class UpstreamExchange {
    private var pool: UpstreamPool
    /// The request; nil once answered.
    private var request: UpstreamRequest?
    package let eventLoop: any EventLoop
    /// Who is told the answer; nil once told (an HTTP/1.1 connection then reuses the
    /// exchange for its next request: ``restart(pool:request:responder:)``).
    private var responder: (any UpstreamResponder)?
    private var idempotent: Bool
    private var isHead: Bool
    private var attempts: Int
    private var tried = TriedTargets()
    private var target = 0
    /// The request as sent to the current target. Kept after the answer (unless large) and
    /// written over by the next request: by then the upstream connection has written and let
    /// go of it, so its storage is reused rather than allocated again.
    private var bytes: ByteBuffer?
    /// The pool's connections on this loop (looked up once per pool, not per request).
    private var loopConnections: UpstreamConnections?
    /// The request went out on a kept-alive connection. If the upstream had closed it as the
    /// request went out (nothing answered), an idempotent request goes again on a new one.
    private var onKeptAlive = false

    package init(pool: UpstreamPool, request: UpstreamRequest, eventLoop: any EventLoop, responder: any UpstreamResponder) {
        self.pool = pool
        self.request = nil
        self.eventLoop = eventLoop
        self.responder = nil
        self.idempotent = false
        self.isHead = false
        self.attempts = 1
        restart(pool: pool, request: request, responder: responder)
    }

    private var connections: UpstreamConnections {
        if let loopConnections { return loopConnections }
        let found = pool.connections(on: eventLoop)
        loopConnections = found
        return found
    }

    /// Whether the exchange has answered and may be restarted.
    package var isFinished: Bool { responder == nil }

    /// The exchange made ready for a request (another of the same client connection, when
    /// reused).
    package func restart(pool: UpstreamPool, request: UpstreamRequest, responder: any UpstreamResponder) {
        precondition(isFinished, "an exchange is restarted only after it answered")
        // The pool is shared by every loop: reassigning the same one would retain and release it.
        if self.pool !== pool {
            self.pool = pool
            loopConnections = nil
        }
        self.request = request
        self.responder = responder
        let method = request.method
        idempotent = Self.isIdempotent(method)
        isHead = method == "HEAD"
        attempts = idempotent ? 1 + pool.configuration.retries : 1
        tried = TriedTargets()
        target = 0
        onKeptAlive = false
    }

    /// Tells the responder, after letting go of the request (its head and body are slices
    /// of what the client connection read; NIOSSL copies its buffer while they are held).
    private func answer(_ answer: consuming UpstreamAnswer) {
        guard let responder else { return }
        self.responder = nil
        request = nil
        if (bytes?.capacity ?? 0) > ReusedBuffer.maxKeptBytes { bytes = nil }
        responder.upstreamAnswered(consume answer)
    }

    package static func isIdempotent(_ method: String) -> Bool {
        switch method {
        case "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE": true
        default: false
        }
    }

    package func start() {
        eventLoop.preconditionInEventLoop()
        next(problem: "no target is available", status: .serviceUnavailable)
    }

    /// Sends to the next available target, or answers with `status` saying `problem`.
    private func next(problem: String, status: HTTPResponseStatus) {
        guard tried.count < attempts, let index = pool.pick(excluding: tried) else {
            answer(.response(.plain(status, "upstream \(pool.configuration.name) did not answer (\(problem))")))
            return
        }
        tried.insert(index)
        target = index
        let connections = self.connections
        guard let endpoint = connections.endpoints[index] else {
            sendTLS(to: pool.targets[index])
            return
        }
        guard let request else { return }
        // Encoded into a local and put back: no access to the property spans a call, so the
        // compiler checks none of its accesses at run time.
        var buffer = bytes.take()
        UpstreamEncoding.encode(request, basePath: endpoint.basePath, hostHeader: endpoint.hostHeader, into: &buffer)
        bytes = consume buffer
        // Usually a kept-alive connection is waiting: used at once.
        if let connection = connections.takeIdle(target: index) {
            onKeptAlive = true
            send(on: connection)
        } else {
            connect()
        }
    }

    private func send(on connection: UpstreamConnection) {
        guard let bytes else { return }
        connection.send(bytes, isHead: isHead, timeout: pool.configuration.responseTimeout, maxBytes: pool.configuration.maxResponseBytes,
                        streams: responder?.streamsBody ?? false, for: self)
    }

    private func connect() {
        onKeptAlive = false
        let endpoint = connections.endpoints[target]!
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        connections
            .connect(target: target, host: endpoint.host, port: endpoint.port, connectTimeout: pool.configuration.connectTimeout)
            .whenComplete { result in
                switch result {
                case .success(let connection): bound.value.send(on: connection.value)
                case .failure(let error): bound.value.failed(error)
                }
            }
    }

    private func sendTLS(to upstream: UpstreamTarget) {
        guard case .request(let request)? = request else {
            // ``UpstreamPool/relaysHTTP1`` keeps HTTP/1.1 heads away from pools with HTTPS targets.
            failed(UpstreamFailure.connectFailed("an HTTP/1.1 head cannot be relayed to an HTTPS target"))
            return
        }
        if responder?.streamsBody == true {
            pool.stream(request, to: upstream, for: self)
            return
        }
        let pool = self.pool
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        eventLoop.makeFutureWithTask { try await pool.send(request, to: upstream) }.whenComplete { result in
            switch result {
            case .success(let response): bound.value.received(.response(response))
            case .failure(let error): bound.value.failed(error)
            }
        }
    }

    /// The target answered (an ``UpstreamConnection`` calls this for plain-HTTP targets).
    package func received(_ answer: consuming UpstreamAnswer) {
        if retried(after: answer.status) { return }
        self.answer(consume answer)
    }

    /// Counts the target's answer in its passive health; a 502, 503 or 504 to an idempotent
    /// request is tried again on another target when one is left (returns true then).
    private func retried(after status: HTTPResponseStatus) -> Bool {
        let code = status.code
        guard code == 502 || code == 503 || code == 504 else {
            pool.target(target) { $0.recordSuccess() }
            return false
        }
        let upstream = pool.targets[target]
        upstream.recordFailure(maxFailures: pool.configuration.passiveMaxFailures, ejectFor: pool.configuration.passiveEjectFor)
        guard idempotent && tried.count < attempts && pool.pick(excluding: tried) != nil else { return false }
        next(problem: "\(upstream.displayName) answered \(code)", status: status)
        return true
    }

    /// A plain-HTTP target's head, for a responder that streams: returns who takes the body,
    /// or nil when the exchange tries another target instead (the same rule as
    /// ``received(_:)``: a 502, 503 or 504 to an idempotent request).
    package func streamingHead(_ response: consuming UpstreamResponse, length: Int?, hasBody: Bool, source: any UpstreamBodySource) -> (any UpstreamStreamingResponder)? {
        if retried(after: response.status) { return nil }
        guard let sink = responder as? any UpstreamStreamingResponder else { return nil }
        responder = nil
        request = nil
        if (bytes?.capacity ?? 0) > ReusedBuffer.maxKeptBytes { bytes = nil }
        sink.upstreamHead(response, length: length, hasBody: hasBody, source: source)
        return sink
    }

    /// The exchange with the target failed.
    package func failed(_ error: any Error) {
        if onKeptAlive, idempotent, case UpstreamFailure.connectionLost(answered: false) = error {
            connect()
            return
        }
        let upstream = pool.targets[target]
        let configuration = pool.configuration
        upstream.recordFailure(maxFailures: configuration.passiveMaxFailures, ejectFor: configuration.passiveEjectFor)
        pool.logger.warning("upstream request failed", metadata: ["upstream": "\(configuration.name)", "target": "\(upstream.displayName)", "error": "\(error)"])
        next(problem: "\(upstream.displayName): \(error)", status: UpstreamPool.isTimeout(error) ? .gatewayTimeout : .badGateway)
    }
}

/// The targets an exchange has tried: the usual one or two without an array.
package struct TriedTargets {
    package private(set) var count = 0
    private var first = -1
    private var second = -1
    private var more: [Int] = []

    package mutating func insert(_ target: Int) {
        switch count {
        case 0: first = target
        case 1: second = target
        default: more.append(target)
        }
        count += 1
    }

    package func contains(_ target: Int) -> Bool {
        target == first || target == second || (count > 2 && more.contains(target))
    }
}

/// Completes a promise with an exchange's answer, for callers that want a future.
package final class PromiseResponder: UpstreamResponder {
    package let promise: EventLoopPromise<GatewayResponse>

    package init(promise: EventLoopPromise<GatewayResponse>) { self.promise = promise }

    package func upstreamAnswered(_ answer: consuming UpstreamAnswer) {
        promise.succeed(answer.gatewayResponse)
    }
}

/// How a request is written for an upstream.
package enum UpstreamEncoding {
    /// What becomes of a client's field on its way upstream.
    package enum Disposition {
        case pass
        /// Hop-by-hop (RFC 9110 7.6.1), framing the gateway sets itself, or forwarding fields
        /// the gateway writes itself.
        case drop
        /// `X-Forwarded-For`: kept and extended only when the peer is a trusted proxy.
        case forwardedFor
        /// `Forwarded` (RFC 7239): the same, extended with this hop's element.
        case forwarded
        /// `Host`: always passed, whatever the client's `Connection` names.
        case host
    }

    /// The disposition of a field by its name, compared as bytes without regard to case.
    package static func disposition(of name: UnsafeRawBufferPointer) -> Disposition {
        func named(_ expected: StaticString) -> Bool { HTTP1Parser.equalsLowercase(name, expected) }
        switch name.count {
        case 2 where named("te"): return .drop
        case 4 where named("host"): return .host
        case 6 where named("expect"): return .drop
        case 7 where named("trailer") || named("upgrade"): return .drop
        case 9 where named("forwarded"): return .forwarded
        case 10 where named("connection") || named("keep-alive"): return .drop
        case 14 where named("content-length"): return .drop
        case 15 where named("x-forwarded-for"): return .forwardedFor
        case 16 where named("proxy-connection") || named("x-forwarded-host"): return .drop
        case 17 where named("transfer-encoding") || named("x-forwarded-proto"): return .drop
        case 18 where named("proxy-authenticate"): return .drop
        case 19 where named("proxy-authorization"): return .drop
        default: return .pass
        }
    }

    /// Whether an upstream's response field goes on to the client: not connection-level
    /// fields, not framing (the gateway sets its own), not `Date` (the gateway writes its own).
    /// Compared as bytes without regard to case; for both upstream clients.
    package static func passesBack(_ name: UnsafeRawBufferPointer) -> Bool {
        func named(_ expected: StaticString) -> Bool { HTTP1Parser.equalsLowercase(name, expected) }
        switch name.count {
        case 2 where named("te"): return false
        case 4 where named("date"): return false
        case 7 where named("trailer") || named("upgrade"): return false
        case 10 where named("connection") || named("keep-alive"): return false
        case 14 where named("content-length"): return false
        case 16 where named("proxy-connection"): return false
        case 17 where named("transfer-encoding"): return false
        case 18 where named("proxy-authenticate"): return false
        case 19 where named("proxy-authorization"): return false
        default: return true
        }
    }

    /// The request for a plain-HTTP upstream as one buffer: request line, the forwarded
    /// fields, `host` if the client sent none, `content-length`, and the body.
    package static func encode(_ request: UpstreamRequest, basePath: String, hostHeader: String) -> ByteBuffer {
        var buffer: ByteBuffer?
        encode(request, basePath: basePath, hostHeader: hostHeader, into: &buffer)
        return buffer!
    }

    /// The same into `buffer`, emptied first (``Swift/Optional/reuse(capacity:)``): an exchange
    /// keeps its buffer for the connection's next request.
    package static func encode(_ request: UpstreamRequest, basePath: String, hostHeader: String, into buffer: inout ByteBuffer?) {
        let method: String
        let uri: String
        let body: ByteBuffer?
        switch request {
        case .http1(let request):
            method = request.head.method
            uri = request.head.uri
            body = request.body
        case .request(let request):
            method = request.method.rawValue
            uri = request.uri
            body = request.body
        }
        let bodyBytes = body?.readableBytes ?? 0
        let bound = method.utf8.count + basePath.utf8.count + uri.utf8.count + hostHeader.utf8.count + 96 + fieldsBound(request)
        buffer.reuse(capacity: bound + bodyBytes)
        buffer!.write(bound: bound) { out in
            out.write(method)
            out.write(byte: 0x20)
            out.write(basePath)
            out.write(uri)
            out.write(" HTTP/1.1\r\n")
            if !writeForwardedFields(of: request, into: &out) {
                out.write("host: ")
                out.write(hostHeader)
                out.write("\r\n")
            }
            if bodyBytes > 0 || method == "POST" || method == "PUT" || method == "PATCH" {
                out.write("content-length: ")
                out.write(decimal: bodyBytes)
                out.write("\r\n")
            }
            out.write("\r\n")
        }
        if let body { buffer!.writeImmutableBuffer(body) }
    }

    /// Room enough for ``writeForwardedFields(of:into:)``: each field line grows by at most
    /// two bytes (`": "` and CRLF where the client wrote `:` and LF), `x-forwarded-for`
    /// and `forwarded` repeat values with separators, and `x-forwarded-host` the host: at most
    /// four times the head, plus the peer twice and the fixed text.
    package static func fieldsBound(_ request: UpstreamRequest) -> Int {
        switch request {
        case .http1(let request):
            return 4 * request.head.bytes.readableBytes + 2 * (request.client.peer?.utf8.count ?? 0) + 256
        case .request(let request):
            var fields = request.host?.utf8.count ?? 0
            for (name, value) in request.headers { fields += name.utf8.count + value.utf8.count + 4 }
            return 4 * fields + 2 * (request.peerAddressText?.utf8.count ?? 64) + 256
        }
    }

    /// The same into a buffer (for the HTTPS upstream client, which takes `HTTPHeaders`).
    @discardableResult
    package static func writeForwardedFields(of request: UpstreamRequest, into buffer: inout ByteBuffer) -> Bool {
        var sawHost = false
        buffer.write(bound: fieldsBound(request)) { out in sawHost = writeForwardedFields(of: request, into: &out) }
        return sawHost
    }

    /// The fields an upstream receives, as `name: value\r\n` lines in order: the client's, less
    /// hop-by-hop ones (and those its `Connection` field names), `content-length` and
    /// `expect` (set for the hop); then `x-forwarded-for` (earlier hops only from a trusted
    /// proxy), `-proto` and `-host`. Returns whether the client sent a `Host`. `out` has
    /// room for ``fieldsBound(_:)``.
    package static func writeForwardedFields(of request: UpstreamRequest, into out: inout ByteWriter) -> Bool {
        switch request {
        case .http1(let request):
            let fieldsStart = request.head.fieldsStart
            let hostRange = request.head.hostRange
            return request.head.bytes.withUnsafeReadableBytes { raw in
                // The Host value as the client sent it (never decoded: decoding would replace
                // bytes that are not UTF-8 with longer ones, past the room reserved).
                let host = hostRange.map { UnsafeRawBufferPointer(rebasing: raw[$0]) }
                return writeForwardedFields(hasConnectionField: request.head.hasConnectionField, client: request.client, host: host, into: &out) { emit in
                    HTTP1Fields.forEach(raw, from: fieldsStart, emit)
                }
            }
        case .request(let request):
            let client = ForwardedClient(peer: request.peerAddressText ?? request.peerAddress?.ipAddress, peerIsTrustedProxy: request.peerIsTrustedProxy, isTLS: request.isTLS)
            var host = request.host ?? ""
            let hasHost = request.host != nil
            return host.withUTF8 { hostBytes in
                writeForwardedFields(hasConnectionField: request.headers.contains(name: "connection"), client: client, host: hasHost ? UnsafeRawBufferPointer(hostBytes) : nil, into: &out) { emit in
                    for (name, value) in request.headers {
                        var name = name
                        var value = value
                        name.withUTF8 { name in value.withUTF8 { value in emit(UnsafeRawBufferPointer(name), UnsafeRawBufferPointer(value)) } }
                    }
                }
            }
        }
    }

    /// Every byte written comes from the fields, the host and the peer as given (none is
    /// decoded and re-encoded), so ``fieldsBound(_:)`` holds for any input.
    private static func writeForwardedFields(
        hasConnectionField: Bool, client: ForwardedClient, host: UnsafeRawBufferPointer?, into out: inout ByteWriter,
        fields: ((UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void) -> Void
    ) -> Bool {
        // Fields the Connection header names are for this hop only (RFC 9110 7.6.1); the set
        // is built only when there is such a header (most requests have none).
        var connectionListed: Set<String> = []
        if hasConnectionField {
            fields { name, value in
                guard HTTP1Parser.equalsLowercase(name, "connection") else { return }
                HTTP1Parser.forEachToken(value) { connectionListed.insert(String(decoding: $0, as: UTF8.self).lowercased()) }
            }
        }
        var sawHost = false
        var forwardedFor: [UInt8] = []
        var forwarded: [UInt8] = []
        fields { name, value in
            switch disposition(of: name) {
            case .drop:
                return
            case .forwardedFor:
                if client.peerIsTrustedProxy {
                    if !forwardedFor.isEmpty { forwardedFor.append(contentsOf: ", ".utf8) }
                    forwardedFor.append(contentsOf: value)
                }
                return
            case .forwarded:
                if client.peerIsTrustedProxy {
                    if !forwarded.isEmpty { forwarded.append(contentsOf: ", ".utf8) }
                    forwarded.append(contentsOf: value)
                }
                return
            case .host:
                // The upstream needs the host the request was routed by; a `Connection` naming
                // it (`Connection: host`) does not remove it.
                sawHost = true
            case .pass:
                if !connectionListed.isEmpty && connectionListed.contains(String(decoding: name, as: UTF8.self).lowercased()) { return }
            }
            out.write(name)
            out.write(": ")
            out.write(value)
            out.write("\r\n")
        }
        if !forwardedFor.isEmpty || client.peer != nil {
            out.write("x-forwarded-for: ")
            forwardedFor.withUnsafeBytes { out.write($0) }
            if let peer = client.peer {
                if !forwardedFor.isEmpty { out.write(", ") }
                out.write(peer)
            }
            out.write("\r\n")
        }
        if !forwarded.isEmpty {
            // A trusted proxy's `Forwarded` goes on with this hop's element after it; from
            // anyone else it was dropped, as `X-Forwarded-For` is.
            out.write("forwarded: ")
            forwarded.withUnsafeBytes { out.write($0) }
            out.write(", ")
            if let peer = client.peer {
                out.write("for=\"")
                if peer.utf8.contains(UInt8(ascii: ":")) { out.write("[") }
                out.write(peer)
                if peer.utf8.contains(UInt8(ascii: ":")) { out.write("]") }
                out.write("\";")
            }
            out.write(client.isTLS ? "proto=https\r\n" : "proto=http\r\n")
        }
        out.write(client.isTLS ? "x-forwarded-proto: https\r\n" : "x-forwarded-proto: http\r\n")
        if let host {
            out.write("x-forwarded-host: ")
            out.write(host)
            out.write("\r\n")
        }
        return sawHost
    }
}

