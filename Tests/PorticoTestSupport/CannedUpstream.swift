import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A loopback server that answers each request (once its head has arrived) with bytes the
/// test chose, per connection and request number, and counts connections and requests.
public final class CannedUpstream: Sendable {
    /// What to do with request `request` (from 0) on connection `connection` (from 0).
    public enum Action: Sendable {
        case answer(String)
        /// Answer, then close the connection.
        case answerAndClose(String)
        /// Close without answering.
        case close
        /// Never answer.
        case ignore
    }

    public let channel: any Channel
    private let counts: NIOLockedValueBox<(connections: Int, requests: Int)>
    private let closes: NIOLockedValueBox<(count: Int, waiters: [(Int, EventLoopPromise<Void>)])>
    public var port: Int { channel.localAddress!.port! }
    public var connections: Int { counts.withLockedValue { $0.connections } }
    public var requests: Int { counts.withLockedValue { $0.requests } }

    /// Waits until `count` connections have been closed (by either side).
    public func waitUntilClosed(connections count: Int) async {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        closes.withLockedValue { closes in
            if closes.count >= count { promise.succeed() } else { closes.waiters.append((count, promise)) }
        }
        try? await promise.futureResult.get()
    }

    public static func start(_ plan: @escaping @Sendable (_ connection: Int, _ request: Int) -> Action) async throws -> CannedUpstream {
        let counts = NIOLockedValueBox((connections: 0, requests: 0))
        let closes = NIOLockedValueBox((count: 0, waiters: [(Int, EventLoopPromise<Void>)]()))
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                let number = counts.withLockedValue { counts in
                    counts.connections += 1
                    return counts.connections - 1
                }
                channel.closeFuture.whenComplete { _ in
                    closes.withLockedValue { closes in
                        closes.count += 1
                        let count = closes.count
                        closes.waiters.removeAll { waiter in
                            guard waiter.0 <= count else { return false }
                            waiter.1.succeed()
                            return true
                        }
                    }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(connection: number, plan: plan, counts: counts))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return CannedUpstream(channel: channel, counts: counts, closes: closes)
    }

    private init(channel: any Channel, counts: NIOLockedValueBox<(connections: Int, requests: Int)>,
                 closes: NIOLockedValueBox<(count: Int, waiters: [(Int, EventLoopPromise<Void>)])>) {
        self.channel = channel
        self.counts = counts
        self.closes = closes
    }

    public func stop() async { try? await channel.close() }

    private final class Handler: ChannelInboundHandler {
        public typealias InboundIn = ByteBuffer
        public typealias OutboundOut = ByteBuffer
        public let connection: Int
        public let plan: @Sendable (Int, Int) -> Action
        public let counts: NIOLockedValueBox<(connections: Int, requests: Int)>
        public var received = ""
        public var request = 0

        public init(connection: Int, plan: @escaping @Sendable (Int, Int) -> Action, counts: NIOLockedValueBox<(connections: Int, requests: Int)>) {
            self.connection = connection
            self.plan = plan
            self.counts = counts
        }

        public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += String(buffer: unwrapInboundIn(data))
            // Requests here have no bodies, or tiny ones that arrive with their heads.
            while let end = received.range(of: "\r\n\r\n") {
                var consumed = end.upperBound
                if let length = received[..<end.lowerBound].split(separator: "\r\n").first(where: { $0.lowercased().hasPrefix("content-length:") })
                    .flatMap({ Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }) {
                    guard received.distance(from: end.upperBound, to: received.endIndex) >= length else { return }
                    consumed = received.index(end.upperBound, offsetBy: length)
                }
                received = String(received[consumed...])
                counts.withLockedValue { $0.requests += 1 }
                let action = plan(connection, request)
                request += 1
                switch action {
                case .answer(let text):
                    context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil)
                case .answerAndClose(let text):
                    let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
                    context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text))).whenComplete { _ in loopBound.value.close(promise: nil) }
                    return
                case .close:
                    context.close(promise: nil)
                    return
                case .ignore:
                    return
                }
            }
        }

        public func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
