import NIOCore
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

@Suite struct ProxyProtocolLiveTests {
    private let routes = "routes:\n  - {listener: client_plain, path: /whoami, service: whoami}"
    private let request = "GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    @Test func aTrustedProxyNamesTheClientWithV1OrV2() async throws {
        try await TestGateway.with(listeners: [.clientPlain: "proxy_protocol: true\ntrusted_proxies: [127.0.0.1/32]"], body: routes) { gw in
            let port = try await gw.port(.clientPlain)
            let v1 = try await RawTCP.exchange(port: port, "PROXY TCP4 203.0.113.9 10.0.0.1 40000 8014\r\n" + request)
            #expect(v1.hasPrefix("HTTP/1.1 200"))
            #expect(v1.contains("client=203.0.113.9"))
            let v2 = ProxyProtocol.v2Signature + [0x21, 0x11, 0x00, 0x0C, 198, 51, 100, 7, 10, 0, 0, 1, 0x9C, 0x40, 0x1F, 0x4E] + Array(request.utf8)
            let answer = try await RawTCP.exchange(port: port, v2)
            #expect(answer.contains("client=198.51.100.7"))
            // From a trusted proxy the header is required.
            #expect(try await RawTCP.exchange(port: port, request) == "")
            // A malformed header closes the connection without an answer.
            #expect(try await RawTCP.exchange(port: port, "PROXY TCP4 203.0.113.9\r\n" + request) == "")
        }
    }

    /// On a TLS listener the header comes before the handshake, in the clear.
    @Test func aTrustedProxyNamesTheClientBeforeTLS() async throws {
        let routes = "routes:\n  - {listener: console, path: /whoami, service: whoami}"
        try await TestGateway.with(listeners: [.console: "proxy_protocol: true\ntrusted_proxies: [127.0.0.1/32]"], body: routes) { gw in
            let probe = try await TLSProbe.connect(port: try await gw.port(.console), sendPrefix: ByteBuffer(string: "PROXY TCP4 203.0.113.9 10.0.0.1 40000 8443\r\n"))
            let answer = try await probe.get("/whoami")
            #expect(answer.hasPrefix("HTTP/1.1 200"))
            #expect(answer.contains("client=203.0.113.9"))
            await probe.close()
        }
    }

    @Test func anUntrustedSourceCannotSendAHeaderButIsServedWithout() async throws {
        try await TestGateway.with(listeners: [.clientPlain: "proxy_protocol: true\ntrusted_proxies: [10.9.9.9/32]"], body: routes) { gw in
            let port = try await gw.port(.clientPlain)
            #expect(try await RawTCP.exchange(port: port, "PROXY TCP4 203.0.113.9 10.0.0.1 40000 8014\r\n" + request) == "")
            let direct = try await RawTCP.exchange(port: port, request)
            #expect(direct.contains("client=127.0.0.1"))
        }
    }

    @Test func xForwardedForIsBelievedOnlyFromTrustedProxies() async throws {
        let forwarded = "GET /whoami HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.1, 203.0.113.5\r\nConnection: close\r\n\r\n"
        try await TestGateway.with(listeners: [.clientPlain: "trusted_proxies: [127.0.0.0/8]"], body: routes) { gw in
            let answer = try await RawTCP.exchange(port: try await gw.port(.clientPlain), forwarded)
            #expect(answer.contains("client=203.0.113.5"))
            #expect(answer.contains("peer=127.0.0.1"))
        }
        try await TestGateway.with(body: routes) { gw in
            let answer = try await RawTCP.exchange(port: try await gw.port(.clientPlain), forwarded)
            #expect(answer.contains("client=127.0.0.1"))
        }
    }
}
