import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// A hybrid logical clock: wall-clock milliseconds in the high 48 bits, a counter in the low
/// 16. It never goes backwards, orders causally related changes across sites, and stays close
/// to real time, so that "latest change wins" means what people expect.
public final class HybridLogicalClock: Sendable {
    private let last = NIOLockedValueBox<UInt64>(0)
    private let physicalTime: @Sendable () -> UInt64

    /// - Parameter physicalTime: milliseconds since 1970 (replaceable in tests).
    public init(physicalTime: @escaping @Sendable () -> UInt64 = HybridLogicalClock.wallMilliseconds) {
        self.physicalTime = physicalTime
    }

    /// A timestamp for a local change, later than every one this clock has issued or seen.
    public func now() -> UInt64 {
        let physical = physicalTime() << 16
        return last.withLockedValue { last in
            last = max(last + 1, physical)
            return last
        }
    }

    /// Takes in a timestamp from another site so that later local changes order after it.
    public func observe(_ remote: UInt64) {
        last.withLockedValue { last in last = max(last, remote) }
    }

    /// The wall-clock milliseconds of a timestamp.
    public static func milliseconds(of timestamp: UInt64) -> UInt64 { timestamp >> 16 }

    @Sendable public static func wallMilliseconds() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return UInt64(spec.tv_sec) * 1000 + UInt64(spec.tv_nsec) / 1_000_000
    }
}
