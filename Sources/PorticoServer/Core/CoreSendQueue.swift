import CPorticoSystem
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A socket of the core registered with its loop, whose handler changes what it is watched for
/// as it goes.
package protocol CoreSocketHandler: CoreIOHandler {
    var fd: Int32 { get }
    var loop: CoreEventLoop { get }
    /// The events the socket is watched for now.
    var interest: UInt32 { get set }
    var isClosed: Bool { get }
}

extension CoreSocketHandler {
    package func setInterest(_ events: UInt32) {
        guard events != interest, !isClosed else { return }
        interest = events
        loop.modify(fd, events: events)
    }

    /// Watches for `EPOLLOUT` while the socket is full, and not otherwise.
    package func watchWritable(_ full: Bool) {
        setInterest(full ? interest | CoreEvents.writable : interest & ~CoreEvents.writable)
    }

    /// Stops watching the socket and closes it.
    package func closeDescriptor() {
        loop.deregister(fd)
        Glibc.close(fd)
    }
}

/// Bytes a socket of the core has not taken yet, oldest first, and sending them: one `send`
/// for one buffer, one `sendmsg` for several, always with `MSG_NOSIGNAL` (a peer that has
/// gone is an error for the connection to handle, not a SIGPIPE for the process).
package struct CoreSendQueue {
    private var buffers: [ByteBuffer] = []
    /// The bytes queued.
    package private(set) var byteCount = 0

    package enum Outcome {
        /// Everything queued went.
        case sent
        /// The socket is full: wait for `EPOLLOUT`.
        case wouldBlock
        /// The connection failed (reset, gone).
        case failed
    }

    package var isEmpty: Bool { buffers.isEmpty }

    package mutating func append(_ bytes: ByteBuffer) {
        byteCount += bytes.readableBytes
        buffers.append(bytes)
    }

    package mutating func removeAll() {
        buffers.removeAll()
        byteCount = 0
    }

    /// Sends until everything went or the socket takes no more.
    package mutating func send(to fd: Int32) -> Outcome {
        while !buffers.isEmpty {
            let written = buffers.count == 1 ? sendOne(fd) : sendMany(fd)
            if written < 0 {
                return errno == EAGAIN || errno == EINTR ? .wouldBlock : .failed
            }
            consume(written)
        }
        return .sent
    }

    private func sendOne(_ fd: Int32) -> Int {
        buffers[0].withUnsafeReadableBytes { bytes in portico_send(fd, bytes.baseAddress, UInt(bytes.count)) }
    }

    /// One `sendmsg` of up to 64 queued buffers.
    private func sendMany(_ fd: Int32) -> Int {
        let count = min(buffers.count, 64)
        return withUnsafeTemporaryAllocation(of: iovec.self, capacity: count) { vectors in
            // The buffers' memory is only read while `buffers` holds them, which it does
            // until `consume` runs after the call.
            for index in 0..<count {
                buffers[index].withUnsafeReadableBytes { bytes in
                    vectors[index] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
                }
            }
            return portico_sendv(fd, vectors.baseAddress, Int32(count))
        }
    }

    /// Drops `count` bytes the socket took from the front of the queue.
    private mutating func consume(_ count: Int) {
        byteCount -= count
        var left = count
        var done = 0
        while left > 0 && done < buffers.count {
            let size = buffers[done].readableBytes
            if size <= left {
                left -= size
                done += 1
            } else {
                buffers[done].moveReaderIndex(forwardBy: left)
                left = 0
            }
        }
        if done == buffers.count {
            buffers.removeAll(keepingCapacity: true)
        } else if done > 0 {
            buffers.removeFirst(done)
        }
    }
}
