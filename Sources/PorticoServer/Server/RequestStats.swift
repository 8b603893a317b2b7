import NIOConcurrencyHelpers
import NIOCore
import Synchronization

/// Requests answered on one listener, by status class, and how long each took: the
/// `portico_requests_total` counters and the `portico_request_duration_seconds` histogram.
///
/// Every request is counted here, so the counting is per event loop: each loop writes its
/// own ``Shard`` (relaxed atomic adds on memory no other core writes), and a scrape adds the
/// shards up. The Prometheus client's histogram took a lock and compared against every
/// bucket per request, which showed in profiles of small keep-alive requests.
package final class RequestStats: Sendable {
    /// Upper bounds of the duration buckets, in nanoseconds.
    package static let bounds: [Int64] = [
        100_000, 500_000, 1_000_000, 5_000_000, 10_000_000, 50_000_000,
        100_000_000, 500_000_000, 1_000_000_000, 5_000_000_000,
    ]
    /// Slots of a shard: five status classes, a count per bucket (not cumulative) plus one
    /// past the last bound, and the sum of durations in nanoseconds.
    private static let classSlots = 0..<5
    private static let bucketSlots = 5..<(5 + bounds.count + 1)
    private static let sumSlot = 5 + bounds.count + 1

    /// One event loop's counts. Written only from its loop; read by scrapes from anywhere.
    package final class Shard: Sendable {
        private let slots: InlineArray<17, Synchronization.Atomic<Int>>

        fileprivate init() {
            slots = InlineArray { _ in Synchronization.Atomic(0) }
        }

        package func record(status: Int, nanoseconds: Int64) {
            let statusClass = min(max(status / 100, 1), 5) - 1
            slots[RequestStats.classSlots.lowerBound + statusClass].wrappingAdd(1, ordering: .relaxed)
            var bucket = 0
            let bounds = RequestStats.bounds
            while bucket < bounds.count, nanoseconds > bounds[bucket] { bucket += 1 }
            slots[RequestStats.bucketSlots.lowerBound + bucket].wrappingAdd(1, ordering: .relaxed)
            slots[RequestStats.sumSlot].wrappingAdd(Int(max(nanoseconds, 0)), ordering: .relaxed)
        }

        fileprivate func load(_ slot: Int) -> Int {
            slots[slot].load(ordering: .relaxed)
        }
    }

    private let listener: String
    private let shards = NIOLockedValueBox<[ObjectIdentifier: Shard]>([:])

    package init(listener: String) {
        self.listener = listener
        assert(Self.sumSlot == 16, "a shard has 17 slots")
    }

    /// The shard of the loop a connection runs on (looked up once per connection).
    package func shard(on eventLoop: any EventLoop) -> Shard {
        let key = ObjectIdentifier(eventLoop)
        return shards.withLockedValue { shards in
            if let existing = shards[key] { return existing }
            let created = Shard()
            shards[key] = created
            return created
        }
    }

    /// The counts summed over every loop.
    package struct Totals: Equatable {
        package var byClass = [Int](repeating: 0, count: 5)
        package var buckets = [Int](repeating: 0, count: RequestStats.bounds.count + 1)
        package var sumNanoseconds = 0
        package var count: Int { buckets.reduce(0, +) }
    }

    package func totals() -> Totals {
        var totals = Totals()
        for shard in shards.withLockedValue({ Array($0.values) }) {
            for index in 0..<5 { totals.byClass[index] += shard.load(Self.classSlots.lowerBound + index) }
            for index in 0..<totals.buckets.count { totals.buckets[index] += shard.load(Self.bucketSlots.lowerBound + index) }
            totals.sumNanoseconds += shard.load(Self.sumSlot)
        }
        return totals
    }

    package static let requestsHelp = "# HELP portico_requests_total Requests answered, by status class\n# TYPE portico_requests_total counter\n"
    package static let durationHelp = "# HELP portico_request_duration_seconds Time from a complete request to its response being written\n# TYPE portico_request_duration_seconds histogram\n"

    /// This listener's series in the Prometheus text format (without the HELP and TYPE
    /// lines, which ``emit(_:into:)`` writes once for all listeners).
    private func emitRequests(_ totals: Totals, into text: inout String) {
        for index in 0..<5 {
            text += "portico_requests_total{listener=\"\(listener)\",code=\"\(index + 1)xx\"} \(totals.byClass[index])\n"
        }
    }

    private func emitDuration(_ totals: Totals, into text: inout String) {
        var cumulative = 0
        for (index, bound) in Self.bounds.enumerated() {
            cumulative += totals.buckets[index]
            text += "portico_request_duration_seconds_bucket{listener=\"\(listener)\",le=\"\(Self.seconds(bound))\"} \(cumulative)\n"
        }
        text += "portico_request_duration_seconds_bucket{listener=\"\(listener)\",le=\"+Inf\"} \(totals.count)\n"
        text += "portico_request_duration_seconds_sum{listener=\"\(listener)\"} \(Self.seconds(Int64(totals.sumNanoseconds)))\n"
        text += "portico_request_duration_seconds_count{listener=\"\(listener)\"} \(totals.count)\n"
    }

    /// Every listener's series, each family under one HELP and TYPE header.
    package static func emit(_ all: [RequestStats], into text: inout String) {
        let totals = all.map { $0.totals() }
        text += requestsHelp
        for (stats, total) in zip(all, totals) { stats.emitRequests(total, into: &text) }
        text += durationHelp
        for (stats, total) in zip(all, totals) { stats.emitDuration(total, into: &text) }
    }

    /// Nanoseconds as decimal seconds without a binary fraction's noise ("0.0001", "5", "0.000123456").
    package static func seconds(_ nanoseconds: Int64) -> String {
        let whole = nanoseconds / 1_000_000_000
        var fraction = nanoseconds % 1_000_000_000
        guard fraction != 0 else { return "\(whole)" }
        var digits = 9
        while fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        let text = String(fraction)
        return "\(whole)." + String(repeating: "0", count: digits - text.count) + text
    }
}
