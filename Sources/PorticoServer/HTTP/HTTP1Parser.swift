#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOHTTP1

/// A request head parsed straight from the connection's buffer.
///
/// The head keeps its bytes (a slice of the buffer it arrived in) and what the connection
/// needs from it; the header list is only built as `HTTPHeaders` when a service asks for it
/// (fixed responses never do).
package struct HTTP1RequestHead {
    /// The head as received, request line to blank line.
    package let bytes: ByteBuffer
    package let method: String
    package let uri: String
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    package let minorVersion: Int
    /// Where the `Host` value is in `bytes`, if there is one.
    package let hostRange: Range<Int>?
    /// The declared body length; nil when there is none or the body is chunked.
    package let contentLength: Int?
    package let chunked: Bool
    /// Whether the connection stays open after the response (by version and `Connection`).
    package let keepAlive: Bool
    /// `Expect: 100-continue` was sent.
    package let expectsContinue: Bool
    /// Where the header lines start in `bytes`.
    package let fieldsStart: Int
    /// A `Connection` field was sent (the fields it names are for this hop only).
    package let hasConnectionField: Bool

    /// The `Host` value, if any: made into a string only when asked for (routing by host,
    /// forwarding), not for every request.
    package var host: String? {
        guard let hostRange else { return nil }
        return bytes.getString(at: bytes.readerIndex + hostRange.lowerBound, length: hostRange.count)
    }

    package var hasBody: Bool { chunked || (contentLength ?? 0) > 0 }
    package var isHead: Bool { method == "HEAD" }

    /// The same head over `copy`, a copy of its bytes (the positions are from the reader
    /// index, so they hold in the copy).
    package func rebased(onto copy: ByteBuffer) -> HTTP1RequestHead {
        precondition(copy.readableBytes == bytes.readableBytes, "a head is rebased onto a copy of its own bytes")
        return HTTP1RequestHead(
            bytes: copy, method: method, uri: uri, minorVersion: minorVersion, hostRange: hostRange, contentLength: contentLength,
            chunked: chunked, keepAlive: keepAlive, expectsContinue: expectsContinue, fieldsStart: fieldsStart, hasConnectionField: hasConnectionField)
    }

    /// No request: what a finished request's slot holds, so that it keeps no bytes alive.
    /// Each with a (one byte) storage of its own: the slot is filled and emptied per request,
    /// and every `ByteBuffer()` shares one storage across the process.
    package static func empty() -> HTTP1RequestHead {
        HTTP1RequestHead(
            bytes: ByteBufferAllocator().buffer(capacity: 1), method: "", uri: "", minorVersion: 1, hostRange: nil, contentLength: nil, chunked: false,
            keepAlive: false, expectsContinue: false, fieldsStart: 0, hasConnectionField: false)
    }

    /// The header fields in the order received, names and values as sent (values trimmed).
    package func headers() -> HTTPHeaders {
        var headers = HTTPHeaders()
        bytes.withUnsafeReadableBytes { raw in
            HTTP1Fields.forEach(raw, from: fieldsStart) { name, value in
                headers.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
            }
        }
        return headers
    }
}

