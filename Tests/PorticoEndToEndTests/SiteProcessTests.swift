import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import PorticoManager
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

/// The deployment `deploy/compose.yaml` describes, as real processes: two sites, each with
/// two `portico serve` sharing one PostgreSQL database and nothing else, replicating between
/// the sites over mutual TLS.
@Suite(.serialized, .timeLimit(.minutes(3))) struct SiteProcessTests {
    static let postgres = ProcessInfo.processInfo.environment["PORTICO_TEST_POSTGRES_URL"]
    static let required = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil
    static var usable: Bool { (postgres != nil && Tools.has("psql")) || required }

    @Test(.enabled(if: usable, "needs PostgreSQL: set PORTICO_TEST_POSTGRES_URL to a server where it may create databases (CI does) and install psql"))
    func twoSitesOfTwoManagersSharingADatabaseReplicateAndHandOverThePull() async throws {
        let admin = try #require(Self.postgres, "PORTICO_TEST_POSTGRES_URL is not set")
        let dir = try TemporaryDirectory()
        let suffix = UUID().uuidString.prefix(8).lowercased()
        var databases: [String: String] = [:]
        for site in ["east", "west"] {
            let name = "portico_\(site)_\(suffix)"
            let created = try await Tools.run("psql", [admin, "-v", "ON_ERROR_STOP=1", "-c", "CREATE DATABASE \(name)"])
            #expect(created.status == 0, "\(created.output)")
            var url = try #require(URLComponents(string: admin))
            url.path = "/" + name
            databases[site] = try #require(url.string)
        }
        defer {
            for site in ["east", "west"] {
                let drop = try? ChildProcess.start(Tools.path(of: "psql") ?? "/usr/bin/psql", [admin, "-c", "DROP DATABASE IF EXISTS portico_\(site)_\(suffix) WITH (FORCE)"])
                drop?.readOutput { _ in }
                _ = drop?.wait()
            }
        }
        // Each site: one identity, imported on its first manager only, and one secrets key,
        // which each manager is given a copy of. Nothing else: no file is shared between the
        // managers of a site, and the peers' certificates are recorded in the database.
        let identities = try ["east", "west"].map { try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: $0) }
        for (index, site) in ["east", "west"].enumerated() {
            try IdentityGenerator.write(identities[index], certificatePath: dir.file("\(site)/m1/ssl/server.crt"), privateKeyPath: dir.file("\(site)/m1/ssl/server.key"))
            try dir.write("\(site).pem", identities[index].certificatePEM)
            let key = Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
            for manager in 1...2 {
                try SecureFile.write(Array(key.utf8), to: dir.file("\(site)/m\(manager)/secrets.key"), mode: 0o600)
                _ = try ManagerConfigFile.write(
                    in: dir, file: "\(site)/m\(manager).yaml", dataDirectory: "m\(manager)/data",
                    identity: "{certificate: m\(manager)/ssl/server.crt, private_key: m\(manager)/ssl/server.key}",
                    listeners: [.client: "", .replication: "", .webservices: ""],
                    routes: ["{listener: webservices, path: /api/v1/*, service: api}", "{listener: replication, path: /replication/v1/*, service: replication}"],
                    more: """
                        site: {name: \(site)}
                        secrets: {key_file: m\(manager)/secrets.key}
                        storage: {postgres: {url: "\(databases[site]!)", pool_size: 4}}
                        """)
            }
        }
        var managers: [String: ServerProcess] = [:]
        defer { for process in managers.values { process.signal(SIGKILL) } }
        for name in ["east/m1", "east/m2", "west/m1", "west/m2"] {
            let process = try ServerProcess(["serve", "--config", dir.file(name + ".yaml")])
            await process.waitFor("listening", count: 3)
            managers[name] = process
        }
        func api(_ name: String) throws -> String { "https://127.0.0.1:\(try #require(managers[name]?.boundPort(.webservices)))/api/v1" }
        func replication(_ name: String) throws -> String { "https://127.0.0.1:\(try #require(managers[name]?.boundPort(.replication)))" }
        // The second manager of each site took the site's identity from the database.
        for (index, site) in ["east", "west"].enumerated() {
            let probe = try await TLSProbe.connect(port: try #require(managers["\(site)/m2"]?.boundPort(.client), "\(managers["\(site)/m2"]?.text ?? "")"))
            #expect(try probe.peerCertificate?.sha256Hex() == (try NIOSSLCertificate.fromPEMBytes(Array(identities[index].certificatePEM.utf8)).first?.sha256Hex()))
            await probe.close()
        }

        let portico = try #require(ServerProcess.executable)
        for site in ["east", "west"] {
            let created = try await Tools.run(portico, ["admin", "create", "--config", dir.file("\(site)/m1.yaml"), "--name", "ops-\(site)", "--role", "admin"],
                                              input: "site operator password\n")
            #expect(created.status == 0, "\(created.output)")
        }
        // East calls west's first manager, west calls east's second: every manager is involved.
        let eastPeer = try await Tools.run(portico, ["peer", "add", "--config", dir.file("east/m1.yaml"), "--name", "west", "--url", try replication("west/m1"),
                                                     "--certificate", dir.file("west.pem")])
        #expect(eastPeer.status == 0, "\(eastPeer.output)")
        let westPeer = try await Tools.run(portico, ["peer", "add", "--config", dir.file("west/m1.yaml"), "--name", "east", "--url", try replication("east/m2"),
                                                     "--certificate", dir.file("east.pem")])
        #expect(westPeer.status == 0, "\(westPeer.output)")

        try await APIClient.with { client in
            let east2 = try await client.login(try api("east/m2"), "ops-east")
            let created = try await client.call(.POST, try api("east/m2") + "/policies", token: east2, json: #"{"name":"Shared","document":{"usb":"blocked"}}"#)
            #expect(created.status == 201, "\(created.json)")
            let policyID = try #require(created.json["id"] as? String)
            // It reaches both managers of the other site (one database there).
            let west1 = try await client.login(try api("west/m1"), "ops-west")
            let west2 = try await client.login(try api("west/m2"), "ops-west")
            try await eventually("the policy made at east reaches west", within: .seconds(60)) {
                try await client.call(.GET, try api("west/m1") + "/policies/\(policyID)", token: west1).status == 200
            }
            #expect(try await client.call(.GET, try api("west/m2") + "/policies/\(policyID)", token: west2).status == 200)
            // An edit at west comes back to both east managers.
            let edited = try await client.call(.POST, try api("west/m2") + "/policies/\(policyID)/versions", token: west2, json: #"{"document":{"usb":"allowed"}}"#)
            #expect(edited.status == 201, "\(edited.json)")
            let east1 = try await client.login(try api("east/m1"), "ops-east")
            try await eventually("the edit made at west reaches east", within: .seconds(60)) {
                try await client.call(.GET, try api("east/m1") + "/policies/\(policyID)", token: east1).json["current_version"] as? Int == 2
            }

            // One east manager pulls from west; the other stands by and says who pulls.
            var puller = ""
            try await eventually("one east manager pulls, the other stands by", within: .seconds(60)) {
                var standing: [String] = []
                for name in ["east/m1", "east/m2"] {
                    let peers = try await client.call(.GET, try api(name) + "/peers", token: name == "east/m1" ? east1 : east2)
                    let west = (peers.json["items"] as? [[String: Any]])?.first { $0["name"] as? String == "west" }
                    if west?["pulled_by"] is String { standing.append(name) }
                }
                guard standing.count == 1 else { return false }
                puller = standing[0] == "east/m1" ? "east/m2" : "east/m1"
                return true
            }
            // The puller stops; the other takes over and west's next edit still arrives.
            let remaining = puller == "east/m1" ? "east/m2" : "east/m1"
            let stopping = try #require(managers[puller])
            stopping.signal(SIGTERM)
            #expect(await stopping.wait() == 0)
            let again = try await client.call(.POST, try api("west/m1") + "/policies/\(policyID)/versions", token: west1, json: #"{"document":{"usb":"audit"}}"#)
            #expect(again.status == 201)
            let token = remaining == "east/m1" ? east1 : east2
            try await eventually("the standby east manager takes over the pull", within: .seconds(60)) {
                try await client.call(.GET, try api(remaining) + "/policies/\(policyID)", token: token).json["current_version"] as? Int == 3
            }
        }
    }
}

/// A small HTTPS JSON client that trusts any certificate (loopback test servers only).
struct APIClient {
    let http: HTTPClient

    static func with<T>(_ body: (APIClient) async throws -> T) async throws -> T {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: HTTPClient.Configuration(tlsConfiguration: tls))
        do {
            let result = try await body(APIClient(http: http))
            try await http.shutdown()
            return result
        } catch {
            try? await http.shutdown()
            throw error
        }
    }

    func call(_ method: HTTPMethod, _ url: String, token: String? = nil, json: String? = nil) async throws -> (status: UInt, json: [String: Any]) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let token { request.headers.add(name: "authorization", value: "Bearer \(token)") }
        if let json {
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        let response = try await http.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 4 << 20)
        return (response.status.code, (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView))) as? [String: Any] ?? [:])
    }

    func login(_ api: String, _ name: String) async throws -> String {
        let answer = try await call(.POST, api + "/auth/login", json: #"{"name":"\#(name)","password":"site operator password"}"#)
        return try #require(answer.json["access_token"] as? String, "login at \(api) answered \(answer.status) \(answer.json)")
    }
}
