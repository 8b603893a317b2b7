/// A route path: `/exact`, `/prefix/*` or segments with `{param}`.
package enum RoutePattern {
    package enum Segment: Equatable {
        case literal(String)
        case parameter(String)
        case wildcard
    }

    /// Why a path pattern cannot be used, or `nil` when it is fine.
    package static func problem(in pattern: String) -> String? {
        guard pattern.hasPrefix("/") else { return "a path must start with /" }
        let parts = pattern.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        for (index, part) in parts.enumerated() {
            let isLast = index == parts.count - 1
            if part == "*" {
                if !isLast { return "* may only be the last segment, as in /api/*" }
                continue
            }
            if part.contains("*") { return "* must be a whole segment, as in /api/*" }
            if part.hasPrefix("{") || part.hasSuffix("}") || part.contains("{") || part.contains("}") {
                guard part.hasPrefix("{"), part.hasSuffix("}"), part.count > 2 else {
                    return "a parameter must be a whole segment such as {id}"
                }
                let name = part.dropFirst().dropLast()
                guard name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                    return "parameter names may hold letters, digits and _ only"
                }
            }
            if part.isEmpty && !isLast { return "a path must not contain //" }
        }
        return nil
    }

    /// Whether `prefix`, a pattern ending in `/*`, takes every path `pattern` takes.
    package static func prefix(_ prefix: String, covers pattern: String) -> Bool {
        var outer = segments(of: prefix)
        guard outer.last == .wildcard else { return false }
        outer.removeLast()
        let inner = segments(of: pattern)
        guard inner.count >= outer.count else { return false }
        for (a, b) in zip(outer, inner) {
            switch (a, b) {
            case (.parameter, .literal), (.parameter, .parameter): continue
            case (.literal(let x), .literal(let y)) where x == y: continue
            default: return false
            }
        }
        return true
    }

    package static func segments(of pattern: String) -> [Segment] {
        pattern.split(separator: "/").map { part in
            if part == "*" { return .wildcard }
            if part.hasPrefix("{") && part.hasSuffix("}") { return .parameter(String(part.dropFirst().dropLast())) }
            return .literal(String(part))
        }
    }
}
