import NIOCore
import NIOHTTP1

/// What a compiled route runs, chosen at load so that the request path does no casting.
///
/// `indirect`: its cases are boxed, so the copy a request makes of its route's endpoint is
/// one retain (copying the enum inline went through its value witness, with the service's
/// existential).
package indirect enum Endpoint: Sendable {
    /// A response fixed at load, encoded once for each HTTP version.
    case fixed(FixedResponse)
    /// Answered on the connection's event loop without suspending.
    case immediate(@Sendable (GatewayRequest) -> GatewayResponse)
    /// A service's route, run as a task (it may suspend).
    case route(ServiceEndpoint)
    /// A service's error document: for a path in its part of the listener that none of its
    /// routes takes, or a method they refuse.
    case refusal(any HTTPService, RouteRefusal)
    /// Forwarded to an upstream pool.
    case upstream(UpstreamPool)

    /// The same endpoint in a box of its own, with its own fixed response (for one event
    /// loop's copy of the routes; services stay shared, and a pool's copy shares its state).
    package func localCopy() -> Endpoint {
        switch self {
        case .fixed(let fixed): .fixed(FixedResponse(fixed.response))
        case .immediate(let respond): .immediate(respond)
        case .route(let route): .route(route)
        case .refusal(let service, let refusal): .refusal(service, refusal)
        case .upstream(let pool): .upstream(pool.localCopy())
        }
    }
}

/// A response encoded once at load (a class: an endpoint holding it is copied per request).
package final class FixedResponse: Sendable {
    /// The response as given, for the rare answers that cannot use the encodings below.
    package let response: GatewayResponse
    package let status: HTTPResponseStatus
    /// The status line, without its CRLF; the `date` header follows it.
    package let http1StatusLine: ByteBuffer
    /// The headers after `date` and the blank line, for a keep-alive HTTP/1.1 connection.
    package let http1Head: ByteBuffer
    /// The same with `connection: close`.
    package let http1HeadClosing: ByteBuffer
    /// The fields for HTTP/2 (the `date` is added per response).
    package let http2Fields: HTTP2Fields
    package let body: ByteBuffer

    package init(_ response: GatewayResponse) {
        self.response = response
        self.status = response.status
        self.body = response.body
        var line = ByteBuffer()
        HTTP1Encoding.writeStatusLine(response.status, into: &line)
        self.http1StatusLine = line
        var head = ByteBuffer()
        HTTP1Encoding.writeHeaders(response.headers, contentLength: response.body.readableBytes, close: false, into: &head)
        self.http1Head = head
        var closing = ByteBuffer()
        HTTP1Encoding.writeHeaders(response.headers, contentLength: response.body.readableBytes, close: true, into: &closing)
        self.http1HeadClosing = closing
        self.http2Fields = HTTP2Fields(status: response.status, headers: response.headers, contentLength: response.body.readableBytes)
    }

    /// The whole HTTP/1.1 response with a `date` header, as one buffer.
    package func http1(date: String, includeBody: Bool, closing: Bool = false, allocator: ByteBufferAllocator) -> ByteBuffer {
        let head = closing ? http1HeadClosing : http1Head
        var buffer = allocator.buffer(capacity: http1StatusLine.readableBytes + head.readableBytes + 40 + (includeBody ? body.readableBytes : 0))
        buffer.writeImmutableBuffer(http1StatusLine)
        buffer.writeStaticString("\r\ndate: ")
        buffer.writeString(date)
        buffer.writeImmutableBuffer(head)
        if includeBody { buffer.writeImmutableBuffer(body) }
        return buffer
    }
}

package enum HTTP1Encoding {
    /// Writes a status line, `date`, and headers, setting `content-length` and `connection` itself.
    package static func writeHead(status: HTTPResponseStatus, headers: HTTPHeaders, date: String, contentLength: Int, close: Bool, into buffer: inout ByteBuffer) {
        writeStatusLine(status, into: &buffer)
        buffer.writeStaticString("\r\ndate: ")
        buffer.writeString(date)
        writeHeaders(headers, contentLength: contentLength, close: close, into: &buffer)
    }

    /// An upstream's answer for the client as one buffer: status line, `date`, the upstream's
    /// fields passed on, framing, and (unless `includeBody` is false) the body. Written into
    /// `buffer`, emptied first (``Swift/Optional/reuse(capacity:)``).
    package static func answer(_ response: UpstreamResponse, date: String, contentLength: Int, close: Bool, includeBody: Bool, into buffer: inout ByteBuffer?) {
        let bound = ByteWriter.statusLineBound(response.status) + date.utf8.count + response.fieldsBound + 96
        let body = includeBody ? response.body.readableBytes : 0
        buffer.reuse(capacity: bound + body)
        buffer!.write(bound: bound) { out in
            out.writeStatusLine(response.status)
            out.write("\r\ndate: ")
            out.write(date)
            out.write("\r\n")
            response.writeFields(into: &out)
            out.writeFraming(contentLength: contentLength, close: close)
        }
        if includeBody { buffer!.writeImmutableBuffer(response.body) }
    }

    /// `HTTP/1.1 200 OK` without its CRLF.
    package static func writeStatusLine(_ status: HTTPResponseStatus, into buffer: inout ByteBuffer) {
        buffer.write(bound: ByteWriter.statusLineBound(status)) { $0.writeStatusLine(status) }
    }

    /// CRLF, then each header line, `content-length`, `connection: close` when closing, and the blank line.
    package static func writeHeaders(_ headers: HTTPHeaders, contentLength: Int, close: Bool, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("\r\n")
        for (name, value) in headers {
            // The gateway writes its own `date` (an upstream's would be a second one).
            if name.caseInsensitiveEquals("content-length") || name.caseInsensitiveEquals("connection") || name.caseInsensitiveEquals("transfer-encoding") || name.caseInsensitiveEquals("date") { continue }
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        writeFraming(contentLength: contentLength, close: close, into: &buffer)
    }

    /// `content-length`, `connection: close` when closing, and the blank line.
    package static func writeFraming(contentLength: Int, close: Bool, into buffer: inout ByteBuffer) {
        buffer.write(bound: ByteWriter.framingBound) { $0.writeFraming(contentLength: contentLength, close: close) }
    }
}

extension String {
    package func caseInsensitiveEquals(_ other: String) -> Bool {
        self.utf8.count == other.utf8.count && zip(self.utf8, other.utf8).allSatisfy { a, b in
            a == b || (a | 0x20) == (b | 0x20) && (a | 0x20) >= 0x61 && (a | 0x20) <= 0x7A
        }
    }
}
