import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS

#if canImport(Glibc)
import Glibc
#endif

/// One role's listening socket: binds, serves, takes new route tables and TLS policy, drains.
///
/// The actor owns the lifecycle; connections never await it. They read the latest
/// ``ListenerSnapshot`` from a ``SnapshotBox`` the actor publishes.
actor Listener {
    enum State {
        case idle
        /// One server channel per event loop, each on its own socket bound to the same port.
        case running([any Channel])
        /// The same on Portico's own core: one socket per core loop.
        case runningCore([CoreListeningSocket])
        case draining
        case stopped
    }

    let role: ListenerName
    private(set) var configuration: ListenerConfiguration
    private var state: State = .idle
    private let snapshot: SnapshotBox<ListenerSnapshot>
    private let tracker = ConnectionTracker()
    private let group: any EventLoopGroup
    private let logger: Logger

    init(snapshot: ListenerSnapshot, group: any EventLoopGroup, logger: Logger) {
        self.role = snapshot.configuration.name
        self.configuration = snapshot.configuration
        self.snapshot = SnapshotBox(snapshot, localize: { $0.localCopy() })
        self.group = group
        self.logger = logger
    }

    /// The address the socket is bound to, once running.
    var localAddress: SocketAddress? {
        switch state {
        case .running(let channels): channels.first?.localAddress
        case .runningCore(let sockets): sockets.first?.localAddress
        default: nil
        }
    }

    /// Open connections now.
    nonisolated var connectionCount: Int { tracker.count }

    /// The open connections' channels.
    nonisolated var connections: [any Channel] { tracker.channels }

    /// The server channels accepting from the socket, one per event loop, while running.
    var acceptingChannels: [any Channel] {
        if case .running(let channels) = state { return channels }
        return []
    }

    /// The core's listening sockets, one per core loop, while running on the core.
    var acceptingCoreSockets: [CoreListeningSocket] {
        if case .runningCore(let sockets) = state { return sockets }
        return []
    }

    /// Binds the socket and starts accepting.
    /// - Throws: ``ListenerError`` naming the role, address and the OS reason.
    func start() async throws {
        guard case .idle = state else { return }
        if configuration.engine == .core {
            try await startCore()
            return
        }
        let configuration = self.configuration
        let snapshot = self.snapshot
        let tracker = self.tracker
        let role = self.role
        let logger = self.logger
        let address = "\(configuration.bind):\(configuration.port)"
        // Each event loop accepts on a socket of its own (`SO_REUSEPORT`; the kernel spreads
        // new connections over them) and serves what it accepts. NIO's usual server channel
        // accepts on one loop and hands each connection to the next loop of the group: half the
        // connections of two loops crossed threads before their first byte was read (a task
        // queued and the other thread woken per connection), and each TLS handshake waited for
        // it. (One socket shared by every loop's channel is not an option: NIO expects each
        // readable notification to yield a read, and the loops would race for each connection.)
        var channels: [any Channel] = []
        do {
            if configuration.port != 0 { try PortCheck.ensureFree(host: configuration.bind, port: configuration.port) }
            for loop in group.makeIterator() {
                let bootstrap = ServerBootstrap(group: loop, childGroup: loop)
                    .serverChannelOption(.backlog, value: 1024)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .serverChannelOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
                    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                    .childChannelOption(.maxMessagesPerRead, value: 16)
                    .childChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try Listener.initialize(channel: channel, role: role, snapshot: snapshot, tracker: tracker, logger: logger)
                        }
                    }
                // The first socket takes the configured port (or, for port 0, one the system picks).
                let port = channels.first?.localAddress?.port ?? configuration.port
                channels.append(try await bootstrap.bind(host: configuration.bind, port: port).get())
            }
        } catch {
            for channel in channels { try? await channel.close() }
            throw ListenerError.bind(role: role, address: address, port: configuration.port, error: error)
        }
        state = .running(channels)
        logger.info("listening", metadata: ["listener": "\(role)", "address": "\(channels.first?.localAddress?.description ?? "?")", "tls": "\(configuration.tls)"])
    }

    /// Publishes a new snapshot: new routes, limits and TLS policy for new requests and connections.
    func update(_ newSnapshot: ListenerSnapshot) {
        configuration = newSnapshot.configuration
        snapshot.store(newSnapshot)
    }

    /// Closes the listening socket; open connections carry on.
    func stopAccepting() async {
        switch state {
        case .running(let channels):
            state = .draining
            for channel in channels { try? await channel.close() }
        case .runningCore(let sockets):
            state = .draining
            for socket in sockets { await socket.close() }
        case .idle:
            state = .stopped
        case .draining, .stopped:
            break
        }
    }

    /// Stops accepting and asks every open connection to finish: HTTP/1 after the response
    /// in progress (with `connection: close`), HTTP/2 after a GOAWAY.
    func beginDrain() async {
        await stopAccepting()
        tracker.quiesceAll()
    }

    /// Drains: ``beginDrain()``, then waits for the connections to close, closing whatever is
    /// left after `gracePeriod`.
    func drain(gracePeriod: TimeAmount) async {
        switch state {
        case .running, .runningCore: await beginDrain()
        default: break
        }
        guard case .draining = state else { return }
        let tracker = self.tracker
        let finished = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await tracker.waitUntilEmpty()
                return true
            }
            group.addTask {
                try? await Task.sleep(for: .nanoseconds(gracePeriod.nanoseconds))
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if !finished {
            logger.warning("grace period over; closing connections", metadata: ["listener": "\(role)", "open": "\(tracker.count)"])
            tracker.closeAll()
            await tracker.waitUntilEmpty()
        }
        state = .stopped
        logger.info("stopped", metadata: ["listener": "\(role)"])
    }

    /// Binds one socket per loop of Portico's own core and serves HTTP/1.1 (over TLS for a TLS
    /// listener) on what each accepts.
    private func startCore() async throws {
        let configuration = self.configuration
        let snapshot = self.snapshot
        let tracker = self.tracker
        let role = self.role
        let logger = self.logger
        let address = "\(configuration.bind):\(configuration.port)"
        var sockets: [CoreListeningSocket] = []
        do {
            let group = try CoreEventLoopGroup.shared.get()
            if configuration.port != 0 { try PortCheck.ensureFree(host: configuration.bind, port: configuration.port) }
            for loop in group.loops {
                // The first socket takes the configured port (or, for port 0, one the system picks).
                let port = sockets.first?.localAddress?.port ?? configuration.port
                let bindAddress = try SocketAddress.makeAddressResolvingHost(configuration.bind, port: port)
                sockets.append(try await CoreListeningSocket.open(address: bindAddress, loop: loop) { fd, peer in
                    Listener.serveCore(fd: fd, peer: peer, loop: loop, role: role, snapshot: snapshot, tracker: tracker, logger: logger)
                })
            }
        } catch {
            for socket in sockets { await socket.close() }
            throw ListenerError.bind(role: role, address: address, port: configuration.port, error: error)
        }
        state = .runningCore(sockets)
        logger.info("listening", metadata: ["listener": "\(role)", "address": "\(sockets.first?.localAddress?.description ?? "?")", "tls": "\(configuration.tls)", "engine": "core"])
    }

    /// Serves one connection accepted by the core (on its loop).
    private static func serveCore(fd: Int32, peer: SocketAddress?, loop: CoreEventLoop, role: ListenerName, snapshot box: SnapshotBox<ListenerSnapshot>, tracker: ConnectionTracker, logger: Logger) {
        let reader = SnapshotReader(box, eventLoop: loop)
        let snapshot = reader.value
        let metrics = snapshot.metrics
        let gauge = metrics.openConnections
        // Set once the connection exists; the tracker knows it by its identity.
        let id = NIOLockedValueBox<ObjectIdentifier?>(nil)
        let connection = CoreConnection(fd: fd, loop: loop) {
            if let id = id.withLockedValue({ $0 }) { tracker.release(id, gauge: gauge) }
        }
        guard tracker.admit(TrackedCoreConnection(connection), id: ObjectIdentifier(connection), limit: snapshot.configuration.limits.maxConnections, gauge: gauge) else {
            metrics.refusedConnections.increment()
            connection.close()
            return
        }
        id.withLockedValue { $0 = ObjectIdentifier(connection) }
        let configuration = snapshot.configuration
        let tls = configuration.tls ? snapshot.tls?.coreContext() : nil
        let info = ConnectionInfo(listener: role, isTLS: tls != nil, peerAddress: peer, snapshot: reader, eventLoop: loop)
        var proxyHeader: ProxyHeaderReader?
        var onProxyRefused: ((String) -> Void)?
        if configuration.proxyProtocol {
            let peerText = peer?.description ?? "?"
            proxyHeader = ProxyHeaderReader(trusted: configuration.trustedProxies.containsAddress(peer), peer: peer?.description ?? "an unknown peer")
            onProxyRefused = { reason in
                metrics.refusedConnections.increment()
                logger.notice("PROXY header refused", metadata: ["listener": "\(role)", "peer": "\(peerText)", "reason": "\(reason)"])
            }
        }
        do {
            try connection.start(info: info, tlsContext: tls, proxyHeader: proxyHeader, onProxyRefused: onProxyRefused)
        } catch {
            connection.close()
        }
    }

    /// Sets up one accepted connection's pipeline.
    private static func initialize(channel: any Channel, role: ListenerName, snapshot box: SnapshotBox<ListenerSnapshot>, tracker: ConnectionTracker, logger: Logger) throws {
        let reader = SnapshotReader(box, eventLoop: channel.eventLoop)
        let snapshot = reader.value
        let configuration = snapshot.configuration
        let metrics = snapshot.metrics
        guard tracker.admit(channel, limit: configuration.limits.maxConnections, gauge: metrics.openConnections) else {
            metrics.refusedConnections.increment()
            channel.close(promise: nil)
            return
        }

        let info = ConnectionInfo(listener: role, isTLS: configuration.tls, peerAddress: channel.remoteAddress, snapshot: reader, eventLoop: channel.eventLoop)
        let pipeline = channel.pipeline.syncOperations
        if configuration.proxyProtocol {
            let trusted = configuration.trustedProxies.containsAddress(channel.remoteAddress)
            let peer = channel.remoteAddress?.description ?? "?"
            try pipeline.addHandler(ProxyProtocolHandler(info: info, trusted: trusted) { reason in
                metrics.refusedConnections.increment()
                logger.notice("PROXY header refused", metadata: ["listener": "\(role)", "peer": "\(peer)", "reason": "\(reason)"])
            })
        }
        guard configuration.tls, let tls = snapshot.tls else {
            try configureHTTP1(pipeline: pipeline, info: info)
            return
        }
        try pipeline.addHandler(NIOSSLServerHandler(context: tls.context()))
        try pipeline.addHandler(TLSHandshakeObserver(metrics: metrics, timeout: configuration.limits.headerTimeout) { negotiated, channel in
            let operations = channel.pipeline.syncOperations
            info.clientCertificate = try? operations.handler(type: NIOSSLServerHandler.self).peerCertificate
            if negotiated == "h2" {
                try configureHTTP2(pipeline: operations, info: info)
            } else {
                try configureHTTP1(pipeline: operations, info: info)
            }
        })
    }

    private static func configureHTTP1(pipeline: ChannelPipeline.SynchronousOperations, info: ConnectionInfo) throws {
        try pipeline.addHandler(ChannelServer<HTTP1Connection<ChannelTransport>>(info: info, eventLoop: info.eventLoop))
    }

    private static func configureHTTP2(pipeline: ChannelPipeline.SynchronousOperations, info: ConnectionInfo) throws {
        try pipeline.addHandler(ChannelServer<HTTP2Connection<ChannelTransport>>(info: info, eventLoop: info.eventLoop))
    }
}

