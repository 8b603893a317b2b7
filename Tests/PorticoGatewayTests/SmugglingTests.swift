import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

/// Request smuggling, as a table: classic inputs sent through a route to an upstream whose
/// requests are read by another parser (NIO's, llhttp). For each, the gateway either refuses
/// it (an error status, then the connection closes, nothing of it forwarded) or forwards
/// exactly the requests it parsed, and the upstream sees the same requests, no more, no fewer.
@Suite(.timeLimit(.minutes(3))) struct SmugglingTests {
    /// A request as the upstream received it.
    struct Seen: Equatable, CustomStringConvertible {
        var method: String
        var uri: String
        var body: String
        var description: String { "\(method) \(uri) [\(body)]" }
    }

    enum Outcome {
        /// These requests forwarded and answered, in order; then, if `thenRefused`, an
        /// error answer for what followed them, and the connection closed.
        case forwarded([Seen], thenRefused: Bool = false)
        /// Refused with this status before anything was forwarded.
        case refused(Int)
    }

    struct Case: CustomStringConvertible {
        let description: String
        let bytes: [UInt8]
        let outcome: Outcome

        init(_ name: String, _ text: String, _ outcome: Outcome) {
            description = name
            bytes = Array(text.utf8)
            self.outcome = outcome
        }

        init(_ name: String, bytes: [UInt8], _ outcome: Outcome) {
            description = name
            self.bytes = bytes
            self.outcome = outcome
        }
    }

    static func get(_ uri: String) -> Seen { Seen(method: "GET", uri: uri, body: "") }
    static func post(_ uri: String, _ body: String) -> Seen { Seen(method: "POST", uri: uri, body: body) }

    static let close = "Connection: close\r\n"
    static let chunkedPost = "POST /up/c HTTP/1.1\r\nHost: h\r\n\(close)Transfer-Encoding: chunked\r\n\r\n"

    static let cases: [Case] = {
        var cases: [Case] = [
            // Content-Length and Transfer-Encoding together, and their variants.
            Case("CL then TE", "POST /up/a HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX", .refused(400)),
            Case("TE then CL", "POST /up/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX", .refused(400)),
            Case("two differing CLs", "POST /up/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", .refused(400)),
            Case("a CL list", "POST /up/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello", .refused(400)),
            Case("a signed CL", "POST /up/a HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", .refused(400)),
            Case("a negative CL", "POST /up/a HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", .refused(400)),
            Case("a hex CL", "POST /up/a HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello", .refused(400)),
            Case("a CL with a space inside", "POST /up/a HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\nhello", .refused(400)),
            Case("a CL past 18 digits", "POST /up/a HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", .refused(400)),
            Case("TE chunked twice", "POST /up/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", .refused(400)),
            Case("TE with another coding", "POST /up/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", .refused(501)),
            Case("TE xchunked", "POST /up/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", .refused(501)),
            Case("TE with a space before the colon", "POST /up/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", .refused(400)),
            Case("TE folded onto a second line", "POST /up/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", .refused(400)),
            Case("chunked in HTTP/1.0", "POST /up/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", .refused(400)),
            // Chunk sizes, extensions, framing and trailers.
            Case("a chunk size that is not hex", chunkedPost + "zz\r\nhello\r\n0\r\n\r\n", .refused(400)),
            Case("a chunk size with trailing whitespace", chunkedPost + "5 \r\nhello\r\n0\r\n\r\n", .refused(400)),
            Case("a chunk size that overflows", chunkedPost + "10000000000000000\r\nhello\r\n0\r\n\r\n", .refused(400)),
            Case("a chunk size past the route's limit", chunkedPost + "fffffffffffffff\r\nhello\r\n0\r\n\r\n", .refused(413)),
            Case("a control byte in a chunk extension", chunkedPost + "5;a=\u{1}\r\nhello\r\n0\r\n\r\n", .refused(400)),
            Case("a chunk longer than its size", chunkedPost + "3\r\nhello\r\n0\r\n\r\n", .refused(400)),
            Case("chunk sizes ended by bare LF", chunkedPost + "5\nhello\n0\n\n", .refused(400)),
            Case("chunk data ended by a bare LF", chunkedPost + "5\r\nhello\n0\r\n\r\n", .refused(400)),
            Case("a request hidden as a trailer", chunkedPost + "0\r\nGET /up/admin HTTP/1.1\r\nHost: h\r\n\r\n", .refused(400)),
            Case("a NUL in a trailer", chunkedPost + "0\r\nX-T: a\u{0}b\r\n\r\n", .refused(400)),
            Case("a folded trailer", chunkedPost + "0\r\nX-T: a\r\n b\r\n\r\n", .refused(400)),
            // Names, values and line ends.
            Case("a NUL in a header name", "GET /up/a HTTP/1.1\r\nHost: h\r\nX-\u{0}A: 1\r\n\r\n", .refused(400)),
            Case("a NUL in a header value", "GET /up/a HTTP/1.1\r\nHost: h\r\nX-A: 1\u{0}2\r\n\r\n", .refused(400)),
            Case("a bare CR in a header value", "GET /up/a HTTP/1.1\r\nHost: h\r\nX-A: 1\r2\r\n\r\n", .refused(400)),
            Case("a bare CR ending the request line", "GET /up/a HTTP/1.1\rHost: h\r\n\r\n", .refused(400)),
            Case("a space in a header name", "GET /up/a HTTP/1.1\r\nHost: h\r\nX A: 1\r\n\r\n", .refused(400)),
            Case("an obs-folded header", "GET /up/a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\t2\r\n\r\n", .refused(400)),
            Case("a header line without a colon", "GET /up/a HTTP/1.1\r\nHost: h\r\nGET /up/b HTTP/1.1\r\n\r\n", .refused(400)),
            // Targets, methods and versions.
            Case("an absolute-form target", "GET http://internal.example/up/a HTTP/1.1\r\nHost: h\r\n\r\n", .refused(400)),
            Case("an asterisk-form target for GET", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", .refused(400)),
            Case("an authority-form target", "CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n", .refused(400)),
            Case("a target without a slash", "GET up/a HTTP/1.1\r\nHost: h\r\n\r\n", .refused(400)),
            Case("a target starting //", "GET //up/a HTTP/1.1\r\nHost: h\r\n\r\n", .refused(400)),
            Case("an invalid method", "G(T /up/a HTTP/1.1\r\nHost: h\r\n\r\n", .refused(400)),
            Case("a method with a NUL", "GE\u{0}T /up/a HTTP/1.1\r\nHost: h\r\n\r\n", .refused(400)),
            Case("two spaces after the method", "GET  /up/a HTTP/1.1\r\nHost: h\r\n\r\n", .refused(400)),
            Case("a lower-case version", "GET /up/a http/1.1\r\nHost: h\r\n\r\n", .refused(400)),
            Case("HTTP/1.2", "GET /up/a HTTP/1.2\r\nHost: h\r\n\r\n", .refused(505)),
            Case("the HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", .refused(505)),
            // Hosts.
            Case("two Hosts", "GET /up/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", .refused(400)),
            Case("no Host in HTTP/1.1", "GET /up/a HTTP/1.1\r\n\r\n", .refused(400)),
            Case("an empty Host", "GET /up/a HTTP/1.1\r\nHost: \r\n\r\n", .refused(400)),
            Case("a Host with a space", "GET /up/a HTTP/1.1\r\nHost: a b\r\n\r\n", .refused(400)),
            Case("a Host with user information", "GET /up/a HTTP/1.1\r\nHost: 127.0.0.1@evil.example\r\n\r\n", .refused(400)),
            // Sizes.
            Case("a 1 MB request line", "GET /up/" + String(repeating: "a", count: 1 << 20) + " HTTP/1.1\r\nHost: h\r\n\r\n", .refused(431)),
            Case("too many header fields", "GET /up/a HTTP/1.1\r\nHost: h\r\n" + (0..<200).map { "X-\($0): v\r\n" }.joined() + "\r\n", .refused(431)),

            // Read, and forwarded exactly as read.
            Case("a chunked body with extensions and a trailer", chunkedPost + "5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nChecksum: 1\r\n\r\n",
                 .forwarded([post("/up/c", "hello world")])),
            Case("a body followed by a pipelined request",
                 "POST /up/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /up/b HTTP/1.1\r\nHost: h\r\n\(close)\r\n",
                 .forwarded([post("/up/a", "hello"), get("/up/b")])),
            Case("bytes after a GET are the next request",
                 "GET /up/a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\nGET /up/b HTTP/1.1\r\nHost: h\r\n\(close)\r\n",
                 .forwarded([get("/up/a"), get("/up/b")])),
            Case("identical CLs", "POST /up/a HTTP/1.1\r\nHost: h\r\n\(close)Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", .forwarded([post("/up/a", "hello")])),
            Case("a CL with whitespace around it", "POST /up/a HTTP/1.1\r\nHost: h\r\n\(close)Content-Length:   5  \r\n\r\nhello", .forwarded([post("/up/a", "hello")])),
            Case("TE in upper case", "POST /up/a HTTP/1.1\r\nHost: h\r\n\(close)Transfer-Encoding: CHUNKED\r\n\r\n2\r\nhi\r\n0\r\n\r\n", .forwarded([post("/up/a", "hi")])),
            Case("HTTP/1.0 keep-alive, then HTTP/1.0",
                 "GET /up/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /up/b HTTP/1.0\r\n\r\nGET /up/never HTTP/1.0\r\n\r\n",
                 .forwarded([get("/up/a"), get("/up/b")])),
            Case("empty lines before a request", "\r\n\r\nGET /up/a HTTP/1.1\r\nHost: h\r\n\(close)\r\n", .forwarded([get("/up/a")])),
            Case("head lines ended by bare LF", "GET /up/a HTTP/1.1\nHost: h\n\(close.dropLast(2))\n\n", .forwarded([get("/up/a")])),
            Case("Expect: 100-continue with the body sent", "POST /up/a HTTP/1.1\r\nHost: h\r\n\(close)Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
                 .forwarded([post("/up/a", "ok")])),
            Case("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\(close)\r\n", .refused(404)),
            // A good request, then a bad one: the first goes through, the second stops there.
            Case("a good request, then two CLs",
                 "GET /up/a HTTP/1.1\r\nHost: h\r\n\r\nPOST /up/b HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                 .forwarded([get("/up/a")], thenRefused: true)),
            Case("a good chunked request, then a request line with spaces",
                 chunkedPost.replacingOccurrences(of: close, with: "") + "2\r\nhi\r\n0\r\n\r\nGET /up/a b HTTP/1.1\r\nHost: h\r\n\r\n",
                 .forwarded([post("/up/c", "hi")], thenRefused: true)),
        ]
        // A hundred pipelined requests, answered in order.
        let hundred = (0..<100).map { "GET /up/p\($0) HTTP/1.1\r\nHost: h\r\n\($0 == 99 ? close : "")\r\n" }.joined()
        cases.append(Case("100 pipelined requests", hundred, .forwarded((0..<100).map { get("/up/p\($0)") })))
        // A value with bytes above 0x7F (obs-text) is allowed and passed on as it came.
        cases.append(Case("obs-text in a value", bytes: Array("GET /up/a HTTP/1.1\r\nHost: h\r\n\(close)X-A: ".utf8) + [0xE9, 0xFF] + Array("\r\n\r\n".utf8),
                          .forwarded([get("/up/a")])))
        return cases
    }()

    @Test func eachInputIsRefusedOrForwardedAsItWasRead() async throws {
        #expect(Self.cases.count >= 40)
        let upstream = try await RecordingHTTPUpstream.start()
        let config = """
            upstreams:
              up: {targets: ["http://127.0.0.1:\(upstream.port)"]}
            routes:
              - {listener: client_plain, path: /up/*, upstream: up, max_body_bytes: 64KiB}
            """
        let limits = "limits: {header_timeout: 5s, idle_timeout: 5s, body_timeout: 5s}"
        try await TestGateway.with(listeners: [.clientPlain: limits], body: config) { gw in
            let port = try await gw.port(.clientPlain)
            for smuggling in Self.cases {
                upstream.reset()
                let answer = try await RawTCP.exchange(port: port, smuggling.bytes)
                let statuses = answer.components(separatedBy: "HTTP/1.1 ").dropFirst().compactMap { Int($0.prefix(3)) }
                let seen = upstream.seen
                switch smuggling.outcome {
                case .refused(let status):
                    #expect(statuses == [status], "\(smuggling): answered \(statuses)")
                    #expect(seen.isEmpty, "\(smuggling): the upstream saw \(seen)")
                case .forwarded(let expected, let thenRefused):
                    #expect(seen == expected, "\(smuggling): the upstream saw \(seen)")
                    let forwardedStatuses = Array(statuses.prefix(expected.count))
                    #expect(forwardedStatuses == Array(repeating: 200, count: expected.count), "\(smuggling): answered \(statuses)")
                    // Each answer is the upstream's to the request of the same place.
                    let bodies = answer.components(separatedBy: "up:").dropFirst().map { $0.prefix { $0 != "\n" } }
                    #expect(bodies.map(String.init) == expected.indices.map { "\($0) \(expected[$0].uri)" }, "\(smuggling)")
                    if thenRefused {
                        #expect(statuses.count == expected.count + 1 && statuses.last == 400, "\(smuggling): answered \(statuses)")
                    } else {
                        #expect(statuses.count == expected.count, "\(smuggling): answered \(statuses)")
                    }
                }
            }
        }
        await upstream.stop()
    }
}

/// An upstream that reads requests with NIO's HTTP/1 parser (not the gateway's) and records
/// each, answering `up:<n> <uri>` for the n-th request since the last reset.
final class RecordingHTTPUpstream: Sendable {
    let channel: any Channel
    private let state: NIOLockedValueBox<[SmugglingTests.Seen]>
    var port: Int { channel.localAddress!.port! }
    var seen: [SmugglingTests.Seen] { state.withLockedValue { $0 } }

    func reset() { state.withLockedValue { $0 = [] } }

    static func start() async throws -> RecordingHTTPUpstream {
        let state = NIOLockedValueBox<[SmugglingTests.Seen]>([])
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(Recorder(state: state))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return RecordingHTTPUpstream(channel: channel, state: state)
    }

    private init(channel: any Channel, state: NIOLockedValueBox<[SmugglingTests.Seen]>) {
        self.channel = channel
        self.state = state
    }

    func stop() async { try? await channel.close() }

    private final class Recorder: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let state: NIOLockedValueBox<[SmugglingTests.Seen]>
        private var current: SmugglingTests.Seen?

        init(state: NIOLockedValueBox<[SmugglingTests.Seen]>) { self.state = state }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                current = .init(method: head.method.rawValue, uri: head.uri, body: "")
            case .body(let bytes):
                current?.body += String(buffer: bytes)
            case .end:
                guard let request = current else { return }
                current = nil
                let number = state.withLockedValue { seen in
                    seen.append(request)
                    return seen.count - 1
                }
                let body = ByteBuffer(string: "up:\(number) \(request.uri)\n")
                var headers = HTTPHeaders()
                headers.add(name: "content-length", value: String(body.readableBytes))
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}
