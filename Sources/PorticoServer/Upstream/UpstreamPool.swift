import AsyncHTTPClient
import Atomics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL

/// A named set of backends that routes forward to: round robin over the available targets,
/// retries of idempotent requests on another target, passive ejection of failing targets
/// and, when configured, active health checks.
package final class UpstreamPool: Sendable {
    package let configuration: UpstreamConfiguration
    package let targets: [UpstreamTarget]
    /// `targets` without retaining: used per request as ``target(_:_:)``. The shared targets'
    /// reference counts would otherwise be written by both cores per request. Safe because
    /// `targets` holds them for as long as the pool lives, and whoever calls holds the pool.
    private let unretainedTargets: [Unmanaged<UpstreamTarget>]
    private let client: HTTPClient
    private let next: ManagedAtomic<Int>
    package let logger: Logger
    /// Kept-alive connections to plain-HTTP targets, per event loop of the gateway's group:
    /// found without a lock (a lock and a hashed lookup per request before).
    private let perLoop: [(loop: ObjectIdentifier, connections: NIOLoopBoundBox<UpstreamConnections?>)]
    /// The same for any other loop a caller runs on.
    private let otherLoops: NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<UpstreamConnections>]>

    package init(configuration: UpstreamConfiguration, eventLoopGroup: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.targets = configuration.targets.compactMap(UpstreamTarget.init(url:))
        self.unretainedTargets = targets.map { Unmanaged.passUnretained($0) }
        self.next = ManagedAtomic(0)
        self.otherLoops = NIOLockedValueBox([:])
        self.relaysHTTP1 = targets.allSatisfy { $0.plain != nil }
        self.perLoop = eventLoopGroup.makeIterator().map { loop in
            (ObjectIdentifier(loop), NIOLoopBoundBox.makeEmptyBox(valueType: UpstreamConnections.self, eventLoop: loop))
        }
        var clientConfiguration = HTTPClient.Configuration()
        clientConfiguration.timeout = .init(connect: configuration.connectTimeout, read: configuration.responseTimeout)
        clientConfiguration.redirectConfiguration = .disallow
        clientConfiguration.decompression = .disabled
        if let trustPath = configuration.trust {
            // Checked with the configuration; should the file have gone bad since, no HTTPS
            // target is trusted rather than every one the system trusts.
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.minimumTLSVersion = .tlsv12
            do {
                tls.trustRoots = .certificates(try TrustBundle.load(trustPath))
            } catch {
                logger.error("upstream trust not loaded; its HTTPS targets will be refused", metadata: ["upstream": "\(configuration.name)", "error": "\(error)"])
                tls.trustRoots = .certificates([])
            }
            clientConfiguration.tlsConfiguration = tls
        }
        self.client = HTTPClient(eventLoopGroupProvider: .shared(eventLoopGroup), configuration: clientConfiguration)
        self.logger = logger
    }

    private init(copying other: UpstreamPool) {
        self.configuration = other.configuration
        self.targets = other.targets
        self.unretainedTargets = other.unretainedTargets
        self.client = other.client
        self.next = other.next
        self.logger = other.logger
        self.perLoop = other.perLoop
        self.otherLoops = other.otherLoops
        self.relaysHTTP1 = other.relaysHTTP1
    }

    /// The same pool (its targets, health, connections, client and turn are shared) as an
    /// object of its own, for one event loop's routes: a request retains its route's pool, and
    /// an object both cores retain per request moves its cache line between them every time.
    /// Only the original is shut down and health-checked.
    package func localCopy() -> UpstreamPool {
        UpstreamPool(copying: self)
    }

    /// Calls `body` with a target, not retained (see `unretainedTargets`).
    package func target<T>(_ index: Int, _ body: (UpstreamTarget) -> T) -> T {
        unretainedTargets[index]._withUnsafeGuaranteedRef(body)
    }

    /// Closes the pool's connections once requests in flight have finished.
    package func shutdown() async {
        try? await client.shutdown()
    }


    /// Whether every target is plain HTTP, so that an HTTP/1.1 request can be relayed with
    /// its header lines as bytes (``relay(_:body:client:on:responder:)``).
    package let relaysHTTP1: Bool

    /// Sends the request to a target and returns its answer, or a 502/503/504 of the gateway's
    /// own, on `eventLoop` (which must be the current loop). Plain-HTTP targets are served by
    /// the gateway's own client on that loop; HTTPS targets through AsyncHTTPClient.
    package func forward(_ request: GatewayRequest, on eventLoop: any EventLoop) -> EventLoopFuture<GatewayResponse> {
        let promise = eventLoop.makePromise(of: GatewayResponse.self)
        UpstreamExchange(pool: self, request: .request(request), eventLoop: eventLoop, responder: PromiseResponder(promise: promise)).start()
        return promise.futureResult
    }

    /// Relays an HTTP/1.1 request as it arrived (only when ``relaysHTTP1``); `responder` is
    /// told the answer on `eventLoop`, the current loop. `exchange` is the connection's
    /// exchange from its last request, restarted when it has answered (or a new one).
    package func relay(_ request: HTTP1Request, on eventLoop: any EventLoop, responder: any UpstreamResponder, reusing exchange: inout UpstreamExchange?) {
        let request = UpstreamRequest.http1(request)
        if let existing = exchange, existing.isFinished, existing.eventLoop === eventLoop {
            existing.restart(pool: self, request: request, responder: responder)
        } else {
            exchange = UpstreamExchange(pool: self, request: request, eventLoop: eventLoop, responder: responder)
        }
        exchange!.start()
    }

    /// The calling loop's connections.
    package func connections(on eventLoop: any EventLoop) -> UpstreamConnections {
        let key = ObjectIdentifier(eventLoop)
        for entry in perLoop where entry.loop == key {
            if let existing = entry.connections.value { return existing }
            let created = makeConnections(on: eventLoop)
            entry.connections.value = created
            return created
        }
        return otherLoops.withLockedValue { loops in
            if let existing = loops[key] { return existing.value }
            let created = makeConnections(on: eventLoop)
            loops[key] = NIOLoopBound(created, eventLoop: eventLoop)
            return created
        }
    }

    private func makeConnections(on eventLoop: any EventLoop) -> UpstreamConnections {
        UpstreamConnections(eventLoop: eventLoop, targets: targets, maxIdlePerTarget: configuration.keepaliveConnections, idleTimeout: configuration.keepaliveTimeout)
    }

    /// The next available target in round-robin order, skipping `excluded`.
    package func pick(excluding excluded: TriedTargets = TriedTargets()) -> Int? {
        guard !targets.isEmpty else { return nil }
        // One target: no turn to take (the shared counter is a cache line both cores write).
        let start = targets.count == 1 ? 0 : next.loadThenWrappingIncrement(ordering: .relaxed)
        for offset in 0..<targets.count {
            let index = (start &+ offset) % targets.count
            if !excluded.contains(index) && target(index, { $0.isAvailable() }) { return index }
        }
        return nil
    }

    /// Sends a request to an HTTPS target through AsyncHTTPClient.
    package func send(_ request: GatewayRequest, to target: UpstreamTarget) async throws -> GatewayResponse {
        let response = try await client.execute(Self.outgoing(request, to: target), timeout: configuration.responseTimeout)
        var relayed = Self.relayedHead(response)
        relayed.body = try await response.body.collect(upTo: configuration.maxResponseBytes)
        return relayed.gatewayResponse
    }

    /// Sends a request to an HTTPS target for a responder that streams: the head goes to
    /// `exchange` (which may try another target instead), then the body to the responder piece
    /// by piece as AsyncHTTPClient reads it, waiting whenever the responder asks to (the
    /// client then stops reading the upstream). Called on the exchange's loop.
    package func stream(_ request: GatewayRequest, to target: UpstreamTarget, for exchange: UpstreamExchange) {
        let loop = exchange.eventLoop
        let owner = NIOLoopBound(exchange, eventLoop: loop)
        let source = HTTPSBodySource()
        let client = self.client
        let configuration = self.configuration
        source.start(Task {
            let response: HTTPClientResponse
            do {
                response = try await client.execute(Self.outgoing(request, to: target), timeout: configuration.responseTimeout)
            } catch {
                loop.execute { owner.value.failed(error) }
                return
            }
            let hasBody = request.method != .HEAD && response.status != .noContent && response.status != .notModified
            let length = response.headers.first(name: "content-length").flatMap { Int($0) }
            let head = Self.relayedHead(response)
            let taken = try? await loop.submit { () -> NIOLoopBound<any UpstreamStreamingResponder>? in
                owner.value.streamingHead(head, length: length, hasBody: hasBody, source: source).map { NIOLoopBound($0, eventLoop: loop) }
            }.get()
            guard let sink = taken ?? nil, hasBody else { return }
            do {
                var total = 0
                for try await piece in response.body {
                    total += piece.readableBytes
                    if total > configuration.maxResponseBytes { throw UpstreamFailure.responseTooLarge(configuration.maxResponseBytes) }
                    if try await !loop.submit({ sink.value.upstreamBody(piece) }).get() {
                        try await source.waitUntilResumed()
                    }
                }
                loop.execute { sink.value.upstreamEnded() }
            } catch {
                loop.execute { sink.value.upstreamBodyFailed() }
            }
        })
    }

    private static func outgoing(_ request: GatewayRequest, to target: UpstreamTarget) -> HTTPClientRequest {
        var outgoing = HTTPClientRequest(url: target.base + request.uri)
        outgoing.method = request.method
        var fields = ByteBuffer()
        UpstreamEncoding.writeForwardedFields(of: .request(request), into: &fields)
        outgoing.headers = HTTP1Fields.headers(fields)
        if request.body.readableBytes > 0 || request.method == .POST || request.method == .PUT || request.method == .PATCH {
            outgoing.body = .bytes(request.body)
        }
        return outgoing
    }

    /// An HTTPS target's head as a relayed response (no body yet): the fields passed on are
    /// picked by the same rule as for plain-HTTP targets (``UpstreamResponse/forEachField(_:)``),
    /// including those `Connection` names.
    private static func relayedHead(_ response: HTTPClientResponse) -> UpstreamResponse {
        var lines = ByteBuffer()
        for (name, value) in response.headers {
            lines.writeString(name)
            lines.writeStaticString(": ")
            lines.writeString(value)
            lines.writeStaticString("\r\n")
        }
        return UpstreamResponse(status: response.status, fields: lines, namesConnectionFields: response.headers.contains(name: "connection"), body: ByteBuffer())
    }

    /// Probes every target at the configured interval until cancelled.
    package func runHealthChecks() async {
        guard let check = configuration.healthCheck else { return }
        while !Task.isCancelled {
            await probeAll(check)
            do { try await Task.sleep(for: .nanoseconds(check.interval.nanoseconds)) } catch { return }
        }
    }

    /// Probes every target once now.
    package func probeAll(_ check: HealthCheckConfiguration) async {
        await withTaskGroup(of: Void.self) { group in
            for target in targets {
                group.addTask { await self.probe(target, check: check) }
            }
        }
    }

    private func probe(_ target: UpstreamTarget, check: HealthCheckConfiguration) async {
        var request = HTTPClientRequest(url: target.base + check.path)
        request.method = .GET
        let started = NIODeadline.now()
        var healthy = false
        do {
            let response = try await client.execute(request, timeout: check.timeout)
            _ = try? await response.body.collect(upTo: 64 * 1024)
            healthy = (200..<400).contains(response.status.code)
        } catch {
            healthy = false
        }
        if target.recordCheck(healthy: healthy, started: started, configuration: check) {
            logger.notice("upstream target health changed", metadata: ["upstream": "\(configuration.name)", "target": "\(target.displayName)", "healthy": "\(healthy)"])
        }
    }

    package static func isTimeout(_ error: any Error) -> Bool {
        if let failure = error as? UpstreamFailure { return failure.isTimeout }
        if let error = error as? HTTPClientError, error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout { return true }
        return false
    }
}

