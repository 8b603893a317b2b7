import NIOCore
import NIOHTTP1
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

@Suite struct ByteWriterTests {
    /// The head `raw` holds, as the gateway's parser reads it (an issue recorded if it does not parse).
    static func head(_ raw: [UInt8]) -> HTTP1RequestHead? {
        var input = ByteBuffer(bytes: raw)
        var parser = HTTP1Parser(maxHeadBytes: 65536, maxHeaderCount: 100)
        guard case .head(let head) = try? parser.next(&input) else {
            Issue.record("the head did not parse")
            return nil
        }
        return head
    }

    @Test func piecesAreWrittenInOrderAfterWhatTheBufferHeld() {
        var buffer = ByteBuffer(string: "before|")
        let bridged = "non-ASCII: é, ü"
        buffer.write(bound: 256) { out in
            out.writeStatusLine(.notFound)
            out.write("\r\n")
            out.write(decimal: 0)
            out.write(byte: UInt8(ascii: ","))
            out.write(decimal: 7)
            out.write(byte: UInt8(ascii: ","))
            out.write(decimal: 1_234_567_890)
            out.write(byte: UInt8(ascii: ","))
            out.write(decimal: Int.max)
            out.write(byte: UInt8(ascii: "|"))
            out.write(bridged)
            out.write(bridged.dropFirst(11))
            out.write(ByteBuffer(string: "|tail"))
        }
        buffer.writeString("|after")
        #expect(String(buffer: buffer) == "before|HTTP/1.1 404 Not Found\r\n0,7,1234567890,9223372036854775807|non-ASCII: é, üé, ü|tail|after")
    }

    @Test func boundsCoverTheLongestLines() {
        // A head whose lines have no space after the colon and bare LFs grows the most.
        guard let head = Self.head(Array("GET /x HTTP/1.1\na:b\nc:d\nhost:h\n\n".utf8)) else { return }
        let request = UpstreamRequest.http1(HTTP1Request(head: head, body: ByteBuffer(), client: ForwardedClient(peer: "192.0.2.1", peerIsTrustedProxy: false, isTLS: true)))
        var fields = ByteBuffer()
        UpstreamEncoding.writeForwardedFields(of: request, into: &fields)
        #expect(String(buffer: fields) == "a: b\r\nc: d\r\nhost: h\r\nx-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: https\r\nx-forwarded-host: h\r\n")
        #expect(fields.readableBytes <= UpstreamEncoding.fieldsBound(request))
    }

    /// Bytes that are not UTF-8 are copied as they came, never decoded into longer
    /// replacement characters, so the bound holds for any head (a wrong bound would stop
    /// the process: the writer checks it).
    @Test func bytesThatAreNotUTF8StayWithinTheBound() {
        let junk = [UInt8](repeating: 0xFF, count: 600)
        // (A Host must be a host name or address, so the junk goes in other fields.)
        var raw: [UInt8] = Array("GET /x HTTP/1.1\nhost:h\nx-junk:".utf8) + junk + Array("\n".utf8)
        for _ in 0..<4 { raw += Array("x-forwarded-for:".utf8) + junk + Array("\n".utf8) }
        for _ in 0..<2 { raw += Array("forwarded:".utf8) + junk + Array("\n".utf8) }
        raw += Array("\n".utf8)
        guard let head = Self.head(raw) else { return }
        let request = UpstreamRequest.http1(HTTP1Request(head: head, body: ByteBuffer(), client: ForwardedClient(peer: "2001:db8::1", peerIsTrustedProxy: true, isTLS: false)))
        let encoded = UpstreamEncoding.encode(request, basePath: "/base", hostHeader: "upstream:8080")
        let text = encoded.readableBytesView
        #expect(encoded.readableBytes <= 3 * head.bytes.readableBytes + 512)
        // The field went out once, and the hops of each forwarding field once, joined.
        #expect(text.split(separator: UInt8(ascii: "\n")).filter { $0.starts(with: Array("x-forwarded-for: ".utf8)) }.count == 1)
        #expect(text.split(separator: UInt8(ascii: "\n")).filter { $0.starts(with: Array("forwarded: ".utf8)) }.count == 1)
        #expect(text.filter { $0 == 0xFF }.count == junk.count * 7)
    }

    private static func address(_ buffer: ByteBuffer) -> UnsafeRawPointer? {
        buffer.withUnsafeReadableBytes { $0.baseAddress }
    }

