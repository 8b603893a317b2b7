/// What a request's method, target, host and field values may hold, checked the same way for
/// HTTP/1.1 and HTTP/2: a request an upstream receives must be one the gateway parsed, whichever
/// version the client spoke, so both refuse the same bytes.
package enum HTTPSyntax {
    /// A method is a token (RFC 9110 9.1).
    package static func isMethod(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard !bytes.isEmpty else { return false }
        for byte in bytes where !isTokenByte(byte) { return false }
        return true
    }

    /// Why a request target is not one the gateway routes, or nil when it is: origin-form
    /// (RFC 9112 3.2.1), `/` then visible bytes, or `*` for OPTIONS. Absolute-form,
    /// authority-form and a path starting `//` (which an upstream may read as a host) are
    /// refused rather than reinterpreted.
    /// `charactersChecked`: the caller has already refused bytes at or below space and 0x7F
    /// (the HTTP/1.1 request line does as it finds the target's end).
    package static func targetProblem(_ bytes: UnsafeRawBufferPointer, method: String, charactersChecked: Bool = false) -> String? {
        guard let first = bytes.first else { return "empty request target" }
        if bytes.count == 1 && first == UInt8(ascii: "*") {
            return method == "OPTIONS" ? nil : "the target * is only for OPTIONS"
        }
        guard first == UInt8(ascii: "/") else { return "the request target is not a path starting with /" }
        if bytes.count > 1 && bytes[1] == UInt8(ascii: "/") { return "the request target starts with //" }
        if charactersChecked { return nil }
        for byte in bytes where byte <= 0x20 || byte == 0x7F { return "invalid character in the request target" }
        return nil
    }

    /// A `Host` or `:authority` value: `uri-host [":" port]` (RFC 9110 7.2, RFC 3986 3.2.2),
    /// with no user information (`@`) and not empty.
    package static func isHost(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard !bytes.isEmpty else { return false }
        var index = 0
        if bytes[0] == UInt8(ascii: "[") {
            // An IP literal: hex digits, colons and dots (and an IPvFuture's few more), in brackets.
            index = 1
            while index < bytes.count, bytes[index] != UInt8(ascii: "]") {
                let byte = bytes[index]
                guard isHexDigit(byte) || byte == UInt8(ascii: ":") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "v") || byte == UInt8(ascii: "V") else { return false }
                index += 1
            }
            guard index < bytes.count, index > 1 else { return false }
            index += 1
        } else {
            while index < bytes.count, bytes[index] != UInt8(ascii: ":") {
                guard isRegNameByte(bytes[index]) else { return false }
                index += 1
            }
            guard index > 0 else { return false }
        }
        guard index < bytes.count else { return true }
        guard bytes[index] == UInt8(ascii: ":") else { return false }
        index += 1
        guard bytes.count - index <= 5 else { return false }
        while index < bytes.count {
            guard (0x30...0x39).contains(bytes[index]) else { return false }
            index += 1
        }
        return true
    }

    /// A field value as RFC 9110 5.5 allows: visible bytes, spaces and tabs (and bytes above
    /// 0x7F), no other control byte, and (for HTTP/2, where values are not trimmed) no
    /// whitespace at either end.
    package static func isFieldValue(_ bytes: UnsafeRawBufferPointer, trimmed: Bool) -> Bool {
        if trimmed, let first = bytes.first, let last = bytes.last {
            if first == 0x20 || first == 0x09 || last == 0x20 || last == 0x09 { return false }
        }
        for byte in bytes where (byte < 0x20 && byte != 0x09) || byte == 0x7F { return false }
        return true
    }

    /// `tchar` of RFC 9110 5.6.2.
    package static func isTokenByte(_ byte: UInt8) -> Bool {
        tokenBytes.withUnsafeBufferPointer { $0[Int(byte)] }
    }

    private static let tokenBytes: [Bool] = (0..<256).map { value in
        switch UInt8(value) {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "*"),
             UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"): true
        default: false
        }
    }

    /// `reg-name` of RFC 3986: unreserved, percent-encoded and sub-delims.
    private static func isRegNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "%"): true
        case UInt8(ascii: "!"), UInt8(ascii: "$"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"),
             UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="): true
        default: false
        }
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (0x30...0x39).contains(byte) || (0x41...0x46).contains(byte) || (0x61...0x66).contains(byte)
    }
}

extension HTTPSyntax {
    /// The same checks on strings (HTTP/2 fields arrive decoded from HPACK).
    package static func isMethod(_ string: String) -> Bool { withBytes(string) { isMethod($0) } }
    package static func targetProblem(_ string: String, method: String) -> String? { withBytes(string) { targetProblem($0, method: method) } }
    package static func isHost(_ string: String) -> Bool { withBytes(string) { isHost($0) } }
    package static func isFieldValue(_ string: String, trimmed: Bool) -> Bool { withBytes(string) { isFieldValue($0, trimmed: trimmed) } }

    private static func withBytes<T>(_ string: String, _ body: (UnsafeRawBufferPointer) -> T) -> T {
        var string = string
        return string.withUTF8 { body(UnsafeRawBufferPointer($0)) }
    }
}
