import NIOCore
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#endif

/// What the fields of an HTTP/1 head say about its framing and its connection.
package struct HTTP1FieldScan {
    /// Where the first field line starts, and where the head ends (after its blank line).
    package var start = 0
    package var end = 0
    /// Where the blank line that ends the head starts.
    package var blankLine = 0
    /// Where the `Host` value is (requests).
    package var host: Range<Int>?
    package var contentLength: Int?
    package var chunked = false
    package var connectionClose = false
    package var connectionKeepAlive = false
    /// A `Connection` field is present.
    package var connectionField = false
    /// A `Connection` field names fields other than `close` and `keep-alive`.
    package var connectionNamesFields = false
    package var expectsContinue = false

    /// Whether the connection stays open after this message: HTTP/1.1 unless `close`,
    /// HTTP/1.0 only with `keep-alive`.
    package func keepAlive(minorVersion: Int) -> Bool {
        minorVersion == 1 ? !connectionClose : connectionKeepAlive && !connectionClose
    }
}

/// An upstream's response head, as the upstream client reads it.
package struct HTTP1ResponseHead {
    package var status: Int
    /// The header lines as they came, a slice of the buffer read (what is passed on is
    /// decided as they are written: ``UpstreamResponse/writeFields(into:)``).
    package var fields: ByteBuffer
    /// A `Connection` field names fields other than `close` and `keep-alive`.
    package var namesConnectionFields: Bool
    package var contentLength: Int?
    package var chunked: Bool
    package var keepAlive: Bool
    /// The head's length in bytes.
    package var length: Int
    /// Where the lines are, from the start of the head.
    package var fieldsRange = 0..<0

    /// The fields passed on to the client.
    package var headers: HTTPHeaders {
        UpstreamResponse(status: .ok, fields: fields, namesConnectionFields: namesConnectionFields, body: ByteBuffer()).headers
    }
}