/// The body of an HTTPS target's answer as it streams: the task reading it waits here when
/// the responder asks it to, and is cancelled when the client has gone.
package final class HTTPSBodySource: UpstreamBodySource, Sendable {
    private struct State {
        var task: Task<Void, Never>?
        var waiter: CheckedContinuation<Void, any Error>?
        /// Told to go on before the task waited.
        var resumed = false
        var cancelled = false
    }
    private let state = NIOLockedValueBox(State())

    package func start(_ task: Task<Void, Never>) {
        let cancelled = state.withLockedValue { state in
            state.task = task
            return state.cancelled
        }
        if cancelled { task.cancel() }
    }

    package func resume() {
        let waiter = state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
            guard let waiter = state.waiter else {
                state.resumed = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    package func cancel() {
        let (task, waiter) = state.withLockedValue { state in
            state.cancelled = true
            defer { state.waiter = nil }
            return (state.task, state.waiter)
        }
        task?.cancel()
        waiter?.resume(throwing: CancellationError())
    }

    /// Returns once ``resume()`` has been called (now or before), or throws once cancelled.
    package func waitUntilResumed() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let outcome = state.withLockedValue { state -> Bool? in
                if state.cancelled { return false }
                if state.resumed {
                    state.resumed = false
                    return true
                }
                state.waiter = continuation
                return nil
            }
            switch outcome {
            case true?: continuation.resume()
            case false?: continuation.resume(throwing: CancellationError())
            case nil: break
            }
        }
    }
}
