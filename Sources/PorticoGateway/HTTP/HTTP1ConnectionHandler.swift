import Logging
import NIOCore
import NIOExtras
import NIOHTTP1

/// Serves HTTP/1.1 on one connection: reads decoded request parts, routes each request,
/// and writes each response as one buffer.
///
/// Requests are answered in order. While a response is pending, further pipelined parts are
/// queued and reading from the socket stops, so a client cannot make the server buffer
/// without bound. Timers bound how long a client may take to send a head, a body, or the
/// next request on a kept-alive connection.
final class HTTP1ConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    fileprivate enum State {
        /// Waiting for a request head.
        case idle
        /// A head arrived; collecting (or, for an error answer, discarding) its body.
        case receiving(Pending)
        /// The request is complete and its response is being produced.
        case responding
        /// The connection is closing; everything else is ignored.
        case closed
    }

    /// The request being received. A class: the state holding it is switched over and
    /// reassigned several times per request, and a struct this size was copied (and each of
    /// its references retained) every time.
    fileprivate final class Pending {
        let head: HTTPRequestHead
        var route: Router<Endpoint>.Route?
        var parameters: [(String, Substring)]
        var errorResponse: GatewayResponse?
        var body: ByteBuffer?
        var bodyLimit: Int
        let started: NIODeadline

        init(head: HTTPRequestHead, route: Router<Endpoint>.Route?, parameters: [(String, Substring)], errorResponse: GatewayResponse?, body: ByteBuffer?, bodyLimit: Int, started: NIODeadline) {
            self.head = head
            self.route = route
            self.parameters = parameters
            self.errorResponse = errorResponse
            self.body = body
            self.bodyLimit = bodyLimit
            self.started = started
        }
    }

    private let info: ConnectionInfo
    private var state: State = .idle
    private var queued = CircularBuffer<HTTPServerRequestPart>()
    private var readPending = false
    private var needsFlush = false
    private var draining = false
    /// When the current phase (head, body, idle) times out; nil while none does.
    private var deadline: NIODeadline?
    /// The scheduled check, and when it runs. It is armed lazily: moving the deadline later
    /// (every request on a kept-alive connection) leaves it alone, and when it runs early it
    /// re-arms for the deadline. Scheduling and cancelling a task per request cost about 6%
    /// of the CPU of a small keep-alive request.
    private var timer: Scheduled<Void>?
    private var timerRunsAt: NIODeadline?
    private var date = HTTPDate()

    init(info: ConnectionInfo) {
        self.info = info
    }

    func handlerAdded(context: ChannelHandlerContext) {
        schedule(context: context, after: info.snapshot.value.limits.headerTimeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline = nil
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if case .responding = state {
            queued.append(part)
            return
        }
        process(part, context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if case .responding = state {
            readPending = true
            return
        }
        context.read()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            draining = true
            if case .idle = state, queued.isEmpty { close(context: context) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch state {
        case .closed, .responding:
            close(context: context)
        case .idle, .receiving:
            if error is HTTPParserError {
                // A client that sends something other than HTTP gets one 400 and is closed.
                let response = GatewayResponse.plain(.badRequest, "malformed HTTP request")
                write(response, isHead: false, close: true, started: .now(), method: "-", uri: "-", context: context)
            } else {
                close(context: context)
            }
        }
    }

    // MARK: - Request parts

    private func process(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch (part, state) {
        case (.head(let head), .idle):
            receiveHead(head, context: context)
        case (.body(var chunk), .receiving(let pending)):
            guard pending.body != nil else { return }  // discarding the body of an error answer
            if pending.body!.readableBytes + chunk.readableBytes > pending.bodyLimit {
                let response = GatewayResponse.plain(.payloadTooLarge, "request body is larger than \(pending.bodyLimit) bytes")
                write(response, isHead: false, close: true, started: pending.started, method: pending.head.method.rawValue, uri: pending.head.uri, context: context)
                return
            }
            pending.body!.writeBuffer(&chunk)
        case (.end, .receiving(let pending)):
            cancelTimer()
            respond(to: pending, context: context)
        case (_, .closed):
            return
        default:
            close(context: context)
        }
    }

    private func receiveHead(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        cancelTimer()
        let snapshot = info.snapshot.current()
        let limits = snapshot.limits
        let started = NIODeadline.now()
        let pending = Pending(head: head, route: nil, parameters: [], errorResponse: nil, body: nil, bodyLimit: limits.maxBodyBytes, started: started)

        let facts = HeadFacts(head)
        if head.headers.count > limits.maxHeaderCount || facts.size > limits.maxHeaderBytes {
            let response = GatewayResponse.plain(.requestHeaderFieldsTooLarge, "request headers are too large")
            write(response, isHead: false, close: true, started: started, method: head.method.rawValue, uri: head.uri, context: context)
            return
        }
        let host = facts.host.map(RequestDispatch.hostWithoutPort)
        switch snapshot.router.match(method: head.method.rawValue, host: host, path: RequestDispatch.path(of: head.uri)) {
        case .found(let route, let parameters):
            pending.route = route
            pending.parameters = parameters
            pending.bodyLimit = route.maxBodyBytes ?? limits.maxBodyBytes
            if let length = facts.contentLength.flatMap({ Int($0) }), length > pending.bodyLimit {
                let response = GatewayResponse.plain(.payloadTooLarge, "request body is larger than \(pending.bodyLimit) bytes")
                write(response, isHead: false, close: true, started: started, method: head.method.rawValue, uri: head.uri, context: context)
                return
            }
            pending.body = context.channel.allocator.buffer(capacity: 0)
        case .methodNotAllowed(let allow):
            pending.errorResponse = .plain(.methodNotAllowed, "method \(head.method.rawValue) is not allowed here", headers: ["allow": allow])
        case .notFound:
            pending.errorResponse = nil
        }
        state = .receiving(pending)
        if facts.hasBody {
            schedule(context: context, after: limits.bodyTimeout)
        }
    }

    private func respond(to pending: Pending, context: ChannelHandlerContext) {
        let head = pending.head
        let isHead = head.method == .HEAD
        let close = !head.isKeepAlive || draining
        guard let route = pending.route else {
            if let response = pending.errorResponse {
                write(response, isHead: isHead, close: close, started: pending.started, method: head.method.rawValue, uri: head.uri, context: context)
            } else {
                writeFixed(info.snapshot.value.notFound, isHead: isHead, close: close, started: pending.started, method: head.method.rawValue, uri: head.uri, context: context)
            }
            return
        }
        let outcome = RequestDispatch.run(
            route.target,
            request: makeRequest(pending, context: context),
            eventLoop: context.eventLoop,
            logger: info.snapshot.value.accessLogger
        )
        switch outcome {
        case .fixed(let fixed):
            writeFixed(fixed, isHead: isHead, close: close, started: pending.started, method: head.method.rawValue, uri: head.uri, context: context)
        case .response(let response):
            write(response, isHead: isHead, close: close, started: pending.started, method: head.method.rawValue, uri: head.uri, context: context)
        case .pending(let future):
            state = .responding
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            future.whenComplete { result in
                let (handler, context) = loopBound.value
                guard case .responding = handler.state else { return }
                let response = (try? result.get()) ?? .plain(.internalServerError)
                handler.write(response, isHead: isHead, close: close || handler.draining, started: pending.started, method: head.method.rawValue, uri: head.uri, context: context)
                if handler.needsFlush {
                    handler.needsFlush = false
                    context.flush()
                }
            }
        }
    }

    private func makeRequest(_ pending: Pending, context: ChannelHandlerContext) -> GatewayRequest {
        let trusted = info.snapshot.value.configuration.trustedProxies
        var parameters: [String: String] = [:]
        for (name, value) in pending.parameters { parameters[name] = String(value) }
        return GatewayRequest(
            method: pending.head.method,
            uri: pending.head.uri,
            headers: pending.head.headers,
            body: pending.body ?? ByteBuffer(),
            host: pending.head.headers.first(name: "host"),
            parameters: parameters,
            role: info.role,
            httpMajorVersion: 1,
            isTLS: info.isTLS,
            peerAddress: info.peerAddress,
            clientAddress: info.clientAddress(headers: pending.head.headers, trusted: trusted),
            peerIsTrustedProxy: info.peerIsTrustedProxy,
            clientCertificate: info.clientCertificate
        )
    }

    // MARK: - Responses

    private func writeFixed(_ fixed: FixedResponse, isHead: Bool, close: Bool, started: NIODeadline, method: String, uri: String, context: ChannelHandlerContext) {
        if close {
            write(fixed.response, isHead: isHead, close: true, started: started, method: method, uri: uri, context: context)
            return
        }
        context.write(wrapOutboundOut(fixed.http1(date: date.current(), includeBody: !isHead, allocator: context.channel.allocator)), promise: nil)
        finish(status: Int(fixed.status.code), bytes: fixed.body.readableBytes, close: false, started: started, method: method, uri: uri, context: context)
    }

    private func write(_ response: GatewayResponse, isHead: Bool, close: Bool, started: NIODeadline, method: String, uri: String, context: ChannelHandlerContext) {
        guard !(state.isClosed) else { return }
        var buffer = context.channel.allocator.buffer(capacity: 128 + response.body.readableBytes)
        HTTP1Encoding.writeHead(status: response.status, headers: response.headers, date: date.current(), contentLength: response.body.readableBytes, close: close, into: &buffer)
        if !isHead {
            var body = response.body
            buffer.writeBuffer(&body)
        }
        context.write(wrapOutboundOut(buffer), promise: nil)
        finish(status: Int(response.status.code), bytes: response.body.readableBytes, close: close, started: started, method: method, uri: uri, context: context)
    }

    private func finish(status: Int, bytes: Int, close: Bool, started: NIODeadline, method: String, uri: String, context: ChannelHandlerContext) {
        let snapshot = info.snapshot.value
        info.record(status: status, bytes: bytes, method: method, uri: uri, http: "1.1", started: started)
        if close {
            state = .closed
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(ByteBuffer())).whenComplete { _ in loopBound.value.close(promise: nil) }
            return
        }
        needsFlush = true
        state = .idle
        schedule(context: context, after: snapshot.limits.idleTimeout)
        if draining && queued.isEmpty {
            self.close(context: context)
            return
        }
        // Serve what was pipelined behind this request before reading more from the socket.
        while case .idle = state, let next = queued.popFirst() {
            process(next, context: context)
        }
        if case .responding = state { return }
        if readPending {
            readPending = false
            context.read()
        }
    }

    // MARK: - Timers and closing

    private func schedule(context: ChannelHandlerContext, after timeout: TimeAmount) {
        let due = NIODeadline.now() + timeout
        deadline = due
        if timer != nil, let runsAt = timerRunsAt, runsAt <= due { return }
        arm(at: due, context: context)
    }

    private func arm(at when: NIODeadline, context: ChannelHandlerContext) {
        timer?.cancel()
        timerRunsAt = when
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: when) {
            let (handler, context) = loopBound.value
            handler.timerRan(context: context)
        }
    }

    private func timerRan(context: ChannelHandlerContext) {
        timer = nil
        timerRunsAt = nil
        guard let due = deadline else { return }
        if due > .now() {
            arm(at: due, context: context)
            return
        }
        deadline = nil
        timedOut(context: context)
    }

    /// No phase times out now (a request is being answered); the scheduled check, if any,
    /// finds nothing to do when it runs.
    private func cancelTimer() {
        deadline = nil
    }

    private func timedOut(context: ChannelHandlerContext) {
        switch state {
        case .idle:
            // A head that never completed, or a kept-alive connection left idle.
            info.snapshot.value.metrics.timeouts.increment()
            close(context: context)
        case .receiving(let pending):
            info.snapshot.value.metrics.timeouts.increment()
            let response = GatewayResponse.plain(.requestTimeout, "the request body did not arrive in time")
            write(response, isHead: false, close: true, started: pending.started, method: pending.head.method.rawValue, uri: pending.head.uri, context: context)
        case .responding, .closed:
            break
        }
    }

    private func close(context: ChannelHandlerContext) {
        guard !state.isClosed else { return }
        state = .closed
        deadline = nil
        timer?.cancel()
        timer = nil
        context.close(promise: nil)
    }

}

