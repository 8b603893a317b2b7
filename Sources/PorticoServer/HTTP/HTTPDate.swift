#if canImport(Glibc)
import Glibc
#endif
import NIOPosix

/// The `Date` header value (IMF-fixdate) as a connection keeps it: looked up once a second.
///
/// The connections of one thread (one event loop) share one formatted value per second, so
/// a connection that lives for one request does not format its own. Per thread rather than per process: a string retained per request
/// by both cores moved its reference count's cache line between them every time.
package struct HTTPDate {
    /// The second `value` is for.
    package private(set) var second: Int = -1
    package private(set) var value: String = ""

    package init() {}

    /// The value for `second` (seconds since the epoch, as `time(nil)` gives them).
    package init(second: Int) {
        self.second = second
        self.value = Self.shared(for: second)
    }

    /// The value for now if the second moved on from `second`, else nil. Static, so that a
    /// holder can check with one read of `second` and assign the new value whole.
    package static func newer(than second: Int) -> HTTPDate? {
        let now = time(nil)
        return now == second ? nil : HTTPDate(second: now)
    }

    /// The value for now.
    package mutating func current() -> String {
        refresh()
        return value
    }

    /// Brings `second` and `value` to now.
    package mutating func refresh() {
        if let newer = Self.newer(than: second) { self = newer }
    }

    /// One per thread, only touched by its own thread (which is what makes it safe to share
    /// the variable that holds it).
    private final class Latest: @unchecked Sendable {
        var second = -1
        var value = ""
    }

    private static let latest = ThreadSpecificVariable<Latest>()

    private static func shared(for now: Int) -> String {
        let latest = Self.latest.currentValue ?? {
            let created = Latest()
            Self.latest.currentValue = created
            return created
        }()
        if latest.second != now {
            latest.second = now
            latest.value = format(now)
        }
        return latest.value
    }

    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    package static func format(_ seconds: Int) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
