import NIOCore
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

@Suite struct ProxyProtocolTests {
    private func parse(_ bytes: [UInt8]) -> ProxyProtocol.ParseResult { ProxyProtocol.parse(ByteBuffer(bytes: bytes)) }
    private func parse(_ text: String) -> ProxyProtocol.ParseResult { parse(Array(text.utf8)) }

    @Test func v1TCP4AndTCP6() throws {
        #expect(parse("PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET /") == .header(source: try .init(ipAddress: "192.0.2.7", port: 56324), length: 41))
        let v6 = "PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n"
        #expect(parse(v6) == .header(source: try .init(ipAddress: "2001:db8::7", port: 4000), length: v6.utf8.count))
        #expect(parse("PROXY UNKNOWN\r\n") == .header(source: nil, length: 15))
    }

    @Test func v1Malformed() {
        for bad in [
            "PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n",  // missing port
            "PROXY TCP4 999.0.2.7 10.0.0.1 1 2\r\n",  // bad address
            "PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",  // address of the other family
            "PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",  // unknown protocol
            "PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",  // no CR
            "PROXY " + String(repeating: "x", count: 120),  // too long without CRLF
        ] {
            if case .invalid = parse(bad) {} else { Issue.record("accepted: \(bad)") }
        }
    }

    @Test func incompleteAndAbsentHeaders() {
        #expect(parse("PRO") == .needMore)
        #expect(parse("PROXY TCP4 1.2.3.4") == .needMore)
        #expect(parse("POST / HTTP/1.1\r\n") == .absent)
        #expect(parse([0x16, 0x03, 0x01]) == .absent)  // a TLS ClientHello
        #expect(parse(Array(ProxyProtocol.v2Signature.prefix(5))) == .needMore)
    }

    private func v2(command: UInt8 = 0x1, family: UInt8, address: [UInt8]) -> [UInt8] {
        ProxyProtocol.v2Signature + [0x20 | command, family, UInt8(address.count >> 8), UInt8(address.count & 0xFF)] + address
    }

    @Test func v2IPv4AndIPv6() throws {
        let v4 = v2(family: 0x11, address: [198, 51, 100, 9, 10, 0, 0, 1, 0x1F, 0x90, 0x01, 0xBB])
        #expect(parse(v4 + [0x16]) == .header(source: try .init(ipAddress: "198.51.100.9", port: 8080), length: 28))
        var address = [UInt8](repeating: 0, count: 36)
        address[0] = 0x20; address[1] = 0x01; address[2] = 0x0d; address[3] = 0xb8; address[15] = 0x05
        address[32] = 0x00; address[33] = 0x50
        #expect(parse(v2(family: 0x21, address: address)) == .header(source: try .init(ipAddress: "2001:db8::5", port: 80), length: 52))
        // LOCAL (a health check by the proxy itself): no client address.
        #expect(parse(v2(command: 0x0, family: 0x00, address: [])) == .header(source: nil, length: 16))
        // TLVs after the addresses are skipped.
        let withTLV = v2(family: 0x11, address: [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2] + [0x04, 0x00, 0x01, 0x00])
        #expect(parse(withTLV) == .header(source: try .init(ipAddress: "1.2.3.4", port: 1), length: 32))
    }

    @Test func v2Malformed() {
        let wrongVersion = ProxyProtocol.v2Signature + [0x11, 0x11, 0x00, 0x0C] + [UInt8](repeating: 1, count: 12)
        let truncatedV4 = v2(family: 0x11, address: [1, 2, 3, 4])
        let unknownCommand = v2(command: 0x5, family: 0x11, address: [UInt8](repeating: 1, count: 12))
        let unknownFamily = v2(family: 0x31, address: [UInt8](repeating: 1, count: 12))
        for (name, bytes) in [("version", wrongVersion), ("truncated", truncatedV4), ("command", unknownCommand), ("family", unknownFamily)] {
            if case .invalid = parse(bytes) {} else { Issue.record("accepted malformed v2 header: \(name)") }
        }
        #expect(parse(Array(v2(family: 0x11, address: [UInt8](repeating: 1, count: 12)).prefix(20))) == .needMore)
    }
}
