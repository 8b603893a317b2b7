import AsyncHTTPClient
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

@Suite struct UpstreamTests {
    /// Two backends (gateways answering `/echo/*` with their names and `/status` with a
    /// switchable health), then `run` with their base URLs.
    private func withBackends(_ run: (_ urls: [String], _ health: [HealthSwitch]) async throws -> Void) async throws {
        let routes = "routes:\n  - {listener: client_plain, path: /echo/*, service: echo}\n  - {listener: client_plain, path: /once/*, service: echo}\n  - {listener: client_plain, path: /status, service: switch}"
        let health = [HealthSwitch(), HealthSwitch()]
        try await TestGateway.with(body: routes, services: TestServices.registry(name: "b1", health: health[0])) { b1 in
            try await TestGateway.with(body: routes, services: TestServices.registry(name: "b2", health: health[1])) { b2 in
                try await run(["http://127.0.0.1:\(try await b1.port(.clientPlain))", "http://127.0.0.1:\(try await b2.port(.clientPlain))"], health)
            }
        }
    }

    /// A loopback port with nothing listening on it.
    /// A port nothing listens on, and nothing will meanwhile: below the range `port: 0` and
    /// outgoing connections take theirs from.
    private func deadPort() async throws -> Int {
        try TestPorts.unused()
    }

    private func backendName(_ answer: TestClient.Answer) -> String? {
        answer.body.split(separator: "\n").first { $0.hasPrefix("backend=") }.map { String($0.dropFirst("backend=".count)) }
    }

