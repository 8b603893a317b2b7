import Logging
import NIOCore
import NIOExtras
import NIOHPACK
import NIOHTTP1

/// Serves HTTP/2 on one connection: reads frames straight from the bytes TLS hands up
/// (``HTTP2FrameReader``), keeps the protocol's state itself, answers each stream on the
/// connection, and writes every frame of a read into one buffer, so that a burst of requests
/// is answered with one write (one TLS record where it fits).
///
/// What it keeps (RFC 9113): the preface and SETTINGS exchange, HPACK state both ways (with
/// NIOHPACK's encoder and decoder), stream states and the concurrent-stream limit,
/// CONTINUATION, flow control both ways (response bodies larger than the client's windows
/// wait for WINDOW_UPDATE), PING, RST_STREAM and GOAWAY. Protocol errors end the connection
/// with a GOAWAY that names the error, or reset only the stream where the RFC allows.
///
/// Protections: at most 128 concurrent streams; header blocks (across CONTINUATION) and
/// decoded header lists are bounded; clients resetting many streams quickly ("rapid reset")
/// or sending many frames that do nothing (empty DATA or CONTINUATION) are sent away with
/// ENHANCE_YOUR_CALM; and reading stops while the socket is not writable, so a client that
/// sends PINGs or SETTINGS without reading the answers cannot make the server buffer them.
///
/// It knows its connection only as a ``ConnectionTransport``, as ``HTTP1Connection`` does.
final class HTTP2Connection<Transport: ConnectionTransport>: ServedConnection, DeadlineClient {

    /// One stream, from its request's HEADERS until its response is written.
    private final class Stream {
        let id: UInt32
        let method: String
        let uri: String
        let authority: String?
        let headers: HPACKHeaders
        var route: Router<Endpoint>.Route?
        var parameters: [(String, Substring)] = []
        var errorResponse: GatewayResponse?
        var body = ByteBuffer()
        var bodyLimit: Int
        /// The declared `content-length`, checked against the DATA received.
        let declaredLength: Int?
        var receivedBytes = 0
        let started: NIODeadline
        /// The client sent END_STREAM (the stream is half-closed on its side).
        var requestComplete = false
        /// The response has been produced (or is being produced by a service).
        var responding = false
        /// How much more DATA the client may send, and how much it sent that has not been
        /// granted back yet.
        var receiveWindow: Int
        var unacknowledgedBytes = 0
        /// How much DATA the client lets us send.
        var sendWindow: Int
        /// Response body not yet sent for want of flow-control credit.
        var pendingBody: ByteBuffer?
        var status = 0
        var responseBytes = 0
        /// The last time the client moved this stream on: its request's DATA arrived, or
        /// response DATA went out under its credit. A stream waiting on the client for longer
        /// than the body timeout stalls the connection, whatever other frames (PING) it sends.
        var lastProgress: NIODeadline
        /// More of the response body is to come from an upstream (``bodySource``).
        var bodyOpen = false
        var bodySource: (any UpstreamBodySource)?
        /// The upstream was told to wait: too much of its body is waiting for credit.
        var sourcePaused = false

        init(id: UInt32, request: HTTP2RequestFields, headers: HPACKHeaders, bodyLimit: Int, receiveWindow: Int, sendWindow: Int) {
            self.id = id
            self.method = request.method
            self.uri = request.path
            self.authority = request.authority
            self.headers = headers
            self.bodyLimit = bodyLimit
            self.declaredLength = request.contentLength
            self.receiveWindow = receiveWindow
            self.sendWindow = sendWindow
            self.started = .now()
            self.lastProgress = self.started
        }

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
        private weak var connection: HTTP2Connection?
        private let stream: Stream
        private let isHead: Bool

        init(connection: HTTP2Connection, stream: Stream, isHead: Bool) {
            self.connection = connection
            self.stream = stream
            self.isHead = isHead
        }

        func upstreamAnswered(_ answer: consuming UpstreamAnswer) {
            guard let connection, connection.streams[stream.id] === stream else { return }
            connection.write(answer.gatewayResponse, to: stream, isHead: isHead)
            connection.flushIfNeeded()
        }

        func upstreamHead(_ response: consuming UpstreamResponse, length: Int?, hasBody: Bool, source: any UpstreamBodySource) {
            guard let connection, connection.streams[stream.id] === stream else {
                if hasBody { source.cancel() }
                return
            }
            connection.streamHead(response.gatewayResponse, length: length, hasBody: hasBody && !isHead, source: source, to: stream)
            if hasBody && isHead { source.cancel() }
        }

        func upstreamBody(_ piece: ByteBuffer) -> Bool {
            guard let connection, connection.streams[stream.id] === stream else { return true }
            return connection.streamBody(piece, to: stream)
        }

        func upstreamEnded() {
            guard let connection, connection.streams[stream.id] === stream else { return }
            connection.streamEnded(stream)
        }

        func upstreamBodyFailed() {
            guard let connection, connection.streams[stream.id] === stream else { return }
            stream.bodySource = nil
            stream.bodyOpen = false
            connection.reset(stream.id, .internalError)
            connection.flushIfNeeded()
        }
    }

    /// A header block that continues in CONTINUATION frames.
    private struct PartialBlock {
        let streamID: UInt32
        let endStream: Bool
        /// The HEADERS frame made the stream depend on itself.
        let selfDependent: Bool
        /// When the HEADERS frame came: the whole block must arrive within the header timeout,
        /// as an HTTP/1.1 head must.
        let started: NIODeadline
        var block: ByteBuffer
    }

