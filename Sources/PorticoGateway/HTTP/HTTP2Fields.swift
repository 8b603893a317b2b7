import CNGHTTP2
import NIOHTTP1

/// A response's header fields as nghttp2 takes them: every name and value in one array of
/// bytes, each field a span of it, so that a response is handed to nghttp2 (which encodes it
/// with HPACK) without a string per field. `:status` comes first; the fields HTTP/2 forbids
/// (RFC 9113 8.2.2) and the ones the gateway writes itself are left out.
struct HTTP2Fields: Sendable {
    private struct Span: Sendable {
        var start: Int
        var nameLength: Int
        var valueLength: Int
    }

    private var bytes: [UInt8] = []
    private var spans: [Span] = []

    init() {}

    /// `status` and `headers`, with `content-length` when the length is known (a body
    /// streamed as it comes has none).
    init(status: HTTPResponseStatus, headers: HTTPHeaders, contentLength: Int?) {
        bytes.reserveCapacity(64 + headers.count * 32)
        spans.reserveCapacity(headers.count + 2)
        add(name: ":status", value: String(status.code))
        for (name, value) in headers {
            let lower = name.lowercased()
            switch lower {
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "content-length", "date": continue
            default: add(name: lower, value: value)
            }
        }
        if let contentLength { add(name: "content-length", value: String(contentLength)) }
    }

    var count: Int { spans.count }

    mutating func add(name: String, value: String) {
        let start = bytes.count
        bytes.append(contentsOf: name.utf8)
        bytes.append(contentsOf: value.utf8)
        spans.append(Span(start: start, nameLength: name.utf8.count, valueLength: value.utf8.count))
    }

    /// Calls `body` with the fields, and `date` after them, as nghttp2's name-value pairs
    /// (valid only inside `body`; nghttp2 copies what it keeps). `scratch` is the caller's
    /// array, reused so that a response does not allocate one.
    func withNameValues<Result>(date: String, scratch: inout [nghttp2_nv], _ body: (UnsafePointer<nghttp2_nv>, Int) -> Result) -> Result {
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
