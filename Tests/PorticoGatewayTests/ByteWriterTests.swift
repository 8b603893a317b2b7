import NIOCore
import NIOHTTP1
import Testing

@testable import PorticoGateway

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
        var raw: [UInt8] = Array("GET /x HTTP/1.1\nhost:".utf8) + junk + Array("\n".utf8)
        for _ in 0..<4 { raw += Array("x-forwarded-for:".utf8) + junk + Array("\n".utf8) }
        raw += Array("\n".utf8)
        guard let head = Self.head(raw) else { return }
        let request = UpstreamRequest.http1(HTTP1Request(head: head, body: ByteBuffer(), client: ForwardedClient(peer: "2001:db8::1", peerIsTrustedProxy: true, isTLS: false)))
        let encoded = UpstreamEncoding.encode(request, basePath: "/base", hostHeader: "upstream:8080")
        let text = encoded.readableBytesView
        #expect(encoded.readableBytes <= 3 * head.bytes.readableBytes + 512)
        // The host went out twice (the field and x-forwarded-host) and the hops once, joined.
        #expect(text.split(separator: UInt8(ascii: "\n")).filter { $0.starts(with: Array("x-forwarded-for: ".utf8)) }.count == 1)
        #expect(text.filter { $0 == 0xFF }.count == junk.count * 6)
    }
}
