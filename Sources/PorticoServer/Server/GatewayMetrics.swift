import Foundation
import NIOConcurrencyHelpers
import Prometheus

/// The gateway's Prometheus registry and the series it keeps, created once per listener so
/// that the request path only increments.
public final class GatewayMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    /// Made when a listener first asks, in that order (the names are the program's).
    private let perListener = NIOLockedValueBox<[(name: ListenerName, metrics: ListenerMetrics)]>([])
    package let configReloadsOK: Counter
    package let configReloadsFailed: Counter
    private let identityGauges: NIOLockedValueBox<[String: (expiry: Gauge, ok: Counter, failed: Counter, lastFailed: Gauge)]>
    /// Run before each scrape, to bring series that are read rather than counted up to date.
    private let scrapeHooks = NIOLockedValueBox<[@Sendable () -> Void]>([])

    /// Runs `hook` before each scrape of `/metrics` (it must not block).
    public func beforeScrape(_ hook: @escaping @Sendable () -> Void) {
        scrapeHooks.withLockedValue { $0.append(hook) }
    }

    /// - Parameter listeners: listeners whose series exist from the start, at zero (others
    ///   get theirs when they first listen).
    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), listeners: [ListenerName] = []) {
        self.registry = registry
        self.configReloadsOK = registry.makeCounter(descriptor: .portico("config_reloads", unit: "total", help: "Configuration reloads by result"), labels: [("result", "ok")])
        self.configReloadsFailed = registry.makeCounter(descriptor: .portico("config_reloads", unit: "total", help: "Configuration reloads by result"), labels: [("result", "failed")])
        self.identityGauges = NIOLockedValueBox([:])
        for name in listeners { _ = listener(name) }
    }

    package func listener(_ name: ListenerName) -> ListenerMetrics {
        perListener.withLockedValue { all in
            if let existing = all.first(where: { $0.name == name }) { return existing.metrics }
            let created = ListenerMetrics(role: name, registry: registry)
            all.append((name, created))
            return created
        }
    }

    /// Every series in the Prometheus text format: the registry's, then the request
    /// counts and durations, which are kept per event loop outside it (``RequestStats``).
    public func emit() -> [UInt8] {
        for hook in scrapeHooks.withLockedValue({ $0 }) { hook() }
        var bytes = registry.emitToBuffer()
        var text = ""
        RequestStats.emit(perListener.withLockedValue { $0.map(\.metrics.requests) }, into: &text)
        bytes.append(contentsOf: text.utf8)
        return bytes
    }

    /// Records the state of an identity: seconds until it expires and the result of a reload.
    package func recordIdentity(_ identity: ReloadableIdentity, outcome: ReloadableIdentity.ReloadOutcome?) {
        let series = identityGauges.withLockedValue { gauges in
            if let existing = gauges[identity.certificatePath] { return existing }
            let labels = [("certificate", identity.certificatePath)]
            let created = (
                expiry: registry.makeGauge(descriptor: .portico("certificate_expiry", unit: "seconds", help: "Seconds until the served certificate expires"), labels: labels),
                ok: registry.makeCounter(descriptor: .portico("certificate_reloads", unit: "total", help: "Certificate reloads by result"), labels: labels + [("result", "ok")]),
                failed: registry.makeCounter(descriptor: .portico("certificate_reloads", unit: "total", help: "Certificate reloads by result"), labels: labels + [("result", "failed")]),
                lastFailed: registry.makeGauge(descriptor: .portico("certificate_reload_failing", unit: "", help: "1 while the files on disk cannot be loaded and the last good pair is served"), labels: labels)
            )
            gauges[identity.certificatePath] = created
            return created
        }
        series.expiry.set(to: identity.current.notValidAfter.timeIntervalSinceNow)
        switch outcome {
        case .reloaded: series.ok.increment(); series.lastFailed.set(to: 0)
        case .failed: series.failed.increment(); series.lastFailed.set(to: 1)
        case .unchanged, nil: if identity.lastError == nil { series.lastFailed.set(to: 0) }
        }
    }
}

/// The series of one listener.
package final class ListenerMetrics: Sendable {
    package let openConnections: Gauge
    package let refusedConnections: Counter
    package let handshakeFailures: Counter
    /// Completed handshakes, full and resumed: what fresh connections cost depends on the share
    /// that resumes.
    package let fullHandshakes: Counter
    package let resumedHandshakes: Counter
    package let timeouts: Counter
    package let requests: RequestStats

    package init(role: ListenerName, registry: PrometheusCollectorRegistry) {
        let label = [("listener", role.rawValue)]
        openConnections = registry.makeGauge(descriptor: .portico("open_connections", unit: "", help: "Open connections per listener"), labels: label)
        refusedConnections = registry.makeCounter(descriptor: .portico("refused_connections", unit: "total", help: "Connections closed at accept because the listener was full or the source untrusted"), labels: label)
        handshakeFailures = registry.makeCounter(descriptor: .portico("tls_handshake_failures", unit: "total", help: "TLS handshakes that failed"), labels: label)
        let handshakes = MetricNameDescriptor.portico("tls_handshakes", unit: "total", help: "TLS handshakes completed, full or resumed")
        fullHandshakes = registry.makeCounter(descriptor: handshakes, labels: label + [("resumed", "false")])
        resumedHandshakes = registry.makeCounter(descriptor: handshakes, labels: label + [("resumed", "true")])
        timeouts = registry.makeCounter(descriptor: .portico("client_timeouts", unit: "total", help: "Connections closed because a client was too slow"), labels: label)
        requests = RequestStats(listener: role.rawValue)
    }
}

extension MetricNameDescriptor {
    /// A series named `portico_<name>_<unit>`.
    public static func portico(_ name: String, unit: String, help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "portico", metricName: name, unitName: unit, helpText: help)
    }
}
