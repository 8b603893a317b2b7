// The system's OpenSSL (libssl-dev), driven directly: Debian's security updates fix the
// listeners' TLS without a new build.
import CPorticoOpenSSL
#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOSSL

/// Why a TLS context for the core could not be made.
package struct CoreTLSError: Error, CustomStringConvertible {
    package let description: String

    package init(_ what: String) {
        var text = what
        // OpenSSL's own reasons, oldest first.
        var reasons: [String] = []
        while case let code = ERR_get_error(), code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        if !reasons.isEmpty { text += " (" + reasons.joined(separator: "; ") + ")" }
        description = text
    }
}

/// A server TLS context for one listener and one identity: the listener's policy (TLS 1.2
/// and later, its TLS 1.2 cipher suites, ALPN h2 and http/1.1, client certificates and their
/// trust), its session ticket keys and the pair, as one OpenSSL `SSL_CTX` that every connection
/// of that identity shares.
/// A reload makes a new one (``ListenerTLS``); connections keep the one they started with.
package final class CoreTLSContext: @unchecked Sendable {
    // @unchecked Sendable: after init the SSL_CTX is only used through OpenSSL's thread-safe
    // calls (SSL_new, and its session cache, which it locks), and the ticket keys lock.
    package let context: OpaquePointer
    private let ticketKeys: TicketKeys

    /// How long a session resumes: agents come back every few minutes and should not pay a
    /// full handshake each time (OpenSSL's default is five minutes).
    package static let sessionLifetime: Int = 2 * 3600
    /// Sessions kept for clients that resume by session id rather than by ticket.
    package static let sessionCacheSize = 20_480

    package init(listener: ListenerConfiguration, identity: ServerIdentity, trust: [NIOSSLCertificate], ticketKeys: TicketKeys) throws {
        guard let context = SSL_CTX_new(TLS_server_method()) else { throw CoreTLSError("SSL_CTX_new failed") }
        self.context = context
        self.ticketKeys = ticketKeys
        guard CPorticoOpenSSL_set_min_proto_version(context, TLS1_2_VERSION) == 1 else { throw CoreTLSError("cannot require TLS 1.2") }
        try Self.setCiphers(TLSCipherPolicy.cipherString(listener.tls12Ciphers), in: context)
        _ = CPorticoOpenSSL_set_server_options(context)
        // An idle connection gives its record buffers back: held connections cost less memory.
        _ = CPorticoOpenSSL_set_mode(context, Int(SSL_MODE_RELEASE_BUFFERS))
        try Self.usePair(identity, in: context)
        // Sessions of one listener only resume on it (and resumption needs this when client
        // certificates are asked for).
        let sessionContext = Array("portico-\(listener.name.rawValue)".utf8.prefix(Int(SSL_MAX_SID_CTX_LENGTH)))
        _ = SSL_CTX_set_session_id_context(context, sessionContext, UInt32(sessionContext.count))
        _ = SSL_CTX_set_timeout(context, Self.sessionLifetime)
        _ = CPorticoOpenSSL_set_session_cache_mode(context, Int(SSL_SESS_CACHE_SERVER))
        _ = CPorticoOpenSSL_set_session_cache_size(context, Self.sessionCacheSize)
        SSL_CTX_set_ex_data(context, 0, Unmanaged.passUnretained(ticketKeys).toOpaque())
        _ = SSL_CTX_set_tlsext_ticket_key_evp_cb(context) { ssl, name, iv, cipher, mac, encrypt in
            sealTicket(ssl: ssl, name: name, iv: iv, cipher: cipher, mac: mac, encrypt: encrypt)
        }
        // h2 when the listener offers it and the client does, else http/1.1. (The callback is
        // a C function: whether h2 is offered travels as its argument, non-nil for yes.)
        SSL_CTX_set_alpn_select_cb(context, { _, out, outLength, offered, offeredLength, offersHTTP2 in
            selectProtocol(out: out, outLength: outLength, offered: offered, offeredLength: offeredLength, http2: offersHTTP2 != nil)
        }, listener.http2 ? UnsafeMutableRawPointer(bitPattern: 1) : nil)
        switch listener.clientAuth {
        case .none:
            break
        case .optional, .require:
            SSL_CTX_set_verify(context, listener.clientAuth == .require ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, nil)
            X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(context), UInt(X509_V_FLAG_TRUSTED_FIRST))
            let store = SSL_CTX_get_cert_store(context)
            for certificate in trust {
                let x509 = try Self.x509(certificate)
                defer { X509_free(x509) }
                guard X509_STORE_add_cert(store, x509) == 1 else { throw CoreTLSError("cannot trust a client certificate authority") }
                _ = SSL_CTX_add_client_CA(context, x509)
            }
        }
    }

    deinit {
        SSL_CTX_free(context)
    }

    /// The TLS 1.2 suites: each name must be one OpenSSL knows (it would otherwise skip it
    /// silently), so they are set one at a time first.
    private static func setCiphers(_ list: String, in context: OpaquePointer) throws {
        for name in list.split(separator: ":") {
            guard SSL_CTX_set_cipher_list(context, String(name)) == 1 else {
                throw CoreTLSError("the TLS library does not know the cipher suite \(name)")
            }
        }
        guard SSL_CTX_set_cipher_list(context, list) == 1 else { throw CoreTLSError("cannot set the cipher suites") }
    }

    private static func usePair(_ identity: ServerIdentity, in context: OpaquePointer) throws {
        guard let leaf = identity.chain.first else { throw CoreTLSError("the identity holds no certificate") }
        let x509 = try x509(leaf)
        defer { X509_free(x509) }
        guard SSL_CTX_use_certificate(context, x509) == 1 else { throw CoreTLSError("cannot use the certificate") }
        for issuer in identity.chain.dropFirst() {
            let issuerX509 = try self.x509(issuer)
            defer { X509_free(issuerX509) }
            guard CPorticoOpenSSL_add1_chain_cert(context, issuerX509) == 1 else { throw CoreTLSError("cannot add an issuer to the chain") }
        }
        let der = try identity.privateKey.derBytes
        let key = der.withUnsafeBufferPointer { bytes -> OpaquePointer? in
            var cursor = bytes.baseAddress
            return d2i_AutoPrivateKey(nil, &cursor, bytes.count)
        }
        guard let key else { throw CoreTLSError("cannot read the private key") }
        defer { EVP_PKEY_free(key) }
        guard SSL_CTX_use_PrivateKey(context, key) == 1, SSL_CTX_check_private_key(context) == 1 else {
            throw CoreTLSError("the private key does not match the certificate")
        }
    }

    /// A certificate as OpenSSL's own object (the caller frees it).
    package static func x509(_ certificate: NIOSSLCertificate) throws -> OpaquePointer {
        let der = try certificate.toDERBytes()
        let x509 = der.withUnsafeBufferPointer { bytes -> OpaquePointer? in
            var cursor = bytes.baseAddress
            return d2i_X509(nil, &cursor, bytes.count)
        }
        guard let x509 else { throw CoreTLSError("cannot read a certificate") }
        return x509
    }
}

