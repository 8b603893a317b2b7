import NIOCore

/// The PROXY protocol header (v1 text and v2 binary) that load balancers put before a
/// connection's first byte to say who the client is.
package enum ProxyProtocol {
    package enum ParseResult: Equatable {
        /// Not enough bytes yet to decide.
        case needMore
        /// Not a PROXY header at all (the connection starts with TLS or HTTP).
        case absent
        /// A broken header; the connection must be closed.
        case invalid(String)
        /// A header of `length` bytes; `source` is `nil` for LOCAL/UNKNOWN connections.
        case header(source: SocketAddress?, length: Int)
    }

    package static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    package static let v1Prefix: [UInt8] = Array("PROXY ".utf8)
    /// The longest v1 header, CRLF included.
    package static let v1MaxLength = 107
    /// The longest v2 header accepted (addresses and TLVs).
    package static let v2MaxLength = 16 + 536

    package static func parse(_ buffer: ByteBuffer) -> ParseResult {
        let bytes = buffer.readableBytesView
        guard let first = bytes.first else { return .needMore }
        if first == v1Prefix[0] {
            let prefixCount = min(bytes.count, v1Prefix.count)
            guard bytes.prefix(prefixCount).elementsEqual(v1Prefix.prefix(prefixCount)) else { return .absent }
            if prefixCount < v1Prefix.count { return .needMore }
            return parseV1(bytes)
        }
        if first == v2Signature[0] {
            let prefixCount = min(bytes.count, v2Signature.count)
            guard bytes.prefix(prefixCount).elementsEqual(v2Signature.prefix(prefixCount)) else { return .absent }
            if prefixCount < v2Signature.count { return .needMore }
            return parseV2(bytes)
        }
        return .absent
    }

    private static func parseV1(_ bytes: ByteBufferView) -> ParseResult {
        let limit = min(bytes.count, v1MaxLength)
        guard let lf = bytes.prefix(limit).firstIndex(of: UInt8(ascii: "\n")) else {
            return bytes.count >= v1MaxLength ? .invalid("PROXY v1 header longer than 107 bytes") : .needMore
        }
        let length = lf - bytes.startIndex + 1
        guard length >= 2, bytes[lf - 1] == UInt8(ascii: "\r") else { return .invalid("PROXY v1 header does not end with CRLF") }
        let line = String(decoding: bytes[bytes.startIndex..<(lf - 1)], as: UTF8.self)
        let fields = line.split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count >= 2, fields[0] == "PROXY" else { return .invalid("malformed PROXY v1 header") }
        switch fields[1] {
        case "UNKNOWN":
            return .header(source: nil, length: length)
        case "TCP4", "TCP6":
            guard fields.count == 6 else { return .invalid("PROXY v1 header needs protocol, two addresses and two ports") }
            guard let port = UInt16(fields[4]), let destinationPort = UInt16(fields[5]), destinationPort > 0, port > 0,
                  let source = try? SocketAddress(ipAddress: String(fields[2]), port: Int(port)),
                  (try? SocketAddress(ipAddress: String(fields[3]), port: Int(destinationPort))) != nil
            else { return .invalid("PROXY v1 header has a bad address or port") }
            let isV4 = if case .v4 = source { true } else { false }
            guard isV4 == (fields[1] == "TCP4") else { return .invalid("PROXY v1 address does not match its protocol \(fields[1])") }
            return .header(source: source, length: length)
        default:
            return .invalid("PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN")
        }
    }

    private static func parseV2(_ bytes: ByteBufferView) -> ParseResult {
        guard bytes.count >= 16 else { return .needMore }
        let start = bytes.startIndex
        let versionCommand = bytes[start + 12]
        let family = bytes[start + 13]
        let addressLength = Int(bytes[start + 14]) << 8 | Int(bytes[start + 15])
        guard versionCommand >> 4 == 2 else { return .invalid("PROXY v2 header has version \(versionCommand >> 4)") }
        guard 16 + addressLength <= v2MaxLength else { return .invalid("PROXY v2 header is too long") }
        guard bytes.count >= 16 + addressLength else { return .needMore }
        let total = 16 + addressLength
        switch versionCommand & 0x0F {
        case 0x0:  // LOCAL: the proxy's own connection, e.g. a health check
            return .header(source: nil, length: total)
        case 0x1:
            break
        default:
            return .invalid("PROXY v2 header has an unknown command")
        }
        let body = bytes[(start + 16)..<(start + total)]
        func port(at offset: Int) -> Int { Int(body[body.startIndex + offset]) << 8 | Int(body[body.startIndex + offset + 1]) }
        switch family {
        case 0x11, 0x12:  // TCP or UDP over IPv4
            guard addressLength >= 12 else { return .invalid("PROXY v2 IPv4 addresses are truncated") }
            let a = Array(body.prefix(4))
            let text = a.map(String.init).joined(separator: ".")
            guard let source = try? SocketAddress(ipAddress: text, port: port(at: 8)) else { return .invalid("PROXY v2 source address is invalid") }
            return .header(source: source, length: total)
        case 0x21, 0x22:  // over IPv6
            guard addressLength >= 36 else { return .invalid("PROXY v2 IPv6 addresses are truncated") }
            let a = Array(body.prefix(16))
            let text = stride(from: 0, to: 16, by: 2).map { String(UInt16(a[$0]) << 8 | UInt16(a[$0 + 1]), radix: 16) }.joined(separator: ":")
            guard let source = try? SocketAddress(ipAddress: text, port: port(at: 32)) else { return .invalid("PROXY v2 source address is invalid") }
            return .header(source: source, length: total)
        case 0x00:
            return .header(source: nil, length: total)
        default:
            return .invalid("PROXY v2 address family \(family) is not supported")
        }
    }
}

/// Reads the PROXY header at the start of a connection and decides: pass the connection on
/// (with the source the header names, if a trusted proxy sent one), or refuse it. Headers are
/// only believed from `trusted_proxies`; a trusted proxy must send one.
package struct ProxyHeaderReader {
    package enum Step {
        /// More bytes are needed.
        case needMore
        /// Serve the connection from `source` (nil: the TCP peer stays the client), starting
        /// with `rest`, the bytes after the header.
        case pass(source: SocketAddress?, rest: ByteBuffer?)
        /// Close the connection, for `reason`.
        case refuse(String)
    }

    package let trusted: Bool
    /// The TCP peer, for messages.
    package let peer: String
    private var buffered: ByteBuffer?

    package init(trusted: Bool, peer: String) {
        self.trusted = trusted
        self.peer = peer
    }

    package mutating func read(_ incoming: ByteBuffer) -> Step {
        var incoming = incoming
        var bytes = buffered.take() ?? ByteBuffer()
        if bytes.readableBytes == 0 { bytes = incoming } else { bytes.writeBuffer(&incoming) }
        switch ProxyProtocol.parse(bytes) {
        case .needMore:
            if bytes.readableBytes > ProxyProtocol.v2MaxLength { return .refuse("PROXY header too long") }
            buffered = bytes
            return .needMore
        case .absent:
            if trusted { return .refuse("connection from a trusted proxy without a PROXY header") }
            return .pass(source: nil, rest: bytes)
        case .invalid(let reason):
            return .refuse(reason)
        case .header(let source, let length):
            guard trusted else { return .refuse("PROXY header from \(peer), which is not in trusted_proxies") }
            bytes.moveReaderIndex(forwardBy: length)
            return .pass(source: source, rest: bytes.readableBytes > 0 ? bytes : nil)
        }
    }
}