/// Counts failed TLS handshakes and closes those connections; closes a connection whose
/// handshake does not complete within `timeout` (a client that connects and sends nothing
/// must not hold a slot). When the handshake completes it sets up the HTTP handler for the
/// protocol ALPN chose and steps out: one handler where NIO's ALPN handler was a second one
/// added and removed per connection.
final class TLSHandshakeObserver: ChannelInboundHandler, RemovableChannelHandler, DeadlineClient {
    typealias InboundIn = NIOAny
    private let metrics: ListenerMetrics
    private let timeout: TimeAmount
    /// Adds the handler for the negotiated protocol (nil: none negotiated, HTTP/1.1).
    private let configure: (_ negotiated: String?, _ channel: any Channel) throws -> Void
    private var deadline: NIODeadline?
    var sweeper: DeadlineSweeper?
    private var context: ChannelHandlerContext?
    var sweepIndex = -1

    init(metrics: ListenerMetrics, timeout: TimeAmount, configure: @escaping (_ negotiated: String?, _ channel: any Channel) throws -> Void) {
        self.metrics = metrics
        self.timeout = timeout
        self.configure = configure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        deadline = .now() + timeout
        joinSweeper(on: context.eventLoop)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline = nil
        leaveSweeper()
        self.context = nil
    }

