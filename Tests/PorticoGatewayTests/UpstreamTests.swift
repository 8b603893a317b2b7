import AsyncHTTPClient
import NIOCore
import NIOPosix
import Testing

@testable import PorticoGateway

@Suite struct UpstreamTests {
    /// Two backends (gateways answering `/echo/*` with their names and `/status` with a
    /// switchable health), then `run` with their base URLs.
    private func withBackends(_ run: (_ urls: [String], _ health: [HealthSwitch]) async throws -> Void) async throws {
        let routes = "routes:\n  - {listener: client_plain, path: /echo/*, service: echo}\n  - {listener: client_plain, path: /once/*, service: echo}\n  - {listener: client_plain, path: /status, service: switch}"
        let health = [HealthSwitch(), HealthSwitch()]
        try await TestGateway.with(body: routes, services: TestServices.registry(name: "b1", health: health[0])) { b1 in
            try await TestGateway.with(body: routes, services: TestServices.registry(name: "b2", health: health[1])) { b2 in
                try await run(["http://127.0.0.1:\(try await b1.port(.clientPlain))", "http://127.0.0.1:\(try await b2.port(.clientPlain))"], health)
            }
        }
    }

    /// A loopback port with nothing listening on it.
    private func deadPort() async throws -> Int {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(channel.localAddress?.port)
        try await channel.close()
        return port
    }

    private func backendName(_ answer: TestClient.Answer) -> String? {
        answer.body.split(separator: "\n").first { $0.hasPrefix("backend=") }.map { String($0.dropFirst("backend=".count)) }
    }

    @Test func roundRobinAcrossTargetsWithForwardedHeaders() async throws {
        try await withBackends { urls, _ in
            let config = """
                upstreams:
                  api: {targets: [\(urls[0]), \(urls[1])]}
                routes:
                  - {listener: console, path: /echo/*, upstream: api}
                """
            try await TestGateway.with(body: config) { front in
                try await TestClient.with { client in
                    var seen: [String] = []
                    for _ in 0..<4 {
                        let answer = try await TestClient.get(client, try await front.url(.console, "/echo/x?q=1"), headers: ["x-forwarded-for": "6.6.6.6"])
                        #expect(answer.status == 200)
                        seen.append(try #require(backendName(answer)))
                        #expect(answer.body.contains("uri=/echo/x?q=1"))
                        // The client's own X-Forwarded-For is not believed: the peer is not a trusted proxy.
                        #expect(answer.body.contains("header.x-forwarded-for=127.0.0.1\n") || answer.body.hasSuffix("header.x-forwarded-for=127.0.0.1"))
                        #expect(answer.body.contains("header.x-forwarded-proto=https"))
                        #expect(!answer.body.contains("6.6.6.6"))
                    }
                    #expect(seen == ["b1", "b2", "b1", "b2"])
                }
            }
        }
    }

    @Test func activeHealthChecksEjectAndRestoreATarget() async throws {
        try await withBackends { urls, health in
            let config = """
                upstreams:
                  api:
                    targets: [\(urls[0]), \(urls[1])]
                    health_check: {path: /status, interval: 1h, unhealthy_threshold: 1, healthy_threshold: 1}
                routes:
                  - {listener: client_plain, path: /echo/*, upstream: api}
                """
            try await TestGateway.with(body: config) { front in
                let pool = try #require(await front.gateway.upstreamPool(named: "api"))
                let check = try #require(pool.configuration.healthCheck)
                try await TestClient.with(http2: false) { client in
                    health[1].set(false)
                    await pool.probeAll(check)
                    var seen: Set<String> = []
                    for _ in 0..<4 { seen.insert(try #require(backendName(try await TestClient.get(client, try await front.url(.clientPlain, "/echo/a"))))) }
                    #expect(seen == ["b1"])

                    health[1].set(true)
                    await pool.probeAll(check)
                    seen = []
                    for _ in 0..<4 { seen.insert(try #require(backendName(try await TestClient.get(client, try await front.url(.clientPlain, "/echo/a"))))) }
                    #expect(seen == ["b1", "b2"])
                }
            }
        }
    }

    @Test func idempotentRequestsRetryOnAnotherTargetAndFailingTargetsAreEjected() async throws {
        let dead = try await deadPort()
        try await withBackends { urls, _ in
            let config = """
                upstreams:
                  retrying:
                    targets: [http://127.0.0.1:\(dead), \(urls[0])]
                    passive: {max_failures: 1, eject_for: 1h}
                  once:
                    targets: [http://127.0.0.1:\(dead), \(urls[0])]
                    passive: {max_failures: 100}
                routes:
                  - {listener: client_plain, path: /echo/*, upstream: retrying}
                  - {listener: client_plain, path: /once/*, upstream: once}
                """
            try await TestGateway.with(body: config) { front in
                try await TestClient.with(http2: false) { client in
                    // The first pick is the dead target; a GET moves on to the live one.
                    let first = try await TestClient.get(client, try await front.url(.clientPlain, "/echo/1"))
                    #expect(first.status == 200 && backendName(first) == "b1")
                    // The dead target was ejected after one failure: a POST (not retried) now
                    // goes straight to the live one.
                    let post = try await TestClient.get(client, try await front.url(.clientPlain, "/echo/2"), method: .POST, body: "x")
                    #expect(post.status == 200 && backendName(post) == "b1")

                    // Without ejection, a POST that meets the dead target is not retried.
                    let failed = try await TestClient.get(client, try await front.url(.clientPlain, "/once/1"), method: .POST, body: "x")
                    #expect(failed.status == 502)
                    #expect(failed.body.contains("upstream once did not answer"))
                    let next = try await TestClient.get(client, try await front.url(.clientPlain, "/once/2"), method: .POST, body: "x")
                    #expect(next.status == 200)
                }
            }
        }
    }
}
