#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// Why an exchange with an upstream failed.
package enum UpstreamFailure: Error, CustomStringConvertible {
    /// The connection closed or failed; `answered` says whether any of the response came.
    case connectionLost(answered: Bool)
    case connectFailed(String)
    case timedOut
    case malformedResponse(String)
    case responseTooLarge(Int)

    package var description: String {
        switch self {
        case .connectionLost(let answered): answered ? "the connection closed in the middle of the response" : "the connection closed before a response"
        case .connectFailed(let reason): "could not connect: \(reason)"
        case .timedOut: "no response in time"
        case .malformedResponse(let reason): "malformed response: \(reason)"
        case .responseTooLarge(let limit): "the response is larger than \(limit) bytes"
        }
    }

    package var isTimeout: Bool {
        if case .timedOut = self { return true }
        return false
    }
}

/// What an upstream connection needs of its socket (``CoreUpstreamSocket``).
package protocol UpstreamTransport: AnyObject {
    /// Sends `bytes` now.
    func send(_ bytes: ByteBuffer)
    /// Closes; the connection is then told ``UpstreamConnection/transportClosed()``.
    func close()
    /// Stops reading from the socket (the upstream then waits, on TCP's own flow control).
    func pauseReading()
    /// Reads again after ``pauseReading()``.
    func resumeReading()
}

/// Where a streamed response's body comes from, for the one it streams to: it may be told to
/// wait, go on, or stop.
package protocol UpstreamBodySource: AnyObject {
    /// Reads on after a piece was refused (``UpstreamStreamingResponder/upstreamBody(_:)``
    /// returned false).
    func resume()
    /// The client has gone: the rest of the response is not wanted (the connection closes).
    func cancel()
}

/// A responder that takes a plain-HTTP upstream's response as it arrives, its body in pieces
/// with back-pressure, rather than whole (HTTP/2 streams, whose client grants credit as it
/// reads). Every call is made on the responder's event loop.
package protocol UpstreamStreamingResponder: UpstreamResponder {
    /// The head: `response` holds no body. When `hasBody`, pieces follow, then the end or a
    /// failure; otherwise the response is complete. `length` is the declared length, if any.
    func upstreamHead(_ response: consuming UpstreamResponse, length: Int?, hasBody: Bool, source: any UpstreamBodySource)
    /// A piece of the body; returns whether more is wanted now. After false, the source waits
    /// until it is told to ``UpstreamBodySource/resume()``.
    func upstreamBody(_ piece: ByteBuffer) -> Bool
    /// The body has all come.
    func upstreamEnded()
    /// The upstream failed after its head: the response is cut short.
    func upstreamBodyFailed()
}

extension UpstreamStreamingResponder {
    package var streamsBody: Bool { true }
}

