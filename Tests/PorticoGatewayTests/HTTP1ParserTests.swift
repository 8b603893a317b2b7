import NIOCore
import NIOHTTP1
@testable import PorticoServer
import PorticoTestSupport
import Testing
@testable import PorticoGateway

/// The HTTP/1.1 request parser on raw bytes: framing, the facts it takes from a head, and
/// what it refuses.
@Suite struct HTTP1ParserTests {
    /// What one request parsed into.
    struct Parsed: Equatable {
        var method: String
        var uri: String
        var headers: [String]
        var body: String
        var keepAlive: Bool
    }

    /// Parses every request in `chunks` (fed one after another, as reads would arrive).
    static func parse(_ chunks: [String], maxHeadBytes: Int = 8192, maxHeaderCount: Int = 100) throws(HTTP1ParseError) -> [Parsed] {
        var parser = HTTP1Parser(maxHeadBytes: maxHeadBytes, maxHeaderCount: maxHeaderCount)
        var input = ByteBuffer()
        var results: [Parsed] = []
        var current: Parsed?
        for chunk in chunks {
            input.writeString(chunk)
            loop: while true {
                switch try parser.next(&input) {
                case .needMore:
                    break loop
                case .head(let head):
                    current = Parsed(method: head.method, uri: head.uri, headers: head.headers().map { "\($0.name)=\($0.value)" }, body: "", keepAlive: head.keepAlive)
                case .body(let slice):
                    current?.body += String(buffer: slice)
                case .end:
                    if let done = current { results.append(done) }
                    current = nil
                }
            }
        }
        return results
    }

    /// The same bytes split at every position into two reads, and one byte per read.
    static func splits(_ text: String) -> [[String]] {
        let bytes = Array(text.utf8)
        var result: [[String]] = (0...bytes.count).map { cut in
            [String(decoding: bytes[..<cut], as: UTF8.self), String(decoding: bytes[cut...], as: UTF8.self)]
        }
        result.append(bytes.map { String(decoding: [$0], as: UTF8.self) })
        return result
    }

    static func error(_ text: String, maxHeadBytes: Int = 8192, maxHeaderCount: Int = 100) -> HTTP1ParseError? {
        do {
            _ = try parse([text], maxHeadBytes: maxHeadBytes, maxHeaderCount: maxHeaderCount)
            return nil
        } catch {
            return error
        }
    }

    /// The head a fresh parser reads first from `text`, if it reads one.
    static func head(_ text: String) throws(HTTP1ParseError) -> HTTP1RequestHead? {
        var parser = HTTP1Parser(maxHeadBytes: 8192, maxHeaderCount: 100)
        var input = ByteBuffer(string: text)
        guard case .head(let head) = try parser.next(&input) else { return nil }
        return head
    }

    @Test func aSimpleRequestAndItsHeaders() throws {
        let parsed = try Self.parse(["GET /healthz?x=1 HTTP/1.1\r\nHost: example.com:8441\r\nX-Padded:  a b \t\r\nAccept: */*\r\n\r\n"])
        #expect(parsed == [Parsed(method: "GET", uri: "/healthz?x=1", headers: ["Host=example.com:8441", "X-Padded=a b", "Accept=*/*"], body: "", keepAlive: true)])
    }

    @Test func keepAliveFollowsTheVersionAndConnection() throws {
        #expect(try Self.parse(["GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"]).first?.keepAlive == false)
        #expect(try Self.parse(["GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\n\r\n"]).first?.keepAlive == false)
        #expect(try Self.parse(["GET / HTTP/1.0\r\n\r\n"]).first?.keepAlive == false)
        #expect(try Self.parse(["GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"]).first?.keepAlive == true)
    }

    @Test func pipelinedRequestsComeOutInOrderWhereverTheReadsSplit() throws {
        let text = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
            + "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            + "\r\n"  // an empty line between requests is allowed
            + "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nChecksum: 1\r\n\r\n"
            + "GET /d HTTP/1.1\nHost: h\n\n"  // bare LF line ends
        let expected = [
            Parsed(method: "GET", uri: "/a", headers: ["Host=h"], body: "", keepAlive: true),
            Parsed(method: "POST", uri: "/b", headers: ["Host=h", "Content-Length=5"], body: "hello", keepAlive: true),
            Parsed(method: "POST", uri: "/c", headers: ["Host=h", "Transfer-Encoding=chunked"], body: "hello world", keepAlive: true),
            Parsed(method: "GET", uri: "/d", headers: ["Host=h"], body: "", keepAlive: true),
        ]
        for chunks in Self.splits(text) {
            #expect(try Self.parse(chunks) == expected, "split: \(chunks.map(\.count))")
        }
    }