/// What the handler needs from a request head, found in one pass over its headers (it
/// used to take five: the size, then host, content length and two presence checks).
private struct HeadFacts {
    /// URI and headers as they came, roughly in bytes.
    var size: Int
    /// The first `Host` and `Content-Length` values.
    var host: String?
    var contentLength: String?
    /// `Content-Length` or `Transfer-Encoding` is present: a body may follow.
    var hasBody = false

    init(_ head: HTTPRequestHead) {
        size = head.uri.utf8.count + 16
        for (name, value) in head.headers {
            size += name.utf8.count + value.utf8.count + 4
            switch name.utf8.count {
            case 4 where host == nil && Self.named(name, "host"):
                host = value
            case 14 where Self.named(name, "content-length"):
                if contentLength == nil { contentLength = value }
                hasBody = true
            case 17 where Self.named(name, "transfer-encoding"):
                hasBody = true
            default:
                break
            }
        }
    }

    /// ASCII case-insensitive equality with a lower-case name of the same length.
    private static func named(_ name: String, _ lowercase: StaticString) -> Bool {
        var candidate = name.utf8.makeIterator()
        var index = 0
        let expected = UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount)
        while let byte = candidate.next() {
            guard index < expected.count else { return false }
            let folded = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            guard folded == expected[index] else { return false }
            index += 1
        }
        return index == expected.count
    }
}

extension HTTP1ConnectionHandler.State {
    var isClosed: Bool {
        if case .closed = self { return true }
        return false
    }
}
