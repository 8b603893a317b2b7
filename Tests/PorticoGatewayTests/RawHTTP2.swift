import NIOConcurrencyHelpers
import NIOCore
import PorticoTestSupport
import NIOHPACK
import NIOPosix
import NIOSSL

/// An HTTP/2 client that writes frames byte by byte as a test says (well-formed or not) over
/// TLS with ALPN h2, and reads what the server sends as frames with its own parser (not the
/// server's), decoding response header blocks with an HPACK decoder of its own.
final class RawHTTP2: Sendable {
    struct Frame: Sendable, CustomStringConvertible {
        var type: UInt8
        var flags: UInt8
        var stream: UInt32
        var payload: [UInt8]
        /// For HEADERS: the decoded fields of the whole block (CONTINUATION included).
        var fields: [(String, String)] = []

        func has(_ flag: UInt8) -> Bool { flags & flag != 0 }
        var status: String? { fields.first { $0.0 == ":status" }?.1 }
        /// The 32-bit word at `offset` of the payload (error codes, stream ids, increments).
        func word(at offset: Int) -> UInt32 {
            payload[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
        }
        var description: String { "frame(type: \(type), flags: \(flags), stream: \(stream), \(payload.count) bytes)" }
    }

    enum Kind {
        static let data: UInt8 = 0, headers: UInt8 = 1, priority: UInt8 = 2, rstStream: UInt8 = 3, settings: UInt8 = 4
        static let pushPromise: UInt8 = 5, ping: UInt8 = 6, goAway: UInt8 = 7, windowUpdate: UInt8 = 8, continuation: UInt8 = 9
    }

    enum Flag {
        static let endStream: UInt8 = 0x1, ack: UInt8 = 0x1, endHeaders: UInt8 = 0x4, padded: UInt8 = 0x8
    }

    let channel: any Channel
    private let state: NIOLockedValueBox<State>
    private let encoder: NIOLockedValueBox<HPACKEncoder>

    struct State {
        var buffer = ByteBuffer()
        var frames: [Frame] = []
        var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
        var block: [UInt8] = []
        var closed = false
        /// Waiting for the socket to stop taking writes, or for the close.
        var stalled: [EventLoopPromise<Void>] = []
        var waiters: [(@Sendable (Frame) -> Bool, EventLoopPromise<Frame?>)] = []
    }

    /// Connects; unless `preface` is false, sends the connection preface and an empty SETTINGS
    /// (or `settings`).
    static func connect(port: Int, preface: Bool = true, settings: [(UInt16, UInt32)] = []) async throws -> RawHTTP2 {
        let context = try TestClient.http2TLSContext()
        let state = NIOLockedValueBox(State())
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(try NIOSSLClientHandler(context: context, serverHostname: nil))
                    try sync.addHandler(Collector(state: state))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let connection = RawHTTP2(channel: channel, state: state)
        if preface {
            try await connection.send(Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8))
            try await connection.settings(settings)
        }
        return connection
    }

    private init(channel: any Channel, state: NIOLockedValueBox<State>) {
        self.channel = channel
        self.state = state
        self.encoder = NIOLockedValueBox(HPACKEncoder(allocator: ByteBufferAllocator()))
    }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    /// Queues `bytes` without waiting for the socket to take them (a flood the server may
    /// stop reading).
    func queue(_ bytes: [UInt8]) {
        channel.writeAndFlush(ByteBuffer(bytes: bytes), promise: nil)
    }

    /// Stops reading what the server sends (a client that floods and reads nothing).
    func stopReading() async throws {
        try await channel.setOption(ChannelOptions.autoRead, value: false)
    }

    /// Returns once the server stopped taking what this client writes (its socket is full:
    /// the server stopped reading) or the connection closed; tells which.
    func waitUntilRefusedOrClosed() async -> (refused: Bool, closed: Bool) {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        state.withLockedValue { state in
            if state.closed { promise.succeed() } else { state.stalled.append(promise) }
        }
        channel.eventLoop.execute { [channel] in
            if !channel.isWritable { promise.succeed() }
        }
        try? await promise.futureResult.get()
        let closed = state.withLockedValue { $0.closed }
        return (!closed && !channel.isWritable, closed)
    }

    static func frame(_ type: UInt8, flags: UInt8 = 0, stream: UInt32, _ payload: [UInt8] = []) -> [UInt8] {
        let length = payload.count
        var bytes: [UInt8] = [UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type, flags]
        bytes += word(stream)
        return bytes + payload
    }