/// Seals (encrypt 1) or opens a session ticket with the listener's ``TicketKeys``: AES-256-CBC
/// and HMAC-SHA-256 as OpenSSL's own tickets are. Answers 1 (go on), 2 (issue a new ticket),
/// 0 (unknown key: a full handshake) or -1 (failure). A TLS 1.3 client is always given a new
/// ticket, as OpenSSL's own keys do: its client does not offer a ticket it has used again
/// once that connection has closed, so without one every other connection would be a full
/// handshake.
/// AES-256-CBC fetched once: the legacy `EVP_aes_256_cbc()` is looked up in the providers at
/// every use.
// nonisolated(unsafe): set once, then only read (a fetched cipher is immutable and
// thread-safe to use).
private nonisolated(unsafe) let ticketCipher: OpaquePointer? = EVP_CIPHER_fetch(nil, "AES-256-CBC", nil)

private func sealTicket(
    ssl: OpaquePointer?, name: UnsafeMutablePointer<UInt8>?, iv: UnsafeMutablePointer<UInt8>?,
    cipher: OpaquePointer?, mac: OpaquePointer?, encrypt: Int32
) -> Int32 {
    guard let ssl, let name, let iv, let cipher, let mac, let ticketCipher,
          let raw = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), 0) else { return -1 }
    let keys = Unmanaged<TicketKeys>.fromOpaque(raw).takeUnretainedValue()
    let ivLength = Int(EVP_CIPHER_get_iv_length(ticketCipher))
    if encrypt == 1 {
        let key = keys.current()
        key.name.withUnsafeBytes { name.update(from: $0.bindMemory(to: UInt8.self).baseAddress!, count: TicketKeys.nameLength) }
        guard RAND_bytes(iv, Int32(ivLength)) == 1,
              EVP_EncryptInit_ex(cipher, ticketCipher, nil, key.cipherKey, iv) == 1 else { return -1 }
        var macKey = key.macKey
        return CPorticoOpenSSL_ticket_hmac(mac, &macKey, macKey.count) == 1 ? 1 : -1
    }
    guard let (key, isNewest) = keys.key(named: UnsafeRawBufferPointer(start: name, count: TicketKeys.nameLength)) else { return 0 }
    var macKey = key.macKey
    guard CPorticoOpenSSL_ticket_hmac(mac, &macKey, macKey.count) == 1,
          EVP_DecryptInit_ex(cipher, ticketCipher, nil, key.cipherKey, iv) == 1 else { return -1 }
    return isNewest && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2
}

