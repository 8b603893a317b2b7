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
