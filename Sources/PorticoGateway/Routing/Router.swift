import NIOHTTP1

/// The routes of one listener, compiled at load into a segment trie per host.
///
/// Lookup walks the request path once, without allocating for routes that have no
/// parameters. At each segment a literal child is tried before a `{param}` child, and the
/// deepest prefix route (`/x/*`) seen on the way is the fallback.
final class Router<Target: Sendable>: Sendable {
    /// A class, so that a match hands out one reference (copying a struct of a target,
    /// a pattern and a limit retained each part, on every request).
    final class Route: Sendable {
        let target: Target
        let pattern: String
        let maxBodyBytes: Int?

        init(target: Target, pattern: String, maxBodyBytes: Int?) {
            self.target = target
            self.pattern = pattern
            self.maxBodyBytes = maxBodyBytes
        }
    }

    /// What a lookup found.
    enum Match {
        case found(Route, parameters: [(String, Substring)])
        case methodNotAllowed(allow: String)
        case notFound
    }

    /// Routes at one place in the trie, by method.
    struct Endpoint: Sendable {
        var byMethod: [String: Route] = [:]
        var anyMethod: Route?
        var allowHeader: String {
            var methods = Set(byMethod.keys)
            if !methods.isEmpty, methods.contains("GET") { methods.insert("HEAD") }
            return methods.sorted().joined(separator: ", ")
        }

        func route(for method: String) -> Route? {
            if let route = byMethod[method] { return route }
            if method == "HEAD", let route = byMethod["GET"] { return route }
            return anyMethod
        }
        var isEmpty: Bool { byMethod.isEmpty && anyMethod == nil }
    }

    final class Node: Sendable {
        let literals: [(String, Node)]
        let parameter: (name: String, node: Node)?
        let exact: Endpoint
        let prefix: Endpoint

        init(literals: [(String, Node)], parameter: (name: String, node: Node)?, exact: Endpoint, prefix: Endpoint) {
            self.literals = literals
            self.parameter = parameter
            self.exact = exact
            self.prefix = prefix
        }
    }

    /// A route to compile, as written in the config.
    struct Definition {
        var methods: [String]
        var host: String?
        var path: String
        var target: Target
        var maxBodyBytes: Int?
    }

    struct DuplicateRoute: Error, CustomStringConvertible {
        var description: String
    }

    private let hosts: [String: Node]
    private let any: Node

    /// Compiles definitions; two routes for the same host, path and method are an error.
    init(_ definitions: [Definition]) throws(DuplicateRoute) {
        var hostBuilders: [String: Builder] = [:]
        let anyBuilder = Builder()
        for definition in definitions {
            let builder: Builder
            if let host = definition.host {
                if let existing = hostBuilders[host] { builder = existing } else {
                    builder = Builder()
                    hostBuilders[host] = builder
                }
            } else {
                builder = anyBuilder
            }
            try builder.insert(definition)
        }
        self.hosts = hostBuilders.mapValues { $0.freeze() }
        self.any = anyBuilder.freeze()
    }

    /// Finds the route for a request. `host` is lowercased without a port; `path` has no query.
    func match(method: String, host: Substring?, path: Substring) -> Match {
        if let host, !hosts.isEmpty, let node = hosts[host.lowercased()] {
            let result = Self.lookup(node, method: method, path: path)
            if case .notFound = result {} else { return result }
        }
        return Self.lookup(any, method: method, path: path)
    }

    private static func lookup(_ root: Node, method: String, path: Substring) -> Match {
        var parameters: [(String, Substring)] = []
        var allow: String? = nil
        if let route = walk(root, rest: path, method: method, parameters: &parameters, allow: &allow) {
            return .found(route, parameters: parameters)
        }
        if let allow { return .methodNotAllowed(allow: allow) }
        return .notFound
    }

    /// Depth-first: literal, then parameter, then this node's prefix routes. `rest` is the
    /// path still to match; its segments are taken one at a time, empty ones skipped (no
    /// array of segments is built per request).
    private static func walk(_ node: Node, rest path: Substring, method: String, parameters: inout [(String, Substring)], allow: inout String?) -> Route? {
        let slash = UInt8(ascii: "/")
        guard let start = path.utf8.firstIndex(where: { $0 != slash }) else {
            if !node.exact.isEmpty {
                if let route = node.exact.route(for: method) { return route }
                allow = allow ?? node.exact.allowHeader
            }
            return prefixRoute(node, method: method, allow: &allow)
        }
        let end = path.utf8[start...].firstIndex(of: slash) ?? path.endIndex
        let segment = path[start..<end]
        let rest = path[end...]
        for (literal, child) in node.literals where literal.utf8.elementsEqual(segment.utf8) {
            if let route = walk(child, rest: rest, method: method, parameters: &parameters, allow: &allow) { return route }
            break
        }
        if let parameter = node.parameter {
            parameters.append((parameter.name, segment))
            if let route = walk(parameter.node, rest: rest, method: method, parameters: &parameters, allow: &allow) { return route }
            parameters.removeLast()
        }
        return prefixRoute(node, method: method, allow: &allow)
    }

    private static func prefixRoute(_ node: Node, method: String, allow: inout String?) -> Route? {
        guard !node.prefix.isEmpty else { return nil }
        if let route = node.prefix.route(for: method) { return route }
        allow = allow ?? node.prefix.allowHeader
        return nil
    }

    private final class Builder {
        var literals: [(String, Builder)] = []
        var parameter: (name: String, node: Builder)?
        var exact = Endpoint()
        var prefix = Endpoint()

        func insert(_ definition: Definition) throws(DuplicateRoute) {
            var node = self
            var isPrefix = false
            for segment in RoutePattern.segments(of: definition.path) {
                switch segment {
                case .literal(let text):
                    if let child = node.literals.first(where: { $0.0 == text })?.1 { node = child } else {
                        let child = Builder()
                        node.literals.append((text, child))
                        node = child
                    }
                case .parameter(let name):
                    if let existing = node.parameter { node = existing.node } else {
                        let child = Builder()
                        node.parameter = (name, child)
                        node = child
                    }
                case .wildcard:
                    isPrefix = true
                }
            }
            let route = Route(target: definition.target, pattern: definition.path, maxBodyBytes: definition.maxBodyBytes)
            let host = definition.host.map { " on host \($0)" } ?? ""
            func add(_ endpoint: inout Endpoint) throws(DuplicateRoute) {
                if definition.methods.isEmpty {
                    if let existing = endpoint.anyMethod {
                        throw DuplicateRoute(description: "route \(definition.path)\(host) for any method repeats \(existing.pattern)")
                    }
                    endpoint.anyMethod = route
                }
                for method in definition.methods {
                    if let existing = endpoint.byMethod[method] {
                        throw DuplicateRoute(description: "route \(method) \(definition.path)\(host) repeats \(existing.pattern)")
                    }
                    endpoint.byMethod[method] = route
                }
            }
            if isPrefix { try add(&node.prefix) } else { try add(&node.exact) }
        }

        func freeze() -> Node {
            Node(
                literals: literals.map { ($0.0, $0.1.freeze()) },
                parameter: parameter.map { ($0.name, $0.node.freeze()) },
                exact: exact,
                prefix: prefix
            )
        }
    }
}
