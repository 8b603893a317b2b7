import NIOCore
import Logging
import NIOEmbedded
@testable import PorticoGateway
@testable import PorticoServer
import Prometheus

/// A served connection with nothing under it: what it writes is counted and dropped, and
/// the bytes read are handed to it in the pieces the input chose.
final class NullTransport: ConnectionTransport {
    let eventLoop: any EventLoop
    let allocator = ByteBufferAllocator()
    var isWritable: Bool { true }
    private(set) var written = 0
    private(set) var closed = false

    init(eventLoop: any EventLoop) { self.eventLoop = eventLoop }

    func write(_ bytes: ByteBuffer) { written += bytes.readableBytes }
    func flush() {}
    func writeAndClose(_ bytes: ByteBuffer) {
        written += bytes.readableBytes
        closed = true
    }
    func close() { closed = true }
    func resumeReading() {}
}

/// What both HTTP harnesses serve: a listener's snapshot with a fixed answer and one made
/// per request (an echo of the request's facts), and its own loop.
enum FuzzListener {
    static let loop = EmbeddedEventLoop()

    static let snapshot: SnapshotBox<ListenerSnapshot> = {
        var configuration = ListenerConfiguration(ListenerKind(.console, port: 0))
        configuration.limits.maxBodyBytes = 4096
        configuration.limits.maxHeaderBytes = 4096
        configuration.limits.maxHeaderCount = 32
        let echo = Endpoint.immediate { request in
            var answer = "\(request.method.rawValue) \(request.uri) \(request.host ?? "-") \(request.body.readableBytes)\n"
            for (name, value) in request.headers { answer += "\(name): \(value)\n" }
            return GatewayResponse(status: .ok, contentType: "text/plain", body: answer)
        }
        let metrics = GatewayMetrics(registry: PrometheusCollectorRegistry())
        let readiness = ReadinessFlag()
        var definitions: [Router<Endpoint>.Definition] = [
            .init(methods: ["POST", "PUT"], host: nil, path: "/echo/{name}", target: echo, maxBodyBytes: 1024),
            .init(methods: [], host: "only.example", path: "/host", target: echo, maxBodyBytes: nil),
        ]
        if let health = BuiltinServices.endpoint(named: "health", metrics: metrics, readiness: readiness) {
            definitions.append(.init(methods: ["GET"], host: nil, path: "/healthz", target: health, maxBodyBytes: 0))
        }
        let router = try! Router(definitions)
        let snapshot = ListenerSnapshot(configuration: configuration, router: router, tls: nil, metrics: metrics.listener(.console), accessLog: nil, logger: Logger(label: "portico-fuzz"), readiness: readiness)
        return SnapshotBox(snapshot)
    }()

    /// Serves `input` on a new connection of kind `Connection`, the first byte choosing how
    /// the rest is cut into reads; returns the transport for its checks.
    static func serve<Connection: ServedConnection>(_ input: UnsafeBufferPointer<UInt8>, as _: Connection.Type, prefix: [UInt8] = []) -> NullTransport
    where Connection.Transport == NullTransport {
        let transport = NullTransport(eventLoop: loop)
        let info = ConnectionInfo(listener: .console, isTLS: false, peerAddress: try? SocketAddress(ipAddress: "192.0.2.1", port: 4000),
                                  snapshot: SnapshotReader(snapshot, eventLoop: loop), eventLoop: loop)
        let connection = Connection(info: info, transport: transport)
        connection.start()
        let step = Int(input.first ?? 0) % 64 + 1
        var rest = prefix + Array(input.dropFirst())
        while !rest.isEmpty && !transport.closed {
            let piece = rest.prefix(step)
            rest.removeFirst(piece.count)
            connection.received(ByteBuffer(bytes: piece))
            connection.readComplete()
        }
        // Whatever the service answers later arrives on the loop.
        loop.run()
        connection.stop()
        return transport
    }
}

enum HTTP1Fuzz {
    @Sendable static func run(_ input: UnsafeBufferPointer<UInt8>) {
        _ = FuzzListener.serve(input, as: HTTP1Connection<NullTransport>.self)
        // The parser alone, all at once: the same bytes never make it loop or overrun.
        var parser = HTTP1Parser(maxHeadBytes: 4096, maxHeaderCount: 32)
        var buffer = ByteBuffer(bytes: input)
        var events = 0
        while events <= input.count + 2 {
            let before = buffer.readableBytes
            guard let event = try? parser.next(&buffer) else { break }
            if case .needMore = event { break }
            if case .head(let head) = event {
                _ = head.headers()
                _ = head.host
            }
            events += 1
            precondition(buffer.readableBytes <= before, "the parser grew its input")
        }
        precondition(events <= input.count + 2, "the parser made more events than there were bytes")
    }
}

enum HTTP2Fuzz {
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0]

    @Sendable static func run(_ input: UnsafeBufferPointer<UInt8>) {
        // Most inputs start after the preface and an empty SETTINGS, so that the fuzzer spends
        // its time on frames; an odd first byte sends the input as it is.
        let prefix = (input.first ?? 0) & 1 == 0 ? preface : []
        _ = FuzzListener.serve(input, as: HTTP2Connection<NullTransport>.self, prefix: prefix)
    }
}
