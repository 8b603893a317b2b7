import NIOConcurrencyHelpers
import NIOCore
import PorticoTestSupport
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL

/// An HTTP/2 client that opens a request stream and then sends nothing more (or, with
/// `complete`, sends a whole GET and then nothing more).
final class HTTP2Stall: Sendable {
    let channel: any Channel
    private let observer: Observer

    struct Outcome {
        var goAway: Bool
        var answered: Bool
    }

    static func open(port: Int, complete: Bool = false) async throws -> HTTP2Stall {
        let context = try TestClient.http2TLSContext()
        let observer = Observer()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(try NIOSSLClientHandler(context: context, serverHostname: nil))
                    try sync.addHandler(NIOHTTP2Handler(mode: .client))
                    try sync.addHandler(observer)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let headers: HPACKHeaders = complete
            ? [":method": "GET", ":path": "/healthz", ":scheme": "https", ":authority": "localhost"]
            : [":method": "POST", ":path": "/echo", ":scheme": "https", ":authority": "localhost", "content-length": "100"]
        let frame = HTTP2Frame(streamID: HTTP2StreamID(1), payload: .headers(.init(headers: headers, endStream: complete)))
        try await channel.writeAndFlush(frame)
        return HTTP2Stall(channel: channel, observer: observer)
    }

    private init(channel: any Channel, observer: Observer) {
        self.channel = channel
        self.observer = observer
    }

    /// Waits for the server to close the connection; says whether a GOAWAY came first.
    func waitUntilClosed() async -> Outcome {
        try? await channel.closeFuture.get()
        return Outcome(goAway: observer.sawGoAway, answered: observer.sawAnswer)
    }

    private final class Observer: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTP2Frame
        private let goAway = NIOLockedValueBox(false)
        private let answer = NIOLockedValueBox(false)
        var sawGoAway: Bool { goAway.withLockedValue { $0 } }
        var sawAnswer: Bool { answer.withLockedValue { $0 } }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data).payload {
            case .goAway: goAway.withLockedValue { $0 = true }
            case .headers(let headers) where headers.headers.first(name: ":status") == "200": answer.withLockedValue { $0 = true }
            default: break
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
