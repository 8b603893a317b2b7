import NIOConcurrencyHelpers
import NIOCore
import PorticoTestSupport
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL

/// An HTTP/2 client that sends one request as raw frames (its own header validation off, so
/// it can send what a well-behaved client would not) and reports how the server answered.
enum HTTP2Probe {
    enum Answer: Equatable {
        case status(String)
        case reset(HTTP2ErrorCode)
        case closed
    }

    static func send(port: Int, headers: [(String, String)], body: String? = nil, endStreamOnHeaders: Bool? = nil) async throws -> Answer {
        let context = try TestClient.http2TLSContext()
        let promise = MultiThreadedEventLoopGroup.singleton.any().makePromise(of: Answer.self)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(try NIOSSLClientHandler(context: context, serverHostname: nil))
                    try sync.addHandler(NIOHTTP2Handler(mode: .client, headerBlockValidation: .disabled, contentLengthValidation: .disabled))
                    try sync.addHandler(Observer(promise: promise))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        channel.closeFuture.whenComplete { _ in promise.succeed(.closed) }
        let stream = HTTP2StreamID(1)
        let endOnHeaders = endStreamOnHeaders ?? (body == nil)
        channel.write(HTTP2Frame(streamID: stream, payload: .headers(.init(headers: HPACKHeaders(headers), endStream: endOnHeaders))), promise: nil)
        if let body {
            channel.write(HTTP2Frame(streamID: stream, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: body)), endStream: true))), promise: nil)
        }
        channel.flush()
        let answer = try await promise.futureResult.get()
        try? await channel.close()
        return answer
    }

    private final class Observer: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTP2Frame
        let promise: EventLoopPromise<Answer>
        init(promise: EventLoopPromise<Answer>) { self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            guard frame.streamID == HTTP2StreamID(1) else { return }
            switch frame.payload {
            case .headers(let headers): promise.succeed(.status(headers.headers.first(name: ":status") ?? "?"))
            case .rstStream(let code): promise.succeed(.reset(code))
            default: break
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
