import CPorticoSystem
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// One accepted TCP connection on a ``CoreEventLoop``, serving HTTP/1.1: the socket, the
/// bytes queued to send, and the ``HTTP1Connection`` it reads for.
///
/// Reads go into the loop's shared read buffer (``CoreEventLoop/takeReadBuffer()``): one read
/// per readiness event, handed to the HTTP layer as a `ByteBuffer`; when the HTTP layer kept
/// none of it, the next read of any connection on the loop reuses the same memory. Writes are
/// queued until a flush and go out in one `write` or `writev`; what the socket does not take
/// waits for `EPOLLOUT`.
final class CoreConnection: CoreIOHandler, ConnectionTransport {
    let fd: Int32
    let loop: CoreEventLoop
    let allocator = ByteBufferAllocator()
    private var http: HTTP1Connection<CoreConnection>?
    /// Written but not yet taken by the socket, oldest first.
    private var outbound: [ByteBuffer] = []
    private var closeWhenWritten = false
    private var interest: UInt32 = CoreEvents.readable
    private var readingStopped = false
    private(set) var isClosed = false
    /// Told once, when the connection closes (the listener's tracker and gauge).
    private var onClose: (() -> Void)?

    var eventLoop: any EventLoop { loop }

    init(fd: Int32, loop: CoreEventLoop, onClose: @escaping () -> Void) {
        self.fd = fd
        self.loop = loop
        self.onClose = onClose
    }

    /// Registers the socket with the loop and starts serving HTTP/1.1 with `info`.
    func start(info: ConnectionInfo) throws {
        let http = HTTP1Connection(info: info, transport: self)
        self.http = http
        try loop.register(fd, events: interest, handler: self)
        http.start()
    }

    /// Asks the HTTP layer to finish the request in progress and close (the listener drains).
    func quiesce() {
        http?.quiesce()
    }

    // MARK: - CoreIOHandler

    func ready(_ events: UInt32) {
        if events & CoreEvents.writable != 0 {
            writeOut()
        }
        if events & (CoreEvents.readable | CoreEvents.hangUp) != 0, !isClosed, !readingStopped {
            readIn()
        }
    }

    func loopShutDown() {
        closeNow()
    }

    private func readIn() {
        var buffer = loop.takeReadBuffer()
        var failure: Int32 = 0
        let count = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { space in
            let count = Glibc.read(fd, space.baseAddress, space.count)
            if count < 0 { failure = errno }
            return max(count, 0)
        }
        if count == 0 {
            loop.returnReadBuffer(buffer)
            // End of stream, or a failure other than "nothing to read now".
            if failure == 0 || (failure != EAGAIN && failure != EINTR) { closeNow() }
            return
        }
        guard let http else {
            loop.returnReadBuffer(buffer)
            return
        }
        http.received(buffer)
        loop.returnReadBuffer(buffer)
        http.readComplete()
        if !isClosed && !http.acceptsInput {
            readingStopped = true
            setInterest(interest & ~CoreEvents.readable)
        }
    }

    // MARK: - ConnectionTransport

    func write(_ bytes: ByteBuffer) {
        guard !isClosed else { return }
        outbound.append(bytes)
    }

    func flush() {
        writeOut()
    }

    func writeAndClose(_ bytes: ByteBuffer) {
        guard !isClosed else { return }
        outbound.append(bytes)
        closeWhenWritten = true
        writeOut()
    }

    func close() {
        closeNow()
    }

    func resumeReading() {
        guard readingStopped, !isClosed else { return }
        readingStopped = false
        setInterest(interest | CoreEvents.readable)
    }

    // MARK: - Sending and closing

    /// Sends what is queued until the socket takes no more; then waits for `EPOLLOUT`.
    private func writeOut() {
        while !isClosed, !outbound.isEmpty {
            let written = outbound.count == 1 ? writeOne() : writeMany()
            if written < 0 {
                if errno == EAGAIN || errno == EINTR {
                    setInterest(interest | CoreEvents.writable)
                } else {
                    closeNow()
                }
                return
            }
            consume(written)
        }
        guard !isClosed else { return }
        if interest & CoreEvents.writable != 0 { setInterest(interest & ~CoreEvents.writable) }
        if closeWhenWritten { closeNow() }
    }

    private func writeOne() -> Int {
        outbound[0].withUnsafeReadableBytes { bytes in Glibc.write(fd, bytes.baseAddress, bytes.count) }
    }

    /// One `writev` of up to 64 queued buffers.
    private func writeMany() -> Int {
        let count = min(outbound.count, 64)
        return withUnsafeTemporaryAllocation(of: iovec.self, capacity: count) { vectors in
            // The buffers' memory is only read while `outbound` holds them, which it does
            // until `consume` runs after the call.
            for index in 0..<count {
                outbound[index].withUnsafeReadableBytes { bytes in
                    vectors[index] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
                }
            }
            return Glibc.writev(fd, vectors.baseAddress, Int32(count))
        }
    }

    /// Drops `count` bytes the socket took from the front of the queue.
    private func consume(_ count: Int) {
        var left = count
        var done = 0
        while left > 0 && done < outbound.count {
            let size = outbound[done].readableBytes
            if size <= left {
                left -= size
                done += 1
            } else {
                outbound[done].moveReaderIndex(forwardBy: left)
                left = 0
            }
        }
        if done == outbound.count {
            outbound.removeAll(keepingCapacity: true)
        } else if done > 0 {
            outbound.removeFirst(done)
        }
    }

    private func setInterest(_ events: UInt32) {
        guard events != interest, !isClosed else { return }
        interest = events
        loop.modify(fd, events: events)
    }

    private func closeNow() {
        guard !isClosed else { return }
        isClosed = true
        loop.deregister(fd)
        Glibc.close(fd)
        outbound.removeAll()
        // The HTTP layer lets go of this object and this of it: the cycle ends here.
        http?.stop()
        http = nil
        onClose.take()?()
    }
}
