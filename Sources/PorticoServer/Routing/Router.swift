import NIOHTTP1
#if canImport(Glibc)
import Glibc
#endif

/// The routes of one listener, compiled at load into a segment trie per host.
///
/// Lookup walks the request path once, without allocating for routes that have no
/// parameters. At each segment a literal child is tried before a `{param}` child, and the
/// deepest prefix route (`/x/*`) seen on the way is the fallback.
package final class Router<Target: Sendable>: Sendable {
    /// A class, so that a match hands out one reference (copying a struct of a target,
    /// a pattern and a limit retained each part, on every request).
    package final class Route: Sendable {
        package let target: Target
        package let pattern: String
        package let maxBodyBytes: Int?
        /// A config route's catch-all for the service it names: taken only when no route of
        /// the service has the path, and a method the service's routes refuse there is a 405.
        package let isFallback: Bool

        package init(target: Target, pattern: String, maxBodyBytes: Int?, isFallback: Bool = false) {
            self.target = target
            self.pattern = pattern
            self.maxBodyBytes = maxBodyBytes
            self.isFallback = isFallback
        }
    }

    /// What a lookup found.
    package enum Match {
        case found(Route, parameters: [(String, Substring)])
        case methodNotAllowed(allow: String)
        /// A method the routes at the path do not allow, inside a fallback route's space (its
        /// service answers the 405).
        case methodNotAllowedWithin(Route, allow: String)
        case notFound
    }

    /// Routes at one place in the trie, by method: a short list searched in order (a
    /// dictionary hashed the method on every request).
    package struct Endpoint: Sendable {
        package var byMethod: [(method: String, route: Route)] = []
        package var anyMethod: Route?
        package var allowHeader: String {
            var methods = Set(byMethod.lazy.filter { !$0.route.isFallback }.map(\.method))
            if !methods.isEmpty, methods.contains("GET") { methods.insert("HEAD") }
            return methods.sorted().joined(separator: ", ")
        }

        package func route(for method: String) -> Route? {
            if let route = routeNamed(method) { return route }
            if method == "HEAD", let route = routeNamed("GET") { return route }
            return anyMethod
        }

        package func routeNamed(_ method: String) -> Route? {
            for entry in byMethod where entry.method == method { return entry.route }
            return nil
        }
        package var isEmpty: Bool { byMethod.isEmpty && anyMethod == nil }
        /// Whether a route other than a fallback is here.
        package var hasRoutes: Bool { byMethod.contains { !$0.route.isFallback } }
    }

    package final class Node: Sendable {
        /// Literal segments as bytes, compared with `memcmp`.
        package let literals: [(bytes: [UInt8], node: Node)]
        package let parameter: (name: String, node: Node)?
        package let exact: Endpoint
        package let prefix: Endpoint

        package init(literals: [(bytes: [UInt8], node: Node)], parameter: (name: String, node: Node)?, exact: Endpoint, prefix: Endpoint) {
            self.literals = literals
            self.parameter = parameter
            self.exact = exact
            self.prefix = prefix
        }
    }

    /// A route to compile, as written in the config.
    package struct Definition {
        package var methods: [String]
        package var host: String?
        package var path: String
        package var target: Target
        package var maxBodyBytes: Int?
        /// See ``Route/isFallback``: it gives way to any route defined at the same place.
        package var isFallback = false

        package init(methods: [String], host: String? = nil, path: String, target: Target, maxBodyBytes: Int? = nil, isFallback: Bool = false) {
            self.methods = methods
            self.host = host
            self.path = path
            self.target = target
            self.maxBodyBytes = maxBodyBytes
            self.isFallback = isFallback
        }
    }

    package struct DuplicateRoute: Error, CustomStringConvertible {
        package var description: String
    }

    private let hosts: [String: Node]
    private let any: Node

    private init(hosts: [String: Node], any: Node) {
        self.hosts = hosts
        self.any = any
    }

    /// A copy with nodes, routes and targets of its own (`copyTarget` makes each target's),
    /// for one event loop: a request retains its route and the nodes it walks, and objects
    /// that two cores retain per request move their cache line between them every time.
    package func localCopy(_ copyTarget: (Target) -> Target) -> Router<Target> {
        var routes: [ObjectIdentifier: Route] = [:]
        func copy(_ route: Route) -> Route {
            if let copied = routes[ObjectIdentifier(route)] { return copied }
            let copied = Route(target: copyTarget(route.target), pattern: route.pattern, maxBodyBytes: route.maxBodyBytes, isFallback: route.isFallback)
            routes[ObjectIdentifier(route)] = copied
            return copied
        }
        func copy(_ endpoint: Endpoint) -> Endpoint {
            Endpoint(byMethod: endpoint.byMethod.map { (method: $0.method, route: copy($0.route)) }, anyMethod: endpoint.anyMethod.map(copy))
        }
        func copy(_ node: Node) -> Node {
            Node(
                // `map` makes new arrays: the literal bytes are not shared either.
                literals: node.literals.map { (bytes: $0.bytes.map { $0 }, node: copy($0.node)) },
                parameter: node.parameter.map { (name: $0.name, node: copy($0.node)) },
                exact: copy(node.exact),
                prefix: copy(node.prefix))
        }
        return Router(hosts: hosts.mapValues(copy), any: copy(any))
    }

    /// Compiles definitions; two routes for the same host, path and method are an error.
    package init(_ definitions: [Definition]) throws(DuplicateRoute) {
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

    /// Whether any route names a host (if none does, a request's `Host` need not be looked at).
    package var routesByHost: Bool { !hosts.isEmpty }

    /// Finds the route for a request. `host` is lowercased without a port; `path` has no query.
    package func match(method: String, host: Substring?, path: Substring) -> Match {
        if let host, !hosts.isEmpty, let node = hosts[host.lowercased()] {
            let result = Self.lookup(node, method: method, path: path)
            if case .notFound = result {} else { return result }
        }
        return Self.lookup(any, method: method, path: path)
    }

    private static func lookup(_ root: Node, method: String, path: Substring) -> Match {
        var parameters: [(String, Substring)] = []
        var allow: String? = nil
        let found = path.utf8.withContiguousStorageIfAvailable { bytes in
            walk(root, bytes, from: 0, path: path, method: method, parameters: &parameters, allow: &allow)
        } ?? {
            // A path not stored contiguously (bridged): walked over a native copy.
            var copy = String(path)
            let native = copy[...]
            return copy.withUTF8 { bytes in walk(root, bytes, from: 0, path: native, method: method, parameters: &parameters, allow: &allow) }
        }()
        if let found {
            if found.isFallback, let allow { return .methodNotAllowedWithin(found, allow: allow) }
            return .found(found, parameters: parameters)
        }
        if let allow { return .methodNotAllowed(allow: allow) }
        return .notFound
    }

    /// Depth-first: literal, then parameter, then this node's prefix routes. The path is
    /// walked as bytes from `offset`, one segment at a time, empty ones skipped (no array of
    /// segments, no substring unless a parameter takes one).
    private static func walk(_ node: Node, _ bytes: UnsafeBufferPointer<UInt8>, from offset: Int, path: Substring, method: String,
                             parameters: inout [(String, Substring)], allow: inout String?) -> Route? {
        let slash = UInt8(ascii: "/")
        var start = offset
        while start < bytes.count, bytes[start] == slash { start += 1 }
        guard start < bytes.count else {
            if !node.exact.isEmpty {
                if let route = node.exact.route(for: method) {
                    if route.isFallback, node.exact.hasRoutes { allow = allow ?? node.exact.allowHeader }
                    return route
                }
                allow = allow ?? node.exact.allowHeader
            }
            return prefixRoute(node, method: method, allow: &allow)
        }
        var end = start
        while end < bytes.count, bytes[end] != slash { end += 1 }
        let length = end - start
        let segment = bytes.baseAddress! + start
        // By index: destructuring each entry copied (and retained) its bytes and node even
        // when the length ruled it out.
        let literals = node.literals
        for index in literals.indices where literals[index].bytes.count == length {
            guard literals[index].bytes.withUnsafeBufferPointer({ memcmp($0.baseAddress!, segment, length) == 0 }) else { continue }
            if let route = walk(literals[index].node, bytes, from: end, path: path, method: method, parameters: &parameters, allow: &allow) { return route }
            break
        }
        if let parameter = node.parameter {
            // Both ends are next to a `/` or the path's ends, so on character boundaries.
            let utf8 = path.utf8
            let lower = utf8.index(utf8.startIndex, offsetBy: start)
            let upper = utf8.index(lower, offsetBy: length)
            parameters.append((parameter.name, path[lower..<upper]))
            if let route = walk(parameter.node, bytes, from: end, path: path, method: method, parameters: &parameters, allow: &allow) { return route }
            parameters.removeLast()
        }
        return prefixRoute(node, method: method, allow: &allow)
    }

    private static func prefixRoute(_ node: Node, method: String, allow: inout String?) -> Route? {
        guard !node.prefix.isEmpty else { return nil }
        if let route = node.prefix.route(for: method) {
            if route.isFallback, node.prefix.hasRoutes { allow = allow ?? node.prefix.allowHeader }
            return route
        }
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
            let route = Route(target: definition.target, pattern: definition.path, maxBodyBytes: definition.maxBodyBytes, isFallback: definition.isFallback)
            let host = definition.host.map { " on host \($0)" } ?? ""
            func add(_ endpoint: inout Endpoint) throws(DuplicateRoute) {
                if definition.isFallback {
                    // A fallback fills the methods no route claimed, and only those.
                    if definition.methods.isEmpty {
                        if endpoint.anyMethod == nil { endpoint.anyMethod = route }
                    } else {
                        for method in definition.methods where endpoint.routeNamed(method) == nil { endpoint.byMethod.append((method, route)) }
                    }
                    return
                }
                if definition.methods.isEmpty {
                    if let existing = endpoint.anyMethod {
                        throw DuplicateRoute(description: "route \(definition.path)\(host) for any method repeats \(existing.pattern)")
                    }
                    endpoint.anyMethod = route
                }
                for method in definition.methods {
                    if let existing = endpoint.routeNamed(method) {
                        throw DuplicateRoute(description: "route \(method) \(definition.path)\(host) repeats \(existing.pattern)")
                    }
                    endpoint.byMethod.append((method, route))
                }
            }
            if isPrefix { try add(&node.prefix) } else { try add(&node.exact) }
        }

        func freeze() -> Node {
            Node(
                literals: literals.map { (Array($0.0.utf8), $0.1.freeze()) },
                parameter: parameter.map { ($0.name, $0.node.freeze()) },
                exact: exact,
                prefix: prefix
            )
        }
    }
}
