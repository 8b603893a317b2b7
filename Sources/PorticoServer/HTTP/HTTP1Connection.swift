import Logging
import NIOCore
import NIOExtras
import NIOHTTP1

/// Serves HTTP/1.1 on one connection: parses requests straight from the bytes read
/// (``HTTP1Parser``), routes each one, and writes each response as one buffer.
///
/// Requests are answered in order. While a response is pending, pipelined bytes stay
/// unparsed, and once 64 KiB of them are buffered reading from the socket stops, so a client
/// cannot make the server buffer without bound. (Stopping at once cost two `epoll_ctl`
/// calls per proxied request: NIO drops and re-adds the socket's read interest.) Timers bound how long a client may take to send a head, a body, or the
/// next request on a kept-alive connection.
///
/// It knows its connection only as a ``ConnectionTransport``, a socket of the server core
/// (``CoreConnection``) in service.
package final class HTTP1Connection<Transport: ConnectionTransport>: ServedConnection, DeadlineClient, UpstreamResponder {
    fileprivate enum State {
        /// Waiting for a request head.
        case idle
        /// A head arrived; collecting (or, for an error answer, discarding) its body.
        case receiving(HTTP1Request)
        /// The request is complete and its response is being produced.
        case responding
        /// An error was answered while the client was still sending its body: what it sends is
        /// read and dropped until it stops, so that it reads the answer rather than a reset
        /// (nginx's lingering close), then the connection closes.
        case lingering(until: NIODeadline)
        /// The connection is closing; everything else is ignored.
        case closed
    }

    /// Lingering ends this long after the last byte the client sent...
    package static var lingerQuiet: TimeAmount { .seconds(5) }
    /// ...and this long after it began, whatever the client does.
    package static var lingerLimit: TimeAmount { .seconds(30) }

    /// The connection's ``HTTP1Request``, made at its first request.
    private var pending: HTTP1Request?

    private let info: ConnectionInfo
    /// Where answers go. Held strongly: the transport lets go of this object when the
    /// connection ends (``stop()``), which ends the cycle.
    package let transport: Transport
    private var state: State = .idle
    private var parser: HTTP1Parser
    /// Bytes read but not parsed yet: a partial head, or requests pipelined behind one
    /// that is being answered. Nil when everything read has been parsed, so an idle
    /// connection holds no buffer.
    private var input: ByteBuffer?
    private var parsing = false
    private var needsFlush = false
    private var draining = false
    /// When the current phase (head, body, idle) times out; nil while none does. The loop's
    /// ``DeadlineSweeper`` checks it: a task scheduled and cancelled per request is costly,
    /// and cancelling one searches every task of the loop.
    private var deadline: NIODeadline?
    package var sweeper: DeadlineSweeper?
    package var sweepIndex = -1
    private var date = HTTPDate()
    /// The last fixed response written with its `Date`, reused while the second lasts: a
    /// connection asking for the same built-in again writes the same buffer.
    /// (Kept as separate fields: checking a tuple of them copied it, retaining each part.)
    private var lastFixed: FixedResponse?
    private var lastFixedSecond = -1
    private var lastFixedIncludesBody = false
    private var lastFixedBytes = ByteBuffer()
    /// The buffer the last relayed or service answer was written into, reused for the next
    /// one (by then it has been encrypted and let go): an allocation of a storage object
    /// and its bytes saved per answer. Not kept when large.
    private var answerBytes: ByteBuffer?
    /// The request being relayed to an upstream, and whether to close after its answer.
    private var relaying: (pending: HTTP1Request, close: Bool)?
    /// The exchange of the last relayed request, reused by the next.
    private var upstreamExchange: UpstreamExchange?
    /// The answer being written refuses a body the client may still be sending: linger after
    /// it instead of closing at once.
    private var lingerAfterAnswer = false

    package required init(info: ConnectionInfo, transport: Transport) {
        self.info = info
        self.transport = transport
        let limits = info.snapshot.value.limits
        self.parser = HTTP1Parser(maxHeadBytes: limits.maxHeaderBytes, maxHeaderCount: limits.maxHeaderCount)
    }

    // MARK: - What the transport tells

    /// The connection is open: the head timeout starts.
    package func start() {
        joinSweeper(on: transport.eventLoop)
        schedule(after: info.snapshot.value.limits.headerTimeout)
    }

    /// The connection has ended (closed by either side): nothing more is written.
    package func stop() {
        state = .closed
        input = nil
        deadline = nil
        leaveSweeper()
    }

    package func sweep(now: NIODeadline) {
        guard let due = deadline, due <= now else { return }
        deadline = nil
        timedOut()
    }

    /// Bytes read from the client.
    package func received(_ bytes: ByteBuffer) {
        if state.isClosed { return }
        if case .lingering(let until) = state {
            deadline = min(NIODeadline.now() + Self.lingerQuiet, until)
            return
        }
        var bytes = bytes
        // `input` is only ever read or assigned whole (never changed in place across a call):
        // then the compiler checks no access to it at run time (an exclusivity check per use).
        if var buffered = input.take() {
            buffered.writeBuffer(&bytes)
            input = consume buffered
        } else {
            input = bytes
        }
        parse()
    }

    /// Everything the socket had has been read: what was answered goes out.
    package func readComplete() {
        if needsFlush {
            needsFlush = false
            transport.flush()
        }
    }

    /// Pipelined bytes buffered while a response is pending before reading stops.
    private static var maxBufferedWhileResponding: Int { 64 * 1024 }

    /// Whether the transport should read more now. (After it was told no, it is told to
    /// read again with ``ConnectionTransport/resumeReading()``.)
    package var acceptsInput: Bool {
        if case .responding = state, (input?.readableBytes ?? 0) >= Self.maxBufferedWhileResponding { return false }
        return true
    }

    /// The server is draining: finish the request in progress, then close.
    package func quiesce() {
        draining = true
        if case .idle = state, (input?.readableBytes ?? 0) == 0 { close() }
    }

    /// The connection failed.
    package func failed() {
        close()
    }

    // MARK: - Requests

    /// Parses and answers what `input` holds, until it runs out or a response is pending.
    private func parse() {
        guard !parsing else { return }
        parsing = true
        defer { parsing = false }
        while var buffer = input.take() {
            switch state {
            case .lingering:
                return
            case .responding, .closed:
                // Pipelined bytes wait; an emptied view of the bytes read is let go of (held,
                // it would keep the loop's read buffer from being reused).
                if buffer.readableBytes > 0 { input = consume buffer }
                return
            case .idle, .receiving: break
            }
            // The parser and the bytes are worked on as locals and put back before the event
            // is handled (see `channelRead`; the parser is plain values, copied for nothing).
            var parser = self.parser
            let event: HTTP1Parser.Event
            do {
                event = try parser.next(&buffer)
            } catch {
                self.parser = parser
                refuse(error)
                return
            }
            self.parser = parser
            if case .needMore = event {
                if buffer.readableBytes == 0 { return }
                if buffer.readerIndex > 4096 { buffer.discardReadBytes() }
                input = consume buffer
                return
            }
            input = consume buffer
            // Consumed: the head moves into the connection's request object, not copied.
            switch consume event {
            case .needMore:
                return
            case .head(let head):
                receiveHead(head)
            case .body(let chunk):
                receiveBody(chunk)
            case .end:
                guard case .receiving(let pending) = state else { return }
                cancelTimer()
                respond(to: pending)
            }
        }
    }

    /// Answers a request that could not be parsed, and closes.
    private func refuse(_ error: HTTP1ParseError) {
        var method = "-"
        var uri = "-"
        var started = NIODeadline.now()
        if case .receiving(let pending) = state {
            method = pending.head.method
            uri = pending.head.uri
            started = pending.started
        }
        input = nil
        // A chunk past the limit: the rest of the body may be on its way.
        if case .bodyTooLarge = error { lingerAfterAnswer = true }
        write(.plain(error.status, error.message), isHead: false, close: true, started: started, method: method, uri: uri)
    }

    private func receiveHead(_ head: consuming HTTP1RequestHead) {
        cancelTimer()
        let snapshot = info.currentSnapshot()
        let limits = snapshot.limits
        let decision = RequestDispatch.decide(method: head.method, host: head.host, target: head.uri, contentLength: head.contentLength, snapshot: snapshot)
        let hasBody = head.hasBody
        let expectsContinue = head.expectsContinue
        let minorVersion = head.minorVersion
        // The head moves into the request object (its last use here).
        let pending = nextPending(head, bodyLimit: limits.maxBodyBytes)
        state = .receiving(pending)
        switch decision {
        case .route(let route, let parameters, let bodyLimit):
            pending.route = route
            pending.parameters = parameters
            pending.bodyLimit = bodyLimit
            pending.keepsBody = true
            if expectsContinue && hasBody && minorVersion == 1 && (input?.readableBytes ?? 0) == 0 {
                transport.write(ByteBuffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n"))
                transport.flush()
            }
        case .answer(let response, early: true):
            // The body is not read: answer now and close, after letting the client finish
            // sending what it had started to.
            lingerAfterAnswer = hasBody && !(expectsContinue && (input?.readableBytes ?? 0) == 0)
            write(response, isHead: false, close: true, started: pending.started, method: pending.head.method, uri: pending.head.uri)
            return
        case .answer(let response, early: false):
            pending.errorResponse = response
        case .notFound:
            pending.errorResponse = nil
        }
        parser.bodyAllowance = pending.bodyLimit
        if hasBody && pending.route == nil && expectsContinue && (input?.readableBytes ?? 0) == 0 {
            // The client waits to be told to send its body; it is told the answer instead,
            // and the connection closes since the body may or may not follow.
            pending.closeAfter = true
            respond(to: pending)
            return
        }
        if hasBody {
            schedule(after: limits.bodyTimeout)
        }
    }

    /// The connection's ``HTTP1Request`` reset for a new request; a new one in the unlikely case
    /// that something still holds the last (it is only reset when nothing does).
    private func nextPending(_ head: consuming HTTP1RequestHead, bodyLimit: Int) -> HTTP1Request {
        if pending != nil, isKnownUniquelyReferenced(&pending!) {
            pending!.reset(head: head, bodyLimit: bodyLimit, started: .now())
            return pending!
        }
        let created = HTTP1Request(head: head, bodyLimit: bodyLimit, started: .now())
        pending = created
        return created
    }

    private func receiveBody(_ chunk: ByteBuffer) {
        guard case .receiving(let pending) = state else { return }
        pending.bodyBytes += chunk.readableBytes
        if pending.bodyBytes > pending.bodyLimit {
            // Kept or dropped, a body longer than the limit is not read to its end.
            let response = GatewayResponse.plain(.payloadTooLarge, "request body is larger than \(pending.bodyLimit) bytes")
            lingerAfterAnswer = true
            write(response, isHead: false, close: true, started: pending.started, method: pending.head.method, uri: pending.head.uri)
            return
        }
        guard pending.keepsBody else { return }
        if pending.body == nil {
            // Usually the whole body: kept as the slice it arrived in.
            pending.body = chunk
        } else {
            var chunk = chunk
            pending.body!.writeBuffer(&chunk)
        }
    }

    private func respond(to pending: HTTP1Request) {
        let isHead = pending.head.isHead
        let close = !pending.head.keepAlive || draining || pending.closeAfter
        guard let route = pending.route else {
            if let response = pending.errorResponse {
                write(response, isHead: isHead, close: close, started: pending.started, method: pending.head.method, uri: pending.head.uri)
            } else {
                writeFixed(info.snapshot.value.notFound, isHead: isHead, close: close, started: pending.started, method: pending.head.method, uri: pending.head.uri)
            }
            return
        }
        let target = route.target
        switch target {
        case .fixed(let fixed):
            // The common built-in (health): no request made.
            writeFixed(fixed, isHead: isHead, close: close, started: pending.started, method: pending.head.method, uri: pending.head.uri)
            return
        case .upstream(let pool) where pool.relaysHTTP1:
            // Relayed as it arrived: its header lines go to the upstream as bytes, and the
            // upstream's come back as bytes (``upstreamAnswered(_:)``).
            state = .responding
            relaying = (pending, close)
            pending.ownBytes()
            pending.client = ForwardedClient(peer: info.peerAddressText, peerIsTrustedProxy: info.peerIsTrustedProxy, isTLS: info.isTLS)
            pool.relay(pending, on: transport.eventLoop, responder: self, reusing: &upstreamExchange)
            return
        case .immediate:
            // Answered before this call returns: the bytes read can stay where they are.
            break
        default:
            // Answered later (a service's task, an upstream): the head and body move out of
            // the loop's read buffer, which a request waiting for minutes (an agent's held
            // wait) would otherwise keep from reuse, 16 KiB per waiting request.
            pending.ownBytes()
        }
        let head = pending.head
        let outcome = RequestDispatch.run(
            target,
            request: makeRequest(pending),
            eventLoop: transport.eventLoop,
            logger: info.snapshot.value.logger
        )
        switch outcome {
        case .fixed(let fixed):
            writeFixed(fixed, isHead: isHead, close: close, started: pending.started, method: head.method, uri: head.uri)
        case .response(let response):
            write(response, isHead: isHead, close: close, started: pending.started, method: head.method, uri: head.uri)
        case .pending(let future):
            state = .responding
            let loopBound = NIOLoopBound(self, eventLoop: transport.eventLoop)
            let started = pending.started
            future.whenComplete { result in
                let handler = loopBound.value
                guard case .responding = handler.state else { return }
                let response = (try? result.get()) ?? .plain(.internalServerError)
                handler.write(response, isHead: isHead, close: close || handler.draining, started: started, method: head.method, uri: head.uri)
                // Serve what was pipelined behind this request.
                handler.parse()
                handler.readComplete()
            }
        }
    }

    package func upstreamAnswered(_ answer: consuming UpstreamAnswer) {
        guard case .responding = state, let (pending, close) = relaying else { return }
        relaying = nil
        // The head's fields read in place (a copy of the head retains its parts).
        let isHead = pending.head.isHead
        switch consume answer {
        case .relayed(let response):
            let close = close || draining
            // A HEAD answer carries the length a GET would have had.
            let length = isHead ? response.headLength ?? 0 : response.body.readableBytes
            // Written as a local and put back: no access to the property spans a call.
            var out = answerBytes.take()
            HTTP1Encoding.answer(response, date: currentDate(), contentLength: length, close: close, includeBody: !isHead, into: &out)
            answerBytes = consume out
            emitAnswer(close: close)
            finish(status: Int(response.status.code), bytes: response.body.readableBytes, close: close, started: pending.started, method: pending.head.method, uri: pending.head.uri)
        case .response(let response):
            write(response, isHead: isHead, close: close || draining, started: pending.started, method: pending.head.method, uri: pending.head.uri)
        }
        // Serve what was pipelined behind this request.
        parse()
        readComplete()
    }

    private func makeRequest(_ pending: HTTP1Request) -> GatewayRequest {
        let trusted = info.snapshot.value.configuration.trustedProxies
        var parameters: [String: String] = [:]
        for (name, value) in pending.parameters { parameters[name] = String(value) }
        let headers = pending.head.headers()
        return GatewayRequest(
            method: HTTPMethod(rawValue: pending.head.method),
            uri: pending.head.uri,
            headers: headers,
            body: pending.body ?? ByteBuffer(),
            host: pending.head.host,
            parameters: parameters,
            listener: info.listener,
            httpMajorVersion: 1,
            isTLS: info.isTLS,
            peerAddress: info.peerAddress,
            clientAddress: info.clientAddress(headers: headers, trusted: trusted),
            peerIsTrustedProxy: info.peerIsTrustedProxy,
            clientCertificate: info.clientCertificate,
            peerAddressText: info.peerAddressText
        )
    }

    // MARK: - Responses

    private func writeFixed(_ fixed: FixedResponse, isHead: Bool, close: Bool, started: NIODeadline, method: String, uri: String) {
        refreshDate()
        if close {
            emit(fixed.http1(date: date.value, includeBody: !isHead, closing: true, allocator: transport.allocator), close: true)
            finish(status: Int(fixed.status.code), bytes: fixed.body.readableBytes, close: true, started: started, method: method, uri: uri)
            return
        }
        if lastFixed !== fixed || lastFixedSecond != date.second || lastFixedIncludesBody == isHead {
            lastFixedBytes = fixed.http1(date: date.value, includeBody: !isHead, allocator: transport.allocator)
            lastFixed = fixed
            lastFixedSecond = date.second
            lastFixedIncludesBody = !isHead
        }
        transport.write(lastFixedBytes)
        finish(status: Int(fixed.status.code), bytes: fixed.body.readableBytes, close: false, started: started, method: method, uri: uri)
    }

    private func write(_ response: GatewayResponse, isHead: Bool, close: Bool, started: NIODeadline, method: String, uri: String) {
        guard !(state.isClosed) else { return }
        var out = answerBytes.take()
        out.reuse(capacity: 128 + response.body.readableBytes)
        HTTP1Encoding.writeHead(status: response.status, headers: response.headers, date: currentDate(), contentLength: response.body.readableBytes, close: close, into: &out!)
        if !isHead {
            out!.writeImmutableBuffer(response.body)
        }
        answerBytes = consume out
        emitAnswer(close: close)
        finish(status: Int(response.status.code), bytes: response.body.readableBytes, close: close, started: started, method: method, uri: uri)
    }

    /// Writes ``answerBytes`` (see ``emit(_:close:)``), and lets go of them if they are
    /// too many to keep for the next answer.
    private func emitAnswer(close: Bool) {
        emit(answerBytes!, close: close)
        if answerBytes!.capacity > ReusedBuffer.maxKeptBytes { answerBytes = nil }
    }

    /// Writes an answer's bytes; when closing, flushes them and closes once they are written
    /// (closing at once could drop bytes the socket has not taken yet).
    private func emit(_ buffer: ByteBuffer, close: Bool) {
        if close && lingerAfterAnswer {
            transport.write(buffer)
            transport.flush()
        } else if close {
            transport.writeAndClose(buffer)
        } else {
            transport.write(buffer)
        }
    }

    private func finish(status: Int, bytes: Int, close: Bool, started: NIODeadline, method: String, uri: String) {
        let snapshot = info.snapshot.value
        let now = NIODeadline.now()
        info.record(status: status, bytes: bytes, method: method, uri: uri, http: "1.1", started: started, now: now)
        pending?.clear()
        if close && lingerAfterAnswer {
            lingerAfterAnswer = false
            input = nil
            state = .lingering(until: now + Self.lingerLimit)
            deadline = now + Self.lingerQuiet
            transport.resumeReading()
            return
        }
        if close {
            // ``emit(_:close:)`` closes once the answer is written.
            state = .closed
            return
        }
        needsFlush = true
        state = .idle
        deadline = now + snapshot.limits.idleTimeout
        if draining && (input?.readableBytes ?? 0) == 0 {
            self.close()
            return
        }
        transport.resumeReading()
    }

    /// Brings `date` to this second. It is only ever read or assigned whole (never changed in
    /// place across a call), so the compiler checks none of its accesses at run time.
    private func refreshDate() {
        if let newer = HTTPDate.newer(than: date.second) { date = newer }
    }

    private func currentDate() -> String {
        refreshDate()
        return date.value
    }

    // MARK: - Timers and closing

    private func schedule(after timeout: TimeAmount) {
        deadline = NIODeadline.now() + timeout
    }

    /// No phase times out now (a request is being answered); the scheduled check, if any,
    /// finds nothing to do when it runs.
    private func cancelTimer() {
        deadline = nil
    }

    private func timedOut() {
        switch state {
        case .idle:
            // A head that never completed, or a kept-alive connection left idle.
            info.snapshot.value.metrics.timeouts.increment()
            close()
        case .receiving(let pending):
            info.snapshot.value.metrics.timeouts.increment()
            let response = GatewayResponse.plain(.requestTimeout, "the request body did not arrive in time")
            write(response, isHead: false, close: true, started: pending.started, method: pending.head.method, uri: pending.head.uri)
        case .lingering:
            close()
        case .responding, .closed:
            break
        }
    }

    private func close() {
        guard !state.isClosed else { return }
        state = .closed
        input = nil
        deadline = nil
        transport.close()
    }

}

extension HTTP1Connection.State {
    package var isClosed: Bool {
        if case .closed = self { return true }
        return false
    }
}

/// An HTTP/1.1 request being received, answered or relayed to an upstream (which reads it in
/// place). A class: the state holding it is switched over and reassigned several times per
/// request, and a struct this size was copied (and each of its references retained) every time.
///
/// One per connection, reset for each request (the handler's `nextPending`). Its head and body
/// are slices of the bytes read, and a slice still held when NIOSSL decrypts the next record
/// into the same buffer makes NIOSSL copy that buffer (`memmove` stood out in the profile
/// when a first version kept them): ``clear()`` lets go of them once the answer is written.
package final class HTTP1Request {
    package private(set) var head: HTTP1RequestHead
    package var route: Router<Endpoint>.Route?
    package var parameters: [(String, Substring)]
    package var errorResponse: GatewayResponse?
    /// Whether the body is kept (a routed request) or dropped (an error answer).
    package var keepsBody = false
    package var body: ByteBuffer?
    package var bodyBytes = 0
    package var bodyLimit: Int
    /// Close after the answer whatever the request asked (its body was not read).
    package var closeAfter = false
    package private(set) var started: NIODeadline
    /// Who sent it, for the forwarding fields when it is relayed to an upstream.
    package var client = ForwardedClient(peer: nil, peerIsTrustedProxy: false, isTLS: false)
    /// Storage of the request's own that a relayed request's head (and small body) is copied
    /// into (``ownBytes()``), reused by the connection's next relayed request.
    private var owned: ByteBuffer?
    /// What `head` holds between requests. Its own (a `ByteBuffer()` is one storage
    /// shared by the whole process, and both cores retaining and releasing it per request
    /// moved its cache line between them).
    private let empty = HTTP1RequestHead.empty()

    package init(head: consuming HTTP1RequestHead, bodyLimit: Int, started: NIODeadline) {
        self.head = head
        self.route = nil
        self.parameters = []
        self.bodyLimit = bodyLimit
        self.started = started
    }

    /// A request to relay as it stands (for tests of the upstream encoding).
    package convenience init(head: HTTP1RequestHead, body: ByteBuffer?, client: ForwardedClient) {
        self.init(head: head, bodyLimit: .max, started: .now())
        self.body = body
        self.client = client
    }

    package func reset(head: consuming HTTP1RequestHead, bodyLimit: Int, started: NIODeadline) {
        self.head = head
        self.bodyLimit = bodyLimit
        self.started = started
        keepsBody = false
        bodyBytes = 0
        closeAfter = false
    }

    /// Copies the head and body (together up to ``ReusedBuffer/maxKeptBytes``) out of the bytes read
    /// into the request's own storage. A relayed request waits for its upstream while other
    /// connections are read; as slices of what was read, its head and body would keep the
    /// loop's read buffer (16 KiB) from being reused, and the next read would allocate a new
    /// one, where copying costs a few hundred bytes.
    package func ownBytes() {
        let headBytes = head.bytes.readableBytes
        let bodyBytes = body?.readableBytes ?? 0
        guard headBytes + bodyBytes <= ReusedBuffer.maxKeptBytes else { return }
        // Unique again once the last request was cleared: emptied in place, not allocated.
        var copy = owned.take()
        copy.reuse(capacity: headBytes + bodyBytes)
        copy!.writeImmutableBuffer(head.bytes)
        if let body { copy!.writeImmutableBuffer(body) }
        head = head.rebased(onto: copy!.getSlice(at: copy!.readerIndex, length: headBytes)!)
        if bodyBytes > 0 { body = copy!.getSlice(at: copy!.readerIndex + headBytes, length: bodyBytes) }
        owned = copy
    }

    /// Lets go of everything the request held.
    package func clear() {
        head = empty
        route = nil
        parameters.removeAll(keepingCapacity: true)
        errorResponse = nil
        body = nil
    }
}
