import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing
import X509

import PorticoGateway
import PorticoServer

/// HTTP clients for tests.
public enum TestClient {
    public static func make(trusting certificate: NIOSSLCertificate? = nil, http2: Bool = true, clientIdentity: TestPKI.Pair? = nil) -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let certificate {
            tls.trustRoots = .certificates([certificate])
        } else {
            tls.certificateVerification = .none
        }
        if let clientIdentity {
            tls.certificateChain = [.certificate(clientIdentity.certificate)]
            tls.privateKey = .privateKey(clientIdentity.key)
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.httpVersion = http2 ? .automatic : .http1Only
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(20))
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    public struct Answer: Sendable {
        public let status: Int
        public let body: String
        public let headers: HTTPHeaders
        public let version: HTTPVersion
    }

    public static func get(_ client: HTTPClient, _ url: String, method: HTTPMethod = .GET, headers: HTTPHeaders = [:], body: String? = nil) async throws -> Answer {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers = headers
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await client.execute(request, timeout: .seconds(20))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        return Answer(status: Int(response.status.code), body: String(buffer: bytes), headers: response.headers, version: response.version)
    }

    /// Whether a TCP connection to a loopback port is accepted (no retries, unlike HTTP clients).
    /// A TLS client context offering only h2 and trusting any certificate, for the raw
    /// HTTP/2 clients of the tests.
    public static func http2TLSContext() throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        tls.applicationProtocols = ["h2"]
        return try NIOSSLContext(configuration: tls)
    }

    public static func canConnect(port: Int) async -> Bool {
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
            // A connect to a closed port in the ephemeral range can pick that very port as its
            // own source and connect to itself (TCP simultaneous open): nobody listened.
            let connectedToItself = channel.localAddress?.port == channel.remoteAddress?.port
            try? await channel.close()
            return !connectedToItself
        } catch {
            return false
        }
    }

    /// Runs `body` with a client and shuts it down after.
    public static func with<T>(trusting certificate: NIOSSLCertificate? = nil, http2: Bool = true, clientIdentity: TestPKI.Pair? = nil, _ body: (HTTPClient) async throws -> T) async throws -> T {
        let client = make(trusting: certificate, http2: http2, clientIdentity: clientIdentity)
        do {
            let result = try await body(client)
            try await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }
}