/// ALPN: h2 if allowed and the client offers it, else http/1.1 if it offers that; otherwise
/// none (the client may still speak HTTP/1.1).
private func selectProtocol(
    out: UnsafeMutablePointer<UnsafePointer<UInt8>?>?, outLength: UnsafeMutablePointer<UInt8>?,
    offered: UnsafePointer<UInt8>?, offeredLength: UInt32, http2: Bool
) -> Int32 {
    guard let out, let outLength, let offered else { return SSL_TLSEXT_ERR_NOACK }
    let preferences: [StaticString] = http2 ? ["h2", "http/1.1"] : ["http/1.1"]
    for wanted in preferences {
        var index = 0
        while index < Int(offeredLength) {
            let length = Int(offered[index])
            let start = index + 1
            guard start + length <= Int(offeredLength) else { break }
            if length == wanted.utf8CodeUnitCount, memcmp(offered + start, wanted.utf8Start, length) == 0 {
                out.pointee = offered + start
                outLength.pointee = UInt8(length)
                return SSL_TLSEXT_ERR_OK
            }
            index = start + length
        }
    }
    return SSL_TLSEXT_ERR_NOACK
}

/// Where OpenSSL writes one connection's records: a `ByteBuffer` the connection sends from.
/// Its memory is the loop's (``CoreEventLoop/takeTLSOutputBuffer()``), taken at the first
/// write and given back once the socket took everything, so that a connection between
/// answers holds no output memory; only what the socket has not taken stays with it.
package final class CoreTLSOutput {
    package var bytes = ByteBuffer()
    private let loop: CoreEventLoop

    init(loop: CoreEventLoop) {
        self.loop = loop
    }

    /// A BIO whose writes append to an output's bytes. Made once, shared by every connection.
    // nonisolated(unsafe): set once, then only read (OpenSSL does not change a method).
    package nonisolated(unsafe) static let method: OpaquePointer = {
        let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "portico output")!
        _ = BIO_meth_set_write(method) { bio, data, length in
            guard let bio, let data, length > 0, let state = BIO_get_data(bio) else { return 0 }
            let output = Unmanaged<CoreTLSOutput>.fromOpaque(state).takeUnretainedValue()
            if output.bytes.capacity == 0 { output.bytes = output.loop.takeTLSOutputBuffer() }
            output.bytes.writeBytes(UnsafeRawBufferPointer(start: data, count: Int(length)))
            return length
        }
        // OpenSSL flushes after each flight of records; there is nothing to do.
        _ = BIO_meth_set_ctrl(method) { _, command, _, _ in command == BIO_CTRL_FLUSH ? 1 : 0 }
        return method
    }()

    /// Everything was sent: the memory goes back to the loop.
    func release() {
        guard bytes.capacity > 0 else { return }
        loop.returnTLSOutputBuffer(bytes)
        bytes = ByteBuffer()
    }
}