/// One kept-alive HTTP/1.1 connection to a plain-HTTP upstream, owned by one event loop.
///
/// A request is written as one buffer and its response read back with the gateway's own
/// parser, on the event loop of the client connection that asked: no task hop, no lock, no
/// future. The ``UpstreamExchange`` that sent the request is called back with the response.
/// The response's header lines are copied as bytes, never made into strings.
package final class UpstreamConnection: DeadlineClient {

    /// The response being received, kept on the connection (one request at a time) rather
    /// than in an object per request.
    private struct Receiving {
        var isHead = false
        var maxBytes = 0
        var status: HTTPResponseStatus?
        /// The upstream's header lines as they came (a slice of what was read). Nil rather
        /// than `ByteBuffer()`, one storage the whole process shares (both cores retaining it
        /// per response moved its cache line between them).
        var fields: ByteBuffer?
        var namesConnectionFields = false
        var body: ByteBuffer?
        var headLength: Int?
        var bodyParser: HTTP1Parser?
        /// The body runs until the connection closes.
        var untilClose = false
        var answered = false
        /// The exchange takes the body in pieces (``UpstreamStreamingResponder``).
        var streams = false
        var timeout = TimeAmount.zero
        var streamedBytes = 0
    }

    package let target: Int
    private let owner: UpstreamConnections
    private var transport: (any UpstreamTransport)?
    /// The exchange whose request is out, and what of its response has arrived.
    private var exchange: UpstreamExchange?
    /// Who a streamed response's body goes to, once its head has been handed over.
    private var sink: (any UpstreamStreamingResponder)?
    /// The sink asked to wait: nothing more is read or handed over until it resumes.
    private var paused = false
    /// The socket closed while the sink was waiting, with bytes read but not handed over:
    /// how the body ended is known once they have been.
    private var closedWhilePaused = false
    private var receiving = Receiving()
    private var input: ByteBuffer?
    private var keepAlive = true
    package private(set) var isOpen = true
    /// The response deadline while a request is out; the idle deadline while pooled.
    private var deadline: NIODeadline?
    package var sweeper: DeadlineSweeper?
    package var sweepIndex = -1

    package init(target: Int, owner: UpstreamConnections) {
        self.target = target
        self.owner = owner
    }

    /// The socket is connected (on `eventLoop`).
    package func attached(to transport: any UpstreamTransport, on eventLoop: any EventLoop) {
        self.transport = transport
        joinSweeper(on: eventLoop)
    }

    /// The socket is gone.
    package func detached() {
        leaveSweeper()
        transport = nil
    }

    /// Sends one request (head and body in `bytes`); `owner` is told how it ended. With
    /// `streams`, the response's head goes to the exchange as soon as it has come, and its body
    /// to the exchange's responder piece by piece (the timeout then applies between pieces).
    package func send(_ bytes: ByteBuffer, isHead: Bool, timeout: TimeAmount, maxBytes: Int, streams: Bool = false, for owner: UpstreamExchange) {
        guard let transport, isOpen, exchange == nil, sink == nil else {
            owner.failed(UpstreamFailure.connectionLost(answered: false))
            return
        }
        exchange = owner
        receiving = Receiving(isHead: isHead, maxBytes: maxBytes, streams: streams, timeout: timeout)
        deadline = .now() + timeout
        transport.send(bytes)
    }

    /// Marks the connection idle in its pool until `until`.
    package func idle(until: NIODeadline) {
        deadline = until
    }

    package func sweep(now: NIODeadline) {
        guard let due = deadline, due <= now else { return }
        deadline = nil
        fail(.timedOut)
    }

    /// Bytes read from the upstream.
    package func received(_ bytes: ByteBuffer) {
        var bytes = bytes
        guard exchange != nil || sink != nil else {
            // Bytes nobody asked for: the connection cannot be trusted for another request.
            close()
            return
        }
        // `input` and `receiving` are only read or assigned whole, never changed in place
        // across a call: then the compiler checks no access to them at run time.
        if var buffered = input.take() {
            buffered.writeBuffer(&bytes)
            input = consume buffered
        } else {
            input = bytes
        }
        processOrFail()
    }

    /// The socket closed (either side): a response read until the close ends; any other
    /// response in progress failed.
    package func transportClosed() {
        isOpen = false
        owner.forget(self)
        if sink != nil, paused {
            closedWhilePaused = true
        } else if let sink {
            endAtClose(sink)
        } else if exchange != nil, receiving.untilClose, receiving.status != nil {
            finish()
        } else {
            fail(.connectionLost(answered: exchange != nil && receiving.answered))
        }
    }

    // MARK: - Responses

    /// Reads what `input` holds; a response that cannot be read fails the exchange.
    private func processOrFail() {
        do {
            try process()
        } catch let failure as UpstreamFailure {
            fail(failure)
        } catch {
            fail(.malformedResponse("\(error)"))
        }
    }

    private func process() throws {
        while exchange != nil || sink != nil, input != nil, !paused {
            if receiving.status == nil {
                guard try readHead() else { return }
                continue
            }
            if receiving.untilClose {
                var rest = input!
                input = nil
                try append(&rest)
                return
            }
            guard var parser = receiving.bodyParser else {
                finish()
                return
            }
            var buffer = input.take()!
            let event: HTTP1Parser.Event
            do {
                event = try parser.next(&buffer)
            } catch {
                input = consume buffer
                throw UpstreamFailure.malformedResponse(error.message)
            }
            receiving.bodyParser = parser
            if case .needMore = event {
                if buffer.readableBytes > 0 { input = consume buffer }
                return
            }
            // Kept even when empty: the parser's end comes from the next call.
            input = consume buffer
            switch event {
            case .needMore:
                return
            case .body(var chunk):
                try append(&chunk)
            case .end:
                finish()
            case .head:
                throw UpstreamFailure.malformedResponse("unexpected head")
            }
        }
    }

    private func append(_ chunk: inout ByteBuffer) throws {
        if let sink {
            receiving.streamedBytes += chunk.readableBytes
            if receiving.streamedBytes > receiving.maxBytes { throw UpstreamFailure.responseTooLarge(receiving.maxBytes) }
            deadline = .now() + receiving.timeout
            if !sink.upstreamBody(chunk) {
                paused = true
                deadline = nil
                transport?.pauseReading()
            }
            return
        }
        let total = (receiving.body?.readableBytes ?? 0) + chunk.readableBytes
        if total > receiving.maxBytes { throw UpstreamFailure.responseTooLarge(receiving.maxBytes) }
        if var body = receiving.body.take() {
            body.writeBuffer(&chunk)
            receiving.body = consume body
        } else {
            receiving.body = chunk
        }
    }

    /// Reads a response head if it has all arrived; 1xx interim responses are skipped.
    private func readHead() throws -> Bool {
        var buffer = input.take()!
        guard let head = try Self.parseHead(buffer, maxBytes: 64 * 1024) else {
            input = consume buffer
            return false
        }
        receiving.answered = true
        buffer.moveReaderIndex(forwardBy: head.length)
        if buffer.readableBytes > 0 { input = consume buffer }
        if (100..<200).contains(head.status) { return true }
        receiving.status = HTTPResponseStatus(statusCode: head.status)
        receiving.fields = head.fields
        receiving.namesConnectionFields = head.namesConnectionFields
        keepAlive = head.keepAlive
        if receiving.isHead { receiving.headLength = head.contentLength }
        let bodyless = receiving.isHead || head.status == 204 || head.status == 304
        if bodyless {
            receiving.bodyParser = nil
        } else if head.chunked {
            receiving.bodyParser = .body(chunked: true, length: 0, maxTrailerBytes: 64 * 1024)
        } else if let length = head.contentLength {
            if length > receiving.maxBytes { throw UpstreamFailure.responseTooLarge(receiving.maxBytes) }
            receiving.bodyParser = length > 0 ? .body(chunked: false, length: length, maxTrailerBytes: 0) : nil
        } else {
            receiving.untilClose = true
            keepAlive = false
        }
        if receiving.streams, let exchange {
            return streamHead(exchange, length: head.contentLength)
        }
        if receiving.bodyParser == nil && !receiving.untilClose {
            finish()
            return false
        }
        return true
    }

    /// Hands a streamed response's head to the exchange: it goes on to the responder, which
    /// then takes the body, unless the exchange tries another target instead (this response
    /// is then not read on, and the connection closes).
    private func streamHead(_ exchange: UpstreamExchange, length: Int?) -> Bool {
        let hasBody = receiving.bodyParser != nil || receiving.untilClose
        let fields = receiving.fields.take() ?? ByteBuffer()
        let response = UpstreamResponse(
            status: receiving.status ?? .badGateway, fields: fields, namesConnectionFields: receiving.namesConnectionFields,
            body: fields.getSlice(at: fields.readerIndex, length: 0)!, headLength: receiving.headLength)
        self.exchange = nil
        guard let sink = exchange.streamingHead(response, length: receiving.isHead ? receiving.headLength : length, hasBody: hasBody, source: self) else {
            receiving = Receiving()
            close()
            return false
        }
        if hasBody {
            self.sink = sink
            deadline = .now() + receiving.timeout
            return true
        }
        endStreaming()
        return false
    }

    /// A streamed response has ended: the connection goes back to its pool, then its sink is told.
    private func endStreaming() {
        let sink = self.sink
        self.sink = nil
        closedWhilePaused = false
        deadline = nil
        receiving = Receiving()
        returnToPool()
        sink?.upstreamEnded()
    }

    /// After a response: kept for the next request when the upstream keeps it alive and sent
    /// nothing more, closed otherwise.
    private func returnToPool() {
        if !keepAlive || (input?.readableBytes ?? 0) > 0 {
            close()
        } else {
            input = nil
            owner.release(self)
        }
    }

    private func finish() {
        if sink != nil {
            endStreaming()
            return
        }
        guard let exchange else { return }
        self.exchange = nil
        deadline = nil
        // Without a head (a body read until close cannot end without one) or a body, empty
        // slices of what was read stand in for them.
        // The fields and body move out of `receiving` (nothing of the response stays here:
        // they are slices of what was read).
        let fields = receiving.fields.take() ?? input.map { $0.getSlice(at: $0.readerIndex, length: 0)! } ?? ByteBuffer()
        let body = receiving.body.take() ?? fields.getSlice(at: fields.readerIndex, length: 0)!
        let response = UpstreamResponse(
            status: receiving.status ?? .badGateway, fields: fields, namesConnectionFields: receiving.namesConnectionFields,
            body: body, headLength: receiving.headLength)
        receiving = Receiving()
        returnToPool()
        exchange.received(.relayed(consume response))
    }

    private func fail(_ failure: UpstreamFailure) {
        let exchange = self.exchange
        let sink = self.sink
        self.exchange = nil
        self.sink = nil
        receiving = Receiving()
        deadline = nil
        close()
        exchange?.failed(failure)
        sink?.upstreamBodyFailed()
    }

    package func close() {
        guard isOpen else { return }
        isOpen = false
        owner.forget(self)
        transport?.close()
    }

    // MARK: - Response heads

    package typealias ResponseHead = HTTP1ResponseHead

    /// A response head from the start of `buffer`, or nil until it has all arrived, read by
    /// the gateway's one HTTP/1 head reader.
    package static func parseHead(_ buffer: ByteBuffer, maxBytes: Int) throws -> ResponseHead? {
        do {
            return try HTTP1Head.parseResponse(buffer, maxBytes: maxBytes)
        } catch {
            throw UpstreamFailure.malformedResponse(error.responseReason(maxBytes: maxBytes))
        }
    }
}