    @Test func anIncompleteRequestWaitsForMore() throws {
        #expect(try Self.parse(["GET / HTTP/1.1\r\nHost: h\r\n"]).isEmpty)
        #expect(try Self.parse(["POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhalf"]).isEmpty)
        #expect(try Self.parse(["POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"]).isEmpty)
    }

    @Test func ambiguousFramingIsRefused() {
        let refused: [(String, String)] = [
            ("both lengths", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ("differing lengths", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            ("a length list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n"),
            ("a signed length", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n"),
            ("space before the colon", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\n"),
            ("a folded line", "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  continued\r\n\r\n"),
            ("a bare CR", "GET / HTTP/1.1\r\nHost: h\rX-A: 1\r\n\r\n"),
            ("a NUL in a value", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\u{0}b\r\n\r\n"),
            ("two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            ("no host", "GET / HTTP/1.1\r\n\r\n"),
            ("chunked twice", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ("chunked in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ("no version", "GET /\r\nHost: h\r\n\r\n"),
            ("two spaces", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n"),
            ("a bad method", "G(T / HTTP/1.1\r\nHost: h\r\n\r\n"),
            ("a control character in the target", "GET /a\u{1}b HTTP/1.1\r\nHost: h\r\n\r\n"),
            ("a lower-case version", "GET / http/1.1\r\nHost: h\r\n\r\n"),
            ("no colon", "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n"),
            ("an empty name", "GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n"),
            ("a chunk size that is not hex", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            ("a chunk longer than its size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"),
            ("a chunk size that overflows", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n"),
        ]
        for (name, text) in refused {
            guard case .malformed? = Self.error(text) else {
                Issue.record("\(name): \(String(describing: Self.error(text)))")
                continue
            }
        }
    }

    @Test func otherVersionsCodingsAndSizesGetTheirOwnAnswers() {
        #expect(Self.error("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == .versionNotSupported)
        #expect(Self.error("GET / HTTP/1.2\r\nHost: h\r\n\r\n") == .versionNotSupported)
        #expect(Self.error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n") == .unsupportedTransferCoding)
        #expect(Self.error("GET / HTTP/1.1\r\nHost: h\r\nX-Big: \(String(repeating: "a", count: 2000))\r\n\r\n", maxHeadBytes: 1024) == .headTooLarge)
        // A head that never ends is refused once it passes the limit, not buffered on.
        #expect(Self.error("GET / HTTP/1.1\r\nHost: h\r\nX-Big: \(String(repeating: "a", count: 2000))", maxHeadBytes: 1024) == .headTooLarge)
        let many = (0..<11).map { "X-\($0): v\r\n" }.joined()
        #expect(Self.error("GET / HTTP/1.1\r\nHost: h\r\n\(many)\r\n", maxHeaderCount: 10) == .headTooLarge)
        #expect(Self.error("GET / HTTP/1.1\r\nHost: h\r\n\(many)\r\n", maxHeaderCount: 12) == nil)
        let trailers = (0..<100).map { "T-\($0): \(String(repeating: "v", count: 20))\r\n" }.joined()
        #expect(Self.error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\(trailers)\r\n", maxHeadBytes: 1024) == .headTooLarge)
    }

    @Test func methodsAndHostAreTakenAsSent() throws {
        for method in ["GET", "PUT", "POST", "HEAD", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "get", "GETS", "PUTX", "OPTION"] {
            // A host value after other fields, with spaces around it (trimmed).
            guard let head = try Self.head("\r\n\(method) /p HTTP/1.1\r\nA: b\r\nHost:   h.example:8443 \r\n\r\n") else {
                Issue.record("no head for \(method)")
                continue
            }
            #expect(head.method == method)
            #expect(head.host == "h.example:8443")
            #expect(head.isHead == (method == "HEAD"))
        }
        let old = try Self.head("GET / HTTP/1.0\r\n\r\n")
        #expect(old != nil)
        #expect(old?.host == nil)
    }

    @Test func headFactsAreTaken() throws {
        var parser = HTTP1Parser(maxHeadBytes: 8192, maxHeaderCount: 100)
        var input = ByteBuffer(string: "PUT /x HTTP/1.1\r\nhOsT: Example.com\r\ncontent-LENGTH: 3\r\nExpect: 100-Continue\r\n\r\nabc")
        guard case .head(let head) = try parser.next(&input) else {
            Issue.record("no head")
            return
        }
        #expect(head.host == "Example.com")
        #expect(head.contentLength == 3)
        #expect(head.expectsContinue)
        #expect(head.hasBody && !head.chunked && !head.isHead)
        guard case .body(let body) = try parser.next(&input) else {
            Issue.record("no body")
            return
        }
        #expect(String(buffer: body) == "abc")
        guard case .end = try parser.next(&input) else {
            Issue.record("no end")
            return
        }
        #expect(parser.isBetweenRequests)
        #expect(input.readableBytes == 0)
    }

    @Test func trailersChunkFramingTargetsAndHostsAreCheckedAsStrictlyAsHeads() {
        let chunked = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        let refused: [(String, String)] = [
            ("a trailer without a colon", chunked + "0\r\nNoColon\r\n\r\n"),
            ("a NUL in a trailer", chunked + "0\r\nT: a\u{0}b\r\n\r\n"),
            ("a control byte in a trailer", chunked + "0\r\nT: a\u{7F}b\r\n\r\n"),
            ("a folded trailer", chunked + "0\r\nT: a\r\n folded\r\n\r\n"),
            ("a request swallowed as a trailer", chunked + "0\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n"),
            ("whitespace after a chunk size", chunked + "5 \r\nhello\r\n0\r\n\r\n"),
            ("a chunk size ended by a bare LF", chunked + "5\nhello\r\n0\r\n\r\n"),
            ("chunk data ended by a bare LF", chunked + "5\r\nhello\n0\r\n\r\n"),
            ("the last chunk ended by a bare LF", chunked + "0\n\n"),
            ("a target without a slash", "GET up/x HTTP/1.1\r\nHost: h\r\n\r\n"),
            ("a target starting //", "GET //up/x HTTP/1.1\r\nHost: h\r\n\r\n"),
            ("an absolute-form target", "GET http://internal.example/x HTTP/1.1\r\nHost: h\r\n\r\n"),
            ("an authority-form target", "CONNECT internal.example:443 HTTP/1.1\r\nHost: h\r\n\r\n"),
            ("an asterisk for GET", "GET * HTTP/1.1\r\nHost: h\r\n\r\n"),
            ("an empty host", "GET / HTTP/1.1\r\nHost: \r\n\r\n"),
            ("a host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            ("a host with user information", "GET / HTTP/1.1\r\nHost: 127.0.0.1@evil.example\r\n\r\n"),
            ("a host with a path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
            ("a host with a bad port", "GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n"),
        ]
        for (name, text) in refused {
            guard case .malformed? = Self.error(text) else {
                Issue.record("\(name): \(String(describing: Self.error(text)))")
                continue
            }
        }
        let accepted = [
            chunked + "5 ;name=value\r\nhello\r\n0\r\nChecksum: 1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /a//b?x=//y HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: xn--bcher-kva.example.\r\n\r\n",
        ]
        for text in accepted {
            #expect(Self.error(text) == nil, "\(text)")
        }
    }

    @Test func aChunkPastTheRoutesLimitIsRefusedWhenItsSizeIsRead() throws {
        var parser = HTTP1Parser(maxHeadBytes: 8192, maxHeaderCount: 100)
        var input = ByteBuffer(string: "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nfffffffffffffff\r\n")
        guard case .head = try parser.next(&input) else {
            Issue.record("no head")
            return
        }
        parser.bodyAllowance = 10
        guard case .body(let first) = try parser.next(&input) else {
            Issue.record("no first chunk")
            return
        }
        #expect(first.readableBytes == 4)
        #expect(throws: HTTP1ParseError.bodyTooLarge(6)) { _ = try parser.next(&input) }
        // Without a limit, the largest size fifteen hex digits can say is read and waited for.
        #expect(Self.error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\n") == nil)
    }
}
