import CNGHTTP2
import NIOCore
import NIOHTTP1

/// Serves HTTP/2 on one connection, as its ``ConnectionTransport`` drives it: a thin shell,
/// generic over the transport as ``HTTP1Connection`` is, around the ``HTTP2Session`` that
/// does the work (nghttp2's callbacks are C functions and cannot reach a generic class).
package final class HTTP2Connection<Transport: ConnectionTransport>: ServedConnection {
    private let session: HTTP2Session

    package init(info: ConnectionInfo, transport: Transport) {
        session = HTTP2Session(info: info, transport: transport)
    }

    package func start() { session.start() }
    package func stop() { session.stop() }
    package func received(_ bytes: ByteBuffer) { session.received(bytes) }
    package func readComplete() { session.readComplete() }
    package var acceptsInput: Bool { session.acceptsInput }
    package func quiesce() { session.quiesce() }
    package func failed() { session.failed() }
}

/// One HTTP/2 connection on libnghttp2, the system's library: it parses the frames, keeps
/// the streams' states, HPACK both ways, flow control both ways (response bodies wait for the
/// client's credit), SETTINGS, PING and GOAWAY, answers protocol errors as RFC 9113 says, and
/// checks each request's fields (RFC 9113 8.2-8.3). This class feeds it the bytes TLS hands up,
/// takes its callbacks, dispatches each request to its route, and hands nghttp2's output to
/// the transport once per read, so that a burst of requests is answered with one write.
///
/// Protections: nghttp2's own (at most 128 concurrent streams; the rate of streams a client
/// resets, CVE-2023-44487; the number of CONTINUATION frames of a header block,
/// CVE-2024-27316; the answers queued for frames that ask for one, such as PING and SETTINGS)
/// and these: decoded header lists are bounded (a 431 between the listener's header limit
/// and twice it, GOAWAY past that, which also stops HPACK "bombs"); empty DATA frames that do
/// nothing are counted; response bodies that the client does not take are bounded per
/// connection; and reading stops while the socket is not writable, so a client that sends
/// frames without reading the answers cannot make the server buffer them.
package final class HTTP2Session: DeadlineClient {

    /// One stream, from its request's HEADERS until nghttp2 closes it.
    private final class Stream {
        let id: Int32
        let started: NIODeadline
        /// The request's fields for a service or an upstream (none for a fixed answer).
        var headers: HTTPHeaders?
        var tooLarge = false
        /// Bytes of the head and of the trailers, counted against one bound.
        var headBytes = 0
        var trailerBytes = 0
        /// Set once the head is whole and valid.
        var method = ""
        var uri = ""
        var authority: String?
        /// The listener's header limits when the stream began.
        let maxHeaderBytes: Int
        let maxHeaderCount: Int
        var route: Router<Endpoint>.Route?
        var parameters: [(String, Substring)] = []
        var errorResponse: GatewayResponse?
        var body = ByteBuffer()
        var bodyLimit = 0
        /// The client sent END_STREAM.
        var requestComplete = false
        /// The response has been produced (or is being produced by a service).
        var responding = false
        /// The response's last frame has been sent.
        var finished = false
        /// Answered early (413, 431): what the client still sends is dropped, up to this.
        var discardBudget: Int?
        /// Response body not yet taken by nghttp2 (for want of credit, or not asked for yet).
        var pendingBody: ByteBuffer?
        var status = 0
        var responseBytes = 0
        /// The last time the client moved this stream on: its request's DATA arrived, or
        /// nghttp2 took response DATA under its credit. A stream waiting on the client for
        /// longer than the body timeout stalls the connection, whatever other frames come.
        var lastProgress: NIODeadline
        /// More of the response body is to come from an upstream (``bodySource``).
        var bodyOpen = false
        /// The length the upstream declared, if it did.
        var declaredLength: Int?
        var bodySource: (any UpstreamBodySource)?
        /// The upstream was told to wait: too much of its body is waiting for credit.
        var sourcePaused = false

        init(id: Int32, now: NIODeadline, limits: ListenerLimits) {
            self.id = id
            self.started = now
            self.lastProgress = now
            self.maxHeaderBytes = limits.maxHeaderBytes
            self.maxHeaderCount = limits.maxHeaderCount
        }

        var pendingBytes: Int { pendingBody?.readableBytes ?? 0 }

        /// Ends the upstream's part, if it still has one (the stream is gone).
        func cancelSource() {
            bodyOpen = false
            if let source = bodySource {
                bodySource = nil
                source.cancel()
            }
        }
    }

    /// Takes a plain-HTTP upstream's answer for one stream, its body as it comes, on the
    /// connection's loop.
    private final class UpstreamStream: UpstreamStreamingResponder {
        private weak var session: HTTP2Session?
        private let stream: Stream
        private let isHead: Bool

        init(session: HTTP2Session, stream: Stream, isHead: Bool) {
            self.session = session
            self.stream = stream
            self.isHead = isHead
        }

        private var live: HTTP2Session? {
            guard let session, session.stream(stream.id) === stream else { return nil }
            return session
        }

        func upstreamAnswered(_ answer: consuming UpstreamAnswer) {
            guard let session = live else { return }
            session.write(answer.gatewayResponse, to: stream, isHead: isHead)
            session.flush()
        }

        func upstreamHead(_ response: consuming UpstreamResponse, length: Int?, hasBody: Bool, source: any UpstreamBodySource) {
            guard let session = live else {
                if hasBody { source.cancel() }
                return
            }
            session.streamHead(response.gatewayResponse, length: length, hasBody: hasBody && !isHead, source: source, to: stream)
            if hasBody && isHead { source.cancel() }
        }

        func upstreamBody(_ piece: ByteBuffer) -> Bool {
            guard let session = live else { return true }
            return session.streamBody(piece, to: stream)
        }

        func upstreamEnded() {
            live?.streamEnded(stream)
        }

        func upstreamBodyFailed() {
            guard let session = live else { return }
            stream.bodySource = nil
            stream.bodyOpen = false
            session.reset(stream.id, NGHTTP2_INTERNAL_ERROR)
            session.flush()
        }
    }

    package static var maxConcurrentStreams: UInt32 { 128 }
    /// Our SETTINGS_INITIAL_WINDOW_SIZE.
    private static var initialWindow: UInt32 { 65_535 }
    /// Answered streams whose remaining request body is read and dropped, up to a budget, so
    /// that clients that do not expect an early answer (413, 431) still see it.
    private static var discardBudget: Int { 256 * 1024 }
    /// Frames that carry nothing (empty DATA without END_STREAM) allowed between two
    /// completed requests.
    private static var uselessFrameLimit: Int { 1_000 }
    /// A streamed upstream body is read on only while less than this of it waits for the
    /// client's credit, and again once what waits is under a quarter of it.
    private static var streamHighWater: Int { 64 * 1024 }
    /// Response bytes all the streams of a connection may hold waiting for credit. Past it,
    /// when more than one stream holds some, the client is not reading what it asked for:
    /// GOAWAY (ENHANCE_YOUR_CALM). One answer larger than this alone still goes out.
    private static var connectionBufferBudget: Int { 4 << 20 }
    /// Output gathered in one call is handed to the transport in pieces of about this size.
    private static var writeChunk: Int { 64 * 1024 }

    /// The callbacks and options every session is made with: set once, only read by nghttp2
    /// (which copies them into each session).
    private nonisolated(unsafe) static let callbacks: OpaquePointer = makeCallbacks()
    private nonisolated(unsafe) static let options: OpaquePointer = makeOptions()

    private let info: ConnectionInfo
    private let transport: any ConnectionTransport
    private var session: OpaquePointer?
    /// Header lists larger than this end the connection; between the configured header limit
    /// and this, requests get a 431.
    private let maxHeaderList: Int

    private var streams: [Int32: Stream] = [:]
    /// The request head being decoded. Header blocks are never interleaved (RFC 9113 6.10), so
    /// one is read at a time, and its storage is reused from one request to the next.
    private var head = HTTP2RequestFields()
    /// The stream the last callback was about: nghttp2's callbacks for one stream come one
    /// after the other, and this spares most of the dictionary's lookups.
    private var lastStream: Stream?
    /// The time of the latest read (or upstream piece): when streams begin and move on. One
    /// reading of the clock per read rather than per frame.
    private var clock = NIODeadline.now()
    /// What nghttp2 has produced and the transport has not been given yet.
    private var out = ByteBuffer()
    private var needsFlush = false
    /// Inside a call into nghttp2: output is gathered after it returns (nghttp2 must not be
    /// asked for output from its own callbacks).
    private var inLibrary = false
    /// Response bytes held by streams, not yet taken by nghttp2.
    private var heldBytes = 0
    private var uselessFrames = 0
    /// The highest stream a request opened, and the streams reset lately (by either side):
    /// HEADERS for any other stream at or below it reuse a stream id (RFC 9113 5.1.1), which
    /// nghttp2 ignores when it no longer knows the stream; frames a client sent before it saw
    /// a reset are ignored.
    private var highestStreamID: Int32 = 0
    private var recentlyReset = [Int32](repeating: 0, count: 128)
    private var recentlyResetNext = 0
    /// The session is ending with a GOAWAY of ours: nothing more is read, and the connection
    /// closes once the GOAWAY is written.
    private var terminating = false
    private var closed = false
    /// A reusable array for the fields of a response.
    private var nameValues: [nghttp2_nv] = []
    /// A reusable list for the fields of the answers made here.
    private var responseFields = HTTP2Fields()

    /// Timeouts are checked by the loop's ``DeadlineSweeper`` from what the connection
    /// records cheaply per read (a flag). `idleSince`: no streams since then.
    private var sawInput = false
    private var idleSince: NIODeadline?
    package var sweeper: DeadlineSweeper?
    package var sweepIndex = -1
    private var date = HTTPDate()

    package init(info: ConnectionInfo, transport: any ConnectionTransport) {
        self.info = info
        self.transport = transport
        let limits = info.snapshot.value.limits
        self.maxHeaderList = max(2 * limits.maxHeaderBytes, 64 * 1024)
    }

    deinit {
        if let session { nghttp2_session_del(session) }
    }

    // MARK: - What the transport tells

    /// The connection is open (TLS chose h2): the server's SETTINGS go out.
    package func start() {
        out = transport.allocator.buffer(capacity: 1024)
        let me = Unmanaged.passUnretained(self).toOpaque()
        guard nghttp2_session_server_new2(&session, Self.callbacks, me, Self.options) == 0 else {
            closeNow()
            return
        }
        joinSweeper(on: transport.eventLoop)
        let limits = info.snapshot.value.limits
        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: Self.maxConcurrentStreams),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: Self.initialWindow),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(limits.maxHeaderBytes)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
        ]
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        flush()
    }

    /// The connection has ended: nothing more is written.
    package func stop() {
        guard !closed else { return }
        closed = true
        leaveSweeper()
        for stream in streams.values { stream.cancelSource() }
        streams.removeAll()
        lastStream = nil
    }

    package func received(_ bytes: ByteBuffer) {
        guard !closed, !terminating, let session else { return }
        sawInput = true
        clock = .now()
        let result = bytes.withUnsafeReadableBytes { raw in
            inLibrary = true
            defer { inLibrary = false }
            return nghttp2_session_mem_recv(session, raw.bindMemory(to: UInt8.self).baseAddress, raw.count)
        }
        if result < 0 && !terminating {
            switch Int32(result) {
            case NGHTTP2_ERR_BAD_CLIENT_MAGIC.rawValue:
                fail(NGHTTP2_PROTOCOL_ERROR, "expected the HTTP/2 connection preface")
            case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS.rawValue:
                fail(NGHTTP2_ENHANCE_YOUR_CALM, "too many CONTINUATION frames in one header block")
            case NGHTTP2_ERR_FLOODED.rawValue:
                fail(NGHTTP2_ENHANCE_YOUR_CALM, "too many frames that ask for an answer")
            default:
                closeNow()
                return
            }
        }
        gather()
    }

    package func readComplete() {
        flush()
    }

    /// A client that does not read what it is sent stops being read from: the transport
    /// reads only while its socket takes what is written.
    package var acceptsInput: Bool { transport.isWritable }

    package func quiesce() {
        guard let session, !closed else { return }
        nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session), NGHTTP2_NO_ERROR.rawValue, nil, 0)
        flush()
    }

    package func failed() {
        closeNow()
    }

    // MARK: - nghttp2's callbacks

    private static func makeCallbacks() -> OpaquePointer {
        var callbacks: OpaquePointer?
        precondition(nghttp2_session_callbacks_new(&callbacks) == 0, "nghttp2 could not allocate its callbacks")
        nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks) { _, header, user in
            HTTP2Session.with(user) { $0.beginFrame(header!.pointee) }
        }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, user in
            HTTP2Session.with(user) { $0.beginHeaders(frame!.pointee) }
        }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, user in
            HTTP2Session.with(user) { $0.header(frame!.pointee, UnsafeBufferPointer(start: name, count: nameLength), UnsafeBufferPointer(start: value, count: valueLength)) }
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, user in
            HTTP2Session.with(user) { $0.frameReceived(frame!.pointee) }
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, id, data, length, user in
            HTTP2Session.with(user) { $0.dataReceived(id, UnsafeBufferPointer(start: data, count: length)) }
        }
        nghttp2_session_callbacks_set_on_frame_send_callback(callbacks) { _, frame, user in
            HTTP2Session.with(user) { $0.frameSent(frame!.pointee) }
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, id, _, user in
            HTTP2Session.with(user) { $0.streamClosed(id) }
        }
        return callbacks!
    }

    private static func makeOptions() -> OpaquePointer {
        var options: OpaquePointer?
        precondition(nghttp2_option_new(&options) == 0, "nghttp2 could not allocate its options")
        // Closed streams are kept (at most as many as may be open) so that nghttp2 answers a
        // frame on one as RFC 9113 5.1 says: STREAM_CLOSED, where a stream it had forgotten
        // would be ignored.
        // A client may reset a burst of 200 streams, then about one every 4 seconds.
        nghttp2_option_set_stream_reset_rate_limit(options, 200, 7)
        return options!
    }

    private func stream(_ id: Int32) -> Stream? {
        if let last = lastStream, last.id == id { return last }
        let found = streams[id]
        if found != nil { lastStream = found }
        return found
    }

    /// The session a callback is for, borrowed for the call: it is alive (it is inside its
    /// own call into nghttp2), so it is neither retained nor released per callback.
    private static func with<Result>(_ user: UnsafeMutableRawPointer?, _ body: (HTTP2Session) -> Result) -> Result {
        Unmanaged<HTTP2Session>.fromOpaque(user!)._withUnsafeGuaranteedRef(body)
    }

    private static let headersType = UInt8(NGHTTP2_HEADERS.rawValue)
    private static let dataType = UInt8(NGHTTP2_DATA.rawValue)
    private static let endStreamFlag = UInt8(NGHTTP2_FLAG_END_STREAM.rawValue)

    private static let resetType = UInt8(NGHTTP2_RST_STREAM.rawValue)

    private func beginFrame(_ header: nghttp2_frame_hd) -> Int32 {
        let id = header.stream_id
        guard header.type == Self.headersType, id <= highestStreamID, stream(id) == nil, !recentlyReset.contains(id) else { return 0 }
        fail(NGHTTP2_PROTOCOL_ERROR, "HEADERS on stream \(id), which is closed or was skipped: a stream id is used once, in increasing order")
        return NGHTTP2_ERR_CALLBACK_FAILURE.rawValue
    }

    private func beginHeaders(_ frame: nghttp2_frame) -> Int32 {
        guard frame.hd.type == Self.headersType, frame.headers.cat == NGHTTP2_HCAT_REQUEST else { return 0 }
        let stream = Stream(id: frame.hd.stream_id, now: clock, limits: info.currentSnapshot().limits)
        head.reset()
        streams[stream.id] = stream
        lastStream = stream
        highestStreamID = max(highestStreamID, frame.hd.stream_id)
        return 0
    }

    private func noteReset(_ id: Int32) {
        recentlyReset[recentlyResetNext] = id
        recentlyResetNext = (recentlyResetNext + 1) % recentlyReset.count
    }

    private func header(_ frame: nghttp2_frame, _ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) -> Int32 {
        guard let stream = stream(frame.hd.stream_id) else { return 0 }
        let request = frame.headers.cat == NGHTTP2_HCAT_REQUEST
        if request {
            head.add(name: UnsafeRawBufferPointer(name), value: UnsafeRawBufferPointer(value))
            stream.headBytes = head.size
        } else {
            // Trailers are checked by nghttp2 and not passed on.
            stream.trailerBytes += name.count + value.count + 32
        }
        if stream.headBytes + stream.trailerBytes > maxHeaderList {
            fail(NGHTTP2_ENHANCE_YOUR_CALM, "header list larger than \(maxHeaderList) bytes")
            return NGHTTP2_ERR_PAUSE.rawValue
        }
        if request && !stream.tooLarge && (head.size > stream.maxHeaderBytes || head.count > stream.maxHeaderCount + 4) {
            stream.tooLarge = true
            head.dropFields()
        }
        return 0
    }

    private func frameReceived(_ frame: nghttp2_frame) -> Int32 {
        let endStream = frame.hd.flags & Self.endStreamFlag != 0
        switch frame.hd.type {
        case Self.headersType:
            guard let stream = stream(frame.hd.stream_id) else { return 0 }
            if frame.headers.cat == NGHTTP2_HCAT_REQUEST {
                open(stream, endStream: endStream)
            } else if endStream {
                stream.requestComplete = true
                complete(stream)
            }
        case Self.resetType:
            noteReset(frame.hd.stream_id)
        case Self.dataType:
            if frame.hd.length == 0 && !endStream {
                uselessFrames += 1
                if uselessFrames > Self.uselessFrameLimit {
                    // Stops nghttp2 reading on; the GOAWAY goes out as the call returns.
                    fail(NGHTTP2_ENHANCE_YOUR_CALM, "too many empty frames")
                    return NGHTTP2_ERR_CALLBACK_FAILURE.rawValue
                }
            }
            guard endStream, let stream = stream(frame.hd.stream_id) else { return 0 }
            stream.requestComplete = true
            if stream.discardBudget == nil { complete(stream) }
        default:
            break
        }
        return 0
    }

    private func dataReceived(_ id: Int32, _ data: UnsafeBufferPointer<UInt8>) -> Int32 {
        guard let stream = stream(id) else { return 0 }
        stream.lastProgress = clock
        if let budget = stream.discardBudget {
            let left = budget - data.count
            stream.discardBudget = left
            if left < 0 { reset(id, NGHTTP2_NO_ERROR) }
            return 0
        }
        guard stream.route != nil, stream.errorResponse == nil else { return 0 }
        if stream.body.readableBytes + data.count > stream.bodyLimit {
            stream.errorResponse = .plain(.payloadTooLarge, "request body is larger than \(stream.bodyLimit) bytes")
            respondEarly(stream)
            return 0
        }
        stream.body.writeBytes(data)
        return 0
    }

    private func frameSent(_ frame: nghttp2_frame) -> Int32 {
        if frame.hd.type == Self.resetType { noteReset(frame.hd.stream_id) }
        guard frame.hd.flags & Self.endStreamFlag != 0, frame.hd.type == Self.dataType || frame.hd.type == Self.headersType,
              let stream = stream(frame.hd.stream_id), !stream.finished else { return 0 }
        stream.finished = true
        info.record(status: stream.status, bytes: stream.responseBytes, method: stream.method, uri: stream.uri, http: "2", started: stream.started)
        return 0
    }

    private func streamClosed(_ id: Int32) -> Int32 {
        if lastStream?.id == id { lastStream = nil }
        guard let stream = streams.removeValue(forKey: id) else { return 0 }
        heldBytes -= stream.pendingBytes
        stream.pendingBody = nil
        stream.cancelSource()
        return 0
    }

    /// nghttp2 asks for up to `length` bytes of a response body.
    private func readBody(_ id: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int, flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard let stream = stream(id) else { return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        var copied = 0
        if var pending = stream.pendingBody {
            stream.pendingBody = nil
            copied = min(length, pending.readableBytes)
            if copied > 0 {
                pending.withUnsafeReadableBytes { raw in
                    UnsafeMutableRawPointer(buffer).copyMemory(from: raw.baseAddress!, byteCount: copied)
                }
            }
            pending.moveReaderIndex(forwardBy: copied)
            if pending.readableBytes > 0 { stream.pendingBody = pending }
            heldBytes -= copied
            stream.lastProgress = clock
            resumeSourceIfDrained(stream)
        }
        if stream.pendingBody == nil {
            if stream.bodyOpen {
                if copied == 0 { return Int(NGHTTP2_ERR_DEFERRED.rawValue) }
            } else {
                flags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
            }
        }
        return copied
    }

    private static let bodyReader: nghttp2_data_source_read_callback = { _, id, buffer, length, flags, _, user in
        HTTP2Session.with(user) { $0.readBody(id, into: buffer!, length: length, flags: flags!) }
    }

    // MARK: - Requests

    private func open(_ stream: Stream, endStream: Bool) {
        let snapshot = info.currentSnapshot()
        let limits = snapshot.limits
        stream.bodyLimit = limits.maxBodyBytes
        stream.requestComplete = endStream
        do {
            try head.finish()
        } catch {
            // RFC 9113 8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR.
            return reset(stream.id, NGHTTP2_PROTOCOL_ERROR)
        }
        stream.method = head.method
        stream.uri = head.path
        stream.authority = head.authority
        if stream.tooLarge {
            stream.errorResponse = .plain(.requestHeaderFieldsTooLarge, "request headers are too large")
        } else {
            switch RequestDispatch.decide(method: stream.method, host: stream.authority, target: stream.uri, contentLength: head.contentLength, snapshot: snapshot) {
            case .route(let route, let parameters, let bodyLimit):
                // A fixed answer needs no request; any other endpoint gets the fields.
                if case .fixed = route.target {} else { stream.headers = head.fields.headers(capacity: 1) }
                stream.route = route
                stream.parameters = parameters
                stream.bodyLimit = bodyLimit
            case .answer(let response, _):
                stream.errorResponse = response
            case .notFound:
                stream.errorResponse = nil
            }
        }
        if stream.errorResponse?.status == .payloadTooLarge || stream.errorResponse?.status == .requestHeaderFieldsTooLarge {
            // Answer at once; what the client still sends is dropped.
            respondEarly(stream)
        } else if endStream {
            complete(stream)
        }
    }

    private func complete(_ stream: Stream) {
        guard !stream.responding else { return }
        stream.responding = true
        uselessFrames = 0
        let isHead = stream.method == "HEAD"
        guard let route = stream.route, stream.errorResponse == nil else {
            if let response = stream.errorResponse {
                write(response, to: stream, isHead: isHead)
            } else {
                writeFixed(info.snapshot.value.notFound, to: stream, isHead: isHead)
            }
            return
        }
        if case .upstream(let pool) = route.target {
            // An upstream's body comes as it is read, as fast as the client takes it.
            let responder = UpstreamStream(session: self, stream: stream, isHead: isHead)
            UpstreamExchange(pool: pool, request: .request(makeRequest(stream)), eventLoop: transport.eventLoop, responder: responder).start()
            return
        }
        switch RequestDispatch.run(route.target, request: makeRequest(stream), eventLoop: transport.eventLoop, logger: info.snapshot.value.logger) {
        case .fixed(let fixed):
            writeFixed(fixed, to: stream, isHead: isHead)
        case .response(let response):
            write(response, to: stream, isHead: isHead)
        case .pending(let future):
            let loopBound = NIOLoopBound((self, stream), eventLoop: transport.eventLoop)
            future.whenComplete { result in
                let (session, stream) = loopBound.value
                guard session.stream(stream.id) === stream else { return }  // reset by the client meanwhile
                session.write((try? result.get()) ?? .plain(.internalServerError), to: stream, isHead: isHead)
                session.flush()
            }
        }
    }

    private func respondEarly(_ stream: Stream) {
        guard let response = stream.errorResponse else { return }
        stream.responding = true
        if !stream.requestComplete { stream.discardBudget = Self.discardBudget }
        write(response, to: stream, isHead: false)
    }

    private func makeRequest(_ stream: Stream) -> GatewayRequest {
        var headers = stream.headers ?? HTTPHeaders()
        if let authority = stream.authority, !headers.contains(name: "host") { headers.add(name: "host", value: authority) }
        var parameters: [String: String] = [:]
        for (name, value) in stream.parameters { parameters[name] = String(value) }
        return GatewayRequest(
            method: HTTPMethod(rawValue: stream.method),
            uri: stream.uri,
            headers: headers,
            body: stream.body,
            host: stream.authority ?? headers.first(name: "host"),
            parameters: parameters,
            listener: info.listener,
            httpMajorVersion: 2,
            isTLS: info.isTLS,
            peerAddress: info.peerAddress,
            clientAddress: info.clientAddress(headers: headers, trusted: info.snapshot.value.configuration.trustedProxies),
            peerIsTrustedProxy: info.peerIsTrustedProxy,
            clientCertificate: info.clientCertificate,
            peerAddressText: info.peerAddressText
        )
    }

    // MARK: - Responses

    private func writeFixed(_ fixed: FixedResponse, to stream: Stream, isHead: Bool) {
        submit(fixed.http2Fields, body: isHead ? nil : fixed.body, status: Int(fixed.status.code), to: stream)
    }

    private func write(_ response: GatewayResponse, to stream: Stream, isHead: Bool) {
        // Made in the connection's list, whose storage is reused: taken out and put back whole,
        // so that no access to it spans a call.
        var fields = responseFields
        responseFields = HTTP2Fields()
        fields.setResponse(status: response.status, headers: response.headers, contentLength: response.body.readableBytes)
        submit(fields, body: isHead ? nil : response.body, status: Int(response.status.code), to: stream)
        responseFields = fields
    }

    /// Hands the response to nghttp2: HEADERS, and DATA as the client's windows allow.
    private func submit(_ fields: HTTP2Fields, body: ByteBuffer?, status: Int, to stream: Stream) {
        stream.status = status
        stream.responseBytes = body?.readableBytes ?? 0
        if let body, body.readableBytes > 0 {
            stream.pendingBody = body
            heldBytes += body.readableBytes
            submit(fields, to: stream, withBody: true)
            checkBufferBudget()
        } else {
            submit(fields, to: stream, withBody: false)
        }
    }

    private func submit(_ fields: HTTP2Fields, to stream: Stream, withBody: Bool) {
        guard let session else { return }
        var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: Self.bodyReader)
        let result = fields.withNameValues(date: date.current(), scratch: &nameValues) { fields, count in
            withBody
                ? nghttp2_submit_response(session, stream.id, fields, count, &provider)
                : nghttp2_submit_response(session, stream.id, fields, count, nil)
        }
        if result != 0 { reset(stream.id, NGHTTP2_INTERNAL_ERROR) }
    }

    // MARK: - Streamed upstream answers

    /// A streamed upstream answer's head: HEADERS now, the body as it comes.
    private func streamHead(_ response: GatewayResponse, length: Int?, hasBody: Bool, source: any UpstreamBodySource, to stream: Stream) {
        stream.status = Int(response.status.code)
        stream.responding = true
        if hasBody {
            stream.bodyOpen = true
            stream.bodySource = source
            stream.declaredLength = length
        }
        let fields = HTTP2Fields(status: response.status, headers: response.headers, contentLength: length)
        submit(fields, to: stream, withBody: hasBody)
        flush()
    }

    /// A piece of a streamed body: sent as far as the windows allow; returns whether the
    /// upstream may send more now.
    private func streamBody(_ piece: ByteBuffer, to stream: Stream) -> Bool {
        clock = .now()
        stream.responseBytes += piece.readableBytes
        heldBytes += piece.readableBytes
        if var pending = stream.pendingBody {
            var piece = piece
            pending.writeBuffer(&piece)
            stream.pendingBody = pending
        } else {
            stream.pendingBody = piece
        }
        if let declared = stream.declaredLength, stream.responseBytes >= declared {
            // The whole body is here: its last DATA ends the stream, even when it uses the
            // last of the client's credit (nghttp2 sends no empty DATA on a window of 0).
            stream.bodyOpen = false
            stream.bodySource = nil
            stream.sourcePaused = false
        }
        if let session { nghttp2_session_resume_data(session, stream.id) }
        checkBufferBudget()
        flush()
        guard !closed, self.stream(stream.id) === stream, stream.bodyOpen else { return true }
        if stream.pendingBytes >= Self.streamHighWater {
            stream.sourcePaused = true
            return false
        }
        return true
    }

    private func streamEnded(_ stream: Stream) {
        stream.bodyOpen = false
        stream.bodySource = nil
        stream.sourcePaused = false
        if let session { nghttp2_session_resume_data(session, stream.id) }
        flush()
    }

    /// An upstream told to wait reads on once what waits for credit is down to a quarter of
    /// the high-water mark. (Told from the loop, not from inside nghttp2: resuming hands over
    /// the next piece at once.)
    private func resumeSourceIfDrained(_ stream: Stream) {
        guard stream.sourcePaused, stream.pendingBytes < Self.streamHighWater / 4, let source = stream.bodySource else { return }
        stream.sourcePaused = false
        transport.eventLoop.execute { source.resume() }
    }

    /// Sends the client away when the answers it does not take have grown past the budget.
    private func checkBufferBudget() {
        guard heldBytes > Self.connectionBufferBudget else { return }
        var holding = 0
        for stream in streams.values where stream.pendingBytes > 0 { holding += 1 }
        guard holding > 1 else { return }
        fail(NGHTTP2_ENHANCE_YOUR_CALM, "responses not read")
    }

    /// A stream error (RFC 9113 5.4.2): the stream ends with RST_STREAM; the connection goes on.
    private func reset(_ id: Int32, _ code: nghttp2_error_code) {
        guard let session else { return }
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, code.rawValue)
        if let stream = stream(id) {
            heldBytes -= stream.pendingBytes
            stream.pendingBody = nil
            stream.cancelSource()
        }
    }

    // MARK: - Output

    /// Takes what nghttp2 has to send into `out` (unless inside one of its callbacks, when it
    /// is taken as the call returns).
    private func gather() {
        guard !inLibrary, !closed, let session else { return }
        while true {
            var data: UnsafePointer<UInt8>?
            let length = nghttp2_session_mem_send(session, &data)
            if length < 0 {
                closeNow()
                return
            }
            guard length > 0, let data else { break }
            out.writeBytes(UnsafeRawBufferPointer(start: data, count: length))
            if out.readableBytes >= Self.writeChunk { handOut() }
        }
        if terminating || (nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0) {
            close()
        }
    }

    /// Gives what `out` holds to the transport; flushed by ``flush()``.
    private func handOut() {
        guard out.readableBytes > 0 else { return }
        transport.write(out)
        out = transport.allocator.buffer(capacity: 1024)
        needsFlush = true
    }

    /// Everything nghttp2 has to send goes to the socket.
    private func flush() {
        gather()
        guard !closed else { return }
        handOut()
        if needsFlush {
            needsFlush = false
            transport.flush()
        }
    }

    // MARK: - Idle and closing

    /// Whether a stream waits on its client: for the rest of its request, or for credit to
    /// send its response.
    private func isStalled(_ stream: Stream) -> Bool {
        (!stream.requestComplete && !stream.responding) || stream.pendingBytes > 0
    }

    package func sweep(now: NIODeadline) {
        guard !closed, !terminating else { return }
        let limits = info.snapshot.value.limits
        let active = sawInput
        sawInput = false
        var busy = false
        for stream in streams.values where !stream.finished {
            busy = true
            // A header block trickled in CONTINUATION frames must be whole within the header
            // timeout; a client that opens streams and stops sending (or stops granting
            // credit) must not hold the connection: only progress on the stream it stalls
            // counts, not other frames.
            if stream.method.isEmpty && now - stream.started >= limits.headerTimeout {
                return timedOut()
            }
            if isStalled(stream) && now - stream.lastProgress >= limits.bodyTimeout {
                return timedOut()
            }
        }
        if busy {
            idleSince = nil
            return
        }
        guard !active, let since = idleSince else {
            idleSince = now
            return
        }
        if now - since >= limits.idleTimeout { timedOut() }
    }

    private func timedOut() {
        info.snapshot.value.metrics.timeouts.increment()
        guard let session else { return closeNow() }
        nghttp2_session_terminate_session(session, NGHTTP2_NO_ERROR.rawValue)
        flush()
    }

    /// A connection error of ours: GOAWAY naming it, then close.
    private func fail(_ code: nghttp2_error_code, _ reason: String) {
        guard !terminating, !closed, let session else { return }
        terminating = true
        var reason = reason
        reason.withUTF8 { bytes in
            _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session), code.rawValue, bytes.baseAddress, bytes.count)
        }
    }

    /// Closes once what has been written is flushed.
    private func close() {
        guard !closed else { return }
        stop()
        transport.writeAndClose(out)
        out = ByteBuffer()
    }

    private func closeNow() {
        guard !closed else { return }
        stop()
        transport.close()
    }
}
