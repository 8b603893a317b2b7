import NIOCore
import NIOHTTP1
import NIOHPACK

/// What a compiled route runs, chosen at load so that the request path does no casting.
enum Endpoint: Sendable {
    /// A response fixed at load, encoded once for each HTTP version.
    case fixed(FixedResponse)
    /// Answered on the connection's event loop without suspending.
    case immediate(@Sendable (GatewayRequest) -> GatewayResponse)
    /// Answered by a service that may suspend.
    case service(any HTTPService)
    /// Forwarded to an upstream pool.
    case upstream(UpstreamPool)
}

/// A response encoded once at load.
struct FixedResponse: Sendable {
    let status: HTTPResponseStatus
    /// Status line, headers and body, ready to write on a keep-alive HTTP/1.1 connection.
    let http1: ByteBuffer
    /// The same without the body, for HEAD.
    let http1Head: ByteBuffer
    /// Headers and body for HTTP/2.
    let http2Headers: HPACKHeaders
    let body: ByteBuffer

    init(_ response: GatewayResponse) {
        self.status = response.status
        self.body = response.body
        var full = ByteBuffer()
        HTTP1Encoding.writeHead(status: response.status, headers: response.headers, contentLength: response.body.readableBytes, close: false, into: &full)
        self.http1Head = full
        var body = response.body
        full.writeBuffer(&body)
        self.http1 = full
        self.http2Headers = HTTP2Encoding.headers(status: response.status, headers: response.headers, contentLength: response.body.readableBytes)
    }
}

enum HTTP1Encoding {
    /// Writes a status line and headers, setting `content-length` and `connection` itself.
    static func writeHead(status: HTTPResponseStatus, headers: HTTPHeaders, contentLength: Int, close: Bool, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("HTTP/1.1 ")
        buffer.writeString(String(status.code))
        buffer.writeStaticString(" ")
        buffer.writeString(status.reasonPhrase)
        buffer.writeStaticString("\r\n")
        for (name, value) in headers {
            if name.caseInsensitiveEquals("content-length") || name.caseInsensitiveEquals("connection") || name.caseInsensitiveEquals("transfer-encoding") { continue }
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("content-length: ")
        buffer.writeString(String(contentLength))
        if close {
            buffer.writeStaticString("\r\nconnection: close\r\n\r\n")
        } else {
            buffer.writeStaticString("\r\n\r\n")
        }
    }
}

enum HTTP2Encoding {
    /// Response headers for HTTP/2: `:status` first, connection-specific fields left out.
    static func headers(status: HTTPResponseStatus, headers: HTTPHeaders, contentLength: Int) -> HPACKHeaders {
        var result = HPACKHeaders()
        result.reserveCapacity(headers.count + 2)
        result.add(name: ":status", value: String(status.code))
        for (name, value) in headers {
            let lower = name.lowercased()
            switch lower {
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "content-length": continue
            default: result.add(name: lower, value: value)
            }
        }
        result.add(name: "content-length", value: String(contentLength))
        return result
    }
}

extension String {
    func caseInsensitiveEquals(_ other: String) -> Bool {
        self.utf8.count == other.utf8.count && zip(self.utf8, other.utf8).allSatisfy { a, b in
            (a | 0x20) == (b | 0x20)
        }
    }
}
