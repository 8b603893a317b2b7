import CPorticoOpenSSL
import Foundation
import NIOConcurrencyHelpers
import NIOPosix
import PorticoAgent
import PorticoProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The TLS client of the fleet simulator, on the system's OpenSSL: one TCP connection and one
/// TLS handshake per request, resuming the agent's previous TLS session, from one of many
/// loopback source addresses, as agents in the field reach a manager. Blocking I/O on threads
/// of a pool of its own, so that thousands of connections in flight need no event loop of ours.
// Unchecked sendability: the SSL_CTX is only read after `init` (SSL_new takes it from any
// thread, as OpenSSL allows), and the counters are behind a lock.
final class FreshConnectionTLS: @unchecked Sendable {
    private let context: OpaquePointer?
    let pool: NIOThreadPool
    private let counters = NIOLockedValueBox(Counters())

    struct Counters {
        var connections = 0
        var resumed = 0
    }

    /// - Parameters:
    ///   - pinned: the certificates TLS may end at (the agent's pins), without host names.
    ///   - threads: requests in flight at most.
    ///   - newest: the newest version offered.
    enum Version {
        case tls12, tls13
    }

    init(pinned: PinnedCertificates, threads: Int, newest: Version = .tls13) throws {
        guard let context = SSL_CTX_new(TLS_client_method()) else { throw FleetError.tls("SSL_CTX_new failed") }
        _ = CPorticoOpenSSL_set_min_proto_version(context, TLS1_2_VERSION)
        if newest == .tls12 { _ = CPorticoOpenSSL_set_max_proto_version(context, TLS1_2_VERSION) }
        let store = SSL_CTX_get_cert_store(context)
        for pem in pinned.tlsTrustRoots {
            // A BIO of its own (copied in): a memory BIO over the string's bytes would outlive them.
            guard let bio = BIO_new(BIO_s_mem()) else { throw FleetError.tls("BIO_new failed") }
            defer { BIO_free(bio) }
            let text = pem.hasSuffix("\n") ? pem : pem + "\n"
            _ = text.withCString { BIO_puts(bio, $0) }
            guard let certificate = PEM_read_bio_X509(bio, nil, nil, nil) else { throw FleetError.tls("a pinned certificate is not PEM: \(Self.lastError())") }
            X509_STORE_add_cert(store, certificate)
            X509_free(certificate)
        }
        // A pinned certificate is an anchor whether or not it is self-signed.
        X509_STORE_set_flags(store, UInt(X509_V_FLAG_PARTIAL_CHAIN))
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        let alpn: [UInt8] = [8] + Array("http/1.1".utf8)
        _ = alpn.withUnsafeBufferPointer { SSL_CTX_set_alpn_protos(context, $0.baseAddress, UInt32($0.count)) }
        _ = CPorticoOpenSSL_set_session_cache_mode(context, Int(SSL_SESS_CACHE_CLIENT))
        self.context = context
        self.pool = NIOThreadPool(numberOfThreads: threads)
        pool.start()
    }

    deinit {
        SSL_CTX_free(context)
    }

    var counts: Counters { counters.withLockedValue { $0 } }

    struct Answer {
        var status: Int
        var body: [UInt8]
        /// The session to resume next time, serialized.
        var session: [UInt8]?
    }

    /// One request on a new connection: connect (from `source`), handshake (resuming
    /// `session`), send, read the answer to the end, close.
    func exchange(_ target: FleetTarget, source: in_addr_t, session: [UInt8]?, request: [UInt8], timeoutSeconds: Int = 30) throws -> Answer {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FleetError.connect("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_addr.s_addr = source
        let bound = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0 else { throw FleetError.connect("bind: \(String(cString: strerror(errno)))") }
        var remote = target.address
        let connected = withUnsafePointer(to: &remote) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { throw FleetError.connect(String(cString: strerror(errno))) }
        counters.withLockedValue { $0.connections += 1 }
        guard target.tls else { return try Self.plainExchange(fd, request: request) }

        guard let ssl = SSL_new(context) else { throw FleetError.tls("SSL_new failed") }
        defer { SSL_free(ssl) }
        SSL_set_fd(ssl, fd)
        if let session {
            session.withUnsafeBufferPointer { buffer in
                var pointer: UnsafePointer<UInt8>? = buffer.baseAddress
                if let decoded = d2i_SSL_SESSION(nil, &pointer, buffer.count) {
                    SSL_set_session(ssl, decoded)
                    SSL_SESSION_free(decoded)
                }
            }
        }
        guard SSL_connect(ssl) == 1 else { throw FleetError.tls("handshake: \(Self.lastError())") }
        if SSL_session_reused(ssl) == 1 { counters.withLockedValue { $0.resumed += 1 } }
        var sent = 0
        while sent < request.count {
            let written = request.withUnsafeBytes { SSL_write(ssl, $0.baseAddress! + sent, Int32(request.count - sent)) }
            guard written > 0 else { throw FleetError.io("write: \(Self.lastError())") }
            sent += Int(written)
        }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = chunk.withUnsafeMutableBytes { SSL_read(ssl, $0.baseAddress, Int32($0.count)) }
            if count > 0 {
                received += chunk[0..<Int(count)]
                continue
            }
            let error = SSL_get_error(ssl, count)
            // The manager closes after the answer, with or without close_notify.
            if error == SSL_ERROR_ZERO_RETURN || (error == SSL_ERROR_SYSCALL && errno == 0) { break }
            if !received.isEmpty, error == SSL_ERROR_SYSCALL { break }
            throw FleetError.io("read: \(Self.lastError()) (\(error))")
        }
        // The ticket the manager sent after the handshake is in the session now.
        var next: [UInt8]? = nil
        if let current = SSL_get1_session(ssl) {
            if SSL_SESSION_is_resumable(current) == 1 {
                let length = i2d_SSL_SESSION(current, nil)
                if length > 0 {
                    var bytes = [UInt8](repeating: 0, count: Int(length))
                    bytes.withUnsafeMutableBufferPointer { buffer in
                        var pointer: UnsafeMutablePointer<UInt8>? = buffer.baseAddress
                        _ = i2d_SSL_SESSION(current, &pointer)
                    }
                    next = bytes
                }
            }
            SSL_SESSION_free(current)
        }
        var answer = try Self.parse(received)
        answer.session = next ?? session
        return answer
    }

