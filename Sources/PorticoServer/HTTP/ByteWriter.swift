import NIOCore
import NIOHTTP1

#if canImport(Glibc)
import Glibc
#endif

/// Writes the many small pieces of a head (a status line, field names, `": "`, values, CRLFs)
/// into a buffer's spare room with plain copies.
///
/// Each `ByteBuffer.write...` call checks capacity and unique ownership and may grow the
/// storage, for each of the forty-odd pieces of a proxied request and its answer. A writer gets the room once, for a bound the caller computes, and then
/// only copies. The bound is checked on every write: a wrong bound stops the process rather
/// than writing past the room.
package struct ByteWriter: ~Copyable {
    private let base: UnsafeMutableRawPointer
    private let capacity: Int
    package private(set) var count = 0

    fileprivate init(_ room: UnsafeMutableRawBufferPointer) {
        base = room.baseAddress!
        capacity = room.count
    }

    package mutating func write(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        precondition(count + bytes.count <= capacity, "ByteWriter: the bound was too small")
        memcpy(base + count, source, bytes.count)
        count += bytes.count
    }

    package mutating func write(_ text: StaticString) {
        write(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    package mutating func write(_ text: String) {
        if let done: Void = text.utf8.withContiguousStorageIfAvailable({ write(UnsafeRawBufferPointer($0)) }) {
            return done
        }
        var copy = text
        copy.withUTF8 { write(UnsafeRawBufferPointer($0)) }
    }

    package mutating func write(_ text: Substring) {
        if let done: Void = text.utf8.withContiguousStorageIfAvailable({ write(UnsafeRawBufferPointer($0)) }) {
            return done
        }
        write(String(text))
    }

    package mutating func write(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { write($0) }
    }

    package mutating func write(byte: UInt8) {
        precondition(count < capacity, "ByteWriter: the bound was too small")
        base.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    /// A non-negative integer in decimal (at most 20 bytes).
    package mutating func write(decimal value: Int) {
        precondition(value >= 0 && count + 20 <= capacity, "ByteWriter: the bound was too small")
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        var length = 0
        withUnsafeMutableBytes(of: &digits) { scratch in
            var rest = UInt64(value)
            repeat {
                scratch[23 - length] = UInt8(truncatingIfNeeded: 0x30 + rest % 10)
                rest /= 10
                length += 1
            } while rest > 0
            memcpy(base + count, scratch.baseAddress! + 24 - length, length)
        }
        count += length
    }

    /// A status line without its CRLF: `HTTP/1.1 200 OK`.
    package mutating func writeStatusLine(_ status: HTTPResponseStatus) {
        write("HTTP/1.1 ")
        write(decimal: Int(status.code))
        write(byte: 0x20)
        write(status.reasonPhrase)
    }

    /// `content-length`, `connection: close` when closing, and the blank line.
    package mutating func writeFraming(contentLength: Int, close: Bool) {
        write("content-length: ")
        write(decimal: contentLength)
        write(close ? "\r\nconnection: close\r\n\r\n" : "\r\n\r\n")
    }

    /// Room for what ``writeFraming(contentLength:close:)`` writes.
    package static let framingBound = 64

    /// Room for the longest status line ``writeStatusLine(_:)`` writes.
    package static func statusLineBound(_ status: HTTPResponseStatus) -> Int {
        32 + status.reasonPhrase.utf8.count
    }
}

extension ByteBuffer {
    /// Writes with a ``ByteWriter`` given at least `bound` bytes of room.
    package mutating func write(bound: Int, _ body: (inout ByteWriter) -> Void) {
        writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { room in
            var writer = ByteWriter(room)
            body(&writer)
            return writer.count
        }
    }
}

package enum ReusedBuffer {
    /// The largest buffer a connection keeps for its next request or answer; a larger one
    /// (a large body) is let go of rather than held while the connection idles.
    package static let maxKeptBytes = 4096
}

extension Optional where Wrapped == ByteBuffer {
    /// Empties the buffer with room for at least `capacity` bytes, allocating only when there is
    /// none yet or something else (a write not yet flushed) still holds its storage. A buffer
    /// kept per connection and reused this way saves allocating a storage object and its bytes
    /// per request.
    package mutating func reuse(capacity: Int) {
        if self == nil {
            self = ByteBufferAllocator().buffer(capacity: capacity)
        } else {
            self!.clear(minimumCapacity: capacity)
        }
    }
}
