import NIOCore

/// What an HTTP connection handler needs of the connection it serves: where its loop is,
/// and how to send bytes, close, and resume reading. A NIO channel (``ChannelServer``) or a
/// socket of Portico's own server core (``CoreConnection``).
protocol ConnectionTransport: AnyObject {
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
protocol ServedConnection: AnyObject {
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

/// A NIO channel as a ``ConnectionTransport``: what ``ChannelServer`` hands its connection.
final class ChannelTransport: ConnectionTransport {
    let eventLoop: any EventLoop
    let allocator = ByteBufferAllocator()
    /// Set while the handler is in the pipeline.
    fileprivate var context: ChannelHandlerContext?
    /// NIO asked to read while the connection did not accept input.
    fileprivate var readPending = false

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func write(_ bytes: ByteBuffer) {
        context?.write(NIOAny(bytes), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    func writeAndClose(_ bytes: ByteBuffer) {
        guard let context else { return }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(NIOAny(bytes)).whenComplete { _ in loopBound.value.close(promise: nil) }
    }

    func close() {
        context?.close(promise: nil)
    }

    /// Reads again if a read was held back; should the connection still not accept input,
    /// the handler holds the next one back again.
    func resumeReading() {
        guard readPending, let context else { return }
        readPending = false
        context.read()
    }
}

/// Serves a protocol on a NIO channel: the channel handler in front of a ``ServedConnection``.
final class ChannelServer<Connection: ServedConnection>: ChannelDuplexHandler, RemovableChannelHandler
where Connection.Transport == ChannelTransport {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let info: ConnectionInfo
    private let transport: ChannelTransport
    private var connection: Connection?

    init(info: ConnectionInfo, eventLoop: any EventLoop) {
        self.info = info
        self.transport = ChannelTransport(eventLoop: eventLoop)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        transport.context = context
        let connection = Connection(info: info, transport: transport)
        self.connection = connection
        connection.start()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        connection?.stop()
        connection = nil
        transport.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection?.received(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        connection?.readComplete()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if let connection, !connection.acceptsInput {
            transport.readPending = true
            return
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { transport.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            connection?.quiesce()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection?.stop()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connection?.failed()
    }
}