/// Header lines that have already been checked (by the parser, or written by the gateway).
package enum HTTP1Fields {
    /// Calls `body` with the name and the trimmed value of each line from `start` up to the
    /// blank line or the end of `raw`.
    package static func forEach(_ raw: UnsafeRawBufferPointer, from start: Int, _ body: (_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Void) {
        var index = start
        while index < raw.count {
            var end = index
            while end < raw.count, raw[end] != UInt8(ascii: "\n") { end += 1 }
            let lineEnd = end > index && raw[end - 1] == UInt8(ascii: "\r") ? end - 1 : end
            if lineEnd == index { break }
            var colon = index
            while colon < lineEnd, raw[colon] != UInt8(ascii: ":") { colon += 1 }
            var valueStart = Swift.min(colon + 1, lineEnd)
            var valueEnd = lineEnd
            while valueStart < valueEnd, raw[valueStart] == 0x20 || raw[valueStart] == 0x09 { valueStart += 1 }
            while valueEnd > valueStart, raw[valueEnd - 1] == 0x20 || raw[valueEnd - 1] == 0x09 { valueEnd -= 1 }
            body(UnsafeRawBufferPointer(rebasing: raw[index..<colon]), UnsafeRawBufferPointer(rebasing: raw[valueStart..<valueEnd]))
            index = end + 1
        }
    }

    /// Lines written as `name: value\r\n` made into `HTTPHeaders`.
    package static func headers(_ lines: ByteBuffer) -> HTTPHeaders {
        var headers = HTTPHeaders()
        lines.withUnsafeReadableBytes { raw in
            forEach(raw, from: 0) { name, value in
                headers.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
            }
        }
        return headers
    }
}

/// Why a request could not be parsed; each answers with its status and closes the connection.
package enum HTTP1ParseError: Error, Equatable {
    /// Not HTTP/1.x as RFC 9112 defines it (the reason says what was wrong).
    case malformed(String)
    /// The head is longer than the limit, or has more fields than allowed.
    case headTooLarge
    /// `HTTP/2.0`, `HTTP/3.0` and the like on an HTTP/1 connection.
    case versionNotSupported
    /// A transfer coding other than `chunked`.
    case unsupportedTransferCoding
    /// A chunk would take the body past the route's limit.
    case bodyTooLarge(Int)

    package var status: HTTPResponseStatus {
        switch self {
        case .malformed: .badRequest
        case .headTooLarge: .requestHeaderFieldsTooLarge
        case .versionNotSupported: .httpVersionNotSupported
        case .unsupportedTransferCoding: .notImplemented
        case .bodyTooLarge: .payloadTooLarge
        }
    }

    /// What was wrong, said of an upstream's response.
    package func responseReason(maxBytes: Int) -> String {
        switch self {
        case .malformed(let reason): reason
        case .headTooLarge: "head larger than \(maxBytes) bytes"
        case .versionNotSupported: "not HTTP/1.x"
        case .unsupportedTransferCoding: "a transfer coding other than chunked"
        case .bodyTooLarge(let limit): "body larger than \(limit) bytes"
        }
    }

    package var message: String {
        switch self {
        case .malformed(let reason): "malformed HTTP request: \(reason)"
        case .headTooLarge: "request headers are too large"
        case .versionNotSupported: "only HTTP/1.0 and HTTP/1.1 are served on this connection"
        case .unsupportedTransferCoding: "the only transfer coding accepted is chunked"
        case .bodyTooLarge(let limit): "request body is larger than \(limit) bytes"
        }
    }
}

/// Parses HTTP/1.1 requests (RFC 9112) from a connection's bytes, one event at a time:
/// a head, the body in slices of the buffer (chunked framing removed), then the end.
///
/// It is strict where leniency lets two parsers disagree about where a request ends
/// (request smuggling): whitespace before a field's colon, folded lines, a bare CR,
/// `Content-Length` with `Transfer-Encoding`, differing `Content-Length`s, a second or
/// malformed `Host`, a target that is not origin-form, chunk framing that is not CRLF, a chunk
/// size with anything but extensions after it, and trailer lines that are not fields are
/// refused. A bare LF ends a line of the head, as RFC 9112 allows.
package struct HTTP1Parser {
    package enum Event {
        case head(HTTP1RequestHead)
        case body(ByteBuffer)
        case end
        /// The buffer holds no complete event; read more.
        case needMore
    }

    private enum State {
        case head
        case fixedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers(seen: Int)
        case ending
    }

    private var state: State = .head
    package var maxHeadBytes: Int
    /// How many body bytes the chunks of the current request may still announce: set by the
    /// connection from the route's limit once the head is routed, so that a chunk size past it
    /// is refused when it is read, not after its bytes were waited for.
    package var bodyAllowance = Int.max
    package var maxHeaderCount: Int

    package init(maxHeadBytes: Int, maxHeaderCount: Int) {
        self.maxHeadBytes = maxHeadBytes
        self.maxHeaderCount = maxHeaderCount
    }

    /// Parses only a body framed as given, then ends: for a response whose head was read
    /// elsewhere (the upstream client).
    package static func body(chunked: Bool, length: Int, maxTrailerBytes: Int) -> HTTP1Parser {
        var parser = HTTP1Parser(maxHeadBytes: maxTrailerBytes, maxHeaderCount: 0)
        parser.state = chunked ? .chunkSize : length > 0 ? .fixedBody(remaining: length) : .ending
        return parser
    }

    /// Whether the parser is between requests (nothing of the next one consumed).
    package var isBetweenRequests: Bool {
        if case .head = state { return true }
        return false
    }

    /// The next event from `buffer`, consuming what it covers.
    package mutating func next(_ buffer: inout ByteBuffer) throws(HTTP1ParseError) -> Event {
        switch state {
        case .head:
            guard let (head, length) = try parseHead(buffer) else { return .needMore }
            buffer.moveReaderIndex(forwardBy: length)
            bodyAllowance = .max
            if head.chunked {
                state = .chunkSize
            } else if let length = head.contentLength, length > 0 {
                state = .fixedBody(remaining: length)
            } else {
                state = .ending
            }
            return .head(head)
        case .ending:
            state = .head
            return .end
        case .fixedBody(let remaining):
            guard buffer.readableBytes > 0 else { return .needMore }
            let take = min(remaining, buffer.readableBytes)
            let slice = buffer.readSlice(length: take)!
            state = take == remaining ? .ending : .fixedBody(remaining: remaining - take)
            return .body(slice)
        case .chunkSize:
            guard let (size, length) = try parseChunkSize(buffer) else { return .needMore }
            guard size <= bodyAllowance else { throw .bodyTooLarge(bodyAllowance) }
            bodyAllowance -= size
            buffer.moveReaderIndex(forwardBy: length)
            state = size == 0 ? .trailers(seen: 0) : .chunkData(remaining: size)
            return try next(&buffer)
        case .chunkData(let remaining):
            guard buffer.readableBytes > 0 else { return .needMore }
            let take = min(remaining, buffer.readableBytes)
            let slice = buffer.readSlice(length: take)!
            state = take == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - take)
            return .body(slice)
        case .chunkDataEnd:
            guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return .needMore }
            if first == UInt8(ascii: "\r") {
                guard let second = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) else { return .needMore }
                guard second == UInt8(ascii: "\n") else { throw .malformed("chunk data not followed by CRLF") }
                buffer.moveReaderIndex(forwardBy: 2)
            } else {
                throw .malformed(first == UInt8(ascii: "\n") ? "chunk data not followed by CRLF" : "chunk longer than its size")
            }
            state = .chunkSize
            return try next(&buffer)
        case .trailers(let seen):
            // Trailer fields are checked as header fields are, then dropped: nothing here acts
            // on them. A line that is not a field (a request line after `0\r\n`, say) is refused.
            guard let (lineEnd, next) = try Self.chunkLine(in: buffer) else {
                if seen + buffer.readableBytes > maxHeadBytes { throw .headTooLarge }
                return .needMore
            }
            let length = next - buffer.readerIndex
            let isEmpty = lineEnd == buffer.readerIndex
            if !isEmpty {
                try Self.withBytes(buffer) { raw throws(HTTP1ParseError) in try Self.checkField(raw, from: 0, to: lineEnd - buffer.readerIndex) }
            }
            buffer.moveReaderIndex(forwardBy: length)
            if isEmpty {
                state = .head
                return .end
            }
            if seen + length > maxHeadBytes { throw .headTooLarge }
            state = .trailers(seen: seen + length)
            return try self.next(&buffer)
        }
    }

    /// The end of the chunk-framing line starting at the reader index (before its CRLF) and
    /// where the next line starts; nil if no LF has arrived yet. Chunk sizes and trailers end
    /// in CRLF: a bare LF there is refused, since parsers that differ on it disagree about
    /// where the body ends.
    private static func chunkLine(in buffer: ByteBuffer) throws(HTTP1ParseError) -> (end: Int, next: Int)? {
        try withBytes(buffer) { raw throws(HTTP1ParseError) -> (Int, Int)? in
            guard let base = raw.baseAddress, let found = memchr(base, Int32(UInt8(ascii: "\n")), raw.count) else { return nil }
            let lf = base.distance(to: UnsafeRawPointer(found))
            guard lf > 0 && raw[lf - 1] == UInt8(ascii: "\r") else { throw .malformed("chunk framing line not ended by CRLF") }
            return (buffer.readerIndex + lf - 1, buffer.readerIndex + lf + 1)
        }
    }

    /// Checks one header or trailer line, `raw[start..<end]` without its line ending: a token
    /// name right before the colon, a value without control bytes, no folding.
    package static func checkField(_ raw: UnsafeRawBufferPointer, from start: Int, to end: Int) throws(HTTP1ParseError) {
        let first = raw[start]
        if first == 0x20 || first == 0x09 { throw .malformed("folded header line") }
        var colon = start
        while colon < end, raw[colon] != UInt8(ascii: ":") {
            guard HTTPSyntax.isTokenByte(raw[colon]) else {
                throw .malformed(raw[colon] == 0x20 || raw[colon] == 0x09 ? "whitespace in or after a header name" : "invalid character in a header name")
            }
            colon += 1
        }
        guard colon < end, colon > start else { throw .malformed("header line without a name and colon") }
        guard HTTPSyntax.isFieldValue(UnsafeRawBufferPointer(rebasing: raw[(colon + 1)..<end]), trimmed: false) else {
            throw .malformed("control character in a header value")
        }
    }

    // MARK: - Head

    /// A complete head and its length in bytes, or nil while it is incomplete.
    private func parseHead(_ buffer: ByteBuffer) throws(HTTP1ParseError) -> (HTTP1RequestHead, Int)? {
        guard let (scan, length) = try Self.withBytes(buffer, { raw throws(HTTP1ParseError) in try scanHead(raw) }) else {
            return nil
        }
        let bytes = buffer.getSlice(at: buffer.readerIndex + scan.start, length: length - scan.start)!
        let head = HTTP1RequestHead(
            bytes: bytes,
            method: scan.method,
            uri: scan.uri,
            minorVersion: scan.minorVersion,
            hostRange: scan.fields.host.map { ($0.lowerBound - scan.start)..<($0.upperBound - scan.start) },
            contentLength: scan.fields.contentLength,
            chunked: scan.fields.chunked,
            keepAlive: scan.fields.keepAlive(minorVersion: scan.minorVersion),
            expectsContinue: scan.fields.expectsContinue,
            fieldsStart: scan.fields.start - scan.start,
            hasConnectionField: scan.fields.connectionField
        )
        return (head, length)
    }

    private struct HeadScan {
        var start = 0
        var method = ""
        var uri = ""
        var minorVersion = 1
        var fields = HTTP1FieldScan()
    }

    /// Scans a head from the start of `raw`: nil if it has not all arrived.
    private func scanHead(_ raw: UnsafeRawBufferPointer) throws(HTTP1ParseError) -> (HeadScan, Int)? {
        var scan = HeadScan()
        var index = 0
        // RFC 9112 2.2: empty lines before the request line are ignored.
        while index < raw.count, raw[index] == UInt8(ascii: "\r") || raw[index] == UInt8(ascii: "\n") {
            index += 1
            if index > 64 { throw .malformed("empty lines before the request line") }
        }
        scan.start = index
        // The request line.
        guard let (lineEnd, next) = try HTTP1Head.lineBounds(raw, from: index, maxHeadBytes: maxHeadBytes) else { return nil }
        try parseRequestLine(raw, from: index, to: lineEnd, into: &scan)
        guard let fields = try HTTP1Head.scanFields(raw, from: next, maxHeadBytes: maxHeadBytes, maxFields: maxHeaderCount, request: true) else { return nil }
        scan.fields = fields
        if fields.end - scan.start > maxHeadBytes { throw .headTooLarge }
        if fields.chunked && fields.contentLength != nil { throw .malformed("both Content-Length and Transfer-Encoding") }
        if fields.chunked && scan.minorVersion == 0 { throw .malformed("chunked transfer coding in an HTTP/1.0 request") }
        if scan.minorVersion == 1 && fields.host == nil { throw .malformed("an HTTP/1.1 request needs a Host header") }
        return (scan, fields.end)
    }

    private func parseRequestLine(_ raw: UnsafeRawBufferPointer, from start: Int, to end: Int, into scan: inout HeadScan) throws(HTTP1ParseError) {
        var index = start
        while index < end, raw[index] != 0x20 {
            guard HTTPSyntax.isTokenByte(raw[index]) else { throw .malformed("invalid character in the method") }
            index += 1
        }
        guard index > start, index < end else { throw .malformed("request line is not METHOD TARGET VERSION") }
        let methodEnd = index
        index += 1
        let targetStart = index
        while index < end, raw[index] != 0x20 {
            let byte = raw[index]
            guard byte > 0x20, byte != 0x7F else { throw .malformed("invalid character in the request target") }
            index += 1
        }
        guard index > targetStart, index < end else { throw .malformed("request line is not METHOD TARGET VERSION") }
        let targetEnd = index
        index += 1
        let version = UnsafeRawBufferPointer(rebasing: raw[index..<end])
        guard version.count == 8, version.starts(with: "HTTP/".utf8), version[6] == UInt8(ascii: "."),
              (0x30...0x39).contains(version[5]), (0x30...0x39).contains(version[7])
        else { throw .malformed("request line is not METHOD TARGET VERSION") }
        guard version[5] == UInt8(ascii: "1"), version[7] <= UInt8(ascii: "1") else { throw .versionNotSupported }
        scan.minorVersion = Int(version[7] - 0x30)
        let method = UnsafeRawBufferPointer(rebasing: raw[start..<methodEnd])
        scan.method = Self.knownMethod(method) ?? String(decoding: method, as: UTF8.self)
        if let problem = HTTPSyntax.targetProblem(UnsafeRawBufferPointer(rebasing: raw[targetStart..<targetEnd]), method: scan.method, charactersChecked: true) { throw .malformed(problem) }
        scan.uri = String(decoding: UnsafeRawBufferPointer(rebasing: raw[targetStart..<targetEnd]), as: UTF8.self)
    }

    /// The common methods as literals (no string made and checked per request).
    private static func knownMethod(_ bytes: UnsafeRawBufferPointer) -> String? {
        func matches(_ literal: StaticString) -> Bool {
            bytes.count == literal.utf8CodeUnitCount && memcmp(bytes.baseAddress!, literal.utf8Start, bytes.count) == 0
        }
        switch bytes.count {
        case 3: return matches("GET") ? "GET" : matches("PUT") ? "PUT" : nil
        case 4: return matches("POST") ? "POST" : matches("HEAD") ? "HEAD" : nil
        case 5: return matches("PATCH") ? "PATCH" : nil
        case 6: return matches("DELETE") ? "DELETE" : nil
        case 7: return matches("OPTIONS") ? "OPTIONS" : nil
        default: return nil
        }
    }

    // MARK: - Chunks

    /// A chunk-size line's size and length, or nil while incomplete.
    private func parseChunkSize(_ buffer: ByteBuffer) throws(HTTP1ParseError) -> (Int, Int)? {
        guard let (lineEnd, next) = try Self.chunkLine(in: buffer) else {
            if buffer.readableBytes > 1024 { throw .malformed("chunk size line too long") }
            return nil
        }
        if next - buffer.readerIndex > 1024 { throw .malformed("chunk size line too long") }
        return try Self.withBytes(buffer) { raw throws(HTTP1ParseError) -> (Int, Int) in
            let end = lineEnd - buffer.readerIndex
            var index = 0
            var size = 0
            while index < end, let digit = Self.hexValue(raw[index]) {
                guard index < 15 else { throw .malformed("chunk size too large") }
                size = size << 4 | digit
                index += 1
            }
            guard index > 0 else { throw .malformed("chunk size is not hexadecimal") }
            // Anything after the size must be chunk extensions (`;name=value`, RFC 9112 7.1.1),
            // ignored here; whitespace is allowed only before their `;`.
            var afterSize = index
            while afterSize < end, raw[afterSize] == 0x20 || raw[afterSize] == 0x09 { afterSize += 1 }
            if afterSize < end, raw[afterSize] == UInt8(ascii: ";") { index = afterSize }
            if index < end {
                guard raw[index] == UInt8(ascii: ";") else { throw .malformed("chunk size is not hexadecimal") }
                while index < end {
                    let byte = raw[index]
                    if byte < 0x20 && byte != 0x09 || byte == 0x7F { throw .malformed("control character in a chunk extension") }
                    index += 1
                }
            }
            return (size, next - buffer.readerIndex)
        }
    }

    // MARK: - Bytes

    /// `withUnsafeReadableBytes` with the parser's typed error (NIO's passes it through, so no
    /// `Result` need be wrapped around it).
    package static func withBytes<T>(_ buffer: ByteBuffer, _ body: (UnsafeRawBufferPointer) throws(HTTP1ParseError) -> T) throws(HTTP1ParseError) -> T {
        try buffer.withUnsafeReadableBytes(body)
    }

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case 0x30...0x39: Int(byte - 0x30)
        case 0x41...0x46: Int(byte - 0x41 + 10)
        case 0x61...0x66: Int(byte - 0x61 + 10)
        default: nil
        }
    }

    package static func parseContentLength(_ value: UnsafeRawBufferPointer) throws(HTTP1ParseError) -> Int {
        guard !value.isEmpty, value.count <= 18 else { throw .malformed("Content-Length is not a number") }
        var length = 0
        for byte in value {
            guard byte >= 0x30 && byte <= 0x39 else { throw .malformed("Content-Length is not a number") }
            length = length * 10 + Int(byte - 0x30)
        }
        return length
    }

    /// ASCII case-insensitive equality with a lower-case string.
    package static func equalsLowercase(_ bytes: UnsafeRawBufferPointer, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        let expected = lowercase.utf8Start
        for index in 0..<bytes.count {
            let byte = bytes[index]
            let folded = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            if folded != expected[index] { return false }
        }
        return true
    }

    /// The same against lowercase bytes known only at run time.
    package static func equalsLowercase(_ bytes: UnsafeRawBufferPointer, _ lowercase: [UInt8]) -> Bool {
        guard bytes.count == lowercase.count else { return false }
        for index in 0..<bytes.count {
            let byte = bytes[index]
            let folded = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            if folded != lowercase[index] { return false }
        }
        return true
    }

    /// Calls `body` with each comma-separated token of a list value, trimmed.
    package static func forEachToken(_ value: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
        var start = 0
        while start <= value.count {
            var end = start
            while end < value.count, value[end] != UInt8(ascii: ",") { end += 1 }
            var a = start
            var b = end
            while a < b, value[a] == 0x20 || value[a] == 0x09 { a += 1 }
            while b > a, value[b - 1] == 0x20 || value[b - 1] == 0x09 { b -= 1 }
            if b > a { body(UnsafeRawBufferPointer(rebasing: value[a..<b])) }
            start = end + 1
        }
    }
}
