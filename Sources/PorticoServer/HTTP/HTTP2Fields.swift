import CNGHTTP2
import NIOHTTP1

/// HTTP/2 header fields as nghttp2 gives and takes them: every name and value in one array of
/// bytes, each field a span of it, so that a response is handed to nghttp2 (which encodes it
/// with HPACK), and a request's fields are kept, without a string per field.
package struct HTTP2Fields: Sendable {
    private struct Span: Sendable {
        var start: Int
        var nameLength: Int
        var valueLength: Int
    }

    private var bytes: [UInt8] = []
    private var spans: [Span] = []

    package init() {}

    /// A response's: `status` and `headers`, with `content-length` when the length is known (a
    /// body streamed as it comes has none). `:status` comes first; the fields HTTP/2 forbids
    /// (RFC 9113 8.2.2) and the ones the gateway writes itself are left out.
    package init(status: HTTPResponseStatus, headers: HTTPHeaders, contentLength: Int?) {
        bytes.reserveCapacity(40 + headers.count * 40)
        spans.reserveCapacity(headers.count + 2)
        setResponse(status: status, headers: headers, contentLength: contentLength)
    }

    /// The same in place of what the list held, keeping its storage (a connection reuses one
    /// list for the answers it makes).
    package mutating func setResponse(status: HTTPResponseStatus, headers: HTTPHeaders, contentLength: Int?) {
        removeAll()
        // Written byte by byte: no string is made for a lower-cased name or a number.
        bytes.append(contentsOf: ":status".utf8)
        appendDecimal(Int(status.code))
        spans.append(Span(start: 0, nameLength: 7, valueLength: bytes.count - 7))
        for (name, value) in headers {
            if Self.isLeftOut(name) { continue }
            let start = bytes.count
            for byte in name.utf8 {
                bytes.append(byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte)
            }
            let nameLength = bytes.count - start
            bytes.append(contentsOf: value.utf8)
            spans.append(Span(start: start, nameLength: nameLength, valueLength: bytes.count - start - nameLength))
        }
        if let contentLength {
            let start = bytes.count
            bytes.append(contentsOf: "content-length".utf8)
            appendDecimal(contentLength)
            spans.append(Span(start: start, nameLength: 14, valueLength: bytes.count - start - 14))
        }
    }

    /// Fields HTTP/2 forbids (RFC 9113 8.2.2) or the gateway writes itself.
    private static func isLeftOut(_ name: String) -> Bool {
        switch name.utf8.count {
        case 4: name.caseInsensitiveEquals("date")
        case 7: name.caseInsensitiveEquals("upgrade")
        case 10: name.caseInsensitiveEquals("connection") || name.caseInsensitiveEquals("keep-alive")
        case 14: name.caseInsensitiveEquals("content-length")
        case 16: name.caseInsensitiveEquals("proxy-connection")
        case 17: name.caseInsensitiveEquals("transfer-encoding")
        default: false
        }
    }

    private mutating func appendDecimal(_ value: Int) {
        if value >= 10 { appendDecimal(value / 10) }
        bytes.append(UInt8(ascii: "0") + UInt8(value % 10))
    }

    package var count: Int { spans.count }

    /// No fields, the storage kept for the next ones.
    package mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        spans.removeAll(keepingCapacity: true)
    }

    package mutating func add(name: String, value: String) {
        let start = bytes.count
        bytes.append(contentsOf: name.utf8)
        bytes.append(contentsOf: value.utf8)
        spans.append(Span(start: start, nameLength: name.utf8.count, valueLength: value.utf8.count))
    }

    package mutating func add(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        let start = bytes.count
        bytes.append(contentsOf: name)
        bytes.append(contentsOf: value)
        spans.append(Span(start: start, nameLength: name.count, valueLength: value.count))
    }

    /// The fields as strings, for a request handed to a service or an upstream.
    package func headers(capacity extra: Int = 0) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.reserveCapacity(spans.count + extra)
        bytes.withUnsafeBufferPointer { base in
            for span in spans {
                let name = UnsafeBufferPointer(rebasing: base[span.start..<span.start + span.nameLength])
                let value = UnsafeBufferPointer(rebasing: base[span.start + span.nameLength..<span.start + span.nameLength + span.valueLength])
                headers.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
            }
        }
        return headers
    }

    /// Calls `body` with the fields, and `date` after them, as nghttp2's name-value pairs
    /// (valid only inside `body`; nghttp2 copies what it keeps). `scratch` is the caller's
    /// array, reused so that a response does not allocate one.
    package func withNameValues<Result>(date: String, scratch: inout [nghttp2_nv], _ body: (UnsafePointer<nghttp2_nv>, Int) -> Result) -> Result {
        var date = date
        return bytes.withUnsafeBufferPointer { base in
            date.withUTF8 { dateBytes in
                scratch.removeAll(keepingCapacity: true)
                let start = UnsafeMutablePointer(mutating: base.baseAddress ?? UnsafePointer(bitPattern: 1)!)
                for span in spans {
                    scratch.append(nghttp2_nv(
                        name: start + span.start, value: start + span.start + span.nameLength,
                        namelen: span.nameLength, valuelen: span.valueLength, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
                }
                let name: StaticString = "date"
                scratch.append(nghttp2_nv(
                    name: UnsafeMutablePointer(mutating: name.utf8Start), value: UnsafeMutablePointer(mutating: dateBytes.baseAddress!),
                    namelen: 4, valuelen: dateBytes.count, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
                return scratch.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
            }
        }
    }
}
