import Logging
import NIOCore
import NIOPosix
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

/// Each event loop reads its own copy of a listener's routes (``SnapshotBox``), so that the
/// objects a request retains are never shared by two cores. The copies must route exactly
/// as the original does.
@Suite struct LoopLocalTests {
    typealias R = Router<String>

    private func route(_ router: R, _ method: String, _ path: String, host: String? = nil) -> R.Route? {
        if case .found(let route, _) = router.match(method: method, host: host.map { $0[...] }, path: path[...]) { return route }
        return nil
    }

    @Test func aRouterCopyRoutesTheSameWithObjectsOfItsOwn() throws {
        let original = try R([
            .init(methods: ["GET", "POST"], host: nil, path: "/api/devices/{id}", target: "device", maxBodyBytes: 10),
            .init(methods: ["GET"], host: nil, path: "/api/*", target: "api", maxBodyBytes: nil),
            .init(methods: [], host: "console.example", path: "/healthz", target: "console-health", maxBodyBytes: nil),
            .init(methods: [], host: nil, path: "/healthz", target: "health", maxBodyBytes: nil),
        ])
        let copy = original.localCopy { $0 + "-copy" }
        for (method, path, host) in [("GET", "/api/devices/7", nil), ("POST", "/api/devices/7", nil), ("GET", "/api/x/y", nil),
                                     ("GET", "/healthz", "console.example"), ("DELETE", "/healthz", nil)] as [(String, String, String?)] {
            let a = try #require(route(original, method, path, host: host))
            let b = try #require(route(copy, method, path, host: host))
            #expect(b.target == a.target + "-copy")
            #expect(b.pattern == a.pattern)
            #expect(b.maxBodyBytes == a.maxBodyBytes)
            #expect(a !== b)
        }
        // One route named by two methods stays one route in the copy.
        #expect(route(copy, "GET", "/api/devices/1") === route(copy, "POST", "/api/devices/1"))
        guard case .methodNotAllowed(let allow) = copy.match(method: "DELETE", host: nil, path: "/api/devices/1") else {
            Issue.record("expected 405 from the copy")
            return
        }
        #expect(allow == "GET, HEAD, POST")
        guard case .found(_, let parameters) = copy.match(method: "GET", host: nil, path: "/api/devices/42") else {
            Issue.record("expected a match")
            return
        }
        #expect(parameters.map(\.0) == ["id"] && parameters.map { String($0.1) } == ["42"])
    }

    @Test func aFixedEndpointGetsAResponseOfItsOwnWithTheSameBytes() {
        let original = Endpoint.fixed(FixedResponse(.plain(.ok, "ok")))
        guard case .fixed(let a) = original, case .fixed(let b) = original.localCopy() else {
            Issue.record("expected fixed endpoints")
            return
        }
        #expect(a !== b)
        #expect(a.http1(date: "D", includeBody: true, allocator: .init()) == b.http1(date: "D", includeBody: true, allocator: .init()))
    }

    final class Value: Sendable {
        let version: Int
        let copyOf: Value?
        init(version: Int, copyOf: Value? = nil) {
            self.version = version
            self.copyOf = copyOf
        }
    }

    @Test func eachLoopReadsItsOwnCopyOfEachGeneration() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { try? group.syncShutdownGracefully() }
        let loops = Array(group.makeIterator())
        let first = Value(version: 1)
        let box = SnapshotBox(first, localize: { Value(version: $0.version, copyOf: $0) })
        var a = SnapshotReader(box, eventLoop: loops[0])
        let again = SnapshotReader(box, eventLoop: loops[0])
        let b = SnapshotReader(box, eventLoop: loops[1])
        // Copies of the published value, one per loop, shared by the readers of a loop.
        #expect(a.value.copyOf === first && b.value.copyOf === first)
        #expect(a.value === again.value)
        #expect(a.value !== b.value)
        #expect(box.load().value === first)
        let second = Value(version: 2)
        box.store(second)
        let current = a.current()
        #expect(current.version == 2 && current.copyOf === second)
        #expect(current === SnapshotReader(box, eventLoop: loops[0]).value)
    }

    @Test func theDateIsTheFormattedSecondOnEveryThread() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        for loop in group.makeIterator() {
            let (value, second) = try await loop.submit { () -> (String, Int) in
                var date = HTTPDate()
                let value = date.current()
                return (value, date.second)
            }.get()
            #expect(value == HTTPDate.format(second))
            #expect(value.utf8.count == 29)
        }
        try await group.shutdownGracefully()
    }
}

extension LoopLocalTests {
    /// A loop's copy of a pool is another object over the same targets, health, turn and
    /// connections: what one loop learns of a target, every loop acts on.
    @Test func aPoolCopySharesItsTargetsHealthAndTurn() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var configuration = UpstreamConfiguration(name: "backend", targets: ["http://127.0.0.1:1", "http://127.0.0.1:2"])
        configuration.passiveMaxFailures = 1
        configuration.passiveEjectFor = .seconds(60)
        let original = UpstreamPool(configuration: configuration, eventLoopGroup: group, logger: Logger(label: "test"))
        let copy = original.localCopy()
        #expect(copy !== original)
        #expect(zip(copy.targets, original.targets).allSatisfy { $0 === $1 })
        // The turn is shared: the copy picks the other target next.
        let first = try #require(original.pick())
        #expect(copy.pick() == 1 - first)
        // A failure the copy records ejects the target for the original too.
        copy.target(0) { $0.recordFailure(maxFailures: 1, ejectFor: .seconds(60)) }
        for _ in 0..<4 { #expect(original.pick() == 1) }
        // The loop's connections are the same set.
        let loop = group.next()
        #expect(try await loop.submit { copy.connections(on: loop) === original.connections(on: loop) }.get())
        await original.shutdown()
        try await group.shutdownGracefully()
    }
}
