import CPorticoSystem
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// One accepted TCP connection on a ``CoreEventLoop``, serving HTTP/1.1 in the clear or over
/// TLS, or HTTP/2 when TLS chose it by ALPN: the socket, its TLS session, the bytes queued to
/// send, and the ``HTTP1Connection`` or ``HTTP2Connection`` it reads for.
///
/// Reading: one `read` per readiness event. In the clear it goes into the loop's shared read
/// buffer (``CoreEventLoop/takeReadBuffer()``) and is handed to the HTTP layer as it is; over
/// TLS the records are read into the loop's record space, lent to OpenSSL, and decrypted
/// into that buffer. When the HTTP layer kept none of the bytes, the next read of any
/// connection on the loop reuses the same memory.
///
/// Writing: answers are queued until a flush. Over TLS everything queued becomes one record
/// (when it fits in one) in the session's output, in memory of the loop's, and that goes to
/// the socket straight from there. What the socket does not take is kept in `outbound` and
/// waits for `EPOLLOUT`.
/// Sends use `MSG_NOSIGNAL`: a client that has gone is an error to handle, not SIGPIPE.
package final class CoreConnection: CoreSocketHandler, ConnectionTransport {
    package let fd: Int32
    package let loop: CoreEventLoop
    package let allocator = ByteBufferAllocator()
    /// The protocol served: HTTP/1.1 from the start (its head timeout bounds the TLS
    /// handshake too), HTTP/2 once the handshake chose it.
    private enum Served {
        case http1(HTTP1Connection<CoreConnection>)
        case http2(HTTP2Connection<CoreConnection>)
    }
    private var served: Served?
    private var info: ConnectionInfo?
    private var tls: CoreTLSSession?
    /// Reads the PROXY header first, when the listener expects one; nil once it is read.
    private var proxyHeader: ProxyHeaderReader?
    private var onProxyRefused: ((String) -> Void)?
    /// Answers written but not flushed yet (TLS only: in the clear they go to `outbound`).
    private var plain: [ByteBuffer] = []
    /// Bytes for the socket that it has not taken yet.
    private var outbound = CoreSendQueue()
    private var closeWhenWritten = false
    package var interest: UInt32 = CoreEvents.readable
    private var readingStopped = false
    package private(set) var isClosed = false
    /// Told once, when the connection closes (the listener's tracker and gauge).
    private var onClose: (() -> Void)?

    package var eventLoop: any EventLoop { loop }

    package init(fd: Int32, loop: CoreEventLoop, onClose: @escaping () -> Void) {
        self.fd = fd
        self.loop = loop
        self.onClose = onClose
    }

    /// Registers the socket with the loop and starts serving HTTP/1.1 with `info`, over TLS
    /// with `tlsContext` when given, after the PROXY header `proxyHeader` reads when given.
    /// The head timeout starts now, so it bounds the PROXY header and the TLS handshake too.
    package func start(info: ConnectionInfo, tlsContext: CoreTLSContext?, proxyHeader: ProxyHeaderReader? = nil, onProxyRefused: ((String) -> Void)? = nil) throws {
        if let tlsContext { tls = try CoreTLSSession(context: tlsContext, loop: loop) }
        self.proxyHeader = proxyHeader
        self.onProxyRefused = onProxyRefused
        self.info = info
        let http = HTTP1Connection(info: info, transport: self)
        served = .http1(http)
        try loop.register(fd, events: interest, handler: self)
        http.start()
    }

    /// Asks the HTTP layer to finish what is in progress and close (the listener drains).
    package func quiesce() {
        switch served {
        case .http1(let http): http.quiesce()
        case .http2(let http): http.quiesce()
        case nil: break
        }
    }

    /// TLS chose HTTP/2: it takes over from the HTTP/1.1 connection, which has read nothing.
    private func switchToHTTP2() {
        guard let info, case .http1(let http1) = served else { return }
        http1.stop()
        let http2 = HTTP2Connection(info: info, transport: self)
        served = .http2(http2)
        http2.start()
    }

    // MARK: - CoreIOHandler

    package func ready(_ events: UInt32) {
        if events & CoreEvents.writable != 0 {
            writeOut()
        }
        if readingStopped && events & CoreEvents.failed != 0 {
            // Gone while not being read: epoll would report it again and again.
            closeNow()
            return
        }
        if events & (CoreEvents.readable | CoreEvents.hangUp) != 0, !isClosed, !readingStopped {
            if proxyHeader != nil {
                readProxyHeader()
            } else if tls != nil {
                readRecords()
            } else {
                readIn()
            }
        }
    }

    package func loopShutDown() {
        closeNow()
    }

    // MARK: - Reading

    private func readIn() {
        switch loop.read(from: fd) {
        case .bytes(let buffer): deliver(buffer)
        case .wouldBlock: break
        case .ended: closeNow()
        }
    }

    /// Reads the PROXY header; once it is read, what follows it is served.
    private func readProxyHeader() {
        guard var reader = proxyHeader.take() else { return }
        let buffer: ByteBuffer
        switch loop.read(from: fd) {
        case .bytes(let read): buffer = read
        case .wouldBlock:
            proxyHeader = reader
            return
        case .ended:
            closeNow()
            return
        }
        let step = reader.read(buffer)
        loop.returnReadBuffer(buffer)
        switch step {
        case .needMore:
            proxyHeader = reader
        case .refuse(let reason):
            onProxyRefused?(reason)
            closeNow()
        case .pass(let source, let rest):
            if let source { info?.peerAddress = source }
            guard let rest else { return }
            if let tls {
                rest.withUnsafeReadableBytes { bytes in tls.reading(bytes) { processRecords() } }
            } else {
                deliver(rest)
            }
        }
    }

    /// Reads TLS records and handles them.
    private func readRecords() {
        guard let tls else { return }
        let space = loop.recordSpace
        let count = Glibc.read(fd, space.baseAddress, space.count)
        guard count > 0 else {
            // The end of the stream, or a failure other than "nothing to read now".
            if count == 0 || (errno != EAGAIN && errno != EINTR) { closeNow() }
            return
        }
        tls.reading(UnsafeRawBufferPointer(rebasing: space[..<count])) { processRecords() }
    }

    /// Moves the handshake on with the records fed, or decrypts what they hold.
    private func processRecords() {
        guard let tls else { return }
        if !tls.handshakeDone {
            switch tls.handshake() {
            case .wantsMore:
                sendTLSOutput()
                return
            case .failed:
                info?.snapshot.value.metrics.handshakeFailures.increment()
                // The alert, if any, then close.
                sendTLSOutput()
                closeNow()
                return
            case .established:
                if let metrics = info?.snapshot.value.metrics {
                    (tls.resumed ? metrics.resumedHandshakes : metrics.fullHandshakes).increment()
                }
                info?.clientCertificate = tls.peerCertificate()
                sendTLSOutput()
                if tls.negotiatedHTTP2 { switchToHTTP2() }
            }
        }
        var buffer = loop.takeReadBuffer()
        var ended = false
        while !ended {
            var result = CoreTLSSession.ReadResult.wantsMore
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { space in
                result = tls.read(into: space)
                if case .bytes(let count) = result { return count }
                return 0
            }
            switch result {
            case .bytes:
                if buffer.writableBytes == 0 {
                    // Full: hand it on and go on in a new one.
                    deliver(buffer)
                    if isClosed { return }
                    buffer = loop.takeReadBuffer()
                }
            case .wantsMore:
                ended = true
            case .closed, .failed:
                // close_notify or a bad record: what was decrypted is served, then the
                // connection closes (as at the end of the stream in the clear).
                if buffer.readableBytes > 0 { deliver(buffer) } else { loop.returnReadBuffer(buffer) }
                closeNow()
                return
            }
        }
        // OpenSSL may have something to say (a key update, a session ticket).
        if tls.pendingOutput > 0 { sendTLSOutput() }
        if buffer.readableBytes > 0 {
            deliver(buffer)
        } else {
            loop.returnReadBuffer(buffer)
        }
    }

    /// Hands bytes read to the HTTP layer, flushes its answers, and stops reading if it will
    /// take no more for now.
    private func deliver(_ buffer: ByteBuffer) {
        switch served {
        case .http1(let http):
            http.received(buffer)
            loop.returnReadBuffer(buffer)
            http.readComplete()
        case .http2(let http):
            http.received(buffer)
            loop.returnReadBuffer(buffer)
            http.readComplete()
        case nil:
            loop.returnReadBuffer(buffer)
        }
        if !isClosed && !acceptsInput {
            readingStopped = true
            setInterest(interest & ~CoreEvents.readable)
        }
    }

    private var acceptsInput: Bool {
        switch served {
        case .http1(let http): http.acceptsInput
        case .http2(let http): http.acceptsInput
        case nil: false
        }
    }

    // MARK: - ConnectionTransport

    package func write(_ bytes: ByteBuffer) {
        guard !isClosed else { return }
        if tls != nil { plain.append(bytes) } else { outbound.append(bytes) }
    }

    package func flush() {
        if tls != nil { encryptPlain() }
        writeOut()
    }

    package func writeAndClose(_ bytes: ByteBuffer) {
        guard !isClosed else { return }
        write(bytes)
        closeWhenWritten = true
        flush()
    }

    package func close() {
        closeNow()
    }

    /// What waits to be sent is under 64 KiB (NIO's default high-water mark).
    package var isWritable: Bool { outbound.byteCount < 64 * 1024 }

    package func resumeReading() {
        guard readingStopped, !isClosed else { return }
        readingStopped = false
        setInterest(interest | CoreEvents.readable)
    }

    // MARK: - Sending and closing

    /// Encrypts the answers queued since the last flush: as one record when they fit in one.
    private func encryptPlain() {
        guard let tls, !plain.isEmpty else { return }
        let total = plain.reduce(0) { $0 + $1.readableBytes }
        var encrypted = true
        if plain.count > 1 && total <= 16 * 1024 {
            var offset = 0
            for buffer in plain {
                buffer.withUnsafeReadableBytes { bytes in
                    UnsafeMutableRawBufferPointer(rebasing: loop.scratch[offset...]).copyMemory(from: bytes)
                }
                offset += buffer.readableBytes
            }
            encrypted = tls.write(UnsafeRawBufferPointer(rebasing: loop.scratch[..<total]))
        } else {
            for buffer in plain where encrypted {
                encrypted = buffer.withUnsafeReadableBytes { tls.write($0) }
            }
        }
        plain.removeAll(keepingCapacity: true)
        guard encrypted else {
            closeNow()
            return
        }
        sendTLSOutput()
    }

    /// Sends what the TLS session has written: straight from its output when nothing is
    /// waiting before it; what the socket does not take is queued.
    private func sendTLSOutput() {
        guard let tls, !isClosed else { return }
        let pending = tls.pendingOutput
        guard pending > 0 else { return }
        var sent = 0
        if outbound.isEmpty {
            sent = tls.withOutput { bytes in
                // A failure other than EAGAIN shows at the next write or as EPOLLERR.
                max(portico_send(fd, bytes.baseAddress, UInt(bytes.count)), 0)
            }
        }
        if sent == pending {
            tls.discardOutput()
            return
        }
        outbound.append(tls.takeOutput(after: sent))
        watchWritable(true)
    }

    /// Sends what is queued until the socket takes no more; then waits for `EPOLLOUT`.
    private func writeOut() {
        guard !isClosed else { return }
        switch outbound.send(to: fd) {
        case .wouldBlock:
            watchWritable(true)
        case .failed:
            closeNow()
        case .sent:
            watchWritable(false)
            if closeWhenWritten {
                closeNow()
            } else if readingStopped && acceptsInput {
                // HTTP/2 stops reading while the socket is not taking what it writes.
                resumeReading()
            }
        }
    }

    private func closeNow() {
        guard !isClosed else { return }
        if let tls, tls.handshakeDone, outbound.isEmpty {
            // close_notify, if the socket takes it now; the connection does not wait for the
            // client's.
            tls.shutdown()
            sendTLSOutput()
        }
        isClosed = true
        closeDescriptor()
        outbound.removeAll()
        plain.removeAll()
        // The HTTP layer lets go of this object and this of it: the cycle ends here.
        switch served {
        case .http1(let http): http.stop()
        case .http2(let http): http.stop()
        case nil: break
        }
        served = nil
        tls = nil
        info = nil
        onProxyRefused = nil
        onClose.take()?()
    }
}
