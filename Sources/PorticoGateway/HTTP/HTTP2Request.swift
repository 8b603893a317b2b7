/// The fields of an HTTP/2 request head, checked as RFC 9113 8.2-8.3 requires.
///
/// Checked in the one pass that also picks out the pseudo-headers, size and content length;
/// responses are built well-formed and not checked again.
struct HTTP2RequestFields {
    struct Malformed: Error {}

    var method = ""
    var path = ""
    var scheme: String?
    var authority: String?
    var contentLength: Int?
    /// Names and values in bytes, with the 32 bytes per field HPACK counts.
    var size = 0

    init(_ fields: [(String, String)]) throws(Malformed) {
        var sawRegular = false
        var host: String?
        for (name, value) in fields {
            size += name.utf8.count + value.utf8.count + 32
            guard HTTPSyntax.isFieldValue(value, trimmed: true) else { throw Malformed() }
            if name.utf8.first == UInt8(ascii: ":") {
                // Pseudo-headers come first, once each, and only those of a request.
                guard !sawRegular else { throw Malformed() }
                switch name {
                case ":method":
                    guard method.isEmpty, HTTPSyntax.isMethod(value) else { throw Malformed() }
                    method = value
                case ":path":
                    guard path.isEmpty, !value.isEmpty else { throw Malformed() }
                    path = value
                case ":scheme":
                    guard scheme == nil, value == "https" || value == "http" else { throw Malformed() }
                    scheme = value
                case ":authority":
                    guard authority == nil, HTTPSyntax.isHost(value) else { throw Malformed() }
                    authority = value
                default:
                    throw Malformed()
                }
                continue
            }
            sawRegular = true
            guard Self.isValidName(name) else { throw Malformed() }
            switch name {
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
                throw Malformed()
            case "te":
                guard value == "trailers" else { throw Malformed() }
            case "host":
                guard host == nil, HTTPSyntax.isHost(value) else { throw Malformed() }
                host = value
            case "content-length":
                guard let length = Self.parseLength(value), contentLength == nil || contentLength == length else { throw Malformed() }
                contentLength = length
            default:
                break
            }
        }
        if method == "CONNECT" {
            guard authority != nil, scheme == nil, path.isEmpty else { throw Malformed() }
        } else {
            guard !method.isEmpty, scheme != nil, HTTPSyntax.targetProblem(path, method: method) == nil else { throw Malformed() }
        }
        // RFC 9113 8.3.1: the request is routed and forwarded by `:authority`; a `host` that
        // names another host would reach an upstream as the Host it was not routed by.
        if let host {
            if let authority {
                guard host == authority else { throw Malformed() }
            } else {
                authority = host
            }
        }
    }

    /// A lower-case token (RFC 9110 5.6.2): HTTP/2 field names must be lower case.
    /// Both checks loop over the contiguous UTF-8 bytes, not over `String.UTF8View` byte by
    /// byte, which is slow per byte.
    private static func isValidName(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { bytes in
            guard !bytes.isEmpty else { return false }
            for byte in bytes where !tokenLowercase[Int(byte)] { return false }
            return true
        }
    }

    /// Bytes allowed in a lower-case token.
    private static let tokenLowercase: [Bool] = (0..<256).map { value in
        switch UInt8(value) {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
             UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    private static func parseLength(_ value: String) -> Int? {
        guard !value.isEmpty, value.utf8.count <= 18 else { return nil }
        var length = 0
        for byte in value.utf8 {
            guard byte >= 0x30 && byte <= 0x39 else { return nil }
            length = length * 10 + Int(byte - 0x30)
        }
        return length
    }
}
