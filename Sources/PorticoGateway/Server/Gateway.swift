import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PorticoServer
import ServiceLifecycle
import UnixSignals

/// The multi-listener gateway: one ``Listener`` per enabled role, a shared server identity,
/// config-driven routes to services and upstreams, reload by diff, and drain on shutdown.
///
/// Run it in a `ServiceGroup`; graceful shutdown (SIGTERM/SIGINT) drains every listener.
public actor Gateway: Service {
    /// Where a reload reads the configuration from; `nil` disables reloading.
    public typealias ConfigurationSource = @Sendable () throws(ConfigurationError) -> GatewayConfiguration

    private var prepared: PreparedConfiguration
    private let services: ServiceRegistry
    private let group: any EventLoopGroup
    /// The server engine's loops, on which every listener accepts and serves.
    private let serverLoops: CoreEventLoopGroup
    private let logger: Logger
    public nonisolated let metrics: GatewayMetrics
    private let identityCache: IdentityCache
    private let source: ConfigurationSource?
    private let handleSIGHUP: Bool
    private let readiness = ReadinessFlag()
    private var listeners: [ListenerName: Listener] = [:]
    private var pools: [String: UpstreamPool] = [:]
    private var healthChecks: [String: Task<Void, Never>] = [:]
    /// Drains of listeners replaced by a reload.
    private var background: [Task<Void, Never>] = []
    /// Pools replaced by a reload, closing once their requests in flight are done.
    private var retiringPools: [Task<Void, Never>] = []
    private var started = false
    /// The access log of every listener that logs; opened at start.
    private var accessLog: AccessLog?
    /// When each certificate's expiry was last warned about (at most once a day each).
    private var expiryWarned: [String: ContinuousClock.Instant] = [:]

    /// - Parameters:
    ///   - configuration: a configuration already prepared by ``ConfigurationCheck``.
    ///   - identityCache: the cache it was prepared with, so reloads keep the pairs in service.
    ///   - serverLoops: the loops the listeners run on (``CoreEventLoopGroup/perCore()``); the
    ///     caller shuts them down once the gateway has stopped.
    ///   - eventLoopGroup: SwiftNIO's loops, for the clients that are not listeners (HTTPS
    ///     upstreams, health checks).
    ///   - source: re-reads the configuration on ``reload()`` and SIGHUP.
    ///   - handleSIGHUP: reload on SIGHUP while running.
    public init(
        configuration: PreparedConfiguration,
        identityCache: IdentityCache,
        serverLoops: CoreEventLoopGroup,
        services: ServiceRegistry = ServiceRegistry(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "portico"),
        metrics: GatewayMetrics = GatewayMetrics(),
        source: ConfigurationSource? = nil,
        handleSIGHUP: Bool = false
    ) {
        self.prepared = configuration
        self.identityCache = identityCache
        self.serverLoops = serverLoops
        self.services = services
        self.group = eventLoopGroup
        self.logger = logger
        self.metrics = metrics
        self.source = source
        self.handleSIGHUP = handleSIGHUP
    }

    /// The configuration in service.
    public var configuration: GatewayConfiguration { prepared.configuration }

    /// Where a role's listener is bound, while it runs.
    public func boundAddress(of role: ListenerName) async -> SocketAddress? {
        await listeners[role]?.localAddress
    }

    /// Open connections on a role's listener.
    public func connectionCount(of role: ListenerName) -> Int {
        listeners[role]?.connectionCount ?? 0
    }

    /// A role's listener, while it runs.
    func listener(of role: ListenerName) -> Listener? { listeners[role] }

    /// The pool serving an upstream name.
    func upstreamPool(named name: String) -> UpstreamPool? { pools[name] }

    public func run() async throws {
        try await start()
        await withDiscardingTaskGroup { group in
            group.addTask { await self.pollIdentities() }
            group.addTask { [logger] in await MemoryTrim.run(every: .seconds(30), logger: logger) }
            if handleSIGHUP {
                group.addTask {
                    for await _ in await UnixSignalsSequence(trapping: .sighup) {
                        await self.reload()
                    }
                }
                // After a log rotation moved the access log away, as nginx takes USR1.
                group.addTask {
                    for await _ in await UnixSignalsSequence(trapping: .sigusr1) {
                        await self.reopenAccessLog()
                    }
                }
            }
            try? await gracefulShutdown()
            group.cancelAll()
        }
        await stop()
    }

    /// Binds every enabled listener. A listener that cannot bind stops the rest and throws.
    public func start() async throws {
        guard !started else { return }
        started = true
        for note in prepared.notes { logger.notice("\(note)") }
        for identity in prepared.distinctIdentities {
            metrics.recordIdentity(identity, outcome: nil)
            warnIfExpiring(identity)
        }
        applyPools(prepared.configuration)
        do {
            accessLog = try AccessLog(prepared.configuration.accessLog)
            for listenerConfiguration in prepared.configuration.enabledListeners {
                let listener = Listener(snapshot: try makeSnapshot(listenerConfiguration), group: serverLoops, logger: logger)
                try await listener.start()
                listeners[listenerConfiguration.name] = listener
            }
        } catch {
            await stop()
            throw error
        }
        readiness.set(true)
    }

    /// Stops accepting on every listener and asks open connections to finish; ``stop()``
    /// then waits for them.
    public func beginDrain() async {
        readiness.set(false)
        await withDiscardingTaskGroup { group in
            for listener in listeners.values {
                group.addTask { await listener.beginDrain() }
            }
        }
    }

    /// Stops accepting on every listener and drains them together.
    public func stop() async {
        await beginDrain()
        let grace = prepared.configuration.shutdownGracePeriod
        let current = listeners
        listeners = [:]
        await withDiscardingTaskGroup { group in
            for listener in current.values {
                group.addTask { await listener.drain(gracePeriod: grace) }
            }
        }
        for task in healthChecks.values { task.cancel() }
        healthChecks = [:]
        for task in background { await task.value }
        background = []
        // Listeners are drained, so no request still uses a retired pool: close them now.
        for task in retiringPools { task.cancel() }
        for task in retiringPools { await task.value }
        retiringPools = []
        for pool in pools.values { await pool.shutdown() }
        pools = [:]
        // Every request is answered: its line is written before stop returns, unless the
        // destination takes nothing (a stalled pipe) for 5 s, which must not hold the exit.
        if let accessLog {
            // Not a task group: it would wait for a flush that never ends.
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let waiting = NIOLockedValueBox<CheckedContinuation<Void, Never>?>(continuation)
                let resume: @Sendable () -> Void = { waiting.withLockedValue { $0.take() }?.resume() }
                Task {
                    await accessLog.flush()
                    resume()
                }
                Task {
                    try? await Task.sleep(for: .seconds(5))
                    resume()
                }
            }
        }
    }

    /// Opens the access log's file again at its path (SIGUSR1, after a rotation moved it).
    public func reopenAccessLog() {
        accessLog?.reopen()
        logger.notice("access log reopened", metadata: ["file": "\(prepared.configuration.accessLog.file)"])
    }

    /// Writes out every access-log line buffered so far.
    public func flushAccessLog() async {
        await accessLog?.flush()
    }

    /// Reads the configuration again and applies what changed. A configuration that does not
    /// validate is rejected whole and the running one stays.
    /// - Returns: the problems when the new configuration was rejected.
    @discardableResult
    public func reload() async -> ConfigurationError? {
        reloadIdentities()
        guard let source else { return nil }
        let next: PreparedConfiguration
        do {
            next = try ConfigurationCheck.prepare(try source(), generateMissing: true, cache: identityCache)
        } catch {
            metrics.configReloadsFailed.increment()
            logger.error("configuration rejected; the running configuration stays", metadata: ["problems": "\(error.diagnostics.count)"])
            for diagnostic in error.diagnostics { logger.error("\(diagnostic)") }
            return error
        }
        await apply(next)
        metrics.configReloadsOK.increment()
        logger.notice("configuration reloaded")
        return nil
    }

    /// Applies a prepared configuration: routes and upstreams swap at once; listeners whose
    /// socket settings are unchanged keep their connections; changed ones are bound anew and
    /// the old ones drained.
    public func apply(_ next: PreparedConfiguration) async {
        let previous = prepared
        prepared = next
        applyPools(next.configuration)
        if next.configuration.accessLog != previous.configuration.accessLog, let accessLog {
            do {
                try await accessLog.configure(next.configuration.accessLog)
            } catch {
                logger.error("the access log keeps its destination", metadata: ["error": "\(error)"])
            }
        }
        let grace = next.configuration.shutdownGracePeriod
        // Names in either configuration: a listener the new one lacks is drained.
        var names = next.configuration.names
        for name in previous.configuration.names where !names.contains(name) { names.append(name) }
        for role in names {
            let old = listeners[role]
            guard let wanted = next.configuration.listeners[role], wanted.enabled else {
                if let old {
                    listeners[role] = nil
                    background.append(Task { await old.drain(gracePeriod: grace) })
                }
                continue
            }
            do {
                let snapshot = try makeSnapshot(wanted)
                if let old, let before = previous.configuration.listeners[role], !wanted.needsRebind(comparedTo: before) {
                    await old.update(snapshot)
                    continue
                }
                let replacement = Listener(snapshot: snapshot, group: serverLoops, logger: logger)
                if let old {
                    // The new socket may need the old port: stop accepting on the old one first.
                    await old.stopAccepting()
                    background.append(Task { await old.drain(gracePeriod: grace) })
                }
                try await replacement.start()
                listeners[role] = replacement
            } catch {
                logger.error("listener could not be reconfigured", metadata: ["listener": "\(role)", "error": "\(error)"])
                if old != nil { listeners[role] = nil }
            }
        }
    }

    /// Checks every identity's files and picks up changed ones.
    public func reloadIdentities() {
        for identity in identityCache.all {
            let outcome = identity.reload()
            metrics.recordIdentity(identity, outcome: outcome)
            switch outcome {
            case .reloaded:
                logger.notice("server certificate reloaded", metadata: ["certificate": "\(identity.certificatePath)", "serial": "\(identity.current.serialHex)"])
            case .failed(let reason):
                logger.error("server certificate not reloaded; serving the last good one", metadata: ["certificate": "\(identity.certificatePath)", "reason": "\(reason)"])
            case .unchanged:
                break
            }
            warnIfExpiring(identity)
        }
    }

    /// Warns in the log, once a day, from 30 days before a served certificate expires.
    private func warnIfExpiring(_ identity: ReloadableIdentity) {
        let daysLeft = identity.current.notValidAfter.timeIntervalSinceNow / 86_400
        guard daysLeft < 30 else { return }
        let now = ContinuousClock.now
        if let last = expiryWarned[identity.certificatePath], now - last < .seconds(86_400) { return }
        expiryWarned[identity.certificatePath] = now
        logger.warning("the server certificate expires soon; install a new one (portico cert generate or cert import)", metadata: [
            "certificate": "\(identity.certificatePath)", "days_left": "\(Int(daysLeft))", "expires": "\(identity.current.notValidAfter)",
        ])
    }

    private func pollIdentities() async {
        var dropped = 0
        while !Task.isCancelled {
            let interval = prepared.configuration.identity.reloadInterval
            do { try await Task.sleep(for: .nanoseconds(interval.nanoseconds)) } catch { return }
            reloadIdentities()
            if let now = accessLog?.droppedLines, now > dropped {
                logger.warning("access log lines dropped: the destination does not take them", metadata: [
                    "file": "\(prepared.configuration.accessLog.file)", "dropped": "\(now - dropped)",
                ])
                dropped = now
            }
        }
    }

    private func applyPools(_ configuration: GatewayConfiguration) {
        var kept: [String: UpstreamPool] = [:]
        for (name, upstream) in configuration.upstreams {
            if let existing = pools[name], existing.configuration == upstream {
                kept[name] = existing
                continue
            }
            let pool = UpstreamPool(configuration: upstream, eventLoopGroup: group, logger: logger)
            kept[name] = pool
            healthChecks[name]?.cancel()
            healthChecks[name] = Task { await pool.runHealthChecks() }
        }
        let grace = configuration.shutdownGracePeriod
        for (name, old) in pools where kept[name] !== old {
            if kept[name] == nil {
                healthChecks[name]?.cancel()
                healthChecks[name] = nil
            }
            // Requests in flight on the old pool finish before it closes.
            retiringPools.append(Task {
                try? await Task.sleep(for: .nanoseconds(grace.nanoseconds))
                await old.shutdown()
            })
        }
        pools = kept
    }

    private func makeSnapshot(_ listener: ListenerConfiguration) throws -> ListenerSnapshot {
        let configuration = prepared.configuration
        var definitions: [Router<Endpoint>.Definition] = []
        let routes = configuration.routes.filter { $0.listeners.contains(listener.name) }
        // Which config route each path reaches, so that a service's routes are compiled only
        // under the config route that would have taken them.
        let reach = try Router(routes.enumerated().map { index, route in
            Router<Int>.Definition(methods: route.methods, host: route.host, path: route.path, target: index, maxBodyBytes: nil)
        })
        for (index, route) in routes.enumerated() {
            if case .service(let name) = route.target, let registered = services.services[name] {
                definitions += Self.serviceDefinitions(registered, under: route, index: index, reach: reach)
                continue
            }
            guard let endpoint = endpoint(for: route.target) else { continue }
            definitions.append(.init(methods: route.methods, host: route.host, path: route.path, target: endpoint, maxBodyBytes: route.maxBodyBytes))
        }
        for implicit in BuiltinServices.implicitRoutes(servingMetrics: prepared.configuration.kinds.first { $0.name == listener.name }?.servesMetrics ?? false) where !routes.contains(where: { $0.path == implicit.path && $0.host == nil }) {
            if let endpoint = endpoint(for: .service(implicit.service)) {
                definitions.append(.init(methods: ["GET"], host: nil, path: implicit.path, target: endpoint, maxBodyBytes: 0))
            }
        }
        let router = try Router(definitions)
        return ListenerSnapshot(
            configuration: listener,
            router: router,
            tls: prepared.tlsContexts[listener.name],
            metrics: metrics.listener(listener.name),
            accessLog: listener.accessLog ? accessLog : nil,
            logger: logger,
            readiness: readiness
        )
    }

    /// A registered service's routes that a config route reaches (within its path, methods
    /// and host, and not taken by a more specific config route), then the config route
    /// itself as the fallback where the service refuses what none of them takes.
    static func serviceDefinitions(_ registered: ServiceRegistry.Registered, under route: RouteConfiguration, index: Int,
                                   reach: Router<Int>) -> [Router<Endpoint>.Definition] {
        var definitions: [Router<Endpoint>.Definition] = []
        let service = registered.service
        for serviceRoute in registered.routes {
            var methods = serviceRoute.methods.map(\.rawValue)
            if !route.methods.isEmpty { methods = methods.isEmpty ? route.methods : methods.filter(route.methods.contains) }
            if !serviceRoute.methods.isEmpty && methods.isEmpty { continue }
            // A path the pattern stands for: each parameter and the wildcard as a segment no
            // literal can equal.
            let sample = RoutePattern.segments(of: serviceRoute.pattern).map { segment -> String in
                switch segment {
                case .literal(let text): text
                case .parameter, .wildcard: "\u{1}"
                }
            }
            let path = "/" + sample.joined(separator: "/")
            var pattern = serviceRoute.pattern
            if case .found(let reached, _) = reach.match(method: methods.first ?? "GET", host: route.host.map { $0[...] }, path: path[...]), reached.target == index {
                // The service's route lies inside the config route.
            } else if RoutePattern.prefix(serviceRoute.pattern, covers: route.path) {
                // The config route lies inside the service's prefix route: it takes the config
                // route's whole space.
                pattern = route.path
            } else {
                continue
            }
            definitions.append(.init(methods: methods, host: route.host, path: pattern,
                                     target: .route(ServiceEndpoint(handler: serviceRoute.handler, service: service)), maxBodyBytes: route.maxBodyBytes))
        }
        definitions.append(.init(methods: route.methods, host: route.host, path: route.path, target: .refusal(service, .notFound),
                                 maxBodyBytes: route.maxBodyBytes, isFallback: true))
        return definitions
    }

    private func endpoint(for target: RouteTarget) -> Endpoint? {
        switch target {
        case .service(let name):
            return BuiltinServices.endpoint(named: name, metrics: metrics, readiness: readiness, metricsTokenHash: prepared.configuration.metricsTokenHash)
        case .upstream(let name):
            return pools[name].map { .upstream($0) }
        }
    }
}