/// Where OpenSSL reads one connection's records from: the bytes of the socket read being
/// handled, borrowed for that call (``CoreTLSSession/reading(_:_:)``), and a copy only of
/// what OpenSSL left unread when the call ended. An idle connection holds no input memory
/// (a memory BIO would keep the size of the largest read it was ever given).
package final class CoreTLSInput {
    private var borrowed = UnsafeRawBufferPointer(start: nil, count: 0)
    private var kept = ByteBuffer()

    var pending: Int { kept.readableBytes + borrowed.count }

    /// Lends `bytes` until ``keepUnread()``; behind what is kept, if anything is.
    func lend(_ bytes: UnsafeRawBufferPointer) {
        if kept.readableBytes > 0 || borrowed.count > 0 {
            keepUnread()
            kept.writeBytes(bytes)
        } else {
            borrowed = bytes
        }
    }

    /// Copies what OpenSSL has not read of the lent bytes, which are about to be reused.
    func keepUnread() {
        if borrowed.count > 0 { kept.writeBytes(borrowed) }
        borrowed = UnsafeRawBufferPointer(start: nil, count: 0)
    }

    private func read(into space: UnsafeMutableRawBufferPointer) -> Int {
        if kept.readableBytes > 0 {
            let count = min(space.count, kept.readableBytes)
            kept.withUnsafeReadableBytes { space.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[..<count])) }
            kept.moveReaderIndex(forwardBy: count)
            if kept.readableBytes == 0 { kept = ByteBuffer() }
            return count
        }
        let count = min(space.count, borrowed.count)
        guard count > 0 else { return 0 }
        space.copyMemory(from: UnsafeRawBufferPointer(rebasing: borrowed[..<count]))
        borrowed = UnsafeRawBufferPointer(rebasing: borrowed[count...])
        return count
    }

    /// A BIO that reads an input's bytes; empty means "wait for more", not end of stream.
    // nonisolated(unsafe): set once, then only read (OpenSSL does not change a method).
    package nonisolated(unsafe) static let method: OpaquePointer = {
        let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "portico input")!
        _ = BIO_meth_set_read(method) { bio, data, length in
            guard let bio, let data, length > 0, let state = BIO_get_data(bio) else { return 0 }
            CPorticoOpenSSL_clear_retry_flags(bio)
            let input = Unmanaged<CoreTLSInput>.fromOpaque(state).takeUnretainedValue()
            let count = input.read(into: UnsafeMutableRawBufferPointer(start: data, count: Int(length)))
            guard count > 0 else {
                CPorticoOpenSSL_set_retry_read(bio)
                return -1
            }
            return Int32(count)
        }
        _ = BIO_meth_set_ctrl(method) { bio, command, _, _ in
            switch command {
            case BIO_CTRL_PENDING:
                guard let bio, let state = BIO_get_data(bio) else { return 0 }
                return Unmanaged<CoreTLSInput>.fromOpaque(state).takeUnretainedValue().pending
            case BIO_CTRL_FLUSH: return 1
            default: return 0
            }
        }
        return method
    }()
}

