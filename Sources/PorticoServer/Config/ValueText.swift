import NIOCore

/// `10s`, `500ms`, `5m`, `1h`, or a bare number of seconds.
package enum DurationText {
    package static func parse(_ text: String) -> TimeAmount? {
        let trimmed = text.trimmingSpaces()
        let units: [(String, Int64)] = [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000), ("d", 86_400_000_000_000)]
        // A value too large to count in nanoseconds is no duration (found by fuzzing: it
        // overflowed and stopped the process).
        for (suffix, nanos) in units where trimmed.hasSuffix(suffix) {
            let number = trimmed.dropLast(suffix.count)
            if let value = Int64(number), value >= 0 {
                let (product, overflow) = value.multipliedReportingOverflow(by: nanos)
                return overflow ? nil : .nanoseconds(product)
            }
            if suffix == "s", number.hasSuffix("m") { continue }
            return nil
        }
        if let seconds = Int64(trimmed), seconds >= 0 {
            let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
            return overflow ? nil : .nanoseconds(product)
        }
        return nil
    }
}

/// `64KiB`, `1MiB`, `2GiB` (also `k`, `m`, `g`, powers of 1024).
package enum ByteSize {
    package static func parse(_ text: String) -> Int? {
        let lower = text.trimmingSpaces().lowercased()
        let units: [(String, Int)] = [("kib", 1024), ("mib", 1 << 20), ("gib", 1 << 30), ("kb", 1024), ("mb", 1 << 20), ("gb", 1 << 30), ("k", 1024), ("m", 1 << 20), ("g", 1 << 30)]
        for (suffix, factor) in units where lower.hasSuffix(suffix) {
            guard let value = Int(lower.dropLast(suffix.count)), value >= 0 else { return nil }
            let (product, overflow) = value.multipliedReportingOverflow(by: factor)
            return overflow ? nil : product
        }
        return nil
    }
}

extension StringProtocol {
    package func trimmingSpaces() -> String {
        String(self.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