    static var maxConcurrentStreams: Int { 128 }
    /// Our SETTINGS_INITIAL_WINDOW_SIZE and the connection's initial window (RFC 9113 6.9.2).
    private static var initialWindow: Int { 65_535 }
    /// Inbound credit is granted back once this much of a window has been consumed.
    private static var windowUpdateThreshold: Int { 32 * 1024 }
    private static var maxWindow: Int { Int(Int32.max) }
    /// Answered streams whose remaining request body is read and dropped, up to a budget, so
    /// that clients that do not expect an early answer (413, 431) still see it.
    private static var discardBudget: Int { 256 * 1024 }
    /// Rapid reset: more than this many streams reset by the client within `resetWindow`.
    private static var resetLimit: Int { 200 }
    private static var resetWindow: TimeAmount { TimeAmount.seconds(30) }
    /// Frames that carry nothing (empty DATA without END_STREAM, empty CONTINUATION) allowed
    /// between two completed requests.
    private static var uselessFrameLimit: Int { 1_000 }
    /// A streamed upstream body is read on only while less than this of it waits for the
    /// client's credit, and again once what waits is under a quarter of it.
    private static var streamHighWater: Int { 64 * 1024 }
    /// Response bytes all the streams of a connection may hold waiting for credit. Past it,
    /// when more than one stream holds some, the client is not reading what it asked for:
    /// GOAWAY (ENHANCE_YOUR_CALM). One answer larger than this alone still goes out.
    private static var connectionBufferBudget: Int { 4 << 20 }

    private let info: ConnectionInfo
    private var reader = HTTP2FrameReader()
    private var decoder: HPACKDecoder
    private var encoder: HPACKEncoder
    /// Header blocks (all their frames) and decoded header lists larger than this end the
    /// connection; between the configured header limit and this, requests get a 431.
    private let maxHeaderBlock: Int
    /// Bytes read but not yet a whole frame. Nil when everything read was consumed.
    private var input: ByteBuffer?
    /// What this read's frames answer, written as one buffer when the read completes.
    private var out = ByteBuffer()
    private var needsFlush = false

    private var streams: [UInt32: Stream] = [:]
    private var discarding: [UInt32: Int] = [:]
    /// Streams waiting for flow-control credit, in the order they ran out.
    private var blocked: [Stream] = []
    /// Streams reset here lately: frames the client sent before it saw the reset are ignored.
    private var recentlyReset = [UInt32](repeating: 0, count: 128)
    private var recentlyResetNext = 0
    private var highestStreamID: UInt32 = 0
    private var continuation: PartialBlock?
    private var sawSettings = false

    private var connectionReceiveWindow = initialWindow
    private var connectionUnacknowledged = 0
    private var connectionSendWindow = initialWindow
    private var peerInitialWindow = initialWindow
    private var peerMaxFrameSize = 16_384

    private var resets = 0
    private var resetWindowStart = NIODeadline.now()
    private var uselessFrames = 0

    private var draining = false
    private var peerGoingAway = false
    private var closed = false

    /// Timeouts are checked by the loop's ``DeadlineSweeper`` from what the connection
    /// records cheaply per read (a flag). `idleSince`: no streams since then. (A stream's own
    /// stall is its ``Stream/lastProgress``.)
    private var sawFrame = false
    private var idleSince: NIODeadline?
    var sweeper: DeadlineSweeper?
    /// Where frames go (see ``HTTP1Connection/transport``).
    let transport: Transport
    var sweepIndex = -1
    private var date = HTTPDate()
    /// The last fixed response's header block with its `date`, reused while the second lasts.
    /// It is encoded without indexing (names from the static table, values as literals), so it
    /// leaves the client's HPACK table alone and stays valid whatever else is encoded, and the
    /// encoder does not run again for the same fields on every response.
    private var lastFixed: (response: FixedResponse, date: String, block: ByteBuffer)?
    /// The client changed SETTINGS_HEADER_TABLE_SIZE: the next block must come from the
    /// encoder, which starts it with the table size update the change requires.
    private var tableSizeUpdatePending = false

    required init(info: ConnectionInfo, transport: Transport) {
        self.info = info
        self.transport = transport
        let limits = info.snapshot.value.limits
        self.maxHeaderBlock = max(2 * limits.maxHeaderBytes, 64 * 1024)
        self.decoder = HPACKDecoder(allocator: ByteBufferAllocator(), maxDynamicTableSize: HPACKDecoder.maxDynamicTableSize, maxHeaderListSize: maxHeaderBlock)
        self.encoder = HPACKEncoder(allocator: ByteBufferAllocator())
    }

    /// The SETTINGS this server sends first.
    static func settings(limits: ListenerLimits) -> [(UInt16, UInt32)] {
        [
            (HTTP2SettingID.maxConcurrentStreams, UInt32(maxConcurrentStreams)),
            (HTTP2SettingID.initialWindowSize, UInt32(initialWindow)),
            (HTTP2SettingID.maxHeaderListSize, UInt32(limits.maxHeaderBytes)),
            (HTTP2SettingID.enablePush, 0),
        ]
    }

    // MARK: - What the transport tells

    /// The connection is open (TLS chose h2): the server's preface goes out.
    func start() {
        out = transport.allocator.buffer(capacity: 1024)
        joinSweeper(on: transport.eventLoop)
        // The server's connection preface is its SETTINGS (RFC 9113 3.4).
        out.writeHTTP2Settings(Self.settings(limits: info.snapshot.value.limits))
        writeOut()
        flushIfNeeded()
    }