    @Test func roundRobinAcrossTargetsWithForwardedHeaders() async throws {
        try await withBackends { urls, _ in
            let config = """
                upstreams:
                  api: {targets: [\(urls[0]), \(urls[1])]}
                routes:
                  - {listener: console, path: /echo/*, upstream: api}
                """
            try await TestGateway.with(listeners: [.clientPlain: "", .console: ""], body: config) { front in
                try await TestClient.with { client in
                    var seen: [String] = []
                    for _ in 0..<4 {
                        let answer = try await TestClient.get(client, try await front.url(.console, "/echo/x?q=1"), headers: ["x-forwarded-for": "6.6.6.6"])
                        #expect(answer.status == 200)
                        seen.append(try #require(backendName(answer)))
                        #expect(answer.body.contains("uri=/echo/x?q=1"))
                        // The client's own X-Forwarded-For is not believed: the peer is not a trusted proxy.
                        #expect(answer.body.contains("header.x-forwarded-for=127.0.0.1\n") || answer.body.hasSuffix("header.x-forwarded-for=127.0.0.1"))
                        #expect(answer.body.contains("header.x-forwarded-proto=https"))
                        #expect(!answer.body.contains("6.6.6.6"))
                    }
                    #expect(seen == ["b1", "b2", "b1", "b2"])
                }
            }
        }
    }

    @Test func activeHealthChecksEjectAndRestoreATarget() async throws {
        try await withBackends { urls, health in
            let config = """
                upstreams:
                  api:
                    targets: [\(urls[0]), \(urls[1])]
                    health_check: {path: /status, interval: 1h, unhealthy_threshold: 1, healthy_threshold: 1}
                routes:
                  - {listener: client_plain, path: /echo/*, upstream: api}
                """
            try await TestGateway.with(listeners: [.clientPlain: "", .console: ""], body: config) { front in
                let pool = try #require(await front.gateway.upstreamPool(named: "api"))
                let check = try #require(pool.configuration.healthCheck)
                try await TestClient.with(http2: false) { client in
                    health[1].set(false)
                    await pool.probeAll(check)
                    var seen: Set<String> = []
                    for _ in 0..<4 { seen.insert(try #require(backendName(try await TestClient.get(client, try await front.url(.clientPlain, "/echo/a"))))) }
                    #expect(seen == ["b1"])

                    health[1].set(true)
                    await pool.probeAll(check)
                    seen = []
                    for _ in 0..<4 { seen.insert(try #require(backendName(try await TestClient.get(client, try await front.url(.clientPlain, "/echo/a"))))) }
                    #expect(seen == ["b1", "b2"])
                }
            }
        }
    }

    @Test func idempotentRequestsRetryOnAnotherTargetAndFailingTargetsAreEjected() async throws {
        let dead = try await deadPort()
        try await withBackends { urls, _ in
            let config = """
                upstreams:
                  retrying:
                    targets: [http://127.0.0.1:\(dead), \(urls[0])]
                    passive: {max_failures: 1, eject_for: 1h}
                  once:
                    targets: [http://127.0.0.1:\(dead), \(urls[0])]
                    passive: {max_failures: 100}
                routes:
                  - {listener: client_plain, path: /echo/*, upstream: retrying}
                  - {listener: client_plain, path: /once/*, upstream: once}
                """
            try await TestGateway.with(listeners: [.clientPlain: "", .console: ""], body: config) { front in
                try await TestClient.with(http2: false) { client in
                    // The first pick is the dead target; a GET moves on to the live one.
                    let first = try await TestClient.get(client, try await front.url(.clientPlain, "/echo/1"))
                    #expect(first.status == 200 && backendName(first) == "b1")
                    // The dead target was ejected after one failure: a POST (not retried) now
                    // goes straight to the live one.
                    let post = try await TestClient.get(client, try await front.url(.clientPlain, "/echo/2"), method: .POST, body: "x")
                    #expect(post.status == 200 && backendName(post) == "b1")

                    // Without ejection, a POST that meets the dead target is not retried.
                    let failed = try await TestClient.get(client, try await front.url(.clientPlain, "/once/1"), method: .POST, body: "x")
                    #expect(failed.status == 502)
                    #expect(failed.body.contains("upstream once did not answer"))
                    let next = try await TestClient.get(client, try await front.url(.clientPlain, "/once/2"), method: .POST, body: "x")
                    #expect(next.status == 200)
                }
            }
        }
    }
}

/// The gateway's own HTTP/1.1 client for plain-HTTP upstreams: kept-alive connections, the
/// framings a response may use, and what it does when an upstream misbehaves.
@Suite(.timeLimit(.minutes(1))) struct UpstreamClientTests {
    static func ok(_ body: String, extra: String = "") -> String {
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\(extra)content-length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    /// A gateway proxying `/up` on the plain client listener to `upstream`.
    static func withFront(_ upstream: CannedUpstream, settings: String = "", _ run: (RunningGateway, HTTPClient) async throws -> Void) async throws {
        let config = """
            upstreams:
              up: {targets: ["http://127.0.0.1:\(upstream.port)"]\(settings)}
            routes:
              - {listener: client_plain, path: /up, upstream: up}
            """
        try await TestGateway.with(listeners: [.clientPlain: ""], body: config) { front in
            try await TestClient.with(http2: false) { client in try await run(front, client) }
        }
    }

    @Test func requestsReuseOneKeptAliveConnection() async throws {
        let upstream = try await CannedUpstream.start { _, request in
            .answer(Self.ok("answer \(request)", extra: "Connection: keep-alive, X-Hop\r\nx-hop: for this hop\r\nx-upstream: yes\r\n"))
        }
        try await Self.withFront(upstream) { front, client in
            for round in 0..<20 {
                let answer = try await TestClient.get(client, try await front.url(.clientPlain, "/up"))
                #expect(answer.status == 200)
                // One Date, the gateway's own.
                #expect(answer.headers["date"].count == 1)
                #expect(answer.headers.first(name: "date")?.contains("1994") == false)
                // A field the upstream's Connection names is for its hop only.
                #expect(answer.headers["x-hop"].isEmpty)
                #expect(answer.headers.first(name: "x-upstream") == "yes")
                #expect(answer.headers.first(name: "content-type") == "text/plain")
                #expect(answer.body == "answer \(round)")
            }
        }
        #expect(upstream.requests == 20)
        #expect(upstream.connections == 1)
        await upstream.stop()
    }

    /// HTTP/2 clients reach upstreams through the same client: streams of one connection,
    /// answered with the upstream's fields (hop-by-hop ones dropped) and the gateway's `date`.
    @Test func http2RequestsAreProxiedOverTheKeptAliveConnection() async throws {
        let upstream = try await CannedUpstream.start { _, request in
            .answer(Self.ok("answer \(request)", extra: "x-upstream: yes\r\nkeep-alive: timeout=5\r\nconnection: x-hop\r\nx-hop: 1\r\n"))
        }
        let config = """
            upstreams:
              up: {targets: ["http://127.0.0.1:\(upstream.port)"]}
            routes:
              - {listener: console, path: /up, upstream: up}
            """
        try await TestGateway.with(body: config) { front in
            try await TestClient.with(http2: true) { client in
                for round in 0..<5 {
                    let answer = try await TestClient.get(client, try await front.url(.console, "/up"))
                    #expect(answer.version == .http2)
                    #expect(answer.body == "answer \(round)")
                    #expect(answer.headers.first(name: "x-upstream") == "yes")
                    #expect(answer.headers["keep-alive"].isEmpty)
                    #expect(answer.headers["x-hop"].isEmpty)
                    #expect(answer.headers["connection"].isEmpty)
                    #expect(answer.headers["date"].count == 1)
                    #expect(answer.headers.first(name: "date")?.contains("1994") == false)
                }
            }
        }
        #expect(upstream.connections == 1)
        await upstream.stop()
    }

    @Test func keepaliveIdleConnectionsZeroOpensAConnectionPerRequest() async throws {
        let upstream = try await CannedUpstream.start { _, request in .answer(Self.ok("answer \(request)")) }
        try await Self.withFront(upstream, settings: ", keepalive: {idle_connections: 0}") { front, client in
            for round in 0..<5 {
                let answer = try await TestClient.get(client, try await front.url(.clientPlain, "/up"))
                #expect(answer.body == "answer 0", "round \(round)")
            }
        }
        #expect(upstream.requests == 5)
        #expect(upstream.connections == 5)
        await upstream.stop()
    }

    /// The idle connection is closed by the gateway after `keepalive.idle_timeout` (the
    /// suite's time limit catches a connection that is never closed); the next request opens
    /// a new one.
    @Test func anIdleUpstreamConnectionIsClosedAfterItsIdleTimeout() async throws {
        let upstream = try await CannedUpstream.start { _, request in .answer(Self.ok("answer \(request)")) }
        try await Self.withFront(upstream, settings: ", keepalive: {idle_timeout: 1s}") { front, client in
            let first = try await TestClient.get(client, try await front.url(.clientPlain, "/up"))
            #expect(first.status == 200)
            await upstream.waitUntilClosed(connections: 1)
            #expect(upstream.connections == 1)
            let second = try await TestClient.get(client, try await front.url(.clientPlain, "/up"))
            #expect(second.body == "answer 0")
            #expect(upstream.connections == 2)
        }
        await upstream.stop()
    }

    @Test func chunkedCloseDelimitedAndInterimResponsesAreRead() async throws {
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-kept: yes\r\n\r\n5;ext\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"
        let interim = "HTTP/1.1 100 Continue\r\n\r\n" + Self.ok("after interim")
        let untilClose = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nread until the end"
        let upstream = try await CannedUpstream.start { connection, request in
            switch (connection, request) {
            case (0, 0): .answer(chunked)
            case (0, 1): .answer(interim)
            default: .answerAndClose(untilClose)
            }
        }
        try await Self.withFront(upstream) { front, client in
            let first = try await TestClient.get(client, try await front.url(.clientPlain, "/up"))
            #expect(first.body == "hello world")
            #expect(first.headers.first(name: "x-kept") == "yes")
            #expect(first.headers.first(name: "transfer-encoding") == nil)
            #expect(try await TestClient.get(client, try await front.url(.clientPlain, "/up")).body == "after interim")
            #expect(try await TestClient.get(client, try await front.url(.clientPlain, "/up")).body == "read until the end")
            // The close-delimited answer used its connection up; the next request gets a new one.
            #expect(try await TestClient.get(client, try await front.url(.clientPlain, "/up")).body == "read until the end")
        }
        #expect(upstream.connections == 2)
        await upstream.stop()
    }

    @Test func aKeptAliveConnectionClosedUnderARequestIsRetriedOnANewOne() async throws {
        // Each connection answers its first request and drops the second unanswered, as a
        // server does when its keep-alive timeout strikes as the request arrives.
        let upstream = try await CannedUpstream.start { _, request in request == 0 ? .answer(Self.ok("fresh")) : .close }
        try await Self.withFront(upstream) { front, client in
            for _ in 0..<3 {
                let answer = try await TestClient.get(client, try await front.url(.clientPlain, "/up"))
                #expect(answer.status == 200 && answer.body == "fresh")
            }
            // A POST is not sent twice: it fails with the connection.
            let post = try await TestClient.get(client, try await front.url(.clientPlain, "/up"), method: .POST, body: "once")
            #expect(post.status == 502)
        }
        // Three connections: each GET after the first found its kept-alive connection dropped
        // and went again on a new one; the POST failed with the third.
        #expect(upstream.connections == 3)
        await upstream.stop()
    }

    @Test func brokenSlowAndOversizedUpstreamsGetTheGatewaysOwnAnswers() async throws {
        let upstream = try await CannedUpstream.start { connection, _ in
            switch connection {
            case 0: .answer("NOT HTTP AT ALL\r\n\r\n")
            case 1: .close
            case 2: .answer(Self.ok(String(repeating: "x", count: 2000)))
            default: .ignore
            }
        }
        // The timeout is 3s, not less: the first three answers must beat it while the whole
        // suite loads two cores (at 1s, the malformed answer once came back as 504 in CI).
        try await Self.withFront(upstream, settings: ", response_timeout: 3s, max_response_bytes: 1000, retries: 0, passive: {max_failures: 100}") { front, client in
            let malformed = try await TestClient.get(client, try await front.url(.clientPlain, "/up"))
            #expect(malformed.status == 502)
            #expect(malformed.body.contains("malformed response"))
            let closed = try await TestClient.get(client, try await front.url(.clientPlain, "/up"))
            #expect(closed.status == 502)
            #expect(closed.body.contains("closed before a response"))
            let large = try await TestClient.get(client, try await front.url(.clientPlain, "/up"))
            #expect(large.status == 502)
            #expect(large.body.contains("larger than 1000 bytes"))
            let slow = try await TestClient.get(client, try await front.url(.clientPlain, "/up"))
            #expect(slow.status == 504)
        }
        await upstream.stop()
    }

    @Test func theRequestGoesOutWithForwardingHeadersAndItsBody() async throws {
        let seen = NIOLockedValueBox("")
        let echo = try await RecordingUpstream.start(seen)
        try await Self.withFront(echo.upstream) { front, client in
            let answer = try await TestClient.get(client, try await front.url(.clientPlain, "/up?x=1"), method: .POST, headers: ["x-custom": "kept", "x-custom-hop": "dropped", "connection": "keep-alive, x-custom-hop"], body: "payload")
            #expect(answer.status == 200)
        }
        let request = seen.withLockedValue { $0 }
        #expect(request.hasPrefix("POST /up?x=1 HTTP/1.1\r\n"))
        #expect(request.contains("x-custom: kept\r\n"))
        #expect(request.contains("x-forwarded-for: 127.0.0.1\r\n"))
        #expect(request.contains("x-forwarded-proto: http\r\n"))
        #expect(request.contains("content-length: 7\r\n"))
        #expect(request.hasSuffix("\r\n\r\npayload"))
        #expect(!request.lowercased().contains("connection:"))
        // A field the Connection header names is for this hop only.
        #expect(!request.contains("dropped"))
        await echo.upstream.stop()
    }
}

/// The fields an upstream receives, for an HTTP/1.1 request (relayed with its header lines
/// as bytes) and for an HTTP/2 one (sent from its decoded fields): the same rules either way.
@Suite struct UpstreamForwardingTests {
    /// The upstream's view of one request: its head's lines, lowercased names.
    static func lines(_ request: String) -> [String] {
        let head = request.components(separatedBy: "\r\n\r\n").first ?? ""
        return head.components(separatedBy: "\r\n").map { line in
            guard let colon = line.firstIndex(of: ":") else { return line }
            return line[..<colon].lowercased() + line[colon...]
        }
    }

    @Test func aTrustedProxysChainIsExtendedAndHopFieldsAreDropped() async throws {
        let seen = NIOLockedValueBox("")
        let echo = try await RecordingUpstream.start(seen)
        let config = """
            upstreams:
              up: {targets: ["http://127.0.0.1:\(echo.upstream.port)/base"]}
            routes:
              - {listener: client_plain, path: /up, upstream: up}
              - {listener: console, path: /up, upstream: up}
            """
        try await TestGateway.with(listeners: [.clientPlain: "trusted_proxies: [127.0.0.0/8]"], body: config) { front in
            // HTTP/1.0 without Host, from a trusted proxy, with fields that are for one hop only.
            let request = "GET /up?q=1 HTTP/1.0\r\nX-Forwarded-For: 198.51.100.1\r\nx-forwarded-for: 203.0.113.5\r\nX-Forwarded-Host: spoofed\r\n"
                + "X-Forwarded-Proto: gopher\r\nTE: trailers\r\nUpgrade: h2c\r\nConnection: X-Hop\r\nX-Hop: 1\r\nProxy-Authorization: secret\r\nX-Kept:  yes \r\n\r\n"
            let answer = try await RawTCP.exchange(port: try await front.port(.clientPlain), request)
            #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\n"))
            #expect(answer.contains("connection: close\r\n"))
            #expect(answer.hasSuffix("\r\n\r\nrecorded"))
            let relayed = Self.lines(seen.withLockedValue { $0 })
            #expect(relayed == [
                "GET /base/up?q=1 HTTP/1.1",
                "x-kept: yes",
                "x-forwarded-for: 198.51.100.1, 203.0.113.5, 127.0.0.1",
                "x-forwarded-proto: http",
                "host: 127.0.0.1:\(echo.upstream.port)",
            ])
        }
        seen.withLockedValue { $0 = "" }
        try await TestGateway.with(body: config) { front in
            // HTTP/2 over TLS from an untrusted peer: its X-Forwarded-For is dropped.
            try await TestClient.with(http2: true) { client in
                let answer = try await TestClient.get(client, try await front.url(.console, "/up?q=2"), headers: ["x-forwarded-for": "6.6.6.6", "x-kept": "yes", "te": "trailers"])
                #expect(answer.version == .http2)
                #expect(answer.body == "recorded")
            }
            let relayed = Self.lines(seen.withLockedValue { $0 })
            #expect(relayed.first == "GET /base/up?q=2 HTTP/1.1")
            #expect(relayed.contains("x-kept: yes"))
            #expect(relayed.contains("x-forwarded-for: 127.0.0.1"))
            #expect(relayed.contains("x-forwarded-proto: https"))
            #expect(relayed.contains { $0.hasPrefix("x-forwarded-host: 127.0.0.1:") })
            #expect(!relayed.contains { $0.hasPrefix("te:") || $0.contains("6.6.6.6") })
        }
        await echo.upstream.stop()
    }

    @Test func theHostAnUpstreamSeesIsTheOneTheRequestWasRoutedBy() async throws {
        let seen = NIOLockedValueBox("")
        let echo = try await RecordingUpstream.start(seen)
        let config = """
            upstreams:
              up: {targets: ["http://127.0.0.1:\(echo.upstream.port)"]}
            routes:
              - {listener: client_plain, path: /up, upstream: up}
              - {listener: console, path: /up, upstream: up}
            """
        try await TestGateway.with(listeners: [.clientPlain: "", .console: ""], body: config) { front in
            // `Connection: host` does not take the Host away; an untrusted peer's `Forwarded`
            // is dropped like its `X-Forwarded-For`.
            let request = "GET /up HTTP/1.1\r\nHost: portico.example\r\nConnection: host, close\r\nForwarded: for=6.6.6.6;host=internal.example\r\n\r\n"
            let answer = try await RawTCP.exchange(port: try await front.port(.clientPlain), request)
            #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\n"))
            let relayed = Self.lines(seen.withLockedValue { $0 })
            #expect(relayed.contains("host: portico.example"))
            #expect(!relayed.contains { $0.hasPrefix("forwarded:") || $0.contains("6.6.6.6") })

            // Over HTTP/2 the upstream's Host is the :authority the route was chosen by...
            seen.withLockedValue { $0 = "" }
            let port = try await front.port(.console)
            let base = [(":method", "GET"), (":scheme", "https"), (":path", "/up"), (":authority", "127.0.0.1")]
            #expect(try await HTTP2Probe.send(port: port, headers: base) == .status("200"))
            #expect(Self.lines(seen.withLockedValue { $0 }).filter { $0.hasPrefix("host:") } == ["host: 127.0.0.1"])
            // ...and a host field naming another is refused, never forwarded.
            seen.withLockedValue { $0 = "" }
            #expect(try await HTTP2Probe.send(port: port, headers: base + [("host", "internal.example")]) == .reset(.protocolError))
            #expect(try await HTTP2Probe.send(port: port, headers: base.map { $0.0 == ":method" ? ($0.0, "GET /up/injected?") : $0 }) == .reset(.protocolError))
            #expect(try await HTTP2Probe.send(port: port, headers: base.map { $0.0 == ":path" ? ($0.0, "/up x") : $0 }) == .reset(.protocolError))
            #expect(seen.withLockedValue { $0 }.isEmpty)
        }
        // From a trusted proxy, `Forwarded` goes on with this hop's element after it.
        seen.withLockedValue { $0 = "" }
        try await TestGateway.with(listeners: [.clientPlain: "trusted_proxies: [127.0.0.0/8]"], body: config) { front in
            let request = "GET /up HTTP/1.1\r\nHost: h\r\nConnection: close\r\nForwarded: for=198.51.100.1;proto=https\r\n\r\n"
            _ = try await RawTCP.exchange(port: try await front.port(.clientPlain), request)
            #expect(Self.lines(seen.withLockedValue { $0 }).contains("forwarded: for=198.51.100.1;proto=https, for=\"127.0.0.1\";proto=http"))
        }
        await echo.upstream.stop()
    }

    /// HTTPS targets go through the other client; the same fields reach them, and they are
    /// verified against the upstream's `trust` (a target the system does not trust is refused
    /// without it).
    @Test func anHTTPSTargetIsVerifiedAgainstTheUpstreamsTrust() async throws {
        let backendRoutes = "routes:\n  - {listener: console, path: /echo/*, service: echo}\n  - {listener: console, path: /once/*, service: echo}"
        try await TestGateway.with(body: backendRoutes) { backend in
            let target = "https://127.0.0.1:\(try await backend.port(.console))"
            let config = """
                upstreams:
                  trusted: {targets: ["\(target)"], trust: \(backend.identity.certificatePath), retries: 0}
                  untrusted: {targets: ["\(target)"], retries: 0}
                routes:
                  - {listener: client_plain, path: /echo/*, upstream: trusted}
                  - {listener: client_plain, path: /once/*, upstream: untrusted}
                """
            try await TestGateway.with(listeners: [.clientPlain: "", .console: ""], body: config) { front in
                let request = "GET /echo/x?q=1 HTTP/1.1\r\nHost: front\r\nX-Kept: yes\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
                let answer = try await RawTCP.exchange(port: try await front.port(.clientPlain), request)
                #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\n"))
                #expect(answer.contains("uri=/echo/x?q=1"))
                #expect(answer.contains("header.x-kept=yes"))
                #expect(answer.contains("header.x-forwarded-for=127.0.0.1\n") || answer.hasSuffix("header.x-forwarded-for=127.0.0.1"))
                #expect(answer.contains("header.x-forwarded-proto=http"))
                #expect(answer.contains("header.x-forwarded-host=front"))
                #expect(!answer.contains("x-hop") && !answer.contains("6.6.6.6"))
                // The backend's own Date and framing are replaced by the front's.
                let head = answer.components(separatedBy: "\r\n\r\n")[0].lowercased()
                #expect(head.components(separatedBy: "\r\ndate: ").count == 2)
                #expect(head.components(separatedBy: "\r\ncontent-length: ").count == 2)
                #expect(head.contains("\r\ncontent-type: "))
                let refused = try await RawTCP.exchange(port: try await front.port(.clientPlain), "GET /once/x HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\r\n")
                #expect(refused.hasPrefix("HTTP/1.1 502 "))
            }
        }
    }

    @Test func aHeadRequestIsRelayedWithoutABody() async throws {
        let upstream = try await CannedUpstream.start { _, _ in
            .answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\nKeep-Alive: timeout=5\r\n\r\n")
        }
        try await UpstreamClientTests.withFront(upstream) { front, _ in
            let connection = try await RawTCP.connect(port: try await front.port(.clientPlain))
            try await connection.send("HEAD /up HTTP/1.1\r\nHost: x\r\n\r\nHEAD /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            let answers = await connection.responseUntilClose()
            // Two answers, in order, each without a body; the second closes.
            let heads = answers.components(separatedBy: "\r\n\r\n").filter { !$0.isEmpty }
            #expect(heads.count == 2)
            #expect(heads.allSatisfy { $0.hasPrefix("HTTP/1.1 200 OK\r\n") && $0.contains("\r\nX-Up: 1\r\n") })
            // The length a GET would have had.
            #expect(heads.allSatisfy { $0.contains("content-length: 5") })
            #expect(!answers.lowercased().contains("keep-alive"))
            #expect(heads.last?.contains("connection: close") == true)
        }
        #expect(upstream.requests == 2)
        await upstream.stop()
    }
}

@Suite struct TriedTargetsTests {
    /// A probe that started before the last one counted is stale: its answer, however late it
    /// arrives, does not undo the newer probe's (the gateway's own probe at start raced a
    /// test's probe this way).
    @Test func aStaleProbeResultIsNotCounted() throws {
        let target = try #require(UpstreamTarget(url: "http://127.0.0.1:1"))
        var check = HealthCheckConfiguration()
        check.healthyThreshold = 1
        check.unhealthyThreshold = 1
        let earlier = NIODeadline.now()
        let later = earlier + .milliseconds(1)
        #expect(target.recordCheck(healthy: false, started: later, configuration: check))
        #expect(!target.isAvailable())
        #expect(target.recordCheck(healthy: true, started: earlier, configuration: check) == false)
        #expect(!target.isAvailable())
        #expect(target.recordCheck(healthy: true, started: later + .milliseconds(1), configuration: check))
        #expect(target.isAvailable())
    }

    @Test func passiveHealthCountsFailuresInARowAndEjects() throws {
        let target = try #require(UpstreamTarget(url: "http://127.0.0.1:1"))
        #expect(target.isAvailable())
        target.recordFailure(maxFailures: 2, ejectFor: .hours(1))
        #expect(target.isAvailable())
        target.recordSuccess()
        // The success started the count again: one more failure does not eject.
        target.recordFailure(maxFailures: 2, ejectFor: .hours(1))
        #expect(target.isAvailable())
        target.recordFailure(maxFailures: 2, ejectFor: .hours(1))
        #expect(!target.isAvailable())
        // An answer arriving late does not end an ejection.
        target.recordSuccess()
        #expect(!target.isAvailable())

        // Once the ejection is over the target is back, its count from zero.
        let brief = try #require(UpstreamTarget(url: "http://127.0.0.1:1"))
        brief.recordFailure(maxFailures: 1, ejectFor: .nanoseconds(0))
        #expect(brief.isAvailable())
        brief.recordFailure(maxFailures: 2, ejectFor: .hours(1))
        #expect(brief.isAvailable())
    }

    @Test func remembersEveryTargetTried() {
        var tried = TriedTargets()
        #expect(!tried.contains(0) && tried.count == 0)
        for target in [3, 0, 7, 5] { tried.insert(target) }
        #expect(tried.count == 4)
        #expect([3, 0, 7, 5].allSatisfy { tried.contains($0) })
        #expect(![1, 2, 4, 6, 8, -1].contains { tried.contains($0) })
    }
}

/// A canned upstream that also keeps the last request it received.
struct RecordingUpstream {
    let upstream: CannedUpstream

    static func start(_ seen: NIOLockedValueBox<String>) async throws -> RecordingUpstream {
        let upstream = try await CannedUpstream.start { _, _ in .answer(UpstreamClientTests.ok("recorded")) }
        try await upstream.channel.pipeline.addHandler(Recorder(seen: seen), position: .first).get()
        return RecordingUpstream(upstream: upstream)
    }

    /// Sits on the listening channel and records what each accepted connection receives.
    private final class Recorder: ChannelInboundHandler, Sendable {
        typealias InboundIn = any Channel
        let seen: NIOLockedValueBox<String>
        init(seen: NIOLockedValueBox<String>) { self.seen = seen }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let child = unwrapInboundIn(data)
            let seen = self.seen
            child.pipeline.addHandler(Tap(seen: seen), position: .first).whenComplete { _ in }
            context.fireChannelRead(data)
        }
    }

    private final class Tap: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let seen: NIOLockedValueBox<String>
        init(seen: NIOLockedValueBox<String>) { self.seen = seen }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let text = String(buffer: unwrapInboundIn(data))
            seen.withLockedValue { $0 += text }
            context.fireChannelRead(data)
        }
    }
}

/// The upstream client's reading of response heads.
@Suite struct UpstreamResponseHeadTests {
    static func head(_ text: String) throws -> UpstreamConnection.ResponseHead? {
        try UpstreamConnection.parseHead(ByteBuffer(string: text), maxBytes: 1024)
    }

    @Test func fieldsFramingAndKeepAliveAreRead() throws {
        let text = "HTTP/1.1 200 OK\r\nServer: up\r\nDate: x\r\nContent-Length:  12 \r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: b\r\n\r\nbody"
        let head = try #require(try Self.head(text))
        #expect(head.status == 200)
        #expect(head.contentLength == 12)
        #expect(!head.chunked && head.keepAlive)
        #expect(head.length == text.utf8.count - 4)
        #expect(head.headers.map { "\($0.name)=\($0.value)" } == ["Server=up", "X-A=b"])
        let chunked = try #require(try Self.head("HTTP/1.1 204\r\ntransfer-encoding: Chunked\r\nconnection: close\r\n\r\n"))
        #expect(chunked.status == 204 && chunked.chunked && !chunked.keepAlive && chunked.contentLength == nil)
        let named = try #require(try Self.head("HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-HOP: 1\r\nx-hop-not: 2\r\nContent-Length: 0\r\n\r\n"))
        #expect(named.keepAlive && named.namesConnectionFields)
        #expect(named.headers.map { "\($0.name)=\($0.value)" } == ["x-hop-not=2"])
        #expect(try #require(try Self.head(text)).namesConnectionFields == false)
        let old = try #require(try Self.head("HTTP/1.0 200 OK\nContent-Length: 0\n\n"))
        #expect(!old.keepAlive && old.contentLength == 0)
        #expect(try Self.head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n") == nil)
    }

    @Test func malformedHeadsAreRefused() {
        for text in [
            "HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 200OK\r\n\r\n", "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-Big: \(String(repeating: "a", count: 2000))\r\n\r\n",
        ] {
            #expect(throws: UpstreamFailure.self, "\(text.prefix(40))") { _ = try Self.head(text) }
        }
    }

    /// Responses are read by the reader of requests, with its rules: what would make the
    /// gateway and a client disagree about where a response ends is refused, not passed on.
    @Test func responsesAreHeldToTheRulesOfRequests() throws {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n", "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: 1\rContent-Length: 5\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-\u{1}: 1\r\n\r\n", "HTTP/1.1 200 O\u{7}K\r\n\r\n",
        ] {
            #expect(throws: UpstreamFailure.self, "\(text.debugDescription)") { _ = try Self.head(text) }
        }
        // With both framings, chunked decides and the connection is not used again.
        let both = try #require(try Self.head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"))
        #expect(both.chunked && both.contentLength == nil && !both.keepAlive)
    }
}
