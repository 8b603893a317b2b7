import NIOHPACK
import Testing
@testable import PorticoGateway

/// The checks an HTTP/2 request head must pass (RFC 9113 8.2-8.3) before it is routed.
@Suite struct HTTP2RequestFieldsTests {
    static let base: [(String, String)] = [(":method", "GET"), (":scheme", "https"), (":path", "/x?y=1"), (":authority", "example.com")]

    static func fields(_ pairs: [(String, String)]) throws(HTTP2RequestFields.Malformed) -> HTTP2RequestFields {
        try HTTP2RequestFields(HPACKHeaders(pairs))
    }

    @Test func aWellFormedRequestIsRead() throws {
        let request = try Self.fields(Self.base + [("content-length", "12"), ("te", "trailers"), ("x-a", "b c")])
        #expect(request.method == "GET")
        #expect(request.path == "/x?y=1")
        #expect(request.scheme == "https")
        #expect(request.authority == "example.com")
        #expect(request.contentLength == 12)
        #expect(request.size > 0)
        let connect = try Self.fields([(":method", "CONNECT"), (":authority", "example.com:443")])
        #expect(connect.method == "CONNECT")
    }

    @Test func malformedRequestsAreRefused() {
        let refused: [(String, [(String, String)])] = [
            ("no method", Self.base.filter { $0.0 != ":method" }),
            ("no scheme", Self.base.filter { $0.0 != ":scheme" }),
            ("no path", Self.base.filter { $0.0 != ":path" }),
            ("an empty path", Self.base.map { $0.0 == ":path" ? ($0.0, "") : $0 }),
            ("a duplicate pseudo-header", Self.base + [(":path", "/again")]),
            ("a pseudo-header after a field", [(":method", "GET"), ("x-a", "1"), (":scheme", "https"), (":path", "/")]),
            ("a response pseudo-header", Self.base + [(":status", "200")]),
            ("an upper-case name", Self.base + [("X-Upper", "1")]),
            ("a space in a name", Self.base + [("x a", "1")]),
            ("a connection field", Self.base + [("connection", "keep-alive")]),
            ("transfer-encoding", Self.base + [("transfer-encoding", "chunked")]),
            ("te other than trailers", Self.base + [("te", "gzip")]),
            ("a CR LF in a value", Self.base + [("x-a", "1\r\nx-b: 2")]),
            ("a NUL in a value", Self.base + [("x-a", "a\u{0}b")]),
            ("leading whitespace in a value", Self.base + [("x-a", " a")]),
            ("differing content lengths", Self.base + [("content-length", "1"), ("content-length", "2")]),
            ("a content length that is not a number", Self.base + [("content-length", "-1")]),
            ("CONNECT with a path", [(":method", "CONNECT"), (":authority", "a:443"), (":path", "/")]),
        ]
        for (name, pairs) in refused {
            #expect(throws: HTTP2RequestFields.Malformed.self, "\(name)") { _ = try Self.fields(pairs) }
        }
    }
}

/// The same checks through a running gateway: a malformed request gets RST_STREAM
/// PROTOCOL_ERROR and the connection goes on serving.
@Suite(.timeLimit(.minutes(1))) struct HTTP2MalformedRequestTests {
    @Test func malformedRequestsAreResetAndWellFormedOnesAnswered() async throws {
        let routes = "routes:\n  - {listener: console, path: /echo, service: echo}"
        try await TestGateway.with(body: routes) { gw in
            let port = try await gw.port(.console)
            let base = [(":method", "POST"), (":scheme", "https"), (":path", "/echo"), (":authority", "localhost")]
            #expect(try await HTTP2Probe.send(port: port, headers: base + [("content-length", "5")], body: "hello") == .status("200"))
            #expect(try await HTTP2Probe.send(port: port, headers: base + [("X-Upper", "1")], body: "hello") == .reset(.protocolError))
            #expect(try await HTTP2Probe.send(port: port, headers: base + [("connection", "close")], body: "hello") == .reset(.protocolError))
            #expect(try await HTTP2Probe.send(port: port, headers: base + [("x-a", "1\r\nx-b: 2")], body: "hello") == .reset(.protocolError))
            #expect(try await HTTP2Probe.send(port: port, headers: Array(base.dropFirst()), body: "hello") == .reset(.protocolError))
            // DATA that does not add up to the declared length.
            #expect(try await HTTP2Probe.send(port: port, headers: base + [("content-length", "9")], body: "hello") == .reset(.protocolError))
            #expect(try await HTTP2Probe.send(port: port, headers: base + [("content-length", "2")], body: "hello") == .reset(.protocolError))
            #expect(try await HTTP2Probe.send(port: port, headers: base + [("content-length", "5")], endStreamOnHeaders: true) == .reset(.protocolError))
        }
    }
}
