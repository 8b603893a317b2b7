import NIOConcurrencyHelpers
import NIOSSL

/// A listener's TLS context for the current server identity.
///
/// When the ``ReloadableIdentity`` changes, the next connection gets a context built for the
/// new pair (once; connections already open keep theirs). Every context of the listener seals
/// session tickets with the same ``TicketKeys``, so clients resume across a reload.
package final class ListenerTLS: Sendable {
    private let listener: ListenerConfiguration
    private let identity: ReloadableIdentity
    private let trust: [NIOSSLCertificate]
    private let ticketKeys: TicketKeys
    private let built: NIOLockedValueBox<(generation: Int, context: CoreTLSContext)>

    package init(listener: ListenerConfiguration, identity: ReloadableIdentity, trust: [NIOSSLCertificate], ticketKeys: TicketKeys) throws {
        self.listener = listener
        self.identity = identity
        self.trust = trust
        self.ticketKeys = ticketKeys
        let (current, generation) = identity.currentAndGeneration
        self.built = NIOLockedValueBox((generation, try CoreTLSContext(listener: listener, identity: current, trust: trust, ticketKeys: ticketKeys)))
    }

    /// The context for a new connection.
    package func context() -> CoreTLSContext {
        let (builtGeneration, context) = built.withLockedValue { $0 }
        if builtGeneration == identity.generation { return context }
        let (current, generation) = identity.currentAndGeneration
        // The pair was loaded and checked by the reload; should a context still not build,
        // the previous one stays in service.
        guard let fresh = try? CoreTLSContext(listener: listener, identity: current, trust: trust, ticketKeys: ticketKeys) else { return context }
        built.withLockedValue { if $0.generation < generation { $0 = (generation, fresh) } }
        return fresh
    }
}
