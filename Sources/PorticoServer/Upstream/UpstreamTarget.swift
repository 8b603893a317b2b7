import Atomics
import NIOConcurrencyHelpers
import NIOCore

/// One backend of an upstream pool and what is known of its health.
package final class UpstreamTarget: Sendable {
    /// `scheme://host:port` with any base path, no trailing slash.
    package let base: String
    package let displayName: String
    /// Host, port and base path of a plain-HTTP target, which the gateway's own client serves;
    /// nil for HTTPS targets.
    package let plain: PlainEndpoint?

    package struct PlainEndpoint: Sendable {
        package let host: String
        package let port: Int
        package let basePath: String
        /// The `Host` sent when the client sent none: the host (an IPv6 literal in brackets),
        /// and the port unless it is 80.
        package let hostHeader: String

        package init(host: String, port: Int, basePath: String) {
            self.host = host
            self.port = port
            self.basePath = basePath
            let name = host.contains(":") ? "[\(host)]" : host
            self.hostHeader = port == 80 ? name : "\(name):\(port)"
        }

        private init(host: String, port: Int, basePath: String, hostHeader: String) {
            self.host = host
            self.port = port
            self.basePath = basePath
            self.hostHeader = hostHeader
        }

        /// The same with strings in storage of their own (for one event loop).
        package func localCopy() -> PlainEndpoint {
            func copy(_ string: String) -> String { String(decoding: Array(string.utf8), as: UTF8.self) }
            return PlainEndpoint(host: copy(host), port: port, basePath: copy(basePath), hostHeader: copy(hostHeader))
        }
    }

    private struct Health {
        /// Set by active checks; a target starts healthy so that traffic flows before the first probe.
        var activelyHealthy = true
        var checkSuccesses = 0
        var checkFailures = 0
        /// Consecutive request failures (passive).
        var consecutiveFailures = 0
        var ejectedUntil: NIODeadline?
        /// When the probe whose result was counted last started.
        var lastCheckStarted: NIODeadline = .uptimeNanoseconds(0)
    }
    private let health = NIOLockedValueBox(Health())
    /// Set while the target is healthy with no failure counted and no ejection: then a
    /// request reads this alone. (Taking the lock on every pick and answer put one lock,
    /// shared by every event loop, on each proxied request.)
    private let clear = ManagedAtomic(true)

    package init?(url: String) {
        guard url.hasPrefix("http://") || url.hasPrefix("https://") else { return nil }
        let afterScheme = url.split(separator: "/", maxSplits: 3, omittingEmptySubsequences: false)
        guard afterScheme.count >= 3, !afterScheme[2].isEmpty else { return nil }
        var trimmed = url
        while trimmed.hasSuffix("/") { trimmed.removeLast() }
        self.base = trimmed
        self.displayName = url
        self.plain = Self.plainEndpoint(trimmed)
    }

    private static func plainEndpoint(_ base: String) -> PlainEndpoint? {
        guard base.hasPrefix("http://") else { return nil }
        let rest = base.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let basePath = String(rest[slash...])
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            let host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.isEmpty { return PlainEndpoint(host: host, port: 80, basePath: basePath) }
            guard after.hasPrefix(":"), let port = Int(after.dropFirst()) else { return nil }
            return PlainEndpoint(host: host, port: port, basePath: basePath)
        }
        if let colon = authority.lastIndex(of: ":") {
            guard let port = Int(authority[authority.index(after: colon)...]) else { return nil }
            return PlainEndpoint(host: String(authority[..<colon]), port: port, basePath: basePath)
        }
        return PlainEndpoint(host: String(authority), port: 80, basePath: basePath)
    }

    /// Whether requests may go to this target now.
    package func isAvailable() -> Bool {
        if clear.load(ordering: .relaxed) { return true }
        return health.withLockedValue { health in
            guard health.activelyHealthy else { return false }
            if let until = health.ejectedUntil {
                if NIODeadline.now() < until { return false }
                health.ejectedUntil = nil
                health.consecutiveFailures = 0
            }
            update(health)
            return true
        }
    }

    package func recordSuccess() {
        if clear.load(ordering: .relaxed) { return }
        health.withLockedValue { health in
            health.consecutiveFailures = 0
            update(health)
        }
    }

    /// Counts a failed request; the target is ejected after `maxFailures` in a row.
    package func recordFailure(maxFailures: Int, ejectFor: TimeAmount) {
        health.withLockedValue { health in
            health.consecutiveFailures += 1
            if health.consecutiveFailures >= maxFailures {
                health.ejectedUntil = .now() + ejectFor
            }
            update(health)
        }
    }

    /// Sets ``clear`` from the state (called holding the lock).
    private func update(_ health: Health) {
        clear.store(health.activelyHealthy && health.ejectedUntil == nil && health.consecutiveFailures == 0, ordering: .relaxed)
    }

    /// Counts an active probe that started at `started`; returns whether the target's health
    /// changed. A probe that started before the last one counted is stale (a slow answer from
    /// before a newer probe's) and is not counted.
    @discardableResult
    package func recordCheck(healthy: Bool, started: NIODeadline, configuration: HealthCheckConfiguration) -> Bool {
        health.withLockedValue { health in
            guard started >= health.lastCheckStarted else { return false }
            health.lastCheckStarted = started
            if healthy {
                health.checkFailures = 0
                health.checkSuccesses += 1
                if !health.activelyHealthy && health.checkSuccesses >= configuration.healthyThreshold {
                    health.activelyHealthy = true
                    health.ejectedUntil = nil
                    health.consecutiveFailures = 0
                    update(health)
                    return true
                }
            } else {
                health.checkSuccesses = 0
                health.checkFailures += 1
                if health.activelyHealthy && health.checkFailures >= configuration.unhealthyThreshold {
                    health.activelyHealthy = false
                    update(health)
                    return true
                }
            }
            return false
        }
    }
}
