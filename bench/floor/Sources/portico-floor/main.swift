// What a server built on SwiftNIO and NIOSSL costs before it does any HTTP: the least a
// request can take on this stack, measured beside Portico and nginx (bench/run.sh, FLOOR=1).
//
//   portico-floor CERT KEY PORT UPSTREAM_PORT [CERT2 KEY2 PORT2]
//
// Every connection on PORT is TLS 1.2+ with the given pair (on PORT2 with the second pair),
// one event loop per core, as in Portico. What it does with the bytes is not HTTP and is only right for the benchmark's
// clients (whole requests per read, one at a time per connection when proxying):
// - a request whose target starts with `/proxied` is relayed byte for byte over one plain
//   connection per client connection to 127.0.0.1:UPSTREAM_PORT, and the upstream's bytes
//   back, with no parsing either way;
// - any other read is answered with one fixed response (the bytes Portico sends for
//   /healthz) per "\r\n\r\n" in it, all in one write; if the read holds "HTTP/1.0" or
//   "lose\r\n" (`Connection: close`), the connection is closed after the answer.
import NIOCore
import NIOPosix
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 5 || arguments.count == 8, let port = Int(arguments[3]), let upstreamPort = Int(arguments[4]) else {
    print("usage: portico-floor CERT KEY PORT UPSTREAM_PORT [CERT2 KEY2 PORT2]")
    exit(2)
}

/// The same TLS settings as Portico's listeners.
func tlsContext(certificate: String, key: String) throws -> NIOSSLContext {
    var tls = TLSConfiguration.makeServerConfiguration(
        certificateChain: try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) },
        privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
    )
    tls.minimumTLSVersion = .tlsv12
    tls.shutdownTimeout = .milliseconds(500)
    tls.applicationProtocols = ["http/1.1"]
    return try NIOSSLContext(configuration: tls)
}

/// The answer to every request that is not relayed: Portico's /healthz response, with the
/// date fixed at start.
let answer: ByteBuffer = {
    var date = time(nil)
    var parts = tm()
    gmtime_r(&date, &parts)
    var text = [CChar](repeating: 0, count: 64)
    let length = strftime(&text, text.count, "%a, %d %b %Y %H:%M:%S GMT", &parts)
    let stamp = String(decoding: text[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return ByteBuffer(string: "HTTP/1.1 200 OK\r\ndate: \(stamp)\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 3\r\n\r\nok\n")
}()

/// The plain connection to the upstream of one client connection.
final class Back: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let client: ChannelHandlerContext

    init(client: ChannelHandlerContext) { self.client = client }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        client.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        client.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        client.close(promise: nil)
    }
}

/// One client connection, after TLS.
final class Front: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    var upstream: Channel?
    var connecting = false
    var waiting: [ByteBuffer] = []
    let upstreamPort: Int

    init(upstreamPort: Int) { self.upstreamPort = upstreamPort }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        if upstream != nil || connecting || bytes.readableBytesView.starts(with: "GET /proxied".utf8) {
            relay(bytes, context: context)
            return
        }
        var count = 0
        var close = false
        bytes.withUnsafeReadableBytes { raw in
            var index = 0
            while index + 4 <= raw.count {
                if raw[index] == 13, raw[index + 1] == 10, raw[index + 2] == 13, raw[index + 3] == 10 {
                    count += 1
                    index += 4
                } else if raw[index] == UInt8(ascii: "/"), index + 4 <= raw.count, raw[index + 1] == UInt8(ascii: "1"), raw[index + 2] == UInt8(ascii: "."),
                          raw[index + 3] == UInt8(ascii: "0") {
                    close = true
                    index += 1
                } else if raw[index] == UInt8(ascii: "l"), index + 6 <= raw.count, raw[index + 1] == UInt8(ascii: "o"), raw[index + 2] == UInt8(ascii: "s"),
                          raw[index + 3] == UInt8(ascii: "e"), raw[index + 4] == 13 {
                    close = true
                    index += 1
                } else {
                    index += 1
                }
            }
        }
        guard count > 0 else { return }
        var out = context.channel.allocator.buffer(capacity: answer.readableBytes * count)
        for _ in 0..<count { out.writeImmutableBuffer(answer) }
        guard close else {
            context.write(wrapOutboundOut(out), promise: nil)
            return
        }
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(out)).whenComplete { _ in bound.value.close(promise: nil) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        upstream?.flush()
        context.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        upstream?.close(promise: nil)
    }

    private func relay(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        if let upstream {
            upstream.write(bytes, promise: nil)
            return
        }
        waiting.append(bytes)
        guard !connecting else { return }
        connecting = true
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let upstreamPort = self.upstreamPort
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Back(client: bound.value.1))
                }
            }
            .connect(host: "127.0.0.1", port: upstreamPort)
            .whenComplete { result in
                let (front, context) = bound.value
                front.connecting = false
                switch result {
                case .success(let channel):
                    front.upstream = channel
                    for bytes in front.waiting { channel.write(bytes, promise: nil) }
                    front.waiting = []
                    channel.flush()
                case .failure:
                    context.close(promise: nil)
                }
            }
    }
}

let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)

func serve(port: Int, context: NIOSSLContext) async throws -> Channel {
    try await ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 1024)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelOption(.maxMessagesPerRead, value: 16)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                try channel.pipeline.syncOperations.addHandler(Front(upstreamPort: upstreamPort))
            }
        }
        .bind(host: "127.0.0.1", port: port)
        .get()
}

let server = try await serve(port: port, context: try tlsContext(certificate: arguments[1], key: arguments[2]))
print("floor listening on \(port)")
if arguments.count == 8, let second = Int(arguments[7]) {
    _ = try await serve(port: second, context: try tlsContext(certificate: arguments[5], key: arguments[6]))
    print("floor listening on \(second)")
}
try await server.closeFuture.get()
