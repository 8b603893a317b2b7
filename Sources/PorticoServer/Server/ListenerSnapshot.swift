import Atomics
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL

/// Everything a connection of one listener reads while serving: routes, limits, TLS policy.
///
/// Built whole and checked by the control plane, then published through a ``SnapshotBox``;
/// a request reads it without awaiting anything.
package final class ListenerSnapshot: Sendable {
    package let configuration: ListenerConfiguration
    package let router: Router<Endpoint>
    package let tls: ListenerTLS?
    package let metrics: ListenerMetrics
    /// Where the listener logs its requests; nil with `access_log: false`.
    package let accessLog: AccessLog?
    /// The gateway's log, for services that fail.
    package let logger: Logger
    package let notFound: FixedResponse
    package let readiness: ReadinessFlag

    package init(configuration: ListenerConfiguration, router: Router<Endpoint>, tls: ListenerTLS?, metrics: ListenerMetrics, accessLog: AccessLog?, logger: Logger, readiness: ReadinessFlag) {
        self.configuration = configuration
        self.router = router
        self.tls = tls
        self.metrics = metrics
        self.accessLog = accessLog
        self.logger = logger
        self.readiness = readiness
        self.notFound = FixedResponse(.plain(.notFound, "no route for this path"))
    }

    package var limits: ListenerLimits { configuration.limits }

    /// A copy for one event loop: its own router, routes and fixed responses (the objects a
    /// request retains), sharing the rest. See ``SnapshotBox``.
    package func localCopy() -> ListenerSnapshot {
        ListenerSnapshot(
            configuration: configuration, router: router.localCopy { $0.localCopy() }, tls: tls, metrics: metrics,
            accessLog: accessLog, logger: logger, readiness: readiness)
    }
}

/// What one connection knows of itself; owned by its event loop.
package final class ConnectionInfo {
    package let listener: ListenerName
    package let isTLS: Bool
    /// The TCP peer, replaced by the source in a trusted PROXY header.
    package var peerAddress: SocketAddress? {
        didSet {
            formattedPeer = nil
            trustedPeer = nil
        }
    }
    /// `peerAddress` as text, formatted once per connection rather than per request (for
    /// `X-Forwarded-For` and the access log).
    package var peerAddressText: String? {
        if let formattedPeer { return formattedPeer }
        let text = peerAddress?.ipAddress
        formattedPeer = .some(text)
        return text
    }
    private var formattedPeer: String??
    package var clientCertificate: NIOSSLCertificate?
    /// Only ever read or assigned whole, never changed in place across a call (see
    /// ``currentSnapshot()``): then the compiler checks none of its accesses at run time, and
    /// the hot path reads it several times per request.
    package var snapshot: SnapshotReader<ListenerSnapshot>

    /// The listener's latest snapshot (refreshed when a reload published a new one).
    package func currentSnapshot() -> ListenerSnapshot {
        if !snapshot.isCurrent {
            var reader = snapshot
            _ = reader.current()
            snapshot = reader
        }
        return snapshot.value
    }
    package let eventLoop: any EventLoop
    /// Where this connection's loop counts requests; found at the first one.
    private var requestStats: RequestStats.Shard?
    /// Where this connection's loop buffers access-log lines, and the log it is of.
    private var accessBuffer: (log: ObjectIdentifier, buffer: AccessLogBuffer)?

    package init(listener: ListenerName, isTLS: Bool, peerAddress: SocketAddress?, snapshot: SnapshotReader<ListenerSnapshot>, eventLoop: any EventLoop) {
        self.listener = listener
        self.isTLS = isTLS
        self.peerAddress = peerAddress
        self.snapshot = snapshot
        self.eventLoop = eventLoop
    }

    /// Counts an answered request in the listener's metrics and writes its access-log line.
    /// `now` is when its answer was written.
    package func record(status: Int, bytes: Int, method: String, uri: String, http: String, started: NIODeadline, now: NIODeadline = .now()) {
        let snapshot = self.snapshot.value
        let elapsed = now - started
        if requestStats == nil { requestStats = snapshot.metrics.requests.shard(on: eventLoop) }
        requestStats!.record(status: status, nanoseconds: elapsed.nanoseconds)
        guard let log = snapshot.accessLog else { return }
        let buffer: AccessLogBuffer
        if let cached = accessBuffer, cached.log == ObjectIdentifier(log) {
            buffer = cached.buffer
        } else {
            buffer = log.buffer(on: eventLoop)
            accessBuffer = (ObjectIdentifier(log), buffer)
        }
        buffer.record(listener: listener.rawValue, client: peerAddressText, method: method, uri: uri, http: http,
                      status: status, bytes: bytes, microseconds: elapsed.nanoseconds / 1000)
    }

    /// Whether the peer may speak for the client (`X-Forwarded-For`, PROXY headers): looked
    /// up once per connection and snapshot (it was a search of the list per proxied request).
    package var peerIsTrustedProxy: Bool {
        if let trusted = trustedPeer, trusted.generation == snapshot.generation { return trusted.value }
        let current = snapshot.value
        let value = current.configuration.trustedProxies.containsAddress(peerAddress)
        trustedPeer = (snapshot.generation, value)
        return value
    }
    /// ``peerIsTrustedProxy`` for the snapshot generation it was found with.
    private var trustedPeer: (generation: Int, value: Bool)?

    /// The client as far as it can be believed: when the peer is a trusted proxy, the
    /// right-most address in `X-Forwarded-For` that is not itself a trusted proxy.
    package func clientAddress(headers: HTTPHeaders, trusted: [CIDR]) -> SocketAddress? {
        guard !trusted.isEmpty, trusted.containsAddress(peerAddress) else { return peerAddress }
        let hops = headers[canonicalForm: "x-forwarded-for"]
        var best = peerAddress
        for hop in hops.reversed() {
            guard let address = try? SocketAddress(ipAddress: String(hop).trimmingSpaces(), port: 0) else { break }
            best = address
            if !trusted.containsAddress(address) { break }
        }
        return best
    }
}

/// Whether the gateway is ready for traffic (all listeners bound, not draining).
package final class ReadinessFlag: Sendable {
    private let value = ManagedAtomic<Bool>(false)
    package init() {}
    package var isReady: Bool { value.load(ordering: .acquiring) }
    package func set(_ ready: Bool) { value.store(ready, ordering: .releasing) }
}
