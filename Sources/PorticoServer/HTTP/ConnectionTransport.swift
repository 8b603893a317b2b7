import NIOCore

/// What an HTTP connection handler needs of the connection it serves: where its loop is,
/// and how to send bytes, close, and resume reading: a socket of the server core
/// (``CoreConnection``), or the fuzz targets' stand-in.
package protocol ConnectionTransport: AnyObject {
    /// The loop the connection runs on; every call below is made on it.
    var eventLoop: any EventLoop { get }
    var allocator: ByteBufferAllocator { get }
    /// Whether the socket is taking what is written (false while much waits to be sent).
    var isWritable: Bool { get }
    /// Queues bytes to send; they go at the next ``flush()``.
    func write(_ bytes: ByteBuffer)
    func flush()
    /// Sends `bytes` and everything queued, then closes once the socket has taken them all
    /// (closing at once could drop bytes not yet sent).
    func writeAndClose(_ bytes: ByteBuffer)
    /// Closes now.
    func close()
    /// Reads again if reading stopped because the handler did not accept input
    /// (``ServedConnection/acceptsInput``); nothing otherwise.
    func resumeReading()
}

/// One protocol served on a connection (``HTTP1Connection``, ``HTTP2Connection``), as its
/// transport drives it.
package protocol ServedConnection: AnyObject {
    associatedtype Transport: ConnectionTransport
    init(info: ConnectionInfo, transport: Transport)
    /// The connection is open.
    func start()
    /// The connection has ended (closed by either side): nothing more is written.
    func stop()
    /// Bytes read from the client.
    func received(_ bytes: ByteBuffer)
    /// Everything the socket had has been read: what was answered goes out.
    func readComplete()
    /// Whether the transport should read more now.
    var acceptsInput: Bool { get }
    /// The server is draining: finish what is in progress, then close.
    func quiesce()
    /// The connection failed.
    func failed()
}