    /// The connection has ended: nothing more is written.
    func stop() {
        closed = true
        input = nil
        leaveSweeper()
        for stream in streams.values { stream.cancelSource() }
        streams.removeAll()
        blocked.removeAll()
    }

    func received(_ bytes: ByteBuffer) {
        guard !closed else { return }
        sawFrame = true
        var bytes = bytes
        if input == nil {
            input = bytes
        } else {
            input!.writeBuffer(&bytes)
        }
        do {
            while !closed, let (header, payload) = try reader.next(from: &input!) {
                try process(header, payload)
            }
        } catch {
            fail(error)
            return
        }
        if input?.readableBytes == 0 { input = nil }
    }

    func readComplete() {
        flushIfNeeded()
    }

    /// A client that does not read what it is sent stops being read from: the transport
    /// reads only while its socket takes what is written.
    var acceptsInput: Bool { transport.isWritable }

    func quiesce() {
        draining = true
        out.writeHTTP2GoAway(lastStreamID: highestStreamID, .noError)
        writeOut()
        flushIfNeeded()
    }

    func failed() {
        close()
    }

    // MARK: - Frames

    private func process(_ header: HTTP2FrameHeader, _ payload: ByteBuffer) throws(HTTP2ConnectionError) {
        if let partial = continuation {
            guard header.type == HTTP2FrameType.continuation, header.streamID == partial.streamID else {
                throw HTTP2ConnectionError(.protocolError, "expected CONTINUATION of stream \(partial.streamID)")
            }
        } else if !sawSettings {
            guard header.type == HTTP2FrameType.settings, !header.has(HTTP2Flag.ack) else {
                throw HTTP2ConnectionError(.protocolError, "the client preface must end with SETTINGS")
            }
            sawSettings = true
        }
        switch header.type {
        case HTTP2FrameType.data: try receiveData(header, payload)
        case HTTP2FrameType.headers: try receiveHeaders(header, payload)
        case HTTP2FrameType.continuation: try receiveContinuation(header, payload)
        case HTTP2FrameType.settings: try receiveSettings(header, payload)
        case HTTP2FrameType.ping: try receivePing(header, payload)
        case HTTP2FrameType.windowUpdate: try receiveWindowUpdate(header, payload)
        case HTTP2FrameType.rstStream: try receiveReset(header, payload)
        case HTTP2FrameType.priority:
            guard header.streamID != 0 else { throw HTTP2ConnectionError(.protocolError, "PRIORITY on stream 0") }
            if header.length != 5 {
                reset(header.streamID, .frameSizeError)
            } else if let dependency = payload.getInteger(at: payload.readerIndex, as: UInt32.self), dependency & 0x7FFF_FFFF == header.streamID {
                // RFC 9113 5.3.1: a stream cannot depend on itself.
                reset(header.streamID, .protocolError)
            }
        case HTTP2FrameType.goAway:
            guard header.streamID == 0 else { throw HTTP2ConnectionError(.protocolError, "GOAWAY on a stream") }
            peerGoingAway = true
        case HTTP2FrameType.pushPromise:
            throw HTTP2ConnectionError(.protocolError, "clients cannot push")
        default:
            break  // Unknown frame types are ignored (RFC 9113 5.5).
        }
    }

    /// The payload without its padding (RFC 9113 6.1, 6.2), and the priority fields of a
    /// HEADERS frame skipped.
    private func unpadded(_ header: HTTP2FrameHeader, _ payload: ByteBuffer, priority: Bool = false) throws(HTTP2ConnectionError) -> ByteBuffer {
        var payload = payload
        var padding = 0
        if header.has(HTTP2Flag.padded) {
            guard let length = payload.readInteger(as: UInt8.self) else {
                throw HTTP2ConnectionError(.frameSizeError, "a padded frame without its pad length")
            }
            padding = Int(length)
        }
        if priority && header.has(HTTP2Flag.priority) {
            guard payload.readableBytes >= 5 else { throw HTTP2ConnectionError(.frameSizeError, "HEADERS too short for its priority fields") }
            payload.moveReaderIndex(forwardBy: 5)
        }
        guard padding <= payload.readableBytes else {
            throw HTTP2ConnectionError(.protocolError, "padding longer than the frame")
        }
        return payload.readSlice(length: payload.readableBytes - padding)!
    }

    private func receiveHeaders(_ header: HTTP2FrameHeader, _ payload: ByteBuffer) throws(HTTP2ConnectionError) {
        let id = header.streamID
        guard id != 0 else { throw HTTP2ConnectionError(.protocolError, "HEADERS on stream 0") }
        var selfDependent = false
        if header.has(HTTP2Flag.priority) {
            let at = payload.readerIndex + (header.has(HTTP2Flag.padded) ? 1 : 0)
            if let dependency = payload.getInteger(at: at, as: UInt32.self) { selfDependent = dependency & 0x7FFF_FFFF == id }
        }
        let block = try unpadded(header, payload, priority: true)
        let endStream = header.has(HTTP2Flag.endStream)
        if header.has(HTTP2Flag.endHeaders) {
            var block = block
            try receiveHeaderBlock(id, block: &block, endStream: endStream, selfDependent: selfDependent)
        } else {
            continuation = PartialBlock(streamID: id, endStream: endStream, selfDependent: selfDependent, started: .now(), block: block)
        }
    }

