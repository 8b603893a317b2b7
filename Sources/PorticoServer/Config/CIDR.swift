import NIOCore

/// An IPv4 or IPv6 network such as `10.0.0.0/8` or `::1/128`.
public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    /// Network address bytes (4 or 16).
    package let network: [UInt8]
    package let prefixLength: Int

    /// Parses `a.b.c.d/n`, `ipv6/n`, or a bare address (a host network).
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let bytes = CIDR.parseAddress(String(parts[0])) else { return nil }
        let maxLength = bytes.count * 8
        var length = maxLength
        if parts.count == 2 {
            guard let parsed = Int(parts[1]), (0...maxLength).contains(parsed) else { return nil }
            length = parsed
        }
        self.prefixLength = length
        self.network = CIDR.mask(bytes, to: length)
    }

    public var description: String {
        let address: String
        if network.count == 4 {
            address = network.map(String.init).joined(separator: ".")
        } else {
            address = stride(from: 0, to: 16, by: 2)
                .map { String(UInt16(network[$0]) << 8 | UInt16(network[$0 + 1]), radix: 16) }
                .joined(separator: ":")
        }
        return "\(address)/\(prefixLength)"
    }

    /// Whether the address is inside this network. IPv4-mapped IPv6 addresses match IPv4 networks.
    public func contains(_ address: SocketAddress) -> Bool {
        guard var bytes = CIDR.bytes(of: address) else { return false }
        if network.count == 4, bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff {
            bytes = Array(bytes[12..<16])
        }
        guard bytes.count == network.count else { return false }
        return CIDR.mask(bytes, to: prefixLength) == network
    }

    package static func mask(_ bytes: [UInt8], to length: Int) -> [UInt8] {
        var result = bytes
        for index in result.indices {
            let bitsHere = max(0, min(8, length - index * 8))
            result[index] &= bitsHere == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - bitsHere))
        }
        return result
    }

    package static func parseAddress(_ text: String) -> [UInt8]? {
        if let v4 = try? SocketAddress(ipAddress: text, port: 0), let bytes = bytes(of: v4) { return bytes }
        return nil
    }

    package static func bytes(of address: SocketAddress) -> [UInt8]? {
        switch address {
        case .v4(let v4):
            let value = UInt32(bigEndian: v4.address.sin_addr.s_addr)
            return [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
        case .v6(let v6):
            return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        case .unixDomainSocket:
            return nil
        }
    }
}

extension Array where Element == CIDR {
    /// Whether any network holds the address.
    package func containsAddress(_ address: SocketAddress?) -> Bool {
        guard let address else { return false }
        return contains { $0.contains(address) }
    }
}
