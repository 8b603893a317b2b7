#if canImport(Glibc)
import Glibc
#endif

/// The fields of an HTTP/2 request head, checked as RFC 9113 8.2-8.3 requires, one field at a
/// time as nghttp2 decodes them, on their bytes: the pseudo-headers become the request's method,
/// path and authority; the other fields are kept as bytes (``HTTP2Fields``) and become strings
/// only if a service or an upstream needs them. nghttp2 checks much of this too; these checks
/// are the ones HTTP/1.1 requests pass as well (``HTTPSyntax``), so that both versions refuse
/// the same requests.
package struct HTTP2RequestFields {
    package struct Malformed: Error {}

    package var method = ""
    package var path = ""
    package var scheme: String?
    package var authority: String?
    package var contentLength: Int?
    /// Names and values in bytes, with the 32 bytes per field HPACK counts.
    package var size = 0
    package var count = 0
    /// The regular fields (not the pseudo-headers), unless ``keepFields`` was turned off.
    package var fields = HTTP2Fields()
    /// Whether regular fields are still kept (off once the list is too large to serve).
    package var keepFields = true
    private var sawRegular = false
    private var host: String?
    private var malformed = false

    package init() {}

    /// Empty again for the next head, keeping the storage of its fields.
    package mutating func reset() {
        method = ""
        path = ""
        scheme = nil
        authority = nil
        contentLength = nil
        size = 0
        count = 0
        fields.removeAll()
        keepFields = true
        sawRegular = false
        host = nil
        malformed = false
    }

    /// The list is too large to serve: the fields are no longer kept (the checks go on).
    package mutating func dropFields() {
        keepFields = false
        fields.removeAll()
    }

    /// The fields of `pairs`, as ``add(name:value:)`` and ``finish()`` read them.
    package init(_ pairs: [(String, String)]) throws(Malformed) {
        for (name, value) in pairs {
            var name = name
            var value = value
            name.withUTF8 { name in value.withUTF8 { value in add(name: UnsafeRawBufferPointer(name), value: UnsafeRawBufferPointer(value)) } }
        }
        try finish()
    }

    /// One field, as decoded.
    package mutating func add(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        size += name.count + value.count + 32
        count += 1
        guard !malformed else { return }
        guard HTTPSyntax.isFieldValue(value, trimmed: true) else { return refuse() }
        if name.first == UInt8(ascii: ":") {
            // Pseudo-headers come first, once each, and only those of a request.
            guard !sawRegular else { return refuse() }
            switch Self.pseudo(name) {
            case .method:
                guard method.isEmpty, HTTPSyntax.isMethod(value) else { return refuse() }
                method = String(decoding: value, as: UTF8.self)
            case .path:
                guard path.isEmpty, !value.isEmpty else { return refuse() }
                path = String(decoding: value, as: UTF8.self)
            case .scheme:
                guard scheme == nil, Self.equals(value, "https") || Self.equals(value, "http") else { return refuse() }
                scheme = Self.equals(value, "https") ? "https" : "http"
            case .authority:
                guard authority == nil, HTTPSyntax.isHost(value) else { return refuse() }
                authority = String(decoding: value, as: UTF8.self)
            case nil:
                refuse()
            }
            return
        }
        sawRegular = true
        guard Self.isValidName(name) else { return refuse() }
        switch name.count {
        case 2 where Self.equals(name, "te"):
            guard Self.equals(value, "trailers") else { return refuse() }
        case 4 where Self.equals(name, "host"):
            guard host == nil, HTTPSyntax.isHost(value) else { return refuse() }
            host = String(decoding: value, as: UTF8.self)
        case 7 where Self.equals(name, "upgrade"):
            return refuse()
        case 10 where Self.equals(name, "connection") || Self.equals(name, "keep-alive"):
            return refuse()
        case 14 where Self.equals(name, "content-length"):
            guard let length = Self.parseLength(value), contentLength == nil || contentLength == length else { return refuse() }
            contentLength = length
        case 16 where Self.equals(name, "proxy-connection"):
            return refuse()
        case 17 where Self.equals(name, "transfer-encoding"):
            return refuse()
        default:
            break
        }
        if keepFields { fields.add(name: name, value: value) }
    }

    /// The head is whole: the checks that need all of it.
    package mutating func finish() throws(Malformed) {
        guard !malformed else { throw Malformed() }
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

    private mutating func refuse() {
        malformed = true
    }

    private enum Pseudo { case method, path, scheme, authority }

    private static func pseudo(_ name: UnsafeRawBufferPointer) -> Pseudo? {
        switch name.count {
        case 5 where equals(name, ":path"): .path
        case 7 where equals(name, ":method"): .method
        case 7 where equals(name, ":scheme"): .scheme
        case 10 where equals(name, ":authority"): .authority
        default: nil
        }
    }

    private static func equals(_ bytes: UnsafeRawBufferPointer, _ text: StaticString) -> Bool {
        guard bytes.count == text.utf8CodeUnitCount else { return false }
        return memcmp(bytes.baseAddress!, text.utf8Start, bytes.count) == 0
    }

    /// A lower-case token (RFC 9110 5.6.2): HTTP/2 field names must be lower case.
    private static func isValidName(_ name: UnsafeRawBufferPointer) -> Bool {
        guard !name.isEmpty else { return false }
        return tokenLowercase.withUnsafeBufferPointer { table in
            for byte in name where !table[Int(byte)] { return false }
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

    private static func parseLength(_ value: UnsafeRawBufferPointer) -> Int? {
        guard !value.isEmpty, value.count <= 18 else { return nil }
        var length = 0
        for byte in value {
            guard byte >= 0x30 && byte <= 0x39 else { return nil }
            length = length * 10 + Int(byte - 0x30)
        }
        return length
    }
}