    static func word(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24 & 0xFF), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
    }

    func send(_ type: UInt8, flags: UInt8 = 0, stream: UInt32, _ payload: [UInt8] = []) async throws {
        try await send(Self.frame(type, flags: flags, stream: stream, payload))
    }

    func settings(_ settings: [(UInt16, UInt32)]) async throws {
        var payload: [UInt8] = []
        for (id, value) in settings { payload += [UInt8(id >> 8), UInt8(id & 0xFF)] + Self.word(value) }
        try await send(Kind.settings, stream: 0, payload)
    }

    /// The HPACK block for `fields`, from this connection's encoder.
    /// "Rapid reset" (CVE-2023-44487): `count` streams, each a GET of `path` opened and at
    /// once cancelled, as one run of bytes.
    func rapidResets(_ count: Int, path: String) -> [UInt8] {
        var bytes: [UInt8] = []
        for index in 0..<count {
            let stream = UInt32(2 * index + 1)
            bytes += RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders | Flag.endStream, stream: stream, block(RawHTTP2.get(path)))
            bytes += RawHTTP2.frame(Kind.rstStream, stream: stream, RawHTTP2.word(0x8))
        }
        return bytes
    }

    func block(_ fields: [(String, String)]) -> [UInt8] {
        encoder.withLockedValue { encoder in
            var buffer = ByteBuffer()
            try! encoder.encode(headers: HPACKHeaders(fields), to: &buffer)
            return Array(buffer.readableBytesView)
        }
    }

    func headers(stream: UInt32, _ fields: [(String, String)], endStream: Bool) async throws {
        let flags = Flag.endHeaders | (endStream ? Flag.endStream : 0)
        try await send(Kind.headers, flags: flags, stream: stream, block(fields))
    }

    static func get(_ path: String) -> [(String, String)] {
        [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", path)]
    }

    static func post(_ path: String, length: Int? = nil) -> [(String, String)] {
        [(":method", "POST"), (":scheme", "https"), (":authority", "localhost"), (":path", path)] + (length.map { [("content-length", String($0))] } ?? [])
    }

    /// The first frame (already received or still to come) that `matches`, or nil if the
    /// connection closes before one arrives.
    func next(where matches: @escaping @Sendable (Frame) -> Bool) async -> Frame? {
        let promise = channel.eventLoop.makePromise(of: Frame?.self)
        state.withLockedValue { state in
            if let frame = state.frames.first(where: matches) {
                promise.succeed(frame)
            } else if state.closed {
                promise.succeed(nil)
            } else {
                state.waiters.append((matches, promise))
            }
        }
        return try? await promise.futureResult.get()
    }

    /// The GOAWAY the server ends with: its error code and debug text.
    func goAway() async -> (code: UInt32, reason: String)? {
        guard let frame = await next(where: { $0.type == Kind.goAway }) else { return nil }
        return (frame.word(at: 4), String(decoding: frame.payload.dropFirst(8), as: UTF8.self))
    }

    /// Every frame received so far.
    var frames: [Frame] { state.withLockedValue { $0.frames } }

    func close() async {
        try? await channel.close()
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let state: NIOLockedValueBox<State>
        init(state: NIOLockedValueBox<State>) { self.state = state }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            state.withLockedValue { state in
                state.buffer.writeBuffer(&bytes)
                while state.buffer.readableBytes >= 9 {
                    let header = state.buffer.getBytes(at: state.buffer.readerIndex, length: 9)!
                    let length = Int(header[0]) << 16 | Int(header[1]) << 8 | Int(header[2])
                    guard state.buffer.readableBytes >= 9 + length else { break }
                    state.buffer.moveReaderIndex(forwardBy: 9)
                    var frame = Frame(
                        type: header[3], flags: header[4],
                        stream: header[5..<9].reduce(0) { $0 << 8 | UInt32($1) } & 0x7FFF_FFFF,
                        payload: state.buffer.readBytes(length: length)!
                    )
                    if frame.type == Kind.headers || frame.type == Kind.continuation {
                        state.block += frame.payload
                        if frame.has(Flag.endHeaders) {
                            var block = ByteBuffer(bytes: state.block)
                            state.block = []
                            let decoded = (try? state.decoder.decodeHeaders(from: &block)) ?? HPACKHeaders([("decode-error", "true")])
                            frame.fields = decoded.map { ($0.name, $0.value) }
                        }
                    }
                    state.frames.append(frame)
                    let arrived = frame
                    state.waiters.removeAll { waiter in
                        guard waiter.0(arrived) else { return false }
                        waiter.1.succeed(arrived)
                        return true
                    }
                }
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            state.withLockedValue { state in
                state.closed = true
                for waiter in state.waiters { waiter.1.succeed(nil) }
                state.waiters = []
                for waiter in state.stalled { waiter.succeed() }
                state.stalled = []
            }
            context.fireChannelInactive()
        }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if !context.channel.isWritable {
                let waiting = state.withLockedValue { state in
                    defer { state.stalled = [] }
                    return state.stalled
                }
                for waiter in waiting { waiter.succeed() }
            }
            context.fireChannelWritabilityChanged()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
