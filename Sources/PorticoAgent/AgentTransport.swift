import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import NIOSSL
import PorticoProtocol

/// How an agent's requests reach the manager: a manager URL's path, a body, an answer. The
/// reference agent keeps connections alive with AsyncHTTPClient; the fleet simulator opens a
/// fresh connection per request and resumes its TLS session, as agents in the field do.
public protocol AgentTransport: Sendable {
    func post(_ url: String, body: [UInt8], contentType: String) async throws -> (status: Int, body: [UInt8])
    /// A post whose answer may take up to `timeout` (a held wait).
    func post(_ url: String, body: [UInt8], contentType: String, timeout: Duration) async throws -> (status: Int, body: [UInt8])
    func get(_ url: String) async throws -> (status: Int, body: [UInt8])
    /// A transport trusting `pinned` for TLS (the manager announced a next certificate).
    func pinning(_ pinned: PinnedCertificates) async -> any AgentTransport
    func shutdown() async
}

extension AgentTransport {
    /// Transports that do not hold requests answer within their usual time.
    public func post(_ url: String, body: [UInt8], contentType: String, timeout: Duration) async throws -> (status: Int, body: [UInt8]) {
        try await post(url, body: body, contentType: contentType)
    }
}

/// Requests on AsyncHTTPClient's kept-alive connections, trusting only the pinned certificates.
public struct HTTPClientTransport: AgentTransport {
    let client: HTTPClient
    /// Whether this transport made the client (and so shuts it down).
    let owned: Bool

    /// - Parameter owned: whether ``shutdown()`` shuts the client down too.
    public init(client: HTTPClient, owned: Bool = false) {
        self.client = client
        self.owned = owned
    }

    public init(pinned: PinnedCertificates) {
        self.client = Self.makeHTTPClient(pinned: pinned)
        self.owned = true
    }

    /// An HTTP client that trusts only the pinned manager certificates for TLS.
    public static func makeHTTPClient(pinned: PinnedCertificates) -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(pinned.tlsTrustRoots.compactMap { try? NIOSSLCertificate(bytes: Array($0.utf8), format: .pem) })
        tls.certificateVerification = .noHostnameVerification
        tls.minimumTLSVersion = .tlsv12
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        // No read timeout on the connection: a held wait is silent for up to its hold time.
        // Each request has a deadline of its own instead.
        configuration.timeout = .init(connect: .seconds(5), read: nil)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    public func post(_ url: String, body: [UInt8], contentType: String) async throws -> (status: Int, body: [UInt8]) {
        try await post(url, body: body, contentType: contentType, timeout: .seconds(30))
    }

    public func post(_ url: String, body: [UInt8], contentType: String, timeout: Duration) async throws -> (status: Int, body: [UInt8]) {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "content-type", value: contentType)
        request.body = .bytes(ByteBuffer(bytes: body))
        let response = try await client.execute(request, timeout: .seconds(max(1, timeout.components.seconds)))
        let bytes = try await response.body.collect(upTo: 8 << 20)
        return (Int(response.status.code), Array(bytes.readableBytesView))
    }

    public func get(_ url: String) async throws -> (status: Int, body: [UInt8]) {
        let response = try await client.execute(HTTPClientRequest(url: url), timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), Array(bytes.readableBytesView))
    }

    public func pinning(_ pinned: PinnedCertificates) async -> any AgentTransport {
        await shutdown()
        return HTTPClientTransport(pinned: pinned)
    }

    public func shutdown() async {
        if owned { try? await client.shutdown() }
    }
}
