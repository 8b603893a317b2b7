import AsyncHTTPClient
import NIOHTTP1
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

/// Services declare their routes; the gateway compiles them under the config route that names
/// the service, hands the handler the matched parameters, and asks the service for its 404,
/// 405 and 500 documents.
@Suite struct ServiceRouteTests {
    static let routes = """
        routes:
          - {listener: console, path: /*, service: library}
          - {listener: console, path: /books/special/*, service: shelf}
          - {listener: reporting, path: "/books/{id}", service: library}
        """

    @Test func declaredRoutesAreServedWithTheirParameters() async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            try await TestClient.with(trusting: gw.identity.certificate, http2: true) { client in
                let list = try await TestClient.get(client, try await gw.url(.console, "/books"))
                #expect(list.status == 200 && list.body == "library: list")
                let added = try await TestClient.get(client, try await gw.url(.console, "/books"), method: .POST, body: "dune")
                #expect(added.status == 201 && added.body == "library: added dune")
                let book = try await TestClient.get(client, try await gw.url(.console, "/books/42?x=1"))
                #expect(book.status == 200 && book.body == "library: book 42")
                // A literal segment wins over a parameter.
                let broken = try await TestClient.get(client, try await gw.url(.console, "/books/broken"))
                #expect(broken.status == 500 && broken.body == "library refused: failed GET /books/broken")
                let torn = try await TestClient.get(client, try await gw.url(.console, "/books/7/pages/3"), method: .DELETE)
                #expect(torn.status == 200 && torn.body == "library: torn 3 of 7")
                // HEAD is answered by the GET route, without a body.
                let head = try await TestClient.get(client, try await gw.url(.console, "/books/42"), method: .HEAD)
                #expect(head.status == 200 && head.body.isEmpty)
            }
        }
    }

    @Test func theServiceAnswersWhatNoneOfItsRoutesTakes() async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            try await TestClient.with(trusting: gw.identity.certificate, http2: false) { client in
                let missing = try await TestClient.get(client, try await gw.url(.console, "/shelves/1"))
                #expect(missing.status == 404 && missing.body == "library refused: notFound GET /shelves/1")
                #expect(missing.headers.first(name: "content-type") == "text/x-library")
                let method = try await TestClient.get(client, try await gw.url(.console, "/books/42"), method: .PUT, body: "x")
                #expect(method.status == 405 && method.body.hasPrefix("library refused: methodNotAllowed"))
                #expect(method.headers.first(name: "allow") == "GET, HEAD")
                let deeper = try await TestClient.get(client, try await gw.url(.console, "/books/7/pages"))
                #expect(deeper.status == 404 && deeper.body.hasPrefix("library refused: notFound"))
            }
        }
    }

    @Test func aMoreSpecificConfigRouteKeepsItsPaths() async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            try await TestClient.with(trusting: gw.identity.certificate, http2: false) { client in
                // /books/special/* goes to the shelf, though the library's /books/{id} would
                // take /books/special: the shelf has no route there, so it refuses.
                let special = try await TestClient.get(client, try await gw.url(.console, "/books/special"))
                #expect(special.status == 404 && special.body.hasPrefix("shelf refused: notFound"))
                let other = try await TestClient.get(client, try await gw.url(.console, "/books/special/9"))
                #expect(other.status == 404 && other.body.hasPrefix("shelf refused"))
                // On reporting only /books/{id} is routed to the library: /books is not.
                let book = try await TestClient.get(client, try await gw.url(.reporting, "/books/5"))
                #expect(book.status == 200 && book.body == "library: book 5")
                let list = try await TestClient.get(client, try await gw.url(.reporting, "/books"))
                #expect(list.status == 404 && !list.body.contains("library"))
            }
        }
    }

    @Test func eachConfigRouteTakesOnlyTheServiceRoutesItReaches() throws {
        var registry = ServiceRegistry()
        registry.register("library", TestServices.Library(name: "library"))
        registry.register("shelf", TestServices.Library(name: "shelf"))
        let config = try TestGateway.configuration(yaml: """
            identity: {certificate: a.crt, private_key: a.key}
            routes:
              - {listener: console, path: /books/*, service: library}
              - {listener: console, path: /books, service: shelf}
            """, dir: TemporaryDirectory())
        // Each config route keeps its own space: /books is the shelf's, the rest the library's.
        let reach = try Router(config.routes.enumerated().map { index, route in
            Router<Int>.Definition(methods: route.methods, host: route.host, path: route.path, target: index, maxBodyBytes: nil)
        })
        let library = Gateway.serviceDefinitions(registry.services["library"]!, under: config.routes[0], index: 0, reach: reach)
        let shelf = Gateway.serviceDefinitions(registry.services["shelf"]!, under: config.routes[1], index: 1, reach: reach)
        #expect(Set(library.filter { !$0.isFallback }.map(\.path)) == ["/books/{id}", "/books/{id}/pages/{page}", "/books/broken"])
        #expect(Set(shelf.filter { !$0.isFallback }.map(\.path)) == ["/books"])
        #expect(throws: Router<Endpoint>.DuplicateRoute.self) {
            _ = try Router(library + library.filter { !$0.isFallback })
        }
    }
}
