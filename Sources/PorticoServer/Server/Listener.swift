import Logging
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// One role's listening socket: binds, serves, takes new route tables and TLS policy, drains.
///
/// The actor owns the lifecycle; connections never await it. They read the latest
/// ``ListenerSnapshot`` from a ``SnapshotBox`` the actor publishes.
package actor Listener {
    package enum State {
        case idle
        /// One socket per core loop, each bound to the same port (`SO_REUSEPORT`).
        case running([CoreListeningSocket])
        case draining
        case stopped
    }

    package let role: ListenerName
    package private(set) var configuration: ListenerConfiguration
    private var state: State = .idle
    private let snapshot: SnapshotBox<ListenerSnapshot>
    private let tracker = ConnectionTracker()
    private let group: CoreEventLoopGroup
    private let logger: Logger

    package init(snapshot: ListenerSnapshot, group: CoreEventLoopGroup, logger: Logger) {
        self.role = snapshot.configuration.name
        self.configuration = snapshot.configuration
        self.snapshot = SnapshotBox(snapshot, localize: { $0.localCopy() })
        self.group = group
        self.logger = logger
    }

    /// The address the socket is bound to, once running.
    package var localAddress: SocketAddress? {
        if case .running(let sockets) = state { return sockets.first?.localAddress }
        return nil
    }

    /// Open connections now.
    package nonisolated var connectionCount: Int { tracker.count }

    /// The listening sockets, one per core loop, while running.
    package var acceptingSockets: [CoreListeningSocket] {
        if case .running(let sockets) = state { return sockets }
        return []
    }

    /// Binds one socket per loop and serves HTTP/1.1, or HTTP/2 when TLS chose it, on what
    /// each accepts. Each loop accepts on a socket of its own (`SO_REUSEPORT`; the kernel
    /// spreads new connections over them) and serves what it accepts on its own thread.
    /// - Throws: ``ListenerError`` naming the role, address and the OS reason.
    package func start() async throws {
        guard case .idle = state else { return }
        let configuration = self.configuration
        let snapshot = self.snapshot
        let tracker = self.tracker
        let role = self.role
        let logger = self.logger
        let address = "\(configuration.bind):\(configuration.port)"
        var sockets: [CoreListeningSocket] = []
        do {
            if configuration.port != 0 { try PortCheck.ensureFree(host: configuration.bind, port: configuration.port) }
            for loop in group.loops {
                // The first socket takes the configured port (or, for port 0, one the system picks).
                let port = sockets.first?.localAddress?.port ?? configuration.port
                let bindAddress = try SocketAddress.makeAddressResolvingHost(configuration.bind, port: port)
                sockets.append(try await CoreListeningSocket.open(address: bindAddress, loop: loop) { fd, peer in
                    Listener.serve(fd: fd, peer: peer, loop: loop, role: role, snapshot: snapshot, tracker: tracker, logger: logger)
                })
            }
        } catch {
            for socket in sockets { await socket.close() }
            throw ListenerError.bind(role: role, address: address, port: configuration.port, error: error)
        }
        state = .running(sockets)
        logger.info("listening", metadata: ["listener": "\(role)", "address": "\(sockets.first?.localAddress?.description ?? "?")", "tls": "\(configuration.tls)"])
    }

    /// Publishes a new snapshot: new routes, limits and TLS policy for new requests and connections.
    package func update(_ newSnapshot: ListenerSnapshot) {
        configuration = newSnapshot.configuration
        snapshot.store(newSnapshot)
    }

    /// Closes the listening socket; open connections carry on.
    package func stopAccepting() async {
        switch state {
        case .running(let sockets):
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
    package func beginDrain() async {
        await stopAccepting()
        tracker.quiesceAll()
    }

    /// Drains: ``beginDrain()``, then waits for the connections to close, closing whatever is
    /// left after `gracePeriod`.
    package func drain(gracePeriod: TimeAmount) async {
        switch state {
        case .running: await beginDrain()
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

    /// Serves one connection accepted on `loop`.
    private static func serve(fd: Int32, peer: SocketAddress?, loop: CoreEventLoop, role: ListenerName, snapshot box: SnapshotBox<ListenerSnapshot>, tracker: ConnectionTracker, logger: Logger) {
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
        let tls = configuration.tls ? snapshot.tls?.context() : nil
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
}

/// Why a listener could not start.
public struct ListenerError: Error, CustomStringConvertible {
    public let description: String

    package static func bind(role: ListenerName, address: String, port: Int, error: any Error) -> ListenerError {
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