    private func receiveContinuation(_ header: HTTP2FrameHeader, _ payload: ByteBuffer) throws(HTTP2ConnectionError) {
        guard var partial = continuation else { throw HTTP2ConnectionError(.protocolError, "CONTINUATION without HEADERS") }
        guard partial.block.readableBytes + payload.readableBytes <= maxHeaderBlock else {
            throw HTTP2ConnectionError(.enhanceYourCalm, "header block larger than \(maxHeaderBlock) bytes")
        }
        if payload.readableBytes == 0 && !header.has(HTTP2Flag.endHeaders) { try countUseless() }
        continuation = nil  // the block is uniquely held while it grows
        var more = payload
        partial.block.writeBuffer(&more)
        if header.has(HTTP2Flag.endHeaders) {
            try receiveHeaderBlock(partial.streamID, block: &partial.block, endStream: partial.endStream, selfDependent: partial.selfDependent)
        } else {
            continuation = partial
        }
    }

    private func receiveHeaderBlock(_ id: UInt32, block: inout ByteBuffer, endStream: Bool, selfDependent: Bool) throws(HTTP2ConnectionError) {
        // Every block is decoded, whatever becomes of its stream: HPACK state is the connection's.
        let headers: HPACKHeaders
        do {
            headers = try decoder.decodeHeaders(from: &block)
        } catch {
            throw HTTP2ConnectionError(.compressionError, "the header block could not be decoded")
        }
        if let stream = streams[id] {
            guard !selfDependent else { return reset(id, .protocolError) }
            // Trailers: they must end the stream and carry no pseudo-header fields.
            guard !stream.requestComplete else { return reset(id, .streamClosed) }
            guard endStream, !headers.contains(where: { $0.name.utf8.first == UInt8(ascii: ":") }) else {
                return reset(id, .protocolError)
            }
            stream.requestComplete = true
            complete(stream)
            return
        }
        if id <= highestStreamID {
            if discarding[id] != nil {
                if endStream { discarding.removeValue(forKey: id) }
                return
            }
            if wasRecentlyReset(id) { return }
            throw HTTP2ConnectionError(.streamClosed, "HEADERS on closed stream \(id)")
        }
        guard id & 1 == 1 else { throw HTTP2ConnectionError(.protocolError, "clients open odd-numbered streams") }
        highestStreamID = id
        // RFC 9113 5.3.1: a stream that depends on itself is a stream error.
        guard !selfDependent else { return reset(id, .protocolError) }
        guard !draining, streams.count < Self.maxConcurrentStreams else { return reset(id, .refusedStream) }
        open(id, headers: headers, endStream: endStream)
    }

    private func receiveData(_ header: HTTP2FrameHeader, _ payload: ByteBuffer) throws(HTTP2ConnectionError) {
        let id = header.streamID
        guard id != 0 else { throw HTTP2ConnectionError(.protocolError, "DATA on stream 0") }
        guard id <= highestStreamID else { throw HTTP2ConnectionError(.protocolError, "DATA on idle stream \(id)") }
        // The whole frame, padding included, counts against the windows (RFC 9113 6.9.1).
        let flowControlled = header.length
        guard flowControlled <= connectionReceiveWindow else {
            throw HTTP2ConnectionError(.flowControlError, "DATA beyond the connection's window")
        }
        connectionReceiveWindow -= flowControlled
        grantConnectionCredit(flowControlled)
        var data = try unpadded(header, payload)
        let endStream = header.has(HTTP2Flag.endStream)
        if data.readableBytes == 0 && !endStream { try countUseless() }
        if let budget = discarding[id] {
            let left = budget - flowControlled
            if endStream {
                discarding.removeValue(forKey: id)
            } else if left < 0 {
                discarding.removeValue(forKey: id)
                reset(id, .noError)
            } else {
                discarding[id] = left
                if flowControlled > 0 { out.writeHTTP2WindowUpdate(id, increment: flowControlled) }
            }
            return
        }
        guard let stream = streams[id] else {
            if wasRecentlyReset(id) { return }
            throw HTTP2ConnectionError(.streamClosed, "DATA on closed stream \(id)")
        }
        guard !stream.requestComplete else { return reset(id, .streamClosed) }
        guard flowControlled <= stream.receiveWindow else { return reset(id, .flowControlError) }
        stream.receiveWindow -= flowControlled
        stream.receivedBytes += data.readableBytes
        stream.lastProgress = .now()
        if let declared = stream.declaredLength, stream.receivedBytes > declared || (endStream && stream.receivedBytes != declared) {
            // RFC 9113 8.1.1: DATA that does not add up to content-length makes the request malformed.
            return reset(id, .protocolError)
        }
        if stream.route != nil && stream.errorResponse == nil {
            if stream.body.readableBytes + data.readableBytes > stream.bodyLimit {
                stream.errorResponse = .plain(.payloadTooLarge, "request body is larger than \(stream.bodyLimit) bytes")
                respondEarly(stream, endStream: endStream)
                return
            }
            stream.body.writeBuffer(&data)
        }
        if endStream {
            stream.requestComplete = true
            complete(stream)
            return
        }
        stream.unacknowledgedBytes += flowControlled
        if stream.unacknowledgedBytes >= Self.windowUpdateThreshold {
            out.writeHTTP2WindowUpdate(id, increment: stream.unacknowledgedBytes)
            stream.receiveWindow += stream.unacknowledgedBytes
            stream.unacknowledgedBytes = 0
        }
    }

