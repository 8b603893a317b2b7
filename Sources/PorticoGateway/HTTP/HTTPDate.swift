#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers

/// The `Date` header value (IMF-fixdate) as a connection keeps it: looked up once a second.
///
/// Connections share one formatted value per second, so a connection that lives for one
/// request does not format its own (formatting was 0.5% of a resumed TLS connection).
struct HTTPDate {
    /// The second `value` is for.
    private(set) var second: Int = -1
    private(set) var value: String = ""

    /// The value for now.
    mutating func current() -> String {
        refresh()
        return value
    }

    /// Brings `second` and `value` to now.
    mutating func refresh() {
        let now = time(nil)
        if now != second {
            second = now
            value = Self.shared(for: now)
        }
    }

    private static let latest = NIOLockedValueBox((second: -1, value: ""))

    private static func shared(for now: Int) -> String {
        if let known = latest.withLockedValue({ $0.second == now ? $0.value : nil }) { return known }
        let value = format(now)
        latest.withLockedValue { if $0.second < now { $0 = (now, value) } }
        return value
    }

    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    static func format(_ seconds: Int) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
