import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A loopback HTTP server that records each request (head and body) and answers with the
/// status the test planned for it (by its number, from 0).
public final class WebhookReceiver: Sendable {
    public struct Received: Sendable {
        public var method: String
        public var uri: String
        public var headers: [String: String]
        public var body: [UInt8]
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    public let channel: any Channel
    private let received: NIOLockedValueBox<[Received]>
    public var port: Int { channel.localAddress!.port! }
    public var url: String { "http://127.0.0.1:\(port)/hook" }
    public var requests: [Received] { received.withLockedValue { $0 } }

    public static func start(statuses: @escaping @Sendable (Int) -> UInt = { _ in 200 }) async throws -> WebhookReceiver {
        let received = NIOLockedValueBox<[Received]>([])
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap { channel.pipeline.addHandler(Handler(received: received, statuses: statuses)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return WebhookReceiver(channel: channel, received: received)
    }

    private init(channel: any Channel, received: NIOLockedValueBox<[Received]>) {
        self.channel = channel
        self.received = received
    }

    public func stop() async { try? await channel.close() }

    private final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let received: NIOLockedValueBox<[Received]>
        let statuses: @Sendable (Int) -> UInt
        // One request at a time per connection: the head and body so far.
        let current = NIOLockedValueBox<(HTTPRequestHead?, [UInt8])>((nil, []))

        init(received: NIOLockedValueBox<[Received]>, statuses: @escaping @Sendable (Int) -> UInt) {
            self.received = received
            self.statuses = statuses
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head): current.withLockedValue { $0 = (head, []) }
            case .body(let buffer): current.withLockedValue { $0.1 += Array(buffer.readableBytesView) }
            case .end:
                let (head, body) = current.withLockedValue { $0 }
                guard let head else { return }
                var headers: [String: String] = [:]
                for (name, value) in head.headers { headers[name.lowercased()] = value }
                let number = received.withLockedValue { list in
                    list.append(Received(method: head.method.rawValue, uri: head.uri, headers: headers, body: body))
                    return list.count - 1
                }
                let status = HTTPResponseStatus(statusCode: Int(statuses(number)))
                var responseHeaders = HTTPHeaders()
                responseHeaders.add(name: "content-length", value: "0")
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: responseHeaders))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}