    private func grantConnectionCredit(_ bytes: Int) {
        connectionUnacknowledged += bytes
        if connectionUnacknowledged >= Self.windowUpdateThreshold {
            out.writeHTTP2WindowUpdate(0, increment: connectionUnacknowledged)
            connectionReceiveWindow += connectionUnacknowledged
            connectionUnacknowledged = 0
        }
    }

    private func receiveSettings(_ header: HTTP2FrameHeader, _ payload: ByteBuffer) throws(HTTP2ConnectionError) {
        guard header.streamID == 0 else { throw HTTP2ConnectionError(.protocolError, "SETTINGS on a stream") }
        if header.has(HTTP2Flag.ack) {
            guard header.length == 0 else { throw HTTP2ConnectionError(.frameSizeError, "SETTINGS acknowledgement with a payload") }
            return
        }
        guard header.length % 6 == 0 else { throw HTTP2ConnectionError(.frameSizeError, "SETTINGS payload not a multiple of 6 bytes") }
        var payload = payload
        var windowGrew = false
        while let id = payload.readInteger(as: UInt16.self), let value = payload.readInteger(as: UInt32.self) {
            switch id {
            case HTTP2SettingID.headerTableSize:
                // Our encoder's table stays within what the client allows (and our 4 KiB).
                let size = min(Int(value), HPACKEncoder.defaultDynamicTableSize)
                if size != encoder.allowedDynamicTableSize {
                    try? encoder.setDynamicTableSize(size)
                    tableSizeUpdatePending = true
                }
            case HTTP2SettingID.enablePush:
                guard value <= 1 else { throw HTTP2ConnectionError(.protocolError, "SETTINGS_ENABLE_PUSH must be 0 or 1") }
            case HTTP2SettingID.initialWindowSize:
                guard value <= UInt32(Self.maxWindow) else {
                    throw HTTP2ConnectionError(.flowControlError, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                }
                let delta = Int(value) - peerInitialWindow
                peerInitialWindow = Int(value)
                for stream in streams.values {
                    stream.sendWindow += delta
                    guard stream.sendWindow <= Self.maxWindow else {
                        throw HTTP2ConnectionError(.flowControlError, "a stream's window grew above 2^31-1")
                    }
                }
                windowGrew = windowGrew || delta > 0
            case HTTP2SettingID.maxFrameSize:
                guard value >= 16_384 && value <= 16_777_215 else {
                    throw HTTP2ConnectionError(.protocolError, "SETTINGS_MAX_FRAME_SIZE out of range")
                }
                peerMaxFrameSize = Int(value)
            default:
                break  // MAX_CONCURRENT_STREAMS limits our pushes (we make none); others are advisory or unknown.
            }
        }
        out.writeHTTP2FrameHeader(length: 0, type: HTTP2FrameType.settings, flags: HTTP2Flag.ack, streamID: 0)
        if windowGrew { resumeBlocked() }
    }

    private func receivePing(_ header: HTTP2FrameHeader, _ payload: ByteBuffer) throws(HTTP2ConnectionError) {
        guard header.streamID == 0 else { throw HTTP2ConnectionError(.protocolError, "PING on a stream") }
        guard header.length == 8 else { throw HTTP2ConnectionError(.frameSizeError, "PING payload not 8 bytes") }
        guard !header.has(HTTP2Flag.ack) else { return }
        out.writeHTTP2FrameHeader(length: 8, type: HTTP2FrameType.ping, flags: HTTP2Flag.ack, streamID: 0)
        out.writeImmutableBuffer(payload)
    }

    private func receiveWindowUpdate(_ header: HTTP2FrameHeader, _ payload: ByteBuffer) throws(HTTP2ConnectionError) {
        guard header.length == 4 else { throw HTTP2ConnectionError(.frameSizeError, "WINDOW_UPDATE payload not 4 bytes") }
        let increment = Int(payload.getInteger(at: payload.readerIndex, as: UInt32.self)! & 0x7FFF_FFFF)
        let id = header.streamID
        if id == 0 {
            guard increment > 0 else { throw HTTP2ConnectionError(.protocolError, "WINDOW_UPDATE of 0") }
            connectionSendWindow += increment
            guard connectionSendWindow <= Self.maxWindow else {
                throw HTTP2ConnectionError(.flowControlError, "the connection's window grew above 2^31-1")
            }
        } else {
            guard id <= highestStreamID else { throw HTTP2ConnectionError(.protocolError, "WINDOW_UPDATE on idle stream \(id)") }
            guard let stream = streams[id] else { return }
            guard increment > 0 else { return reset(id, .protocolError) }
            stream.sendWindow += increment
            guard stream.sendWindow <= Self.maxWindow else { return reset(id, .flowControlError) }
        }
        resumeBlocked()
    }

    private func receiveReset(_ header: HTTP2FrameHeader, _ payload: ByteBuffer) throws(HTTP2ConnectionError) {
        guard header.length == 4 else { throw HTTP2ConnectionError(.frameSizeError, "RST_STREAM payload not 4 bytes") }
        let id = header.streamID
        guard id != 0 else { throw HTTP2ConnectionError(.protocolError, "RST_STREAM on stream 0") }
        guard id <= highestStreamID else { throw HTTP2ConnectionError(.protocolError, "RST_STREAM on idle stream \(id)") }
        discarding.removeValue(forKey: id)
        guard let stream = streams.removeValue(forKey: id) else { return }
        unblock(stream)
        stream.cancelSource()
        // Rapid reset (CVE-2023-44487): opening and cancelling streams costs the client
        // nothing and the server a request each.
        let now = NIODeadline.now()
        if now - resetWindowStart > Self.resetWindow {
            resetWindowStart = now
            resets = 0
        }
        resets += 1
        if resets > Self.resetLimit {
            throw HTTP2ConnectionError(.enhanceYourCalm, "too many streams reset")
        }
    }

    private func countUseless() throws(HTTP2ConnectionError) {
        uselessFrames += 1
        if uselessFrames > Self.uselessFrameLimit {
            throw HTTP2ConnectionError(.enhanceYourCalm, "too many empty frames")
        }
    }

    /// A stream error (RFC 9113 5.4.2): the stream ends with RST_STREAM; the connection goes on.
    private func reset(_ id: UInt32, _ error: HTTP2Error) {
        out.writeHTTP2RSTStream(id, error)
        if let stream = streams.removeValue(forKey: id) {
            unblock(stream)
            stream.cancelSource()
        }
        recentlyReset[recentlyResetNext] = id
        recentlyResetNext = (recentlyResetNext + 1) % recentlyReset.count
    }

    private func wasRecentlyReset(_ id: UInt32) -> Bool {
        recentlyReset.contains(id)
    }

    // MARK: - Requests

    private func open(_ id: UInt32, headers: HPACKHeaders, endStream: Bool) {
        let snapshot = info.currentSnapshot()
        let limits = snapshot.limits
        let request: HTTP2RequestFields
        do {
            request = try HTTP2RequestFields(headers)
            if endStream, let declared = request.contentLength, declared != 0 { throw HTTP2RequestFields.Malformed() }
        } catch {
            // RFC 9113 8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR.
            return reset(id, .protocolError)
        }
        let stream = Stream(id: id, request: request, headers: headers, bodyLimit: limits.maxBodyBytes,
                            receiveWindow: Self.initialWindow, sendWindow: peerInitialWindow)
        stream.requestComplete = endStream
        if headers.count > limits.maxHeaderCount + 4 || request.size > limits.maxHeaderBytes {
            stream.errorResponse = .plain(.requestHeaderFieldsTooLarge, "request headers are too large")
        } else {
            let host = request.authority ?? headers.first(name: "host")
            switch RequestDispatch.decide(method: request.method, host: host, target: request.path, contentLength: request.contentLength, snapshot: snapshot) {
            case .route(let route, let parameters, let bodyLimit):
                stream.route = route
                stream.parameters = parameters
                stream.bodyLimit = bodyLimit
            case .answer(let response, _):
                stream.errorResponse = response
            case .notFound:
                stream.errorResponse = nil
            }
        }
        streams[id] = stream
        if stream.errorResponse?.status == .payloadTooLarge || stream.errorResponse?.status == .requestHeaderFieldsTooLarge {
            // Answer at once; what the client still sends is dropped.
            respondEarly(stream, endStream: endStream)
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
            let responder = UpstreamStream(connection: self, stream: stream, isHead: isHead)
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
                let (handler, stream) = loopBound.value
                guard handler.streams[stream.id] === stream else { return }  // reset by the client meanwhile
                handler.write((try? result.get()) ?? .plain(.internalServerError), to: stream, isHead: isHead)
                handler.writeOut()
                handler.flushIfNeeded()
            }
        }
    }

