import AsyncHTTPClient
import NIOCore
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

@Suite(.timeLimit(.minutes(2))) struct LimitsTests {
    @Test func fiveHundredTricklingClientsDoNotStopANormalOne() async throws {
        try await TestGateway.with(listeners: [.clientPlain: "limits: {header_timeout: 2s}"]) { gw in
            let port = try await gw.port(.clientPlain)
            var slow: [RawTCP] = []
            for _ in 0..<500 {
                let connection = try await RawTCP.connect(port: port)
                // On a loaded machine the header timeout may have closed it already.
                try? await connection.send("G")
                slow.append(connection)
            }
            try await TestClient.with(http2: false) { client in
                // Each round: one more header byte from every slow client, then a normal request.
                for byte in Array("ET / HTTP/1.1\r\nX-Slow: ".utf8) {
                    for connection in slow { try? await connection.send([byte]) }
                    let answer = try await TestClient.get(client, try await gw.url(.clientPlain, "/healthz"))
                    #expect(answer.status == 200)
                }
            }
            // The server gives up on every one of them (header_timeout), with no answer.
            for connection in slow {
                let text = await connection.responseUntilClose()
                #expect(text.isEmpty)
            }
            try await TestClient.with { client in
                let metrics = try await TestClient.get(client, try await gw.url(.webservices, "/metrics"))
                let line = metrics.body.split(separator: "\n").first { $0.hasPrefix(#"portico_client_timeouts_total{listener="client_plain"}"#) }
                let count = Int(try #require(line?.split(separator: " ").last))
                #expect((count ?? 0) >= 500)
            }
        }
    }

    /// The idle timeout starts after each answer, even when the head timeout that was running
    /// before is much longer (the connection's check is re-armed for the earlier deadline).
    @Test func aKeptAliveConnectionIsClosedAfterTheIdleTimeoutNotTheLongerHeadTimeout() async throws {
        try await TestGateway.with(listeners: [.clientPlain: "limits: {header_timeout: 10m, idle_timeout: 1s}"]) { gw in
            let connection = try await TLSFreeConnection(port: try await gw.port(.clientPlain))
            #expect(try await connection.request("/healthz").hasPrefix("HTTP/1.1 200"))
            // Closed with no further answer (what was read is the one response); the test's own
            // time limit catches a wait for the 10m head timeout.
            let everything = await connection.raw.responseUntilClose()
            #expect(everything.components(separatedBy: "HTTP/1.1 ").count - 1 <= 1, "\(everything)")
        }
    }

    @Test func connectionsBeyondTheLimitAreRefusedAndCounted() async throws {
        try await TestGateway.with(listeners: [.clientPlain: "limits: {max_connections: 3}"]) { gw in
            let port = try await gw.port(.clientPlain)
            var open: [TLSFreeConnection] = []
            for _ in 0..<3 {
                let connection = try await TLSFreeConnection(port: port)
                #expect(try await connection.request("/healthz").hasPrefix("HTTP/1.1 200"))
                open.append(connection)
            }
            #expect(try await RawTCP.exchange(port: port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == "")
            #expect(await gw.gateway.connectionCount(of: .clientPlain) == 3)
            // A slot frees up when a connection closes (here the server closes it, so that the
            // count has dropped by the time the client sees the end).
            let last = open.removeLast()
            #expect(try await last.request("/healthz", close: true).contains("connection: close"))
            _ = await last.raw.responseUntilClose()
            let connection = try await TLSFreeConnection(port: port)
            #expect(try await connection.request("/healthz").hasPrefix("HTTP/1.1 200"))
            try await TestClient.with { client in
                let metrics = try await TestClient.get(client, try await gw.url(.webservices, "/metrics"))
                #expect(metrics.body.contains(#"portico_refused_connections_total{listener="client_plain"} 1"#))
            }
        }
    }

    @Test func garbageInsteadOfHTTPOrTLSIsClosedWithoutHarm() async throws {
        try await TestGateway.with(listeners: [.clientPlain: "", .console: ""]) { gw in
            let plain = try await RawTCP.exchange(port: try await gw.port(.clientPlain), [0x00, 0xFF, 0x13, 0x37] + Array("garbage\r\n\r\n".utf8))
            #expect(plain.hasPrefix("HTTP/1.1 400"))
            #expect(plain.contains("connection: close"))
            let tls = try await RawTCP.exchange(port: try await gw.port(.console), Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            #expect(!tls.hasPrefix("HTTP/1.1 200"))
            try await TestClient.with { client in
                #expect(try await TestClient.get(client, try await gw.url(.console, "/healthz")).status == 200)
                let metrics = try await TestClient.get(client, try await gw.url(.webservices, "/metrics"))
                #expect(metrics.body.contains(#"portico_tls_handshake_failures_total{listener="console"} 1"#))
            }
        }
    }

    @Test func aStalledBodyGets408() async throws {
        try await TestGateway.with(listeners: [.clientPlain: "limits: {body_timeout: 1s}"], body: "routes:\n  - {listener: client_plain, path: /echo, service: echo}") { gw in
            let connection = try await RawTCP.connect(port: try await gw.port(.clientPlain))
            try await connection.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
            let answer = await connection.responseUntilClose()
            #expect(answer.hasPrefix("HTTP/1.1 408"))
        }
    }
}

/// A kept-alive plain HTTP/1.1 connection that sends one request at a time.
struct TLSFreeConnection {
    let raw: RawTCP
    let probe: TLSProbe.Collector

    init(port: Int) async throws {
        raw = try await RawTCP.connect(port: port)
        probe = TLSProbe.Collector(tls: false)
        try await raw.channel.pipeline.addHandler(probe).get()
    }

    func request(_ path: String, close: Bool = false) async throws -> String {
        guard raw.channel.isActive else { throw ChannelError.ioOnClosedChannel }
        let response = probe.expectResponse(on: raw.channel.eventLoop)
        do {
            try await raw.send("GET \(path) HTTP/1.1\r\nHost: x\r\n\(close ? "Connection: close\r\n" : "")\r\n")
        } catch {
            probe.failPending(error)
            _ = try? await response.get()
            throw error
        }
        return try await response.get()
    }

    func close() async { try? await raw.channel.close() }
}

@Suite(.timeLimit(.minutes(1))) struct StalledClientTests {
    @Test func aTLSClientThatNeverFinishesItsHandshakeIsClosed() async throws {
        try await TestGateway.with(listeners: [.console: "limits: {header_timeout: 1s}"]) { gw in
            // Connect and send nothing: no ClientHello.
            let silent = try await RawTCP.connect(port: try await gw.port(.console))
            #expect(await silent.responseUntilClose().isEmpty)
            // Half a ClientHello. On a loaded machine the header timeout may close the
            // connection before these bytes leave; closed it is, all the same.
            let partial = try await RawTCP.connect(port: try await gw.port(.console))
            try? await partial.send([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            #expect(await partial.responseUntilClose().isEmpty)
        }
    }

    @Test func anHTTP2StreamWhoseBodyStallsClosesTheConnection() async throws {
        let routes = "routes:\n  - {listener: console, path: /echo, service: echo}"
        try await TestGateway.with(listeners: [.console: "limits: {body_timeout: 1s}"], body: routes) { gw in
            // h2load sends a body only when given one; a raw HTTP/2 client would be needed to
            // stall mid-body, so drive it with NIOHTTP2 directly.
            let stalled = try await HTTP2Stall.open(port: try await gw.port(.console))
            let closed = await stalled.waitUntilClosed()
            #expect(closed.goAway)
        }
    }

    @Test func anIdleHTTP2ConnectionIsClosedWithGoAwayAfterTheIdleTimeout() async throws {
        // The request must be sent and answered before the connection counts as idle; on a
        // loaded machine a 1 s timeout could pass between the handshake and the request.
        try await TestGateway.with(listeners: [.console: "limits: {idle_timeout: 3s}"]) { gw in
            let idle = try await HTTP2Stall.open(port: try await gw.port(.console), complete: true)
            let closed = await idle.waitUntilClosed()
            #expect(closed.answered)
            #expect(closed.goAway)
            try await TestClient.with { client in
                let metrics = try await TestClient.get(client, try await gw.url(.webservices, "/metrics"))
                #expect(metrics.body.contains(#"portico_client_timeouts_total{listener="console"} 1"#))
            }
        }
    }
}
