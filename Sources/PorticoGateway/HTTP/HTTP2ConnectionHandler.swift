import Logging
import NIOCore
import NIOExtras
import NIOHPACK
import NIOHTTP1
import NIOHTTP2

/// Serves HTTP/2 on one connection, answering streams from the frames on the connection
/// channel instead of creating a channel per stream.
///
/// `NIOHTTP2Handler` below it keeps the protocol state (settings, HPACK, outbound flow
/// control, stream states); this handler keeps per-stream request state, grants inbound
/// flow-control credit as it consumes DATA, and writes each response as a HEADERS frame and
/// at most one DATA frame. Writes made while handling a read are flushed once at the end of
/// the read, so a burst of requests turns into one TLS record where it fits.
final class HTTP2ConnectionHandler: ChannelInboundHandler, DeadlineClient {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    /// A stream's request state; a class, so that a lookup hands out one reference instead of
    /// copying (and retaining every part of) a struct out of the dictionary and back.
    private final class Stream {
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
        var unacknowledgedBytes: Int = 0
        var responding = false

        init(method: String, uri: String, authority: String?, headers: HPACKHeaders, bodyLimit: Int, declaredLength: Int?) {
            self.method = method
            self.uri = uri
            self.authority = authority
            self.headers = headers
            self.bodyLimit = bodyLimit
            self.declaredLength = declaredLength
            self.started = .now()
        }
    }

    private let info: ConnectionInfo
    private var streams: [HTTP2StreamID: Stream] = [:]
    /// Streams answered early (413, 431) whose remaining request body is read and dropped,
    /// up to a budget, so that clients that do not expect an early answer still see it.
    private var discarding: [HTTP2StreamID: Int] = [:]
    private static let discardBudget = 256 * 1024
    private var highestStreamID: HTTP2StreamID = .rootStream
    private var connectionUnacknowledged = 0
    private var needsFlush = false
    private var draining = false
    private var closed = false
    /// Timeouts are checked by the loop's ``DeadlineSweeper`` from what the connection
    /// records cheaply per frame (a flag): scheduling and cancelling a timer per frame or per
    /// stream cost more than the frame. `idleSince`: no streams since then. `stalledSince`:
    /// some request incomplete and no frame since then.
    private var sawFrame = false
    private var idleSince: NIODeadline?
    private var stalledSince: NIODeadline?
    var sweeper: DeadlineSweeper?
    private var context: ChannelHandlerContext?
    var sweepIndex = -1
    private var date = HTTPDate()
    /// The last fixed response's headers with their `date`, reused while the second lasts.
    private var lastFixed: (response: FixedResponse, date: String, headers: HPACKHeaders)?

    /// Inbound credit is granted back once this much of a window has been consumed.
    private static let windowUpdateThreshold = 32 * 1024

    init(info: ConnectionInfo) {
        self.info = info
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        joinSweeper(on: context.eventLoop)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        leaveSweeper()
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        sawFrame = true
        switch frame.payload {
        case .headers(let headers):
            if streams[frame.streamID] != nil {
                // Trailers: their end of stream completes the request.
                if headers.endStream { complete(frame.streamID, context: context) }
            } else {
                open(frame.streamID, headers: headers, context: context)
            }
        case .data(let data):
            receiveData(frame.streamID, data: data, context: context)
        case .rstStream:
            streams.removeValue(forKey: frame.streamID)
            discarding.removeValue(forKey: frame.streamID)
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded(context: context)
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            draining = true
            let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: highestStreamID, errorCode: .noError, opaqueData: nil))
            context.writeAndFlush(wrapOutboundOut(goAway), promise: nil)
            if streams.isEmpty { close(context: context) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // NIOHTTP2Handler has already answered protocol errors (GOAWAY or RST_STREAM); a
        // stream error leaves the connection usable.
        if error is NIOHTTP2Errors.StreamClosed || error is NIOHTTP2Errors.NoSuchStream { return }
        close(context: context)
    }

    // MARK: - Streams

