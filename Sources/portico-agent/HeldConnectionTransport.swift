import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import PorticoAgent
import PorticoProtocol

/// One kept-alive connection per agent, on event loops shared by every agent: what a fleet of
/// agents each holding a wait open looks like, without a thread or a connection pool per agent.
/// Connects (again) on the first request after the connection closed, from its own loopback
/// source address. One request at a time, as ``AgentClient`` makes them.
final class HeldConnectionTransport: AgentTransport {
    private let group: any EventLoopGroup
    private let target: SocketAddress
    private let source: SocketAddress
    private let hostHeader: String
    private let tls: NIOSSLContext?
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)

    init(group: any EventLoopGroup, target: SocketAddress, source: SocketAddress, hostHeader: String, tls: NIOSSLContext?) {
        self.group = group
        self.target = target
        self.source = source
        self.hostHeader = hostHeader
        self.tls = tls
    }

    func post(_ url: String, body: [UInt8], contentType: String) async throws -> (status: Int, body: [UInt8]) {
        try await post(url, body: body, contentType: contentType, timeout: .seconds(30))
    }

    func post(_ url: String, body: [UInt8], contentType: String, timeout: Duration) async throws -> (status: Int, body: [UInt8]) {
        try await exchange(method: .POST, url: url, body: body, contentType: contentType, timeout: timeout)
    }

    func get(_ url: String) async throws -> (status: Int, body: [UInt8]) {
        try await exchange(method: .GET, url: url, body: nil, contentType: nil, timeout: .seconds(30))
    }

    func pinning(_ pinned: PinnedCertificates) async -> any AgentTransport { self }

    func shutdown() async {
        let open = channel.withLockedValue { channel in
            defer { channel = nil }
            return channel
        }
        try? await open?.close()
    }

    private func exchange(method: HTTPMethod, url: String, body: [UInt8]?, contentType: String?, timeout: Duration) async throws -> (status: Int, body: [UInt8]) {
        let path = URLComponents(string: url).map { $0.percentEncodedPath + ($0.percentEncodedQuery.map { "?" + $0 } ?? "") } ?? "/"
        let channel = try await connected()
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers.add(name: "host", value: hostHeader)
        if let body {
            head.headers.add(name: "content-length", value: String(body.count))
            if let contentType { head.headers.add(name: "content-type", value: contentType) }
        }
        let promise = channel.eventLoop.makePromise(of: (status: Int, body: [UInt8]).self)
        let deadline = channel.eventLoop.scheduleTask(in: .seconds(timeout.components.seconds)) {
            promise.fail(HeldConnectionError.timedOut)
            channel.close(promise: nil)
        }
        channel.eventLoop.execute {
            guard let collector = try? channel.pipeline.syncOperations.handler(type: ResponseCollector.self) else {
                promise.fail(HeldConnectionError.closed)
                return
            }
            collector.expect(promise)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        do {
            let answer = try await promise.futureResult.get()
            deadline.cancel()
            return answer
        } catch {
            deadline.cancel()
            self.channel.withLockedValue { if $0 === channel { $0 = nil } }
            throw error
        }
    }

    private func connected() async throws -> any Channel {
        if let open = channel.withLockedValue({ $0 }), open.isActive { return open }
        let tls = self.tls
        let opened = try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .connectTimeout(.seconds(10))
            .bind(to: source)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: nil))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector())
                }
            }
            .connect(to: target).get()
        channel.withLockedValue { $0 = opened }
        return opened
    }
}

enum HeldConnectionError: Error, CustomStringConvertible {
    case timedOut
    case closed

    var description: String {
        switch self {
        case .timedOut: "no answer in time"
        case .closed: "the connection closed"
        }
    }
}

/// Gathers one response at a time into the promise of the request waiting for it.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private var promise: EventLoopPromise<(status: Int, body: [UInt8])>?
    private var status = 0
    private var body: [UInt8] = []

    func expect(_ promise: EventLoopPromise<(status: Int, body: [UInt8])>) {
        self.promise = promise
        status = 0
        body.removeAll(keepingCapacity: true)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): status = Int(head.status.code)
        case .body(let buffer): body.append(contentsOf: buffer.readableBytesView)
        case .end:
            let answered = promise
            promise = nil
            answered?.succeed((status, body))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise?.fail(HeldConnectionError.closed)
        promise = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise?.fail(error)
        promise = nil
        context.close(promise: nil)
    }
}
