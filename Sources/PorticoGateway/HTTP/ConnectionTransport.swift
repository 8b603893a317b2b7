import NIOCore

/// What an HTTP connection handler needs of the connection it serves: where its loop is,
/// and how to send bytes, close, and resume reading. A NIO channel (``HTTP1ConnectionHandler``)
/// or a socket of Portico's own server core.
protocol ConnectionTransport: AnyObject {
    /// The loop the connection runs on; every call below is made on it.
    var eventLoop: any EventLoop { get }
    var allocator: ByteBufferAllocator { get }
    /// Queues bytes to send; they go at the next ``flush()``.
    func write(_ bytes: ByteBuffer)
    func flush()
    /// Sends `bytes` and everything queued, then closes once the socket has taken them all
    /// (closing at once could drop bytes not yet sent).
    func writeAndClose(_ bytes: ByteBuffer)
    /// Closes now.
    func close()
    /// Reads again if reading stopped because the handler did not accept input
    /// (``HTTP1Connection/acceptsInput``); nothing otherwise.
    func resumeReading()
}

/// Serves HTTP/1.1 on a NIO channel: the channel handler in front of an ``HTTP1Connection``.
final class HTTP1ConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler, ConnectionTransport {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let eventLoop: any EventLoop
    let allocator = ByteBufferAllocator()
    private let info: ConnectionInfo
    private var connection: HTTP1Connection<HTTP1ConnectionHandler>?
    private var context: ChannelHandlerContext?
    /// NIO asked to read while the connection did not accept input.
    private var readPending = false

    init(info: ConnectionInfo, eventLoop: any EventLoop) {
        self.info = info
        self.eventLoop = eventLoop
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let connection = HTTP1Connection(info: info, transport: self)
        self.connection = connection
        connection.start()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        connection?.stop()
        connection = nil
        self.context = nil
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
            readPending = true
            return
        }
        context.read()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            connection?.quiesce()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connection?.failed()
    }

    // MARK: - ConnectionTransport

    func write(_ bytes: ByteBuffer) {
        context?.write(wrapOutboundOut(bytes), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    func writeAndClose(_ bytes: ByteBuffer) {
        guard let context else { return }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(bytes)).whenComplete { _ in loopBound.value.close(promise: nil) }
    }

    func close() {
        context?.close(promise: nil)
    }

    func resumeReading() {
        guard readPending else { return }
        readPending = false
        context?.read()
    }
}
