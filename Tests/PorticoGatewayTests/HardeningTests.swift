import Foundation
import NIOCore
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

private typealias Kind = RawHTTP2.Kind
private typealias Flag = RawHTTP2.Flag

/// What a hostile client tried and the gateway must refuse or outlast: each a defect found
/// once, kept here so that it stays fixed.
@Suite(.timeLimit(.minutes(2))) struct HTTP2HardeningTests {
    static let routes = """
        routes:
          - {listener: console, path: /echo, service: echo}
        """

    @Test func aHeaderBlockTrickledInContinuationFramesIsCutAtTheHeaderTimeout() async throws {
        // An idle timeout far beyond the header timeout: only the header timeout can end this.
        let limits = "limits: {header_timeout: 1s, idle_timeout: 120s}"
        try await TestGateway.with(listeners: [.console: limits], body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            let block = h2.block(RawHTTP2.get("/healthz"))
            // On a loaded machine the header timeout may already have passed here: the write
            // then meets a closed connection, and the GOAWAY before it is what is checked.
            try? await h2.send(Kind.headers, stream: 1, Array(block.prefix(1)))
            // One byte of the block every 200 ms, each a frame the server sees, for up to 30 s.
            var sent = 1
            while !h2.frames.contains(where: { $0.type == Kind.goAway }), sent < 150 {
                try? await Task.sleep(for: .milliseconds(200))
                try? await h2.send(Kind.continuation, stream: 1, [sent < block.count ? block[sent] : 0x40])
                sent += 1
            }
            let goAway = await h2.goAway()
            #expect(goAway != nil)
            #expect(sent < 150, "the connection was still open after 30 s of CONTINUATION frames")
            await h2.close()
        }
    }
}

