import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A plain TCP connection that sends bytes as given and collects whatever comes back until
/// the server closes: for PROXY headers, garbage, and clients that trickle.
public final class RawTCP: Sendable {
    public let channel: any Channel
    private let received: NIOLockedValueBox<ByteBuffer>
    private let watchers: NIOLockedValueBox<[Watcher]>

    public struct Watcher: Sendable {
        public let text: String
        public let promise: EventLoopPromise<Void>
    }

    public static func connect(port: Int) async throws -> RawTCP {
        let received = NIOLockedValueBox(ByteBuffer())
        let watchers = NIOLockedValueBox<[Watcher]>([])
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Collector(received: received, watchers: watchers)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawTCP(channel: channel, received: received, watchers: watchers)
    }

    private init(channel: any Channel, received: NIOLockedValueBox<ByteBuffer>, watchers: NIOLockedValueBox<[Watcher]>) {
        self.channel = channel
        self.received = received
        self.watchers = watchers
    }

    public func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    public func send(_ text: String) async throws { try await send(Array(text.utf8)) }

    /// Waits until what the server sent contains `text` (or the connection closes), and
    /// returns everything received so far.
    public func received(containing text: String) async -> String {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        let watcher = Watcher(text: text, promise: promise)
        received.withLockedValue { buffer in
            if String(buffer: buffer).contains(text) { promise.succeed() } else { watchers.withLockedValue { $0.append(watcher) } }
        }
        channel.closeFuture.whenComplete { _ in promise.succeed() }
        try? await promise.futureResult.get()
        return String(buffer: received.withLockedValue { $0 })
    }

    /// Waits until the server closes the connection and returns everything it sent.
    public func responseUntilClose() async -> String {
        try? await channel.closeFuture.get()
        return String(buffer: received.withLockedValue { $0 })
    }

    /// Sends `bytes` on a new connection and returns what came back before the server closed.
    public static func exchange(port: Int, _ bytes: [UInt8]) async throws -> String {
        let connection = try await connect(port: port)
        try? await connection.send(bytes)
        return await connection.responseUntilClose()
    }

    public static func exchange(port: Int, _ text: String) async throws -> String { try await exchange(port: port, Array(text.utf8)) }

    private final class Collector: ChannelInboundHandler, Sendable {
        public typealias InboundIn = ByteBuffer
        public let received: NIOLockedValueBox<ByteBuffer>
        public let watchers: NIOLockedValueBox<[Watcher]>
        public init(received: NIOLockedValueBox<ByteBuffer>, watchers: NIOLockedValueBox<[Watcher]>) {
            self.received = received
            self.watchers = watchers
        }

        public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            received.withLockedValue { buffer in
                buffer.writeBuffer(&bytes)
                let text = String(buffer: buffer)
                watchers.withLockedValue { list in
                    list.removeAll { watcher in
                        guard text.contains(watcher.text) else { return false }
                        watcher.promise.succeed()
                        return true
                    }
                }
            }
            context.fireChannelRead(data)
        }

        public func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