    private static func plainExchange(_ fd: Int32, request: [UInt8]) throws -> Answer {
        var sent = 0
        while sent < request.count {
            let written = request.withUnsafeBytes { send(fd, $0.baseAddress! + sent, request.count - sent, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { throw FleetError.io("write: \(String(cString: strerror(errno)))") }
            sent += written
        }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 { received += chunk[0..<count]; continue }
            if count == 0 { break }
            throw FleetError.io("read: \(String(cString: strerror(errno)))")
        }
        return try parse(received)
    }

    /// Status and body of an HTTP/1.1 answer read to the end of the connection.
    static func parse(_ bytes: [UInt8]) throws -> Answer {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = bytes.indices.first(where: { bytes[$0...].starts(with: separator) }) else { throw FleetError.io("an answer without a complete head") }
        let head = String(decoding: bytes[..<end], as: UTF8.self)
        let statusLine = head.prefix { $0 != "\r" }
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else { throw FleetError.io("an answer without a status line") }
        var body = Array(bytes[(end + 4)...])
        for line in head.split(separator: "\r\n").dropFirst() {
            let pair = line.split(separator: ":", maxSplits: 1)
            if pair.count == 2, pair[0].lowercased() == "content-length", let length = Int(pair[1].trimmingCharacters(in: .whitespaces)), length <= body.count {
                body = Array(body.prefix(length))
            }
        }
        return Answer(status: status, body: body, session: nil)
    }

    private static func lastError() -> String {
        let code = ERR_get_error()
        guard code != 0 else { return String(cString: strerror(errno)) }
        var text = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &text, text.count)
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Where the simulated agents send their requests.
struct FleetTarget: Sendable {
    var address: sockaddr_in
    var tls: Bool
    var hostHeader: String

    /// `https://127.0.0.1:8441` or `http://127.0.0.1:8014` (an IPv4 address: loopback only).
    init(url: String) throws {
        guard let parsed = URLComponents(string: url), let scheme = parsed.scheme, let host = parsed.host, scheme == "https" || scheme == "http" else {
            throw FleetError.usage("\(url) is not an http or https URL")
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { throw FleetError.usage("\(url): the fleet simulator takes an IPv4 address, such as 127.0.0.1") }
        let port = parsed.port ?? (scheme == "https" ? 443 : 80)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        self.address = address
        self.tls = scheme == "https"
        self.hostHeader = "\(host):\(port)"
    }
}

/// One simulated agent's way to the manager: a fresh connection per request from its source
/// address, resuming the TLS session its previous connection ended with.
// Unchecked sendability: `session` is behind its lock; everything else is set once in `init`.
final class FreshConnectionTransport: AgentTransport, @unchecked Sendable {
    private let client: FreshConnectionTLS
    private let target: FleetTarget
    private let source: in_addr_t
    private let session = NIOLockedValueBox<[UInt8]?>(nil)

    init(client: FreshConnectionTLS, target: FleetTarget, source: in_addr_t) {
        self.client = client
        self.target = target
        self.source = source
    }

    func post(_ url: String, body: [UInt8], contentType: String) async throws -> (status: Int, body: [UInt8]) {
        try await exchange(method: "POST", url: url, body: body, contentType: contentType)
    }

    func get(_ url: String) async throws -> (status: Int, body: [UInt8]) {
        try await exchange(method: "GET", url: url, body: [], contentType: nil)
    }

    private func exchange(method: String, url: String, body: [UInt8], contentType: String?) async throws -> (status: Int, body: [UInt8]) {
        let path = URLComponents(string: url).map { $0.percentEncodedPath.isEmpty ? "/" : $0.percentEncodedPath } ?? "/"
        var head = "\(method) \(path) HTTP/1.1\r\nhost: \(target.hostHeader)\r\nconnection: close\r\n"
        if let contentType { head += "content-type: \(contentType)\r\ncontent-length: \(body.count)\r\n" }
        let request = Array((head + "\r\n").utf8) + body
        let resumable = session.withLockedValue { $0 }
        let (client, target, source) = (self.client, self.target, self.source)
        let answer = try await client.pool.runIfActive {
            try client.exchange(target, source: source, session: resumable, request: request)
        }
        session.withLockedValue { $0 = answer.session }
        return (answer.status, answer.body)
    }

    func pinning(_ pinned: PinnedCertificates) async -> any AgentTransport {
        // The simulator's agents trust what the fleet's TLS client was made with; an announced
        // certificate is pinned for signatures by the agent itself.
        self
    }

    func shutdown() async {}
}

enum FleetError: Error, CustomStringConvertible {
    case usage(String)
    case connect(String)
    case tls(String)
    case io(String)

    var description: String {
        switch self {
        case .usage(let text): text
        case .connect(let text): "connect: \(text)"
        case .tls(let text): "tls: \(text)"
        case .io(let text): "io: \(text)"
        }
    }

    /// The kind, for the table of errors.
    var kind: String {
        switch self {
        case .usage: "usage"
        case .connect: "connect"
        case .tls: "tls"
        case .io: "io"
        }
    }
}