extension UpstreamConnection: UpstreamBodySource {
    package func resume() {
        guard paused else { return }
        paused = false
        guard sink != nil else { return }
        deadline = .now() + receiving.timeout
        transport?.resumeReading()
        processOrFail()
        if closedWhilePaused, !paused, let sink {
            endAtClose(sink)
        }
    }

    /// The socket has closed with a body still streaming: a body read until the close has
    /// ended; any other was cut short.
    private func endAtClose(_ sink: any UpstreamStreamingResponder) {
        self.sink = nil
        closedWhilePaused = false
        deadline = nil
        let untilClose = receiving.untilClose
        receiving = Receiving()
        if untilClose { sink.upstreamEnded() } else { sink.upstreamBodyFailed() }
    }

    package func cancel() {
        guard sink != nil else { return }
        sink = nil
        paused = false
        closedWhilePaused = false
        receiving = Receiving()
        deadline = nil
        // The rest of the response is still on its way: the connection cannot carry another.
        close()
    }
}

/// The kept-alive connections of one upstream pool on one event loop.
package final class UpstreamConnections {
    private let eventLoop: any EventLoop
    private var idle: [[UpstreamConnection]]
    /// `keepalive.idle_connections` and `keepalive.idle_timeout` of the upstream.
    private let maxIdlePerTarget: Int
    private let idleTimeout: TimeAmount
    /// The plain-HTTP targets' endpoints with strings of this loop's own: the request for a
    /// target is written from them, and strings retained per request by both cores move
    /// their reference count's cache line between them.
    package let endpoints: [UpstreamTarget.PlainEndpoint?]

    package init(eventLoop: any EventLoop, targets: [UpstreamTarget], maxIdlePerTarget: Int, idleTimeout: TimeAmount) {
        self.eventLoop = eventLoop
        self.idle = Array(repeating: [], count: targets.count)
        self.maxIdlePerTarget = maxIdlePerTarget
        self.idleTimeout = idleTimeout
        self.endpoints = targets.map { $0.plain?.localCopy() }
    }

    /// An idle, open connection to the target, if there is one.
    package func takeIdle(target: Int) -> UpstreamConnection? {
        while let connection = idle[target].popLast() {
            if connection.isOpen { return connection }
        }
        return nil
    }

    /// A new connection to the target, a socket of the core bound to the loop that owns it.
    package func connect(target: Int, host: String, port: Int, connectTimeout: TimeAmount) -> EventLoopFuture<NIOLoopBound<UpstreamConnection>> {
        guard let loop = eventLoop as? CoreEventLoop else {
            // Connections are served on core loops only; nothing else relays.
            return eventLoop.makeFailedFuture(UpstreamFailure.connectFailed("not on a loop of the server core"))
        }
        let connection = UpstreamConnection(target: target, owner: self)
        return CoreUpstreamSocket.connect(connection, host: host, port: port, timeout: connectTimeout, on: loop)
    }

    package func release(_ connection: UpstreamConnection) {
        guard connection.isOpen else { return }
        if idle[connection.target].count >= maxIdlePerTarget {
            connection.close()
            return
        }
        connection.idle(until: .now() + idleTimeout)
        idle[connection.target].append(connection)
    }

    package func forget(_ connection: UpstreamConnection) {
        if let index = idle[connection.target].firstIndex(where: { $0 === connection }) {
            idle[connection.target].remove(at: index)
        }
    }
}
