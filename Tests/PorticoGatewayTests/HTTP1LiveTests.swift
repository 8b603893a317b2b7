import NIOCore
@testable import PorticoServer
import PorticoTestSupport
import Testing
@testable import PorticoGateway

/// HTTP/1.1 framing through a running gateway, on raw sockets: pipelining, chunked bodies,
/// `Expect: 100-continue`, and requests that must be refused whole; on each server core.
@Suite(.timeLimit(.minutes(1))) struct HTTP1LiveTests {
    static let routes = "routes:\n  - {listener: client_plain, path: /echo, service: echo, max_body_bytes: 64}\n  - {listener: client_plain, path: /slow, service: slow}"

    /// The status lines of the responses in `text` (a body need not end with a line break,
    /// so the next status line may follow it on the same line).
    static func statusLines(_ text: String) -> [String] {
        var lines: [String] = []
        var rest = text[...]
        while let start = rest.range(of: "HTTP/1.") {
            let end = rest.range(of: "\r\n", range: start.upperBound..<rest.endIndex)?.lowerBound ?? rest.endIndex
            lines.append(String(rest[start.lowerBound..<end]))
            rest = rest[end...]
        }
        return lines.filter { $0.wholeMatch(of: /HTTP\/1\.[01] [0-9]{3} [A-Za-z -]+/) != nil }
    }

    /// A body of many reads and TLS records, and an answer larger than the socket takes at
    /// once, arrive whole and in order, in the clear and over TLS.
    @Test func aLargeBodyAndItsEchoCrossWhole() async throws {
        let routes = "routes:\n  - {listeners: [client_plain, console], path: /echo, service: echo, max_body_bytes: 8388608}"
        let listeners: [ListenerName: String] = [.clientPlain: "", .console: ""]
        try await TestGateway.with(listeners: listeners, body: routes) { gw in
            // Numbered lines: a lost, repeated or reordered piece changes the text.
            let body = (0..<120_000).map { String(format: "%06d portico core\n", $0) }.joined()
            try await TestClient.with(http2: false) { client in
                for role in [ListenerName.clientPlain, .console] {
                    let answer = try await TestClient.get(client, try await gw.url(role, "/echo"), method: .POST, body: body)
                    #expect(answer.status == 200)
                    let echoed = try #require(answer.body.range(of: "body="))
                    #expect(answer.body[echoed.upperBound...].hasPrefix(body), "\(role): the echo differs")
                }
            }
        }
    }

    @Test func pipelinedRequestsAreAnsweredInOrderOnOneConnection() async throws {
        try await TestGateway.with(listeners: [.clientPlain: ""], body: Self.routes) { gw in
            let requests = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                + "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
                + "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
                + "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;x=y\r\nsec\r\n3\r\nond\r\n0\r\nTrailer-A: 1\r\n\r\n"
            let answer = try await RawTCP.exchange(port: try await gw.port(.clientPlain), requests)
            #expect(Self.statusLines(answer) == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 200 OK"])
            let first = try #require(answer.range(of: "body=first"))
            let second = try #require(answer.range(of: "body=second"))
            #expect(first.lowerBound < second.lowerBound)
            #expect(answer.contains("connection: close"))
        }
    }

    @Test func requestsPipelinedBehindASlowOneWaitForIt() async throws {
        let gate = Gate()
        try await TestGateway.with(listeners: [.clientPlain: ""], body: Self.routes, services: TestServices.registry(gate: gate)) { gw in
            let connection = try await RawTCP.connect(port: try await gw.port(.clientPlain))
            try await connection.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await gate.waitForArrival()
            gate.open()
            let answer = await connection.responseUntilClose()
            #expect(Self.statusLines(answer) == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"])
            let finished = try #require(answer.range(of: "finished"))
            let health = try #require(answer.range(of: "HTTP/1.1 200 OK", range: finished.upperBound..<answer.endIndex))
            #expect(finished.lowerBound < health.lowerBound)
        }
    }

    @Test func expectContinueIsAnsweredBeforeTheBodyIsSent() async throws {
        try await TestGateway.with(listeners: [.clientPlain: ""], body: Self.routes) { gw in
            let connection = try await RawTCP.connect(port: try await gw.port(.clientPlain))
            try await connection.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
            let interim = await connection.received(containing: "\r\n\r\n")
            #expect(interim == "HTTP/1.1 100 Continue\r\n\r\n")
            try await connection.send("body")
            let answer = await connection.responseUntilClose()
            #expect(Self.statusLines(answer) == ["HTTP/1.1 100 Continue", "HTTP/1.1 200 OK"])
            #expect(answer.contains("body=body"))

            // A body the route would refuse is not asked for: the answer comes at once.
            let tooLarge = try await RawTCP.connect(port: try await gw.port(.clientPlain))
            try await tooLarge.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
            #expect(Self.statusLines(await tooLarge.responseUntilClose()) == ["HTTP/1.1 413 Payload Too Large"])
            let missing = try await RawTCP.connect(port: try await gw.port(.clientPlain))
            try await missing.send("POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
            #expect(Self.statusLines(await missing.responseUntilClose()) == ["HTTP/1.1 404 Not Found"])
        }
    }

    @Test func smugglingAttemptsAreRefusedAndWhatFollowsIsNotServed() async throws {
        try await TestGateway.with(listeners: [.clientPlain: ""], body: Self.routes) { gw in
            let port = try await gw.port(.clientPlain)
            let attempts = [
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length : 40\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            ]
            for attempt in attempts {
                let answer = try await RawTCP.exchange(port: port, attempt)
                #expect(Self.statusLines(answer) == ["HTTP/1.1 400 Bad Request"], "\(attempt)")
                #expect(answer.contains("connection: close"))
                #expect(answer.contains("malformed HTTP request: "))
            }
            let coding = try await RawTCP.exchange(port: port, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
            #expect(Self.statusLines(coding) == ["HTTP/1.1 501 Not Implemented"])
            let preface = try await RawTCP.exchange(port: port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            #expect(Self.statusLines(preface) == ["HTTP/1.1 505 HTTP Version Not Supported"])
        }
    }

    @Test func http10ClosesUnlessAskedToKeepAlive() async throws {
        try await TestGateway.with(listeners: [.clientPlain: ""]) { gw in
            let port = try await gw.port(.clientPlain)
            let closed = try await RawTCP.exchange(port: port, "GET /healthz HTTP/1.0\r\n\r\n")
            #expect(Self.statusLines(closed) == ["HTTP/1.1 200 OK"])
            #expect(closed.contains("connection: close"))
            // Kept alive: a second request on the same connection is answered too.
            let kept = try await RawTCP.exchange(port: port, "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n")
            #expect(Self.statusLines(kept) == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"])
        }
    }

    @Test func aHeadTricklingInByteByByteIsServed() async throws {
        // The head takes as long as the test's tasks are given time to send it: with the
        // whole suite running in parallel that once passed the default header timeout (10s),
        // which is not what this test is about.
        try await TestGateway.with(listeners: [.clientPlain: "limits: {header_timeout: 5m}"], body: Self.routes) { gw in
            let connection = try await RawTCP.connect(port: try await gw.port(.clientPlain))
            for byte in "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".utf8 {
                try await connection.send([byte])
            }
            let answer = await connection.responseUntilClose()
            #expect(Self.statusLines(answer) == ["HTTP/1.1 200 OK"])
            #expect(answer.contains("body=abc"))
        }
    }
}
