import NIOSSL

/// Builds the server TLS context of one listener.
///
/// The context carries the listener's policy (versions, ALPN, client certificates, trust);
/// the certificate itself comes from the ``ReloadableIdentity`` at every ClientHello, so a
/// rotated pair reaches new connections without a new context.
enum TLSContextFactory {
    static func makeServerContext(listener: ListenerConfiguration, identity: ReloadableIdentity, trust: [NIOSSLCertificate]) throws -> NIOSSLContext {
        let current = identity.current
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: current.chain.map { .certificate($0) },
            privateKey: .privateKey(current.privateKey)
        )
        configuration.minimumTLSVersion = .tlsv12
        // How long a closing connection waits for the client's close_notify. NIOSSL keeps
        // the connection (buffers and all, ~20 KiB) until this timer fires even when the client
        // has already gone, so with its 5 s default, 3,000 short connections a second held
        // 300 MB; the response is flushed before close_notify, so little is lost by waiting less.
        configuration.shutdownTimeout = .milliseconds(500)
        configuration.applicationProtocols = listener.http2 ? ["h2", "http/1.1"] : ["http/1.1"]
        switch listener.clientAuth {
        case .none:
            configuration.certificateVerification = .none
        case .optional:
            configuration.certificateVerification = .optionalVerification
            configuration.trustRoots = .certificates(trust)
        case .require:
            configuration.certificateVerification = .noHostnameVerification
            configuration.trustRoots = .certificates(trust)
        }
        configuration.sslContextCallback = { _, promise in
            promise.succeed(identity.contextOverride)
        }
        return try NIOSSLContext(configuration: configuration)
    }
}
