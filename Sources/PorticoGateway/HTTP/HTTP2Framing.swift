import NIOCore

/// HTTP/2 frame types (RFC 9113 6). Frames of other types are ignored, as 5.5 requires.
enum HTTP2FrameType {
    static let data: UInt8 = 0x0
    static let headers: UInt8 = 0x1
    static let priority: UInt8 = 0x2
    static let rstStream: UInt8 = 0x3
    static let settings: UInt8 = 0x4
    static let pushPromise: UInt8 = 0x5
    static let ping: UInt8 = 0x6
    static let goAway: UInt8 = 0x7
    static let windowUpdate: UInt8 = 0x8
    static let continuation: UInt8 = 0x9
}

/// Frame flags (RFC 9113 6). `ack` shares its bit with `endStream`; each applies to its own frame types.
enum HTTP2Flag {
    static let endStream: UInt8 = 0x1
    static let ack: UInt8 = 0x1
    static let endHeaders: UInt8 = 0x4
    static let padded: UInt8 = 0x8
    static let priority: UInt8 = 0x20
}

/// SETTINGS parameters (RFC 9113 6.5.2).
enum HTTP2SettingID {
    static let headerTableSize: UInt16 = 0x1
    static let enablePush: UInt16 = 0x2
    static let maxConcurrentStreams: UInt16 = 0x3
    static let initialWindowSize: UInt16 = 0x4
    static let maxFrameSize: UInt16 = 0x5
    static let maxHeaderListSize: UInt16 = 0x6
}

/// Error codes of RST_STREAM and GOAWAY (RFC 9113 7).
enum HTTP2Error: UInt32, Sendable {
    case noError = 0x0
    case protocolError = 0x1
    case internalError = 0x2
    case flowControlError = 0x3
    case settingsTimeout = 0x4
    case streamClosed = 0x5
    case frameSizeError = 0x6
    case refusedStream = 0x7
    case cancel = 0x8
    case compressionError = 0x9
    case connectError = 0xa
    case enhanceYourCalm = 0xb
    case inadequateSecurity = 0xc
    case http11Required = 0xd
}

/// An error that ends the whole connection (RFC 9113 5.4.1): answered with GOAWAY carrying
/// `code`, then the connection closes. `reason` goes in the GOAWAY's debug data, so a
/// client's log says what it did wrong.
struct HTTP2ConnectionError: Error, Equatable {
    let code: HTTP2Error
    let reason: String

    init(_ code: HTTP2Error, _ reason: String) {
        self.code = code
        self.reason = reason
    }
}

/// A frame's fixed 9-byte header (RFC 9113 4.1).
struct HTTP2FrameHeader: Equatable {
    var length: Int
    var type: UInt8
    var flags: UInt8
    var streamID: UInt32

    func has(_ flag: UInt8) -> Bool { flags & flag != 0 }
}

/// Cuts the bytes a client sends into frames: first the connection preface, then one frame
/// at a time, each payload a slice of the bytes read (nothing is copied).
struct HTTP2FrameReader {
    static let preface: StaticString = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    static let prefaceLength = 24

    private(set) var sawPreface = false
    /// The largest payload accepted: our SETTINGS_MAX_FRAME_SIZE.
    var maxFrameSize = 16_384

    /// The next whole frame in `buffer`, or nil when more bytes are needed; what it returns
    /// is consumed from `buffer`.
    mutating func next(from buffer: inout ByteBuffer) throws(HTTP2ConnectionError) -> (header: HTTP2FrameHeader, payload: ByteBuffer)? {
        if !sawPreface {
            let available = min(buffer.readableBytes, Self.prefaceLength)
            let matches = buffer.withUnsafeReadableBytes { bytes in
                Self.preface.withUTF8Buffer { preface in
                    bytes.prefix(available).elementsEqual(preface.prefix(available))
                }
            }
            guard matches else { throw HTTP2ConnectionError(.protocolError, "the connection did not start with the HTTP/2 preface") }
            guard available == Self.prefaceLength else { return nil }
            buffer.moveReaderIndex(forwardBy: Self.prefaceLength)
            sawPreface = true
        }
        guard buffer.readableBytes >= 9 else { return nil }
        let start = buffer.readerIndex
        let high = Int(buffer.getInteger(at: start, as: UInt16.self)!)
        let length = high << 8 | Int(buffer.getInteger(at: start + 2, as: UInt8.self)!)
        guard length <= maxFrameSize else {
            throw HTTP2ConnectionError(.frameSizeError, "a frame of \(length) bytes is larger than the \(maxFrameSize) allowed")
        }
        guard buffer.readableBytes >= 9 + length else { return nil }
        let header = HTTP2FrameHeader(
            length: length,
            type: buffer.getInteger(at: start + 3, as: UInt8.self)!,
            flags: buffer.getInteger(at: start + 4, as: UInt8.self)!,
            streamID: buffer.getInteger(at: start + 5, as: UInt32.self)! & 0x7FFF_FFFF
        )
        buffer.moveReaderIndex(forwardBy: 9)
        return (header, buffer.readSlice(length: length)!)
    }
}

extension ByteBuffer {
    /// Writes a frame header; the payload follows.
    mutating func writeHTTP2FrameHeader(length: Int, type: UInt8, flags: UInt8 = 0, streamID: UInt32) {
        // Two writes instead of five: length (3 bytes), type, flags and the stream's top 3
        // bytes as one 64-bit integer, then its last byte.
        let stream = UInt64(streamID & 0x7FFF_FFFF)
        let head = UInt64(length & 0xFF_FFFF) << 40 | UInt64(type) << 32 | UInt64(flags) << 24 | stream >> 8
        writeInteger(head)
        writeInteger(UInt8(truncatingIfNeeded: stream))
    }

    /// Sets the length of the frame whose header starts at `index`, once its payload is written.
    mutating func setHTTP2FrameLength(_ length: Int, at index: Int) {
        setInteger(UInt16(truncatingIfNeeded: length >> 8), at: index)
        setInteger(UInt8(truncatingIfNeeded: length), at: index + 2)
    }

    mutating func writeHTTP2RSTStream(_ streamID: UInt32, _ error: HTTP2Error) {
        writeHTTP2FrameHeader(length: 4, type: HTTP2FrameType.rstStream, streamID: streamID)
        writeInteger(error.rawValue)
    }

    mutating func writeHTTP2WindowUpdate(_ streamID: UInt32, increment: Int) {
        writeHTTP2FrameHeader(length: 4, type: HTTP2FrameType.windowUpdate, streamID: streamID)
        writeInteger(UInt32(increment) & 0x7FFF_FFFF)
    }

    mutating func writeHTTP2GoAway(lastStreamID: UInt32, _ error: HTTP2Error, debug: String = "") {
        let debugBytes = debug.utf8.prefix(256)
        writeHTTP2FrameHeader(length: 8 + debugBytes.count, type: HTTP2FrameType.goAway, streamID: 0)
        writeInteger(lastStreamID & 0x7FFF_FFFF)
        writeInteger(error.rawValue)
        writeBytes(debugBytes)
    }

    mutating func writeHTTP2Settings(_ settings: [(UInt16, UInt32)]) {
        writeHTTP2FrameHeader(length: 6 * settings.count, type: HTTP2FrameType.settings, streamID: 0)
        for (id, value) in settings {
            writeInteger(id)
            writeInteger(value)
        }
    }
}
