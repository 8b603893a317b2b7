import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Testing

import PorticoGateway
import PorticoServer

/// A raw TLS connection for what HTTP clients hide: the served certificate, the protocol
/// version, a client certificate refused after the handshake.
public final class TLSProbe: Sendable {
    public let channel: any Channel
    public let peerCertificate: NIOSSLCertificate?
    private let collector: Collector

    /// Opens a connection and completes the handshake; `sendPrefix` goes first, in the clear
    /// (a PROXY header).
    public static func connect(
        port: Int, minimumVersion: TLSVersion = .tlsv12, maximumVersion: TLSVersion? = nil,
        clientIdentity: TestPKI.Pair? = nil, alpn: [String] = ["http/1.1"], sendPrefix: ByteBuffer? = nil
    ) async throws -> TLSProbe {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        tls.minimumTLSVersion = minimumVersion
        tls.maximumTLSVersion = maximumVersion
        tls.applicationProtocols = alpn
        if let clientIdentity {
            tls.certificateChain = [.certificate(clientIdentity.certificate)]
            tls.privateKey = .privateKey(clientIdentity.key)
        }
        let context = try NIOSSLContext(configuration: tls)
        let collector = Collector()
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let sendPrefix { try channel.pipeline.syncOperations.addHandler(PrefixWriter(prefix: sendPrefix)) }
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: nil))
                        try channel.pipeline.syncOperations.addHandler(collector)
                    }
                }
                .connect(host: "127.0.0.1", port: port).get()
        } catch {
            // Refused before any handshake: the promise waited for nothing.
            collector.handshake.fail(error)
            throw error
        }
        try await collector.handshake.futureResult.get()
        let certificate = try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self).peerCertificate
        }.get()
        return TLSProbe(channel: channel, peerCertificate: certificate, collector: collector)
    }

    private init(channel: any Channel, peerCertificate: NIOSSLCertificate?, collector: Collector) {
        self.channel = channel
        self.peerCertificate = peerCertificate
        self.collector = collector
    }

    /// Sends an HTTP/1.1 request on this connection and returns the response text.
    public func get(_ path: String, keepAlive: Bool = true) async throws -> String {
        let request = "GET \(path) HTTP/1.1\r\nHost: localhost\r\n\(keepAlive ? "" : "Connection: close\r\n")\r\n"
        let response = collector.expectResponse(on: channel.eventLoop)
        do {
            try await channel.writeAndFlush(ByteBuffer(string: request))
        } catch {
            collector.failPending(error)
            _ = try? await response.get()
            throw error
        }
        return try await response.get()
    }

    public func close() async {
        try? await channel.close()
    }

    /// Collects the bytes of one response (until a complete head plus content-length body,
    /// or the end of the connection).
    public final class Collector: ChannelInboundHandler, Sendable {
        public typealias InboundIn = ByteBuffer
        public let handshake: EventLoopPromise<Void>
        private let state = NIOLockedValueBox<(buffer: ByteBuffer, promise: EventLoopPromise<String>?)>((ByteBuffer(), nil))

        /// - Parameter tls: whether a handshake is to be waited for; a plain connection has none.
        public init(tls: Bool = true) {
            handshake = MultiThreadedEventLoopGroup.singleton.next().makePromise()
            if !tls { handshake.succeed() }
        }

        public func expectResponse(on loop: any EventLoop) -> EventLoopFuture<String> {
            let promise = loop.makePromise(of: String.self)
            state.withLockedValue { $0 = (ByteBuffer(), promise) }
            return promise.futureResult
        }

        /// Fails the response being waited for, if any.
        public func failPending(_ error: any Error) {
            let promise = state.withLockedValue { state -> EventLoopPromise<String>? in
                defer { state.promise = nil }
                return state.promise
            }
            promise?.fail(error)
        }

        public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case TLSUserEvent.handshakeCompleted = event { handshake.succeed() }
            context.fireUserInboundEventTriggered(event)
        }

        public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var incoming = unwrapInboundIn(data)
            let done = state.withLockedValue { state -> (EventLoopPromise<String>, String)? in
                state.buffer.writeBuffer(&incoming)
                let text = String(buffer: state.buffer)
                guard let headEnd = text.range(of: "\r\n\r\n") else { return nil }
                let head = text[..<headEnd.lowerBound].lowercased()
                if let line = head.split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
                   let length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)),
                   text.utf8.count - text.utf8.distance(from: text.startIndex, to: headEnd.upperBound) >= length,
                   let promise = state.promise {
                    state.promise = nil
                    return (promise, text)
                }
                return nil
            }
            if let (promise, text) = done { promise.succeed(text) }
        }

        public func channelInactive(context: ChannelHandlerContext) {
            handshake.fail(ChannelError.ioOnClosedChannel)
            let pending = state.withLockedValue { state -> (EventLoopPromise<String>, String)? in
                guard let promise = state.promise else { return nil }
                state.promise = nil
                return (promise, String(buffer: state.buffer))
            }
            if let (promise, text) = pending {
                if text.isEmpty { promise.fail(ChannelError.ioOnClosedChannel) } else { promise.succeed(text) }
            }
        }

        public func errorCaught(context: ChannelHandlerContext, error: any Error) {
            handshake.fail(error)
            failPending(error)
            context.close(promise: nil)
        }
    }
}

import Foundation

/// Writes its bytes as the connection opens, before the handlers after it (TLS) write theirs.
private final class PrefixWriter: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny
    public typealias OutboundOut = ByteBuffer
    private let prefix: ByteBuffer

    public init(prefix: ByteBuffer) {
        self.prefix = prefix
    }

    public func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(prefix), promise: nil)
        context.fireChannelActive()
    }
}