    func sweep(now: NIODeadline) {
        guard let due = deadline, due <= now, let context else { return }
        deadline = nil
        metrics.timeouts.increment()
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case TLSUserEvent.handshakeCompleted(let negotiated) = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        deadline = nil
        // NIOSSL passes decrypted data up only after this event: the HTTP handler is in place
        // (added synchronously) before the first request byte arrives.
        do {
            try configure(negotiated, context.channel)
        } catch {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        metrics.handshakeFailures.increment()
        context.close(promise: nil)
    }
}

/// Why a listener could not start.
public struct ListenerError: Error, CustomStringConvertible {
    public let description: String

    static func bind(role: ListenerName, address: String, port: Int, error: any Error) -> ListenerError {
        var reason = "\(error)"
        if let io = error as? IOError {
            switch io.errnoCode {
            case EACCES: reason = port < 1024 ? "permission denied: port \(port) needs root or CAP_NET_BIND_SERVICE" : "permission denied"
            case EADDRINUSE: reason = "address already in use: another process listens on port \(port)"
            case EADDRNOTAVAIL: reason = "address not available: this machine has no address \(address.split(separator: ":").dropLast().joined(separator: ":"))"
            default: reason = io.description
            }
        }
        return ListenerError(description: "listener \(role) cannot listen on \(address): \(reason)")
    }
}
