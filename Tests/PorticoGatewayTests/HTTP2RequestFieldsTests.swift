import CNGHTTP2
import NIOHTTP1
@testable import PorticoServer
import PorticoTestSupport
import Testing
@testable import PorticoGateway

/// The checks an HTTP/2 request head must pass (RFC 9113 8.2-8.3) before it is routed.
@Suite struct HTTP2RequestFieldsTests {
    static let base: [(String, String)] = [(":method", "GET"), (":scheme", "https"), (":path", "/x?y=1"), (":authority", "example.com")]

    static func fields(_ pairs: [(String, String)]) throws(HTTP2RequestFields.Malformed) -> HTTP2RequestFields {
        try HTTP2RequestFields(pairs)
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
        // A host equal to the authority is allowed; a host alone stands for it.
        #expect(try Self.fields(Self.base + [("host", "example.com")]).authority == "example.com")
        #expect(try Self.fields(Self.base.filter { $0.0 != ":authority" } + [("host", "h.example:8443")]).authority == "h.example:8443")
        #expect(try Self.fields([(":method", "OPTIONS"), (":scheme", "https"), (":path", "*"), (":authority", "a")]).path == "*")
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
            // What reached an upstream as a request line of its own choosing.
            ("a method with a space", Self.base.map { $0.0 == ":method" ? ($0.0, "GET /up/injected?") : $0 }),
            ("a path with a space", Self.base.map { $0.0 == ":path" ? ($0.0, "/a b") : $0 }),
            ("a path with a tab", Self.base.map { $0.0 == ":path" ? ($0.0, "/a\tb") : $0 }),
            ("a path without a leading slash", Self.base.map { $0.0 == ":path" ? ($0.0, "up/x") : $0 }),
            ("a path starting //", Self.base.map { $0.0 == ":path" ? ($0.0, "//up/x") : $0 }),
            ("a path with a control byte", Self.base.map { $0.0 == ":path" ? ($0.0, "/a\u{1}b") : $0 }),
            ("a value with 0x01", Self.base + [("x-a", "a\u{1}b")]),
            ("a value with 0x7F", Self.base + [("x-a", "a\u{7F}b")]),
            ("a scheme other than http or https", Self.base.map { $0.0 == ":scheme" ? ($0.0, "ftp") : $0 }),
            // The route is chosen by :authority: a host naming another is refused.
            ("a host other than the authority", Self.base + [("host", "internal.example")]),
            ("an authority with user information", Self.base.map { $0.0 == ":authority" ? ($0.0, "127.0.0.1@evil.example") : $0 }),
            ("two hosts", Self.base.filter { $0.0 != ":authority" } + [("host", "a"), ("host", "a")]),
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

/// A response's fields as they are handed to nghttp2.
@Suite struct HTTP2FieldsTests {
    static func pairs(_ fields: HTTP2Fields) -> [String] {
        var scratch: [nghttp2_nv] = []
        return fields.withNameValues(date: "Mon, 07 Dec 2026 10:00:00 GMT", scratch: &scratch) { nv, count in
            (0..<count).map { index in
                let field = nv[index]
                let name = String(decoding: UnsafeBufferPointer(start: field.name, count: field.namelen), as: UTF8.self)
                let value = String(decoding: UnsafeBufferPointer(start: field.value, count: field.valuelen), as: UTF8.self)
                return "\(name)=\(value)"
            }
        }
    }

    @Test func statusFirstNamesLowerCasedForbiddenFieldsLeftOutDateLast() {
        let headers: HTTPHeaders = ["Content-Type": "text/plain", "Connection": "close", "X-Thing": "A b", "Date": "yesterday", "transfer-encoding": "chunked"]
        #expect(Self.pairs(HTTP2Fields(status: .notFound, headers: headers, contentLength: 1234)) == [
            ":status=404", "content-type=text/plain", "x-thing=A b", "content-length=1234", "date=Mon, 07 Dec 2026 10:00:00 GMT",
        ])
        #expect(Self.pairs(HTTP2Fields(status: .ok, headers: [:], contentLength: nil)) == [":status=200", "date=Mon, 07 Dec 2026 10:00:00 GMT"])
        #expect(Self.pairs(HTTP2Fields(status: .ok, headers: [:], contentLength: 0)).contains("content-length=0"))
    }
}