    private func respondEarly(_ stream: Stream, endStream: Bool) {
        guard let response = stream.errorResponse else { return }
        stream.responding = true
        if endStream {
            stream.requestComplete = true
        } else {
            discarding[stream.id] = Self.discardBudget
        }
        write(response, to: stream, isHead: false)
    }

    private func makeRequest(_ stream: Stream) -> GatewayRequest {
        var headers = HTTPHeaders()
        headers.reserveCapacity(stream.headers.count)
        for (name, value, _) in stream.headers where !name.hasPrefix(":") { headers.add(name: name, value: value) }
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
        let now = date.current()
        let body = isHead ? nil : fixed.body
        let status = Int(fixed.status.code)
        if let last = lastFixed, last.response === fixed, last.date == now, !tableSizeUpdatePending {
            send(stream, block: last.block, body: body, status: status)
            return
        }
        var headers = fixed.http2Headers
        headers.add(name: "date", value: now)
        let block = Self.unindexedBlock(headers)
        lastFixed = (fixed, now, block)
        if tableSizeUpdatePending || block.readableBytes > peerMaxFrameSize {
            send(stream, headers: headers, body: body, status: status)
        } else {
            send(stream, block: block, body: body, status: status)
        }
    }

    /// `headers` as a header block of literals without indexing (RFC 7541 6.2.2).
    private static func unindexedBlock(_ headers: HPACKHeaders) -> ByteBuffer {
        // A fresh encoder's dynamic table is empty, so only static-table names are referenced.
        // The encoder throws only when used out of order (begin, append, end), never here.
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        try! encoder.beginEncoding(allocator: ByteBufferAllocator())
        for (name, value, _) in headers { try! encoder.appendNonIndexed(header: name, value: value) }
        return try! encoder.endEncoding()
    }

