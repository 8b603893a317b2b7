import AsyncHTTPClient
import Atomics
import Logging
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

    /// Sends the request to a target and returns its answer, or a 502/503/504 of the gateway's own.
    func forward(_ request: GatewayRequest) async -> GatewayResponse {
        let idempotent = Self.idempotentMethods.contains(request.method.rawValue)
        let attempts = idempotent ? 1 + configuration.retries : 1
        var tried: Set<Int> = []
        var lastProblem = "no target is available"
        var lastStatus: HTTPResponseStatus = .serviceUnavailable
        for _ in 0..<attempts {
            guard let index = pick(excluding: tried) else { break }
            tried.insert(index)
            let target = targets[index]
            do {
                let response = try await send(request, to: target)
                if [502, 503, 504].contains(response.status.code) {
                    target.recordFailure(maxFailures: configuration.passiveMaxFailures, ejectFor: configuration.passiveEjectFor)
                    if idempotent && tried.count < attempts && pick(excluding: tried) != nil { continue }
                } else {
                    target.recordSuccess()
                }
                return response
            } catch {
                target.recordFailure(maxFailures: configuration.passiveMaxFailures, ejectFor: configuration.passiveEjectFor)
                lastProblem = "\(target.displayName): \(error)"
                lastStatus = Self.isTimeout(error) ? .gatewayTimeout : .badGateway
                logger.warning("upstream request failed", metadata: ["upstream": "\(configuration.name)", "target": "\(target.displayName)", "error": "\(error)"])
            }
        }
        return .plain(lastStatus, "upstream \(configuration.name) did not answer (\(lastProblem))")
    }

    /// The next available target in round-robin order, skipping `excluded`.
    func pick(excluding excluded: Set<Int> = []) -> Int? {
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
        var forwardedFor: [String] = []
                for (name, value) in request.headers {
            let lower = name.lowercased()
            if Self.hopByHop.contains(lower) { continue }
            if lower == "x-forwarded-for" {
                // Earlier hops are kept only when the peer is a trusted proxy.
                if request.peerIsTrustedProxy { forwardedFor.append(value) }
                continue
            }
            if lower == "x-forwarded-proto" || lower == "x-forwarded-host" { continue }
            outgoing.headers.add(name: name, value: value)
        }
        if let peer = request.peerAddress?.ipAddress { forwardedFor.append(peer) }
        if !forwardedFor.isEmpty { outgoing.headers.replaceOrAdd(name: "x-forwarded-for", value: forwardedFor.joined(separator: ", ")) }
        outgoing.headers.replaceOrAdd(name: "x-forwarded-proto", value: request.forwardedProto)
        if let host = request.host { outgoing.headers.replaceOrAdd(name: "x-forwarded-host", value: host) }
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
        if let error = error as? HTTPClientError, error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout { return true }
        return false
    }
}
