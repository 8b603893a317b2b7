import NIOPosix
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

@Suite struct RequestStatsTests {
    @Test func shardsOfTwoLoopsAddUp() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let stats = RequestStats(listener: "client")
        let loops = [group.next(), group.next()]
        #expect(loops[0] !== loops[1])
        // Each loop records on its own shard, from its own thread.
        try await loops[0].submit {
            let shard = stats.shard(on: loops[0])
            shard.record(status: 200, nanoseconds: 50_000)          // first bucket (<= 100 us)
            shard.record(status: 404, nanoseconds: 100_000)         // on a bound: that bucket
            shard.record(status: 503, nanoseconds: 7_000_000_000)   // past the last bound
        }.get()
        try await loops[1].submit {
            let shard = stats.shard(on: loops[1])
            shard.record(status: 204, nanoseconds: 2_000_000)       // <= 5 ms
            shard.record(status: 101, nanoseconds: 0)
            shard.record(status: 999, nanoseconds: 1)               // counted as 5xx
        }.get()
        #expect(stats.shard(on: loops[0]) === stats.shard(on: loops[0]))
        #expect(stats.shard(on: loops[0]) !== stats.shard(on: loops[1]))

        let totals = stats.totals()
        #expect(totals.byClass == [1, 2, 0, 1, 2])
        #expect(totals.buckets == [4, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1])
        #expect(totals.count == 6)
        #expect(totals.sumNanoseconds == 7_002_150_001)

        var text = ""
        RequestStats.emit([stats], into: &text)
        #expect(text.contains(#"portico_requests_total{listener="client",code="2xx"} 2"#))
        #expect(text.contains(#"portico_requests_total{listener="client",code="3xx"} 0"#))
        // Buckets are cumulative in the text.
        #expect(text.contains(#"portico_request_duration_seconds_bucket{listener="client",le="0.0001"} 4"#))
        #expect(text.contains(#"portico_request_duration_seconds_bucket{listener="client",le="0.005"} 5"#))
        #expect(text.contains(#"portico_request_duration_seconds_bucket{listener="client",le="5"} 5"#))
        #expect(text.contains(#"portico_request_duration_seconds_bucket{listener="client",le="+Inf"} 6"#))
        #expect(text.contains(#"portico_request_duration_seconds_sum{listener="client"} 7.002150001"#))
        #expect(text.contains(#"portico_request_duration_seconds_count{listener="client"} 6"#))
        try await group.shutdownGracefully()
    }

    @Test func secondsAreWrittenExactly() {
        #expect(RequestStats.seconds(100_000) == "0.0001")
        #expect(RequestStats.seconds(5_000_000_000) == "5")
        #expect(RequestStats.seconds(1_500_000_000) == "1.5")
        #expect(RequestStats.seconds(123_456) == "0.000123456")
        #expect(RequestStats.seconds(0) == "0")
    }

    @Test func eachFamilyHasOneHeaderAcrossListeners() {
        let metrics = GatewayMetrics(listeners: TestListeners.names)
        let text = String(decoding: metrics.emit(), as: UTF8.self)
        let lines = text.split(separator: "\n")
        #expect(lines.filter { $0 == "# TYPE portico_requests_total counter" }.count == 1)
        #expect(lines.filter { $0 == "# TYPE portico_request_duration_seconds histogram" }.count == 1)
        for role in TestListeners.names {
            #expect(text.contains("portico_requests_total{listener=\"\(role.rawValue)\",code=\"2xx\"} 0"))
        }
        // The registry's own series are still there.
        #expect(text.contains("portico_open_connections"))
    }
}