    private func write(_ response: GatewayResponse, to stream: Stream, isHead: Bool) {
        let body = isHead ? nil : response.body
        let status = Int(response.status.code)
        if !tableSizeUpdatePending {
            // Literals straight into the frame (see ``HTTP2Encoding/writeLiteralBlock``).
            let start = out.writerIndex
            let hasBody = (body?.readableBytes ?? 0) > 0
            let flags = HTTP2Flag.endHeaders | (hasBody ? 0 : HTTP2Flag.endStream)
            out.writeHTTP2FrameHeader(length: 0, type: HTTP2FrameType.headers, flags: flags, streamID: stream.id)
            HTTP2Encoding.writeLiteralBlock(status: response.status, headers: response.headers, contentLength: response.body.readableBytes, date: date.current(), into: &out)
            let length = out.writerIndex - start - 9
            if length <= peerMaxFrameSize {
                out.setHTTP2FrameLength(length, at: start)
                sent(stream, body: body, status: status)
                return
            }
            // Larger than a frame: through the encoder, which splits it into CONTINUATIONs.
            out.moveWriterIndex(to: start)
        }
        let headers = HTTP2Encoding.headers(status: response.status, headers: response.headers, contentLength: response.body.readableBytes, date: date.current())
        send(stream, headers: headers, body: body, status: status)
    }

    private func send(_ stream: Stream, headers: HPACKHeaders, body: ByteBuffer?, status: Int) {
        let hasBody = (body?.readableBytes ?? 0) > 0
        writeHeaders(stream.id, headers, endStream: !hasBody)
        tableSizeUpdatePending = false
        sent(stream, body: body, status: status)
    }

    /// A response whose header block is already encoded (and fits one frame).
    private func send(_ stream: Stream, block: ByteBuffer, body: ByteBuffer?, status: Int) {
        let hasBody = (body?.readableBytes ?? 0) > 0
        let flags = HTTP2Flag.endHeaders | (hasBody ? 0 : HTTP2Flag.endStream)
        out.writeHTTP2FrameHeader(length: block.readableBytes, type: HTTP2FrameType.headers, flags: flags, streamID: stream.id)
        out.writeImmutableBuffer(block)
        sent(stream, body: body, status: status)
    }

    /// After the HEADERS: the body, as far as the windows allow.
    private func sent(_ stream: Stream, body: ByteBuffer?, status: Int) {
        let hasBody = (body?.readableBytes ?? 0) > 0
        stream.status = status
        stream.responseBytes = body?.readableBytes ?? 0
        if hasBody {
            stream.pendingBody = body
            writeData(stream)
            checkBufferBudget()
        } else {
            finish(stream)
        }
    }

    // MARK: - Streamed upstream answers

    /// A streamed upstream answer's head: HEADERS now, the body as it comes.
    private func streamHead(_ response: GatewayResponse, length: Int?, hasBody: Bool, source: any UpstreamBodySource, to stream: Stream) {
        stream.status = Int(response.status.code)
        stream.responding = true
        if hasBody {
            stream.bodyOpen = true
            stream.bodySource = source
        }
        let headers = HTTP2Encoding.headers(status: response.status, headers: response.headers, contentLength: length, date: date.current())
        writeHeaders(stream.id, headers, endStream: !hasBody)
        tableSizeUpdatePending = false
        if !hasBody { finish(stream) }
        flushIfNeeded()
    }

    /// A piece of a streamed body: sent as far as the windows allow; returns whether the
    /// upstream may send more now.
    private func streamBody(_ piece: ByteBuffer, to stream: Stream) -> Bool {
        stream.responseBytes += piece.readableBytes
        if var pending = stream.pendingBody {
            var piece = piece
            pending.writeBuffer(&piece)
            stream.pendingBody = pending
        } else {
            stream.pendingBody = piece
        }
        writeData(stream)
        checkBufferBudget()
        flushIfNeeded()
        guard !closed, streams[stream.id] === stream else { return true }
        if (stream.pendingBody?.readableBytes ?? 0) >= Self.streamHighWater {
            stream.sourcePaused = true
            return false
        }
        return true
    }

    private func streamEnded(_ stream: Stream) {
        stream.bodyOpen = false
        stream.bodySource = nil
        stream.sourcePaused = false
        if stream.pendingBody == nil {
            // Everything went already: the end is an empty DATA frame.
            out.writeHTTP2FrameHeader(length: 0, type: HTTP2FrameType.data, flags: HTTP2Flag.endStream, streamID: stream.id)
            finish(stream)
        }
        flushIfNeeded()
    }

    /// Sends the client away when the answers it does not take have grown past the budget.
    private func checkBufferBudget() {
        guard blocked.count > 1 else { return }
        var held = 0
        for stream in blocked { held += stream.pendingBody?.readableBytes ?? 0 }
        guard held > Self.connectionBufferBudget else { return }
        goAway(.enhanceYourCalm, reason: "responses not read")
    }

    /// HEADERS, followed by CONTINUATION frames if the block is larger than the client's
    /// largest frame.
    private func writeHeaders(_ id: UInt32, _ headers: HPACKHeaders, endStream: Bool) {
        let start = out.writerIndex
        let flags = HTTP2Flag.endHeaders | (endStream ? HTTP2Flag.endStream : 0)
        out.writeHTTP2FrameHeader(length: 0, type: HTTP2FrameType.headers, flags: flags, streamID: id)
        // Throws only when an encoding is already under way, which this handler never leaves.
        try! encoder.encode(headers: headers, to: &out)
        let length = out.writerIndex - start - 9
        if length <= peerMaxFrameSize {
            out.setHTTP2FrameLength(length, at: start)
            return
        }
        var block = ByteBuffer(bytes: out.getBytes(at: start + 9, length: length)!)
        out.moveWriterIndex(to: start)
        var type = HTTP2FrameType.headers
        while block.readableBytes > 0 {
            var piece = block.readSlice(length: min(block.readableBytes, peerMaxFrameSize))!
            var pieceFlags = block.readableBytes == 0 ? HTTP2Flag.endHeaders : 0
            if type == HTTP2FrameType.headers && endStream { pieceFlags |= HTTP2Flag.endStream }
            out.writeHTTP2FrameHeader(length: piece.readableBytes, type: type, flags: pieceFlags, streamID: id)
            out.writeBuffer(&piece)
            type = HTTP2FrameType.continuation
        }
    }

