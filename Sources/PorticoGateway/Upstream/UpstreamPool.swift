import AsyncHTTPClient
import Atomics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// A named set of backends that routes forward to: round robin over the available targets,
/// retries of idempotent requests on another target, passive ejection of failing targets
/// and, when configured, active health checks.
final class UpstreamPool: Sendable {
    let configuration: UpstreamConfiguration
    let targets: [UpstreamTarget]
    private let client: HTTPClient
    private let next = ManagedAtomic<Int>(0)
    private let logger: Logger
    /// Kept-alive connections to plain-HTTP targets, per event loop.
    private let loops = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<UpstreamConnections>]>([:])

    init(configuration: UpstreamConfiguration, eventLoopGroup: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.targets = configuration.targets.compactMap(UpstreamTarget.init(url:))
        var clientConfiguration = HTTPClient.Configuration()
        clientConfiguration.timeout = .init(connect: configuration.connectTimeout, read: configuration.responseTimeout)
        clientConfiguration.redirectConfiguration = .disallow
        clientConfiguration.decompression = .disabled
        self.client = HTTPClient(eventLoopGroupProvider: .shared(eventLoopGroup), configuration: clientConfiguration)
        self.logger = logger
    }

    /// Closes the pool's connections once requests in flight have finished.
    func shutdown() async {
        try? await client.shutdown()
    }

    private static let idempotentMethods: Set<String> = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
    private static let hopByHop: Set<String> = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization"]

    /// Sends the request to a target and returns its answer, or a 502/503/504 of the gateway's
    /// own, on `eventLoop`. Plain-HTTP targets are served by the gateway's own client on the
    /// calling loop; HTTPS targets through AsyncHTTPClient.
    func forward(_ request: GatewayRequest, on eventLoop: any EventLoop) -> EventLoopFuture<GatewayResponse> {
        let idempotent = Self.idempotentMethods.contains(request.method.rawValue)
        let attempts = idempotent ? 1 + configuration.retries : 1
        return attempt(request, on: eventLoop, idempotent: idempotent, attempts: attempts, tried: [], problem: "no target is available", status: .serviceUnavailable)
    }

    private func attempt(_ request: GatewayRequest, on eventLoop: any EventLoop, idempotent: Bool, attempts: Int, tried: [Int],
                         problem: String, status: HTTPResponseStatus) -> EventLoopFuture<GatewayResponse> {
        guard tried.count < attempts, let index = pick(excluding: tried) else {
            return eventLoop.makeSucceededFuture(.plain(status, "upstream \(configuration.name) did not answer (\(problem))"))
        }
        let tried = tried + [index]
        let target = targets[index]
        let sent: EventLoopFuture<GatewayResponse>
        if target.plain != nil {
            sent = sendPlain(request, to: index, on: eventLoop, idempotent: idempotent)
        } else {
            sent = eventLoop.makeFutureWithTask { try await self.send(request, to: target) }
        }
        // One promise and one callback per exchange (a flatMap and a flatMapError were two of
        // each); the configuration is read through `self`, not copied per request.
        let promise = eventLoop.makePromise(of: GatewayResponse.self)
        sent.whenComplete { result in
            switch result {
            case .success(let response):
                if [502, 503, 504].contains(response.status.code) {
                    target.recordFailure(maxFailures: self.configuration.passiveMaxFailures, ejectFor: self.configuration.passiveEjectFor)
                    if idempotent && tried.count < attempts && self.pick(excluding: tried) != nil {
                        promise.completeWith(self.attempt(request, on: eventLoop, idempotent: idempotent, attempts: attempts, tried: tried,
                                                          problem: "\(target.displayName) answered \(response.status.code)", status: response.status))
                        return
                    }
                } else {
                    target.recordSuccess()
                }
                promise.succeed(response)
            case .failure(let error):
                target.recordFailure(maxFailures: self.configuration.passiveMaxFailures, ejectFor: self.configuration.passiveEjectFor)
                self.logger.warning("upstream request failed", metadata: ["upstream": "\(self.configuration.name)", "target": "\(target.displayName)", "error": "\(error)"])
                promise.completeWith(self.attempt(request, on: eventLoop, idempotent: idempotent, attempts: attempts, tried: tried,
                                                  problem: "\(target.displayName): \(error)", status: Self.isTimeout(error) ? .gatewayTimeout : .badGateway))
            }
        }
        return promise.futureResult
    }

    /// The calling loop's connections.
    private func connections(on eventLoop: any EventLoop) -> UpstreamConnections {
        let key = ObjectIdentifier(eventLoop)
        return loops.withLockedValue { loops in
            if let existing = loops[key] { return existing.value }
            let created = UpstreamConnections(eventLoop: eventLoop, targets: targets.count, maxIdlePerTarget: configuration.keepaliveConnections, idleTimeout: configuration.keepaliveTimeout)
            loops[key] = NIOLoopBound(created, eventLoop: eventLoop)
            return created
        }
    }

    private func sendPlain(_ request: GatewayRequest, to index: Int, on eventLoop: any EventLoop, idempotent: Bool) -> EventLoopFuture<GatewayResponse> {
        eventLoop.preconditionInEventLoop()
        let endpoint = targets[index].plain!
        let connections = self.connections(on: eventLoop)
        let bytes = Self.encode(request, path: endpoint.basePath + request.uri, host: endpoint.port == 80 ? endpoint.host : "\(endpoint.host):\(endpoint.port)")
        let isHead = request.method == .HEAD
        let responseTimeout = configuration.responseTimeout
        let maxResponseBytes = configuration.maxResponseBytes
        let connectTimeout = configuration.connectTimeout
        func onNewConnection() -> EventLoopFuture<GatewayResponse> {
            connections.connect(target: index, host: endpoint.host, port: endpoint.port, connectTimeout: connectTimeout)
                .assumeIsolated()
                .flatMap { connection in
                    connection.value.send(bytes, isHead: isHead, timeout: responseTimeout, maxBytes: maxResponseBytes, eventLoop: eventLoop)
                }
                .nonisolated()
        }
        // Usually a kept-alive connection is waiting: used at once, without a future for it.
        guard let connection = connections.takeIdle(target: index) else { return onNewConnection() }
        let sent = connection.send(bytes, isHead: isHead, timeout: responseTimeout, maxBytes: maxResponseBytes, eventLoop: eventLoop)
        guard idempotent else { return sent }
        return sent.assumeIsolated().flatMapError { error in
            // A kept-alive connection the upstream closed as the request went out: nothing was
            // answered, so an idempotent request goes again on a new one.
            if case UpstreamFailure.connectionLost(answered: false) = error { return onNewConnection() }
            return eventLoop.makeFailedFuture(error)
        }.nonisolated()
    }

    /// The fields an upstream receives, in order: the client's, less hop-by-hop ones (and those
    /// the `Connection` header names), `content-length` and `expect` (set for the hop), then
    /// `X-Forwarded-For` (earlier hops only from a trusted proxy), `-Proto` and `-Host`.
    static func forEachForwardedHeader(of request: GatewayRequest, _ body: (String, String) -> Void) {
        var forwardedFor = ""
        // Fields the Connection header names are for this hop only (RFC 9110 7.6.1); the set
        // is built only when there is such a header (most requests have none).
        var connectionListed: Set<String> = []
        if request.headers.contains(name: "connection") {
            connectionListed = Set(request.headers["connection"].flatMap { $0.split(separator: ",") }.map { $0.trimmingWhitespace().lowercased() })
        }
        for (name, value) in request.headers {
            let lower = name.lowercased()
            if hopByHop.contains(lower) || lower == "content-length" || lower == "expect" || connectionListed.contains(lower) { continue }
            if lower == "x-forwarded-for" {
                if request.peerIsTrustedProxy { forwardedFor += forwardedFor.isEmpty ? value : ", " + value }
                continue
            }
            if lower == "x-forwarded-proto" || lower == "x-forwarded-host" { continue }
            body(name, value)
        }
        if let peer = request.peerAddressText ?? request.peerAddress?.ipAddress {
            forwardedFor += forwardedFor.isEmpty ? peer : ", " + peer
        }
        if !forwardedFor.isEmpty { body("x-forwarded-for", forwardedFor) }
        body("x-forwarded-proto", request.forwardedProto)
        if let host = request.host { body("x-forwarded-host", host) }
    }

    /// The request for an upstream as one buffer.
    static func encode(_ request: GatewayRequest, path: String, host: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(256 + request.body.readableBytes)
        buffer.writeString(request.method.rawValue)
        buffer.writeStaticString(" ")
        buffer.writeString(path)
        buffer.writeStaticString(" HTTP/1.1\r\n")
        var sawHost = false
        forEachForwardedHeader(of: request) { name, value in
            if name.caseInsensitiveEquals("host") { sawHost = true }
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        if !sawHost {
            buffer.writeStaticString("host: ")
            buffer.writeString(host)
            buffer.writeStaticString("\r\n")
        }
        if request.body.readableBytes > 0 || request.method == .POST || request.method == .PUT || request.method == .PATCH {
            buffer.writeStaticString("content-length: ")
            buffer.writeString(String(request.body.readableBytes))
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
        var body = request.body
        buffer.writeBuffer(&body)
        return buffer
    }

    /// The next available target in round-robin order, skipping `excluded`.
    func pick(excluding excluded: [Int] = []) -> Int? {
        guard !targets.isEmpty else { return nil }
        let start = next.loadThenWrappingIncrement(ordering: .relaxed)
        let now = NIODeadline.now()
        for offset in 0..<targets.count {
            let index = (start &+ offset) % targets.count
            if !excluded.contains(index) && targets[index].isAvailable(now: now) { return index }
        }
        return nil
    }

    private func send(_ request: GatewayRequest, to target: UpstreamTarget) async throws -> GatewayResponse {
        var outgoing = HTTPClientRequest(url: target.base + request.uri)
        outgoing.method = request.method
        Self.forEachForwardedHeader(of: request) { name, value in outgoing.headers.add(name: name, value: value) }
        if request.body.readableBytes > 0 || request.method == .POST || request.method == .PUT || request.method == .PATCH {
            outgoing.body = .bytes(request.body)
        }
        let response = try await client.execute(outgoing, timeout: configuration.responseTimeout)
        let body = try await response.body.collect(upTo: configuration.maxResponseBytes)
        var headers = HTTPHeaders()
        for (name, value) in response.headers where !Self.hopByHop.contains(name.lowercased()) && name.lowercased() != "content-length" {
            headers.add(name: name, value: value)
        }
        return GatewayResponse(status: response.status, headers: headers, body: body)
    }

    /// Probes every target at the configured interval until cancelled.
    func runHealthChecks() async {
        guard let check = configuration.healthCheck else { return }
        while !Task.isCancelled {
            await probeAll(check)
            do { try await Task.sleep(for: .nanoseconds(check.interval.nanoseconds)) } catch { return }
        }
    }

    /// Probes every target once now.
    func probeAll(_ check: HealthCheckConfiguration) async {
        await withTaskGroup(of: Void.self) { group in
            for target in targets {
                group.addTask { await self.probe(target, check: check) }
            }
        }
    }

    private func probe(_ target: UpstreamTarget, check: HealthCheckConfiguration) async {
        var request = HTTPClientRequest(url: target.base + check.path)
        request.method = .GET
        var healthy = false
        do {
            let response = try await client.execute(request, timeout: check.timeout)
            _ = try? await response.body.collect(upTo: 64 * 1024)
            healthy = (200..<400).contains(response.status.code)
        } catch {
            healthy = false
        }
        if target.recordCheck(healthy: healthy, configuration: check) {
            logger.notice("upstream target health changed", metadata: ["upstream": "\(configuration.name)", "target": "\(target.displayName)", "healthy": "\(healthy)"])
        }
    }

    private static func isTimeout(_ error: any Error) -> Bool {
        if let failure = error as? UpstreamFailure { return failure.isTimeout }
        if let error = error as? HTTPClientError, error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout { return true }
        return false
    }
}
