import NIOConcurrencyHelpers
import NIOSSL

/// A listener's TLS context for the current server identity.
///
/// When the ``ReloadableIdentity`` changes, the next connection gets a context built for the
/// new pair (once; connections already open keep theirs). The pair used to be set on every
/// connection from NIOSSL's ClientHello callback, a cost on every handshake: setting a chain
/// and key on a connection copies and checks them.
final class ListenerTLS: Sendable {
    /// A context for the listener's engine: NIOSSL's, or the core's own BoringSSL one.
    enum Context: Sendable {
        case nio(NIOSSLContext)
        case core(CoreTLSContext)
    }

    private let listener: ListenerConfiguration
    private let identity: ReloadableIdentity
    private let trust: [NIOSSLCertificate]
    private let built: NIOLockedValueBox<(generation: Int, context: Context)>

    init(listener: ListenerConfiguration, identity: ReloadableIdentity, trust: [NIOSSLCertificate]) throws {
        self.listener = listener
        self.identity = identity
        self.trust = trust
        let (current, generation) = identity.currentAndGeneration
        self.built = NIOLockedValueBox((generation, try Self.make(listener: listener, identity: current, trust: trust)))
    }

    private static func make(listener: ListenerConfiguration, identity: ServerIdentity, trust: [NIOSSLCertificate]) throws -> Context {
        switch listener.engine {
        case .nio: .nio(try TLSContextFactory.makeServerContext(listener: listener, identity: identity, trust: trust))
        case .core: .core(try CoreTLSContext(listener: listener, identity: identity, trust: trust))
        }
    }

    /// The context for a new connection.
    private func current() -> Context {
        let (builtGeneration, context) = built.withLockedValue { $0 }
        if builtGeneration == identity.generation { return context }
        let (current, generation) = identity.currentAndGeneration
        // The pair was loaded and checked by the reload; should a context still not build,
        // the previous one stays in service.
        guard let fresh = try? Self.make(listener: listener, identity: current, trust: trust) else { return context }
        built.withLockedValue { if $0.generation < generation { $0 = (generation, fresh) } }
        return fresh
    }

    /// NIOSSL's context for a new connection (a listener on the NIO engine).
    func context() -> NIOSSLContext {
        guard case .nio(let context) = current() else { preconditionFailure("a listener on the core asked for a NIOSSL context") }
        return context
    }

    /// The core's context for a new connection (a listener on the core).
    func coreContext() -> CoreTLSContext {
        guard case .core(let context) = current() else { preconditionFailure("a listener on NIO asked for a core TLS context") }
        return context
    }
}

/// Builds the server TLS context of one listener for one identity: the listener's policy
/// (versions, ALPN, client certificates, trust) and the pair.
enum TLSContextFactory {
    static func makeServerContext(listener: ListenerConfiguration, identity current: ServerIdentity, trust: [NIOSSLCertificate]) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: current.chain.map { .certificate($0) },
            privateKey: .privateKey(current.privateKey)
        )
        configuration.minimumTLSVersion = .tlsv12
        configuration.cipherSuites = TLSCipherPolicy.cipherString(listener.tls12Ciphers)
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
        return try NIOSSLContext(configuration: configuration)
    }
}