/// An upstream's answer to an HTTP/2 client goes out as the upstream sends it and as fast as
/// the client takes it: a client that takes nothing holds little and is sent away.
@Suite(.timeLimit(.minutes(2))) struct HTTP2UpstreamStreamingTests {
    static let megabyte = String(repeating: "0123456789abcdef", count: 65_536)

    /// A gateway proxying `/up` on the console listener to an upstream answering `answer`.
    static func withUpstream(_ answer: String, limits: String = "", _ run: (RunningGateway, CannedUpstream) async throws -> Void) async throws {
        let upstream = try await CannedUpstream.start { _, _ in .answer(answer) }
        let config = """
            upstreams:
              up: {targets: ["http://127.0.0.1:\(upstream.port)"]}
            routes:
              - {listener: console, path: /up, upstream: up}
            """
        try await TestGateway.with(listeners: [.console: limits], body: config) { gw in
            try await run(gw, upstream)
        }
        await upstream.stop()
    }

    @Test func largeAndChunkedUpstreamAnswersArriveWhole() async throws {
        let chunks = (0..<40).map { String(format: "%x\r\n", 3000 + $0) + String(repeating: "c", count: 3000 + $0) + "\r\n" }.joined()
        let chunkedAnswer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-kind: chunked\r\n\r\n" + chunks + "0\r\n\r\n"
        for (answer, expected) in [(UpstreamClientTests.ok(Self.megabyte), Self.megabyte),
                                   (chunkedAnswer, (0..<40).map { String(repeating: "c", count: 3000 + $0) }.joined())] {
            try await Self.withUpstream(answer) { gw, _ in
                try await TestClient.with(http2: true) { client in
                    for _ in 0..<3 {
                        let got = try await TestClient.get(client, try await gw.url(.console, "/up"))
                        #expect(got.version == .http2 && got.status == 200)
                        #expect(got.body.count == expected.count && got.body == expected)
                    }
                    // HEAD: the upstream's head, no body.
                    let head = try await TestClient.get(client, try await gw.url(.console, "/up"), method: .HEAD)
                    #expect(head.status == 200 && head.body.isEmpty)
                }
            }
        }
    }

    @Test func anAnswerWaitsForCreditAndGoesOnWhenItComes() async throws {
        try await Self.withUpstream(UpstreamClientTests.ok(Self.megabyte)) { gw, _ in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console), settings: [(0x4, 0)])
            try await h2.headers(stream: 1, RawHTTP2.get("/up"), endStream: true)
            let head = await h2.next { $0.type == Kind.headers && $0.stream == 1 }
            #expect(head?.status == "200")
            // Nothing goes past the zero window, and the upstream has been told to wait.
            try await h2.send(Kind.ping, stream: 0, [UInt8](repeating: 2, count: 8))
            _ = await h2.next { $0.type == Kind.ping && $0.has(Flag.ack) }
            #expect(!h2.frames.contains { $0.type == Kind.data })
            // Credit for all of it: the rest is read from the upstream as what waits drains.
            try await h2.send(Kind.windowUpdate, stream: 1, RawHTTP2.word(UInt32(Self.megabyte.utf8.count)))
            try await h2.send(Kind.windowUpdate, stream: 0, RawHTTP2.word(UInt32(Self.megabyte.utf8.count)))
            let end = await h2.next { $0.type == Kind.data && $0.stream == 1 && $0.has(Flag.endStream) }
            #expect(end != nil)
            let body = h2.frames.filter { $0.type == Kind.data && $0.stream == 1 }.flatMap(\.payload)
            #expect(body.count == Self.megabyte.utf8.count)
            #expect(String(decoding: body, as: UTF8.self) == Self.megabyte)
            await h2.close()
        }
    }

    @Test func anHTTPSTargetsLargeAnswerStreamsToo() async throws {
        let backendRoutes = "routes:\n  - {listener: console, path: /echo, service: echo, max_body_bytes: 2MiB}"
        try await TestGateway.with(body: backendRoutes) { backend in
            let config = """
                upstreams:
                  secure: {targets: ["https://127.0.0.1:\(try await backend.port(.console))"], trust: \(backend.identity.certificatePath), retries: 0}
                routes:
                  - {listener: console, path: /echo, upstream: secure, max_body_bytes: 2MiB}
                """
            try await TestGateway.with(body: config) { front in
                try await TestClient.with(http2: true) { client in
                    // The backend echoes the body back: a megabyte each way.
                    let got = try await TestClient.get(client, try await front.url(.console, "/echo"), method: .POST, body: Self.megabyte)
                    #expect(got.version == .http2 && got.status == 200)
                    #expect(got.body.contains("body=" + Self.megabyte + "\n"))
                    #expect(got.body.hasPrefix("backend=backend\nmethod=POST\nuri=/echo\n"))
                }
            }
        }
    }

    @Test func aClientThatNeverGrantsCreditIsSentAwayThoughItPings() async throws {
        try await Self.withUpstream(UpstreamClientTests.ok(Self.megabyte), limits: "limits: {body_timeout: 1s}") { gw, _ in
            // No credit at all for streams, four of them asking for a megabyte each. (On a busy
            // machine the first may stall past the body timeout, and the connection be sent
            // away, before the last is written.)
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console), settings: [(0x4, 0)])
            for stream in stride(from: UInt32(1), through: 7, by: 2) {
                try? await h2.headers(stream: stream, RawHTTP2.get("/up"), endStream: true)
            }
            // A PING every 100 ms, for at most 20 s: it must not keep the stalled streams alive.
            var pings = 0
            while !h2.frames.contains(where: { $0.type == Kind.goAway }), pings < 200 {
                try? await h2.send(Kind.ping, stream: 0, [UInt8](repeating: 1, count: 8))
                try? await Task.sleep(for: .milliseconds(100))
                pings += 1
            }
            let goAway = await h2.goAway()
            #expect(goAway?.code == 0, "GOAWAY \(String(describing: goAway))")
            #expect(pings < 200, "still connected after 20 s of PINGs")
            // Answers began (their HEADERS), and not one byte of DATA went past the zero window.
            #expect(h2.frames.contains { $0.type == Kind.headers })
            #expect(!h2.frames.contains { $0.type == Kind.data && !$0.payload.isEmpty })
            await h2.close()
        }
    }

    @Test func answersAClientDoesNotReadPastTheBudgetEndTheConnection() async throws {
        try await Self.withUpstream(UpstreamClientTests.ok(Self.megabyte)) { gw, upstream in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console), settings: [(0x4, 0)])
            // (The connection may be sent away before the last of them is written.)
            for stream in stride(from: UInt32(1), through: 255, by: 2) {
                try? await h2.headers(stream: stream, RawHTTP2.get("/up"), endStream: true)
            }
            let goAway = await h2.goAway()
            #expect(goAway?.code == 0xB, "GOAWAY \(String(describing: goAway))")
            #expect(goAway?.reason == "responses not read")
            // The unread answers' upstream connections are let go of with the client's
            // connection (this waits for every one of them to close).
            #expect(upstream.connections >= 2)
            await upstream.waitUntilClosed(connections: upstream.connections)
            await h2.close()
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct HTTP1HardeningTests {
    static let tools = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil

    @Test(.enabled(if: tools || Tools.has("curl"), "curl is not installed (apt-get install curl)"))
    func anUploadOverTheLimitIsAnswered413NotCutOff() async throws {
        let routes = "routes:\n  - {listener: console, path: /upload, service: echo, max_body_bytes: 1MiB}\n  - {listener: client_plain, path: /upload, service: echo, max_body_bytes: 1MiB}"
        try await TestGateway.with(body: routes) { gw in
            let file = gw.dir.file("upload.bin")
            try Data(repeating: 0x61, count: 3_000_000).write(to: URL(fileURLWithPath: file))
            for (role, extra) in [(ListenerName.console, ["--cacert", gw.identity.certificatePath, "--http1.1"]), (.clientPlain, [])] {
                // Declared length over the limit, and chunked (the size known only as it comes).
                // Several times each: a connection closed under an upload is reset at a moment that varies.
                for framing in [[String](), ["-H", "Transfer-Encoding: chunked"]] + [[String]](repeating: [], count: 4) {
                    // `Expect:` empty: the body is sent at once, not after a 100 Continue.
                    let curl = try await Tools.run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:"] + framing + extra
                                                   + ["--data-binary", "@" + file, try await gw.url(role, "/upload")])
                    #expect(curl.output == "413", "\(role) \(framing): curl said \(curl.output)")
                }
            }
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct LingeringCloseTests {
    /// After the 413, the rest of the body is still read (and dropped) rather than met with a
    /// reset: every later write of the client's goes through.
    @Test func theRestOfARefusedBodyIsReadNotReset() async throws {
        let routes = "routes:\n  - {listener: client_plain, path: /upload, service: echo, max_body_bytes: 1KiB}"
        try await TestGateway.with(body: routes) { gw in
            let connection = try await RawTCP.connect(port: try await gw.port(.clientPlain))
            let piece = [UInt8](repeating: 0x61, count: 64 * 1024)
            try await connection.send(Array("POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: \(piece.count * 17)\r\n\r\n".utf8) + piece)
            let answer = await connection.received(containing: "\r\n\r\n")
            #expect(answer.hasPrefix("HTTP/1.1 413 "))
            var sent = 1
            for _ in 0..<16 {
                do {
                    try await connection.send(piece)
                    sent += 1
                } catch {
                    Issue.record("write \(sent + 1) of 17 failed after the 413: \(error)")
                    break
                }
            }
            #expect(sent == 17)
            // The whole body sent, the connection ends.
            let all = await connection.responseUntilClose()
            #expect(all == answer)
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct TLSCipherPolicyTests {
    static let tools = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil

    @Test(.enabled(if: tools || Tools.has("openssl"), "openssl is not installed (apt-get install openssl)"))
    func tls12OffersOnlyForwardSecretAEADSuitesUnlessAListenerAsksForMore() async throws {
        let legacy = "tls12_ciphers: [ECDHE-RSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-SHA, ECDHE-ECDSA-AES128-SHA, AES128-GCM-SHA256]"
        try await TestGateway.with(listeners: [.reporting: legacy]) { gw in
            func handshake(_ role: ListenerName, _ ciphers: String) async throws -> Bool {
                let port = try await gw.port(role)
                let result = try await Tools.run("openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-tls1_2", "-cipher", ciphers], input: "")
                return result.status == 0 && result.output.contains("Cipher is ")
            }
            let cbc = "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA"
            let staticRSA = "AES128-GCM-SHA256:AES128-SHA"
            let aead = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"
            let consoleAEAD = try await handshake(.console, aead)
            let consoleCBC = try await handshake(.console, cbc)
            let consoleStaticRSA = try await handshake(.console, staticRSA)
            #expect(consoleAEAD)
            #expect(!consoleCBC)
            #expect(!consoleStaticRSA)
            // A listener that lists older suites offers them, and only those it lists.
            let reportingCBC = try await handshake(.reporting, cbc)
            let reportingAES256 = try await handshake(.reporting, "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384")
            #expect(reportingCBC)
            #expect(!reportingAES256)
        }
    }

    @Test func anUnknownCipherSuiteIsAConfigurationErrorWithItsLine() throws {
        let dir = try TemporaryDirectory()
        let yaml = "listeners:\n  console:\n    port: 0\n    tls12_ciphers: [ECDHE-RSA-AES128-GCM-SHA256, RC4-MD5]\n"
        #expect {
            _ = try TestGateway.configuration(yaml: yaml, dir: dir)
        } throws: { error in
            let text = "\(error)"
            return text.contains(":4:") && text.contains("'RC4-MD5' in listeners.console.tls12_ciphers")
        }
    }
}