    /// A relayed request copies its head and body out of the bytes read, so that the loop's
    /// read buffer is free again while the request waits for its upstream: what it forwards is
    /// unchanged, none of it points into the read buffer, and the copy's storage is reused by
    /// the connection's next relayed request.
    @Test func aRelayedRequestOwnsItsBytesAndForwardsTheSame() throws {
        func contains(_ outer: ByteBuffer, _ inner: ByteBuffer) -> Bool {
            outer.withUnsafeReadableBytes { outer in
                inner.withUnsafeReadableBytes { inner in
                    guard let start = outer.baseAddress, let pointer = inner.baseAddress else { return false }
                    return pointer >= start && pointer < start + outer.count
                }
            }
        }
        let raw = "POST /upload?x=1 HTTP/1.1\r\nhost: example.test\r\nx-a: b\r\ncontent-length: 5\r\n\r\nhello"
        let original = ByteBuffer(string: raw)
        var read = original
        var parser = HTTP1Parser(maxHeadBytes: 65536, maxHeaderCount: 100)
        guard case .head(let head) = try parser.next(&read) else { throw ByteWriterFailure("no head") }
        guard case .body(let body) = try parser.next(&read) else { throw ByteWriterFailure("no body") }
        let client = ForwardedClient(peer: "192.0.2.7", peerIsTrustedProxy: false, isTLS: true)
        let request = HTTP1Request(head: head, body: body, client: client)
        let before = UpstreamEncoding.encode(.http1(request), basePath: "/b", hostHeader: "u:1")
        // As parsed, head and body are slices of the bytes read.
        #expect(contains(original, request.head.bytes))
        #expect(contains(original, try #require(request.body)))

        request.ownBytes()
        #expect(UpstreamEncoding.encode(.http1(request), basePath: "/b", hostHeader: "u:1") == before)
        #expect(request.head.host == "example.test")
        #expect(request.body.map { String(buffer: $0) } == "hello")
        #expect(!contains(original, request.head.bytes))
        #expect(!contains(original, try #require(request.body)))
        let copy = try #require(Self.address(request.head.bytes))

        // Cleared after its answer, the next relayed request is copied into the same storage.
        request.clear()
        var next = ByteBuffer(string: "GET /next HTTP/1.1\r\nhost: other.test\r\n\r\n")
        var nextParser = HTTP1Parser(maxHeadBytes: 65536, maxHeaderCount: 100)
        guard case .head(let nextHead) = try nextParser.next(&next) else { throw ByteWriterFailure("no head") }
        request.reset(head: nextHead, bodyLimit: 1024, started: .now())
        request.ownBytes()
        #expect(Self.address(request.head.bytes) == copy)
        #expect(request.head.host == "other.test")
        #expect(String(buffer: UpstreamEncoding.encode(.http1(request), basePath: "", hostHeader: "u:1")).hasPrefix("GET /next HTTP/1.1\r\nhost: other.test\r\n"))
    }

    /// A connection writes each request (and answer) into the buffer it wrote the last one
    /// into. What comes out must be exactly what a fresh buffer gets, reusing the storage when
    /// nothing else holds it, and never writing over bytes a write still holds.
    @Test func aReusedBufferEncodesAsAFreshOneAndSparesHeldBytes() throws {
        func request(_ raw: String, body: String?) throws -> UpstreamRequest {
            let head = try #require(Self.head(Array(raw.utf8)))
            return .http1(HTTP1Request(head: head, body: body.map { ByteBuffer(string: $0) }, client: ForwardedClient(peer: "192.0.2.9", peerIsTrustedProxy: false, isTLS: true)))
        }
        let long = try request("POST /upload/a/long/path?with=query HTTP/1.1\r\nhost: h\r\nx-a: \(String(repeating: "a", count: 300))\r\ncontent-length: 5\r\n\r\n", body: "hello")
        let short = try request("GET /x HTTP/1.1\r\nhost: h\r\n\r\n", body: nil)

        var kept: ByteBuffer?
        UpstreamEncoding.encode(long, basePath: "", hostHeader: "u:1", into: &kept)
        #expect(kept == UpstreamEncoding.encode(long, basePath: "", hostHeader: "u:1"))
        let storage = Self.address(try #require(kept))
        // Nothing else holds it: the next request is written over it, with nothing left of the first.
        UpstreamEncoding.encode(short, basePath: "/b", hostHeader: "u:1", into: &kept)
        #expect(kept == UpstreamEncoding.encode(short, basePath: "/b", hostHeader: "u:1"))
        #expect(String(buffer: try #require(kept)).hasPrefix("GET /b/x HTTP/1.1\r\n"))
        #expect(Self.address(try #require(kept)) == storage)

        // A write not yet flushed still holds the bytes: they stay as they were.
        let held = try #require(kept)
        UpstreamEncoding.encode(long, basePath: "", hostHeader: "u:1", into: &kept)
        #expect(held == UpstreamEncoding.encode(short, basePath: "/b", hostHeader: "u:1"))
        #expect(kept == UpstreamEncoding.encode(long, basePath: "", hostHeader: "u:1"))
        #expect(Self.address(try #require(kept)) != Self.address(held))
    }

    @Test func anUpstreamAnswerWrittenOverAnEarlierOneIsTheSame() throws {
        var earlier = ByteBuffer(string: "HTTP/1.1 200 OK\r\nx-long: \(String(repeating: "b", count: 500))\r\ncontent-length: 2\r\n\r\nhi")
        let longHead = try #require(try UpstreamConnection.parseHead(earlier, maxBytes: 4096))
        earlier.moveReaderIndex(forwardBy: longHead.length)
        let first = UpstreamResponse(status: .ok, fields: longHead.fields, body: earlier)
        var later = ByteBuffer(string: "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 1\r\n\r\n!")
        let shortHead = try #require(try UpstreamConnection.parseHead(later, maxBytes: 4096))
        later.moveReaderIndex(forwardBy: shortHead.length)
        let second = UpstreamResponse(status: .notFound, fields: shortHead.fields, body: later)

        var fresh: ByteBuffer?
        HTTP1Encoding.answer(second, date: "D", contentLength: 1, close: false, includeBody: true, into: &fresh)
        var kept: ByteBuffer?
        HTTP1Encoding.answer(first, date: "D", contentLength: 2, close: false, includeBody: true, into: &kept)
        let storage = Self.address(try #require(kept))
        HTTP1Encoding.answer(second, date: "D", contentLength: 1, close: false, includeBody: true, into: &kept)
        #expect(kept == fresh)
        #expect(String(buffer: try #require(kept)) == "HTTP/1.1 404 Not Found\r\ndate: D\r\ncontent-type: text/plain\r\ncontent-length: 1\r\n\r\n!")
        #expect(Self.address(try #require(kept)) == storage)
    }
}

struct ByteWriterFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
