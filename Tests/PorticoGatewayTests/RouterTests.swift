import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

@Suite struct RouterTests {
    typealias R = Router<String>

    private func router(_ routes: [(methods: [String], host: String?, path: String, name: String)]) throws -> R {
        try R(routes.map { .init(methods: $0.methods, host: $0.host, path: $0.path, target: $0.name, maxBodyBytes: nil) })
    }

    private func target(_ router: R, _ method: String, _ path: String, host: String? = nil) -> String? {
        if case .found(let route, _) = router.match(method: method, host: host.map { $0[...] }, path: path[...]) { return route.target }
        return nil
    }

    @Test func exactPrefixAndParameterRoutes() throws {
        let r = try router([
            ([], nil, "/healthz", "health"),
            (["GET"], nil, "/api/*", "api"),
            (["GET"], nil, "/api/devices/{id}", "device"),
            (["GET"], nil, "/api/devices/new", "new-device"),
            (["POST"], nil, "/api/devices/{id}/commands", "command"),
        ])
        #expect(target(r, "GET", "/healthz") == "health")
        #expect(target(r, "DELETE", "/healthz") == "health")
        #expect(target(r, "GET", "/healthz/more") == nil)
        #expect(target(r, "GET", "/api") == "api")
        #expect(target(r, "GET", "/api/anything/deep") == "api")
        #expect(target(r, "GET", "/api/devices/42") == "device")
        #expect(target(r, "GET", "/api/devices/new") == "new-device")
        #expect(target(r, "POST", "/api/devices/42/commands") == "command")
        // A parameter route that fails deeper falls back to the prefix above it.
        #expect(target(r, "GET", "/api/devices/42/other") == "api")
        #expect(target(r, "GET", "/elsewhere") == nil)
    }

    @Test func parametersAreCaptured() throws {
        let r = try router([(["GET"], nil, "/sites/{site}/devices/{id}", "d")])
        guard case .found(_, let parameters) = r.match(method: "GET", host: nil, path: "/sites/north/devices/7") else {
            Issue.record("no match")
            return
        }
        #expect(parameters.map { "\($0.0)=\($0.1)" } == ["site=north", "id=7"])
        // The path as a request hands it over: a slice of the target before its query, with
        // characters beyond ASCII in a segment.
        let target = "//sites/nörd-α//devices/7?x=/y"
        let path = target[..<target.firstIndex(of: "?")!]
        guard case .found(_, let sliced) = r.match(method: "GET", host: nil, path: path) else {
            Issue.record("no match for a slice")
            return
        }
        #expect(sliced.map { "\($0.0)=\($0.1)" } == ["site=nörd-α", "id=7"])
    }

    @Test func wrongMethodGives405WithAllow() throws {
        let r = try router([(["GET"], nil, "/items", "list"), (["POST"], nil, "/items", "create")])
        guard case .methodNotAllowed(let allow) = r.match(method: "DELETE", host: nil, path: "/items") else {
            Issue.record("expected 405")
            return
        }
        #expect(allow == "GET, HEAD, POST")
        #expect(target(r, "HEAD", "/items") == "list")
        if case .notFound = r.match(method: "GET", host: nil, path: "/other") {} else { Issue.record("expected 404") }
    }

    @Test func hostRoutesWinOverAnyHost() throws {
        let r = try router([([], "api.example.com", "/x", "host"), ([], nil, "/x", "any"), ([], nil, "/y", "y")])
        #expect(target(r, "GET", "/x", host: "API.example.com") == "host")
        #expect(target(r, "GET", "/x", host: "other") == "any")
        #expect(target(r, "GET", "/y", host: "api.example.com") == "y")
    }

    @Test func duplicateRoutesAreRefused() {
        #expect(throws: R.DuplicateRoute.self) { try router([(["GET"], nil, "/a", "1"), (["GET", "POST"], nil, "/a", "2")]) }
        #expect(throws: Never.self) { try router([(["GET"], nil, "/a", "1"), (["POST"], nil, "/a", "2"), (["GET"], "h", "/a", "3")]) }
    }

    @Test func patternProblemsAreExplained() {
        #expect(RoutePattern.problem(in: "/a/*/b") != nil)
        #expect(RoutePattern.problem(in: "a") != nil)
        #expect(RoutePattern.problem(in: "/a/{id") != nil)
        #expect(RoutePattern.problem(in: "/a/x{id}") != nil)
        #expect(RoutePattern.problem(in: "/a/{id}/*") == nil)
        #expect(RoutePattern.problem(in: "/") == nil)
    }
}

@Suite struct EncodingTests {
    @Test func datesAreIMFFixdate() {
        #expect(HTTPDate.format(784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.format(1_795_305_600) == "Sun, 22 Nov 2026 00:00:00 GMT")
    }

    @Test func headerNamesCompareWithoutCaseOnlyForLetters() {
        #expect("Content-Length".caseInsensitiveEquals("content-length"))
        #expect(!"content-length".caseInsensitiveEquals("content\rlength"))
        #expect(!"connection".caseInsensitiveEquals("connectio"))
    }
}