    /// Writes as much of the stream's pending body as both windows allow; what is left waits
    /// for WINDOW_UPDATE.
    private func writeData(_ stream: Stream) {
        guard var body = stream.pendingBody else { return }
        stream.pendingBody = nil
        while body.readableBytes > 0 {
            let length = min(body.readableBytes, peerMaxFrameSize, connectionSendWindow, stream.sendWindow)
            guard length > 0 else {
                stream.pendingBody = body
                if !blocked.contains(where: { $0 === stream }) { blocked.append(stream) }
                resumeSourceIfDrained(stream)
                return
            }
            // The last frame ends the stream, unless an upstream has more to send.
            let last = length == body.readableBytes && !stream.bodyOpen
            out.writeHTTP2FrameHeader(length: length, type: HTTP2FrameType.data, flags: last ? HTTP2Flag.endStream : 0, streamID: stream.id)
            var piece = body.readSlice(length: length)!
            out.writeBuffer(&piece)
            connectionSendWindow -= length
            stream.sendWindow -= length
            stream.lastProgress = .now()
            if out.readableBytes >= 64 * 1024 { writeOut() }
        }
        if stream.bodyOpen {
            resumeSourceIfDrained(stream)
            return
        }
        finish(stream)
    }

    /// An upstream told to wait reads on once what waits for credit is down to a quarter of
    /// the high-water mark. (Told from the loop, not from inside this call: resuming hands
    /// over the next piece at once.)
    private func resumeSourceIfDrained(_ stream: Stream) {
        guard stream.sourcePaused, (stream.pendingBody?.readableBytes ?? 0) < Self.streamHighWater / 4, let source = stream.bodySource else { return }
        stream.sourcePaused = false
        transport.eventLoop.execute { source.resume() }
    }

    private func resumeBlocked() {
        guard !blocked.isEmpty, connectionSendWindow > 0 else { return }
        let waiting = blocked
        blocked.removeAll()
        for stream in waiting where streams[stream.id] === stream {
            writeData(stream)
        }
    }

    private func unblock(_ stream: Stream) {
        if stream.pendingBody != nil {
            stream.pendingBody = nil
            blocked.removeAll { $0 === stream }
        }
    }

    /// The response is written: the stream is closed on our side.
    private func finish(_ stream: Stream) {
        streams.removeValue(forKey: stream.id)
        info.record(status: stream.status, bytes: stream.responseBytes, method: stream.method, uri: stream.uri, http: "2", started: stream.started)
    }

    /// Hands what `out` holds to the channel; flushed when the read completes.
    private func writeOut() {
        guard out.readableBytes > 0 else { return }
        transport.write(out)
        out = transport.allocator.buffer(capacity: 1024)
        needsFlush = true
    }

    private func flushIfNeeded() {
        writeOut()
        if needsFlush {
            needsFlush = false
            transport.flush()
        }
        if (draining || peerGoingAway) && streams.isEmpty { close() }
    }

    // MARK: - Idle and closing

    /// Whether a stream waits on its client: for the rest of its request, or for credit to
    /// send its response.
    private func isStalled(_ stream: Stream) -> Bool {
        (!stream.requestComplete && !stream.responding) || stream.pendingBody != nil
    }

    func sweep(now: NIODeadline) {
        guard !closed else { return }
        let limits = info.snapshot.value.limits
        // A header block trickled in CONTINUATION frames: however often frames come, the
        // block must be whole within the header timeout.
        if let partial = continuation, now - partial.started >= limits.headerTimeout {
            timedOut()
            return
        }
        let active = sawFrame
        sawFrame = false
        if streams.isEmpty {
            guard !active, let since = idleSince else {
                idleSince = now
                return
            }
            if now - since >= limits.idleTimeout { timedOut() }
            return
        }
        idleSince = nil
        // A client that opens streams and stops sending (or stops granting credit) must not
        // hold the connection; only progress on the stream it stalls counts, not other frames.
        for stream in streams.values where isStalled(stream) && now - stream.lastProgress >= limits.bodyTimeout {
            timedOut()
            return
        }
    }

    private func timedOut() {
        info.snapshot.value.metrics.timeouts.increment()
        goAway(.noError, reason: "")
    }

    /// A connection error: GOAWAY naming it, then close.
    private func fail(_ error: HTTP2ConnectionError) {
        goAway(error.code, reason: error.reason)
    }

    private func goAway(_ code: HTTP2Error, reason: String) {
        guard !closed else { return }
        out.writeHTTP2GoAway(lastStreamID: highestStreamID, code, debug: reason)
        close()
    }

    /// Closes once what has been written is flushed.
    private func close() {
        guard !closed else { return }
        closed = true
        input = nil
        transport.writeAndClose(out)
        out = ByteBuffer()
    }
}