/// The one reading of HTTP/1 heads (RFC 9112), for requests from clients (``HTTP1Parser``)
/// and for responses from upstreams: lines, fields and the framing they declare are read by
/// the same code with the same rules, so that the gateway cannot disagree with itself about
/// where a message ends. Read as bytes, without copying the lines.
package enum HTTP1Head {
    /// Where the line starting at `start` ends (before CRLF or LF) and the next begins; nil
    /// if it has not all arrived.
    package static func lineBounds(_ raw: UnsafeRawBufferPointer, from start: Int, maxHeadBytes: Int) throws(HTTP1ParseError) -> (Int, Int)? {
        guard start < raw.count, let base = raw.baseAddress,
              let found = memchr(base + start, Int32(UInt8(ascii: "\n")), raw.count - start)
        else {
            if raw.count > maxHeadBytes + 64 { throw .headTooLarge }
            return nil
        }
        let lf = base.distance(to: UnsafeRawPointer(found))
        if lf > maxHeadBytes + 64 { throw .headTooLarge }
        // A CR left inside the line (a bare CR) fails the checks of names, values and the
        // start line's parts.
        let end = lf > start && raw[lf - 1] == UInt8(ascii: "\r") ? lf - 1 : lf
        return (end, lf + 1)
    }

    /// Reads the field lines from `index` to the blank line; nil if they have not all arrived.
    /// Refuses folded lines, names that are not tokens or have whitespace before the colon,
    /// control bytes in values, differing `Content-Length`s, a transfer coding other than
    /// `chunked` or `chunked` twice, and (`request`) a second or malformed `Host`.
    package static func scanFields(_ raw: UnsafeRawBufferPointer, from index: Int, maxHeadBytes: Int, maxFields: Int, request: Bool) throws(HTTP1ParseError) -> HTTP1FieldScan? {
        var scan = HTTP1FieldScan()
        scan.start = index
        var index = index
        var fields = 0
        var transferEncodings = 0
        while true {
            guard let (lineEnd, next) = try lineBounds(raw, from: index, maxHeadBytes: maxHeadBytes) else { return nil }
            if lineEnd == index {
                scan.blankLine = index
                scan.end = next
                return scan
            }
            fields += 1
            if fields > maxFields { throw .headTooLarge }
            try HTTP1Parser.checkField(raw, from: index, to: lineEnd)
            var colon = index
            while raw[colon] != UInt8(ascii: ":") { colon += 1 }
            var valueStart = colon + 1
            var valueEnd = lineEnd
            while valueStart < valueEnd, raw[valueStart] == 0x20 || raw[valueStart] == 0x09 { valueStart += 1 }
            while valueEnd > valueStart, raw[valueEnd - 1] == 0x20 || raw[valueEnd - 1] == 0x09 { valueEnd -= 1 }
            let name = UnsafeRawBufferPointer(rebasing: raw[index..<colon])
            let value = UnsafeRawBufferPointer(rebasing: raw[valueStart..<valueEnd])
            switch name.count {
            case 4 where request && HTTP1Parser.equalsLowercase(name, "host"):
                if scan.host != nil { throw .malformed("more than one Host header") }
                guard HTTPSyntax.isHost(value) else { throw .malformed("the Host header is not a host name or address with an optional port") }
                scan.host = valueStart..<valueEnd
            case 14 where HTTP1Parser.equalsLowercase(name, "content-length"):
                let length = try HTTP1Parser.parseContentLength(value)
                if let existing = scan.contentLength, existing != length { throw .malformed("differing Content-Length headers") }
                scan.contentLength = length
            case 17 where HTTP1Parser.equalsLowercase(name, "transfer-encoding"):
                transferEncodings += 1
                guard !value.isEmpty else { throw .malformed("an empty Transfer-Encoding") }
                guard HTTP1Parser.equalsLowercase(value, "chunked") else { throw .unsupportedTransferCoding }
                if transferEncodings > 1 { throw .malformed("chunked applied more than once") }
                scan.chunked = true
            case 10 where HTTP1Parser.equalsLowercase(name, "connection"):
                scan.connectionField = true
                HTTP1Parser.forEachToken(value) { token in
                    if token.count == 5 && HTTP1Parser.equalsLowercase(token, "close") {
                        scan.connectionClose = true
                    } else if token.count == 10 && HTTP1Parser.equalsLowercase(token, "keep-alive") {
                        scan.connectionKeepAlive = true
                    } else {
                        scan.connectionNamesFields = true
                    }
                }
            case 6 where request && HTTP1Parser.equalsLowercase(name, "expect"):
                if HTTP1Parser.equalsLowercase(value, "100-continue") { scan.expectsContinue = true }
            default:
                break
            }
            index = next
        }
    }

    /// A response head from the start of `buffer`, or nil until it has all arrived. The lines
    /// are not copied: the head keeps a slice of `buffer`.
    package static func parseResponse(_ buffer: ByteBuffer, maxBytes: Int) throws(HTTP1ParseError) -> HTTP1ResponseHead? {
        guard var head = try HTTP1Parser.withBytes(buffer, { raw throws(HTTP1ParseError) in try scanResponse(raw, buffer: buffer, maxBytes: maxBytes) }) else { return nil }
        head.fields = buffer.getSlice(at: buffer.readerIndex + head.fieldsRange.lowerBound, length: head.fieldsRange.count)!
        return head
    }

    private static func scanResponse(_ raw: UnsafeRawBufferPointer, buffer: ByteBuffer, maxBytes: Int) throws(HTTP1ParseError) -> HTTP1ResponseHead? {
        guard let (statusEnd, fieldsStart) = try lineBounds(raw, from: 0, maxHeadBytes: maxBytes) else { return nil }
        // `HTTP/1.x NNN reason`
        let status = UnsafeRawBufferPointer(rebasing: raw[0..<statusEnd])
        guard status.count >= 12, status.starts(with: "HTTP/1.".utf8), status[7] == UInt8(ascii: "0") || status[7] == UInt8(ascii: "1"),
              status[8] == 0x20, (0x30...0x39).contains(status[9]), (0x30...0x39).contains(status[10]), (0x30...0x39).contains(status[11]),
              status.count == 12 || status[12] == 0x20,
              HTTPSyntax.isFieldValue(UnsafeRawBufferPointer(rebasing: status[12...]), trimmed: false)
        else {
            throw .malformed("status line '\(String(decoding: status.prefix(64), as: UTF8.self))'")
        }
        let code = Int(status[9] - 0x30) * 100 + Int(status[10] - 0x30) * 10 + Int(status[11] - 0x30)
        guard let fields = try scanFields(raw, from: fieldsStart, maxHeadBytes: maxBytes, maxFields: .max, request: false) else { return nil }
        if fields.end > maxBytes { throw .headTooLarge }
        // RFC 9112 6.3: with both, Transfer-Encoding decides (and the connection is not kept).
        let bothFramings = fields.chunked && fields.contentLength != nil
        return HTTP1ResponseHead(
            status: code, fields: buffer, namesConnectionFields: fields.connectionNamesFields,
            contentLength: fields.chunked ? nil : fields.contentLength, chunked: fields.chunked,
            keepAlive: fields.keepAlive(minorVersion: Int(status[7] - 0x30)) && !bothFramings,
            length: fields.end, fieldsRange: fieldsStart..<fields.blankLine)
    }
}