    private func open(_ id: HTTP2StreamID, headers frame: HTTP2Frame.FramePayload.Headers, context: ChannelHandlerContext) {
        let snapshot = info.snapshot.current()
        let limits = snapshot.limits
        if id > highestStreamID { highestStreamID = id }
        let request: HTTP2RequestFields
        do {
            request = try HTTP2RequestFields(frame.headers)
            if frame.endStream, let declared = request.contentLength, declared != 0 { throw HTTP2RequestFields.Malformed() }
        } catch {
            // RFC 9113 8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR.
            context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.protocolError))), promise: nil)
            needsFlush = true
            return
        }
        let stream = Stream(method: request.method, uri: request.path, authority: request.authority, headers: frame.headers,
                            bodyLimit: limits.maxBodyBytes, declaredLength: request.contentLength)
        if frame.headers.count > limits.maxHeaderCount + 4 || request.size > limits.maxHeaderBytes {
            stream.errorResponse = .plain(.requestHeaderFieldsTooLarge, "request headers are too large")
        } else {
            let host = (request.authority ?? frame.headers.first(name: "host")).map(RequestDispatch.hostWithoutPort)
            switch snapshot.router.match(method: request.method, host: host, path: RequestDispatch.path(of: request.path)) {
            case .found(let route, let parameters):
                stream.route = route
                stream.parameters = parameters
                stream.bodyLimit = route.maxBodyBytes ?? limits.maxBodyBytes
                if let length = request.contentLength, length > stream.bodyLimit {
                    stream.errorResponse = .plain(.payloadTooLarge, "request body is larger than \(stream.bodyLimit) bytes")
                }
            case .methodNotAllowed(let allow):
                stream.errorResponse = .plain(.methodNotAllowed, "method \(request.method) is not allowed here", headers: ["allow": allow])
            case .notFound:
                stream.errorResponse = nil
            }
        }
        streams[id] = stream
        if stream.errorResponse?.status == .payloadTooLarge || stream.errorResponse?.status == .requestHeaderFieldsTooLarge {
            // Answer at once; what the client still sends is dropped.
            respondEarly(id, stream: stream, endStream: frame.endStream, context: context)
        } else if frame.endStream {
            complete(id, context: context)
        }
    }

    private func receiveData(_ id: HTTP2StreamID, data: HTTP2Frame.FramePayload.Data, context: ChannelHandlerContext) {
        let length = data.paddingBytes.map { $0 + 1 } ?? 0
        var payload = 0
        if case .byteBuffer(let buffer) = data.data { payload = buffer.readableBytes }
        let flowControlled = payload + length
        grantConnectionCredit(flowControlled, context: context)
        if let budget = discarding[id] {
            let left = budget - flowControlled
            if data.endStream {
                discarding.removeValue(forKey: id)
            } else if left < 0 {
                discarding.removeValue(forKey: id)
                context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.noError))), promise: nil)
                needsFlush = true
            } else {
                discarding[id] = left
                context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: max(flowControlled, 1)))), promise: nil)
                needsFlush = true
            }
            return
        }
        guard let stream = streams[id], !stream.responding else { return }
        stream.receivedBytes += payload
        if let declared = stream.declaredLength, stream.receivedBytes > declared || (data.endStream && stream.receivedBytes != declared) {
            // RFC 9113 8.1.1: DATA that does not add up to content-length makes the request malformed.
            streams.removeValue(forKey: id)
            context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.protocolError))), promise: nil)
            needsFlush = true
            return
        }
        if case .byteBuffer(var buffer) = data.data {
            if stream.route != nil && stream.errorResponse == nil {
                if stream.body.readableBytes + buffer.readableBytes > stream.bodyLimit {
                    stream.errorResponse = .plain(.payloadTooLarge, "request body is larger than \(stream.bodyLimit) bytes")
                    respondEarly(id, stream: stream, endStream: data.endStream, context: context)
                    return
                }
                stream.body.writeBuffer(&buffer)
            }
        }
        if data.endStream {
            complete(id, context: context)
            return
        }
        stream.unacknowledgedBytes += flowControlled
        if stream.unacknowledgedBytes >= Self.windowUpdateThreshold {
            context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: stream.unacknowledgedBytes))), promise: nil)
            needsFlush = true
            stream.unacknowledgedBytes = 0
        }
    }

    private func grantConnectionCredit(_ bytes: Int, context: ChannelHandlerContext) {
        connectionUnacknowledged += bytes
        if connectionUnacknowledged >= Self.windowUpdateThreshold {
            context.write(wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: connectionUnacknowledged))), promise: nil)
            needsFlush = true
            connectionUnacknowledged = 0
        }
    }

    private func complete(_ id: HTTP2StreamID, context: ChannelHandlerContext) {
        guard let stream = streams[id], !stream.responding else { return }
        stream.responding = true
        let isHead = stream.method == "HEAD"
        guard let route = stream.route, stream.errorResponse == nil else {
            if let response = stream.errorResponse {
                write(response, to: id, isHead: isHead, context: context)
            } else {
                writeFixed(info.snapshot.value.notFound, to: id, isHead: isHead, context: context)
            }
            return
        }
        switch RequestDispatch.run(route.target, request: makeRequest(stream), eventLoop: context.eventLoop, logger: info.snapshot.value.accessLogger) {
        case .fixed(let fixed):
            writeFixed(fixed, to: id, isHead: isHead, context: context)
        case .response(let response):
            write(response, to: id, isHead: isHead, context: context)
        case .pending(let future):
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            future.whenComplete { result in
                let (handler, context) = loopBound.value
                guard handler.streams[id] != nil else { return }  // reset by the client meanwhile
                handler.write((try? result.get()) ?? .plain(.internalServerError), to: id, isHead: isHead, context: context)
                handler.flushIfNeeded(context: context)
            }
        }
    }

    private func respondEarly(_ id: HTTP2StreamID, stream: Stream, endStream: Bool, context: ChannelHandlerContext) {
        guard let response = stream.errorResponse else { return }
        write(response, to: id, isHead: false, context: context)
        if !endStream { discarding[id] = Self.discardBudget }
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
            role: info.role,
            httpMajorVersion: 2,
            isTLS: info.isTLS,
            peerAddress: info.peerAddress,
            clientAddress: info.clientAddress(headers: headers, trusted: info.snapshot.value.configuration.trustedProxies),
            peerIsTrustedProxy: info.peerIsTrustedProxy,
            clientCertificate: info.clientCertificate
        )
    }

    // MARK: - Responses

    private func writeFixed(_ fixed: FixedResponse, to id: HTTP2StreamID, isHead: Bool, context: ChannelHandlerContext) {
        let now = date.current()
        let headers: HPACKHeaders
        if let last = lastFixed, last.response === fixed, last.date == now {
            headers = last.headers
        } else {
            var fresh = fixed.http2Headers
            fresh.add(name: "date", value: now)
            lastFixed = (fixed, now, fresh)
            headers = fresh
        }
        writeFrames(id, headers: headers, body: isHead ? nil : fixed.body, status: Int(fixed.status.code), context: context)
    }

    private func write(_ response: GatewayResponse, to id: HTTP2StreamID, isHead: Bool, context: ChannelHandlerContext) {
        let headers = HTTP2Encoding.headers(status: response.status, headers: response.headers, contentLength: response.body.readableBytes, date: date.current())
        writeFrames(id, headers: headers, body: isHead ? nil : response.body, status: Int(response.status.code), context: context)
    }

    private func writeFrames(_ id: HTTP2StreamID, headers: HPACKHeaders, body: ByteBuffer?, status: Int, context: ChannelHandlerContext) {
        guard let stream = streams.removeValue(forKey: id) else { return }
        let hasBody = (body?.readableBytes ?? 0) > 0
        context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: headers, endStream: !hasBody)))), promise: nil)
        if hasBody, let body {
            context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(body), endStream: true)))), promise: nil)
        }
        needsFlush = true
        info.record(status: status, bytes: body?.readableBytes ?? 0, method: stream.method, uri: stream.uri, http: "2", started: stream.started)
    }

    private func flushIfNeeded(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        if draining && streams.isEmpty { close(context: context) }
    }

    // MARK: - Idle and closing

    /// Whether some stream is still receiving its request.
    private var receiving: Bool { streams.values.contains { !$0.responding } }

    func sweep(now: NIODeadline) {
        guard !closed, let context else { return }
        let limits = info.snapshot.value.limits
        let active = sawFrame
        sawFrame = false
        if streams.isEmpty {
            stalledSince = nil
            guard !active, let since = idleSince else {
                idleSince = now
                return
            }
            if now - since >= limits.idleTimeout { timedOut(context: context) }
            return
        }
        idleSince = nil
        // A client that opens streams and stops sending must not hold the connection.
        guard receiving else {
            stalledSince = nil
            return
        }
        guard !active, let since = stalledSince else {
            stalledSince = now
            return
        }
        if now - since >= limits.bodyTimeout { timedOut(context: context) }
    }

    private func timedOut(context: ChannelHandlerContext) {
        info.snapshot.value.metrics.timeouts.increment()
        let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: highestStreamID, errorCode: .noError, opaqueData: nil))
        context.writeAndFlush(wrapOutboundOut(goAway), promise: nil)
        close(context: context)
    }

    private func close(context: ChannelHandlerContext) {
        guard !closed else { return }
        closed = true
        context.close(promise: nil)
    }
}
