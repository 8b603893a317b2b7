import CPorticoSystem
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// A kept-alive connection of the core to a plain-HTTP upstream: a non-blocking socket on the
/// loop of the client connections it serves, in front of the ``UpstreamConnection`` that
/// writes requests and reads responses.
package final class CoreUpstreamSocket: CoreSocketHandler, UpstreamTransport {
    package let fd: Int32
    package let loop: CoreEventLoop
    private var connection: UpstreamConnection?
    private var outbound = CoreSendQueue()
    package var interest = CoreEvents.writable
    /// Told when the connection is made (or not); nil once it is.
    private var connecting: EventLoopPromise<NIOLoopBound<UpstreamConnection>>?
    private var connectTimer: Scheduled<Void>?
    package private(set) var isClosed = false
    /// The connection asked to stop reading (its response's client is not taking it).
    private var readingPaused = false

    private init(fd: Int32, loop: CoreEventLoop, connection: UpstreamConnection, connecting: EventLoopPromise<NIOLoopBound<UpstreamConnection>>) {
        self.fd = fd
        self.loop = loop
        self.connection = connection
        self.connecting = connecting
    }

    /// Connects `connection` to `host:port` on `loop`. A host name is resolved on NIO's
    /// thread pool (never on the loop); an address is used as it is.
    package static func connect(_ connection: UpstreamConnection, host: String, port: Int, timeout: TimeAmount, on loop: CoreEventLoop) -> EventLoopFuture<NIOLoopBound<UpstreamConnection>> {
        let promise = loop.makePromise(of: NIOLoopBound<UpstreamConnection>.self)
        if let address = try? SocketAddress(ipAddress: host, port: port) {
            open(connection, address: address, timeout: timeout, on: loop, promise: promise)
            return promise.futureResult
        }
        let bound = NIOLoopBound(connection, eventLoop: loop)
        NIOThreadPool.singleton.runIfActive(eventLoop: loop) {
            try SocketAddress.makeAddressResolvingHost(host, port: port)
        }.whenComplete { result in
            switch result {
            case .success(let address): open(bound.value, address: address, timeout: timeout, on: loop, promise: promise)
            case .failure(let error): promise.fail(UpstreamFailure.connectFailed("cannot resolve \(host): \(error)"))
            }
        }
        return promise.futureResult
    }

    private static func open(_ connection: UpstreamConnection, address: SocketAddress, timeout: TimeAmount, on loop: CoreEventLoop, promise: EventLoopPromise<NIOLoopBound<UpstreamConnection>>) {
        let family = address.protocol.rawValue
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            promise.fail(UpstreamFailure.connectFailed(CoreSystemError("socket").description))
            return
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = address.withSockAddr { Glibc.connect(fd, $0, socklen_t($1)) }
        if result != 0 && errno != EINPROGRESS {
            let error = CoreSystemError("connect to \(address)")
            Glibc.close(fd)
            promise.fail(UpstreamFailure.connectFailed(error.description))
            return
        }
        let socket = CoreUpstreamSocket(fd: fd, loop: loop, connection: connection, connecting: promise)
        do {
            // Writable once connected (or failed).
            try loop.register(fd, events: socket.interest, handler: socket)
        } catch {
            Glibc.close(fd)
            promise.fail(UpstreamFailure.connectFailed("\(error)"))
            return
        }
        let bound = NIOLoopBound(socket, eventLoop: loop)
        socket.connectTimer = loop.scheduleTask(in: timeout) {
            bound.value.connectFailed("no connection within \(timeout)")
        }
    }

    package func ready(_ events: UInt32) {
        if connecting != nil {
            connected(events)
            return
        }
        if events & CoreEvents.writable != 0 {
            writeOut()
        }
        if events & (CoreEvents.readable | CoreEvents.hangUp) != 0, !isClosed, !readingPaused || events & CoreEvents.hangUp != 0 {
            readIn()
        }
    }

    package func loopShutDown() {
        closeNow()
    }

    /// The connect finished: made, or failed with the socket's error.
    private func connected(_ events: UInt32) {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
        guard error == 0 else {
            connectFailed(CoreSystemError("connect", code: error).description)
            return
        }
        guard let connecting, let connection else { return }
        self.connecting = nil
        connectTimer?.cancel()
        connectTimer = nil
        setInterest(CoreEvents.readable)
        connection.attached(to: self, on: loop)
        connecting.succeed(NIOLoopBound(connection, eventLoop: loop))
    }

    private func connectFailed(_ reason: String) {
        guard let connecting else { return }
        self.connecting = nil
        closeNow()
        connecting.fail(UpstreamFailure.connectFailed(reason))
    }

    private func readIn() {
        switch loop.read(from: fd) {
        case .bytes(let buffer):
            connection?.received(buffer)
            loop.returnReadBuffer(buffer)
        case .wouldBlock:
            break
        case .ended:
            closeNow()
        }
    }

    // MARK: - UpstreamTransport

    package func send(_ bytes: ByteBuffer) {
        guard !isClosed else { return }
        outbound.append(bytes)
        writeOut()
    }

    package func close() {
        closeNow()
    }

    package func pauseReading() {
        guard !readingPaused, !isClosed else { return }
        readingPaused = true
        setInterest(interest & ~CoreEvents.readable)
    }

    package func resumeReading() {
        guard readingPaused, !isClosed else { return }
        readingPaused = false
        setInterest(interest | CoreEvents.readable)
    }

    private func writeOut() {
        guard !isClosed else { return }
        switch outbound.send(to: fd) {
        case .sent:
            watchWritable(false)
        case .wouldBlock:
            watchWritable(true)
        case .failed:
            closeNow()
        }
    }

    private func closeNow() {
        guard !isClosed else { return }
        isClosed = true
        closeDescriptor()
        outbound.removeAll()
        connectTimer?.cancel()
        connectTimer = nil
        if let connecting {
            self.connecting = nil
            connecting.fail(UpstreamFailure.connectFailed("the connection closed"))
        }
        // As a NIO channel would: told it closed, then let go of.
        let connection = self.connection
        self.connection = nil
        connection?.transportClosed()
        connection?.detached()
    }
}
