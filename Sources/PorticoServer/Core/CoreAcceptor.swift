import CPorticoSystem
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// One loop's listening socket of a listener served by the core: bound with `SO_REUSEPORT`
/// beside the other loops' sockets on the same port (the kernel spreads new connections over
/// them), accepting on its own loop and serving there what it accepts.
package final class CoreAcceptor: CoreIOHandler {
    package let fd: Int32
    package let loop: CoreEventLoop
    package let localAddress: SocketAddress?
    /// Sets up one accepted socket (non-blocking, close-on-exec, with its peer's address).
    private let accepted: (Int32, SocketAddress?) -> Void
    private var isClosed = false
    /// Accepting is paused (out of descriptors or memory) until a timer resumes it.
    private var paused = false

    /// Binds `address` and listens; call on `loop`, then ``start()``.
    /// - Throws: `IOError` with the call and `errno` that failed (as NIO reports them).
    package init(address: SocketAddress, loop: CoreEventLoop, accepted: @escaping (Int32, SocketAddress?) -> Void) throws {
        let family: Int32
        switch address {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        case .unixDomainSocket: throw IOError(errnoCode: EAFNOSUPPORT, reason: "socket")
        }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        var one: Int32 = 1
        let size = socklen_t(MemoryLayout<Int32>.size)
        let bound = address.withSockAddr { pointer, length -> String? in
            guard setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, size) == 0,
                  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, size) == 0
            else { return "setsockopt" }
            guard bind(fd, pointer, socklen_t(length)) == 0 else { return "bind" }
            guard listen(fd, 1024) == 0 else { return "listen" }
            return nil
        }
        if let call = bound {
            let error = IOError(errnoCode: errno, reason: call)
            Glibc.close(fd)
            throw error
        }
        self.fd = fd
        self.loop = loop
        self.localAddress = Self.localAddress(of: fd)
        self.accepted = accepted
    }

    /// Starts accepting (on the loop).
    package func start() throws {
        try loop.register(fd, events: CoreEvents.readable, handler: self)
    }

    /// Stops accepting and closes the socket (on the loop).
    package func close() {
        guard !isClosed else { return }
        isClosed = true
        loop.deregister(fd)
        Glibc.close(fd)
    }

    package func ready(_ events: UInt32) {
        // A few per wake-up, so one loop busy accepting still serves its connections.
        for _ in 0..<16 {
            var storage = sockaddr_storage()
            var length = UInt32(MemoryLayout<sockaddr_storage>.size)
            let client = portico_accept(fd, &storage, &length)
            guard client >= 0 else {
                switch errno {
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // The connection waits in the backlog. Watching the socket meanwhile would
                    // wake the loop at once, again and again: stop for a moment instead.
                    pause()
                default:
                    // EAGAIN: none left; a connection that failed before it was accepted.
                    break
                }
                return
            }
            var one: Int32 = 1
            setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            accepted(client, Self.address(storage))
        }
    }

    package func loopShutDown() {
        close()
    }

    /// How long accepting pauses when the process is out of descriptors (as nginx does).
    package static let pauseAfterExhaustion = TimeAmount.milliseconds(100)

    private func pause() {
        guard !paused, !isClosed else { return }
        paused = true
        loop.modify(fd, events: 0)
        let bound = NIOLoopBound(self, eventLoop: loop)
        _ = loop.scheduleTask(in: Self.pauseAfterExhaustion) {
            let acceptor = bound.value
            guard acceptor.paused, !acceptor.isClosed else { return }
            acceptor.paused = false
            acceptor.loop.modify(acceptor.fd, events: CoreEvents.readable)
        }
    }

    /// The socket's own address (the port the system chose for port 0).
    package static func localAddress(of fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return result == 0 ? address(storage) : nil
    }

    package static func address(_ storage: sockaddr_storage) -> SocketAddress? {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee) } }
        case AF_INET6:
            return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee) } }
        default:
            return nil
        }
    }
}

/// A ``CoreAcceptor`` as the listener's actor holds it: opened, read and closed through its loop.
package struct CoreListeningSocket: Sendable {
    package let loop: CoreEventLoop
    package let localAddress: SocketAddress?
    private let acceptor: NIOLoopBound<CoreAcceptor>

    /// Binds `address` on `loop` and starts accepting; `accepted` runs on the loop for each
    /// connection.
    package static func open(address: SocketAddress, loop: CoreEventLoop, accepted: @escaping @Sendable (Int32, SocketAddress?) -> Void) async throws -> CoreListeningSocket {
        try await loop.submit {
            let acceptor = try CoreAcceptor(address: address, loop: loop, accepted: accepted)
            do {
                try acceptor.start()
            } catch {
                acceptor.close()
                throw error
            }
            return CoreListeningSocket(loop: loop, localAddress: acceptor.localAddress, acceptor: NIOLoopBound(acceptor, eventLoop: loop))
        }.get()
    }

    /// Stops accepting; connections already accepted carry on.
    package func close() async {
        let acceptor = self.acceptor
        try? await loop.submit { acceptor.value.close() }.get()
    }
}

/// A connection of the core as its listener's tracker holds it (from any thread).
package struct TrackedCoreConnection: TrackedConnection {
    private let connection: NIOLoopBound<CoreConnection>
    private let loop: CoreEventLoop

    /// Made on the connection's loop.
    package init(_ connection: CoreConnection) {
        self.connection = NIOLoopBound(connection, eventLoop: connection.loop)
        self.loop = connection.loop
    }

    package func quiesce() {
        let connection = self.connection
        loop.execute { connection.value.quiesce() }
    }

    package func close() {
        let connection = self.connection
        loop.execute { connection.value.close() }
    }
}