/// One connection's TLS state: OpenSSL reading records from a ``CoreTLSInput`` (what the
/// connection read, lent for one call), and writing records into a ``CoreTLSOutput`` the
/// connection sends from.
package final class CoreTLSSession {
    package let ssl: OpaquePointer
    private let input = CoreTLSInput()
    private let output: CoreTLSOutput
    /// Keeps the context alive as long as the session.
    private let context: CoreTLSContext
    package private(set) var handshakeDone = false

    package enum Progress {
        /// More bytes from the peer are needed.
        case wantsMore
        /// The handshake completed.
        case established
        /// The handshake failed (bad certificate, wrong protocol, garbage).
        case failed
    }

    package init(context: CoreTLSContext, loop: CoreEventLoop) throws {
        guard let ssl = SSL_new(context.context) else { throw CoreTLSError("SSL_new failed") }
        guard let reader = BIO_new(CoreTLSInput.method), let writer = BIO_new(CoreTLSOutput.method) else {
            SSL_free(ssl)
            throw CoreTLSError("BIO_new failed")
        }
        output = CoreTLSOutput(loop: loop)
        // Unretained: the session holds the input and output for as long as OpenSSL holds
        // the BIOs.
        BIO_set_data(reader, Unmanaged.passUnretained(input).toOpaque())
        BIO_set_init(reader, 1)
        BIO_set_data(writer, Unmanaged.passUnretained(output).toOpaque())
        BIO_set_init(writer, 1)
        SSL_set_bio(ssl, reader, writer)
        SSL_set_accept_state(ssl)
        self.ssl = ssl
        self.context = context
    }

    deinit {
        // The output's memory is not given back here: the last reference may go on another
        // thread than the loop's.
        SSL_free(ssl)
    }

    /// Lends OpenSSL bytes read from the socket while `body` runs (the handshake and reads
    /// it does); what OpenSSL has not read by then is copied and kept for the next call.
    package func reading<T>(_ bytes: UnsafeRawBufferPointer, _ body: () -> T) -> T {
        input.lend(bytes)
        defer { input.keepUnread() }
        return body()
    }

    /// Moves the handshake on with what was fed.
    package func handshake() -> Progress {
        let result = SSL_do_handshake(ssl)
        if result == 1 {
            handshakeDone = true
            return .established
        }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .wantsMore
        default:
            ERR_clear_error()
            return .failed
        }
    }

    package enum ReadResult {
        case bytes(Int)
        case wantsMore
        /// The peer sent close_notify.
        case closed
        case failed
    }

    /// Decrypts what was fed into `space`.
    package func read(into space: UnsafeMutableRawBufferPointer) -> ReadResult {
        let result = SSL_read(ssl, space.baseAddress, Int32(space.count))
        if result > 0 { return .bytes(Int(result)) }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .wantsMore
        case SSL_ERROR_ZERO_RETURN: return .closed
        default:
            ERR_clear_error()
            return .failed
        }
    }

    /// Encrypts `bytes` as records (one per 16 KiB) into the output.
    package func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let result = SSL_write(ssl, bytes.baseAddress! + offset, Int32(min(bytes.count - offset, Int(Int32.max))))
            guard result > 0 else {
                ERR_clear_error()
                return false
            }
            offset += Int(result)
        }
        return true
    }

    /// Queues close_notify.
    package func shutdown() {
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    /// Record bytes waiting to be sent.
    package var pendingOutput: Int { output.bytes.readableBytes }

    /// Calls `body` with the record bytes waiting to be sent.
    package func withOutput<T>(_ body: (UnsafeRawBufferPointer) -> T) -> T {
        output.bytes.withUnsafeReadableBytes(body)
    }

    /// The bytes after the first `sent`, to keep for later; the output is emptied (the next
    /// write takes new memory from the loop).
    package func takeOutput(after sent: Int) -> ByteBuffer {
        var rest = output.bytes
        rest.moveReaderIndex(forwardBy: sent)
        output.bytes = ByteBuffer()
        return rest
    }

    /// Empties the output, giving its memory back to the loop.
    package func discardOutput() {
        output.release()
    }

    /// Whether the handshake resumed a session.
    package var resumed: Bool { SSL_session_reused(ssl) == 1 }

    /// Whether ALPN chose h2.
    package var negotiatedHTTP2: Bool {
        var data: UnsafePointer<UInt8>? = nil
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard length == 2, let data else { return false }
        return data[0] == UInt8(ascii: "h") && data[1] == UInt8(ascii: "2")
    }

    /// The client's certificate, if it sent one (verified against the trust when asked for).
    package func peerCertificate() -> NIOSSLCertificate? {
        guard let x509 = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(x509) }
        var der: UnsafeMutablePointer<UInt8>? = nil
        let length = i2d_X509(x509, &der)
        guard length > 0, let der else { return nil }
        defer { CPorticoOpenSSL_free(der) }
        return try? NIOSSLCertificate(bytes: Array(UnsafeBufferPointer(start: der, count: Int(length))), format: .der)
    }
}
