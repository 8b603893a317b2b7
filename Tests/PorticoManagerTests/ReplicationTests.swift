import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOSSL
@testable import PorticoManager
import PorticoGateway
import PorticoServer
import PorticoStore
import Testing

/// Peer managers over mutual TLS: each trusts the other's certificate, calls the other with
/// its own, and says hello; strangers and other schema versions are refused.
@Suite(.timeLimit(.minutes(2))) struct ReplicationLinkTests {
    static func fingerprint(_ pem: String) throws -> String {
        let leaf = try #require(try NIOSSLCertificate.fromPEMBytes(Array(pem.utf8)).first)
        return SHA256.hash(data: try leaf.toDERBytes()).map { String(format: "%02x", $0) }.joined()
    }

    /// Two managers, A and B, each with the other's certificate in its replication trust folder.
    static func withPair<T>(_ body: (TestManager, TestManager, IdentityGenerator.Generated, IdentityGenerator.Generated) async throws -> T) async throws -> T {
        let a = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "site-a")
        let b = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "site-b")
        func place(own: IdentityGenerator.Generated, peer: IdentityGenerator.Generated, peerName: String) -> (String) throws -> Void {
            { dir in
                try IdentityGenerator.write(own, certificatePath: dir + "/ssl/server.crt", privateKeyPath: dir + "/ssl/server.key")
                try peer.certificatePEM.write(toFile: dir + "/ssl/peers/\(peerName).pem", atomically: true, encoding: .utf8)
            }
        }
        return try await TestManager.with(site: "site-a", before: place(own: a, peer: b, peerName: "site-b")) { managerA in
            try await TestManager.with(site: "site-b", before: place(own: b, peer: a, peerName: "site-a")) { managerB in
                try await body(managerA, managerB, a, b)
            }
        }
    }

    @Test func twoManagersThatTrustEachOtherShakeHandsOverMutualTLS() async throws {
        try await Self.withPair { a, b, identityA, identityB in
            try await a.store.addPeer(PeerRecord(name: "site-b", url: b.replicationURL, certificateFingerprint: try Self.fingerprint(identityB.certificatePEM)))
            try await b.store.addPeer(PeerRecord(name: "site-a", url: a.replicationURL, certificateFingerprint: try Self.fingerprint(identityA.certificatePEM)))
            let fromA = try await a.links.checkAll()
            let fromB = try await b.links.checkAll()
            #expect(fromA.map(\.connected) == [true], "\(fromA)")
            #expect(fromB.map(\.connected) == [true], "\(fromB)")
            #expect(try await a.store.peers().first?.siteID == "site-b")
            #expect(try await b.store.peers().first?.siteID == "site-a")
            let token = try await a.apiToken(role: .auditor)
            let peers = try await APICaller.with(a) { api in try await api.call(.GET, "/peers", token: token) }
            #expect(peers.items.first?["connected"] as? Bool == true && peers.items.first?["site_id"] as? String == "site-b" && peers.items.first?["last_contact_at"] is String)
            try await a.makeOperator("audrey", role: .auditor)
            try await ConsoleBrowser.with(a) { browser in
                _ = try await browser.signIn("audrey")
                #expect(try await browser.get("/").html.contains("<b id=\"peers\">1 of 1 connected</b>"))
                #expect(try await browser.get("/peers").html.contains("<td class=\"peer-link\">connected, last contact"))
            }
        }
    }

    @Test func aStrangerIsRefusedBeforeAnyRequestAndAnUnlistedCertificateAtTheDoor() async throws {
        try await Self.withPair { a, b, _, identityB in
            // A stranger's certificate does not chain to A's trust: the handshake fails.
            let stranger = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "stranger")
            let strangerLinks = try await Self.caller(as: stranger, trusting: a)
            await #expect(throws: (any Error).self) { try await strangerLinks(a.replicationURL + "/replication/v1/hello") }
            // B's certificate passes TLS (A trusts it) but B is not one of A's peers yet: 403.
            let unlisted = try await Self.caller(as: identityB, trusting: a)
            let status = try await unlisted(a.replicationURL + "/replication/v1/hello")
            #expect(status == 403)
            _ = b
        }
    }

    @Test func managersOfDifferentSchemaVersionsRefuseToReplicateAndBothSayWhy() async throws {
        try await Self.withPair { a, b, identityA, identityB in
            try await a.store.addPeer(PeerRecord(name: "site-b", url: b.replicationURL, certificateFingerprint: try Self.fingerprint(identityB.certificatePEM)))
            try await b.store.addPeer(PeerRecord(name: "site-a", url: a.replicationURL, certificateFingerprint: try Self.fingerprint(identityA.certificatePEM)))
            // A, as an older build would be.
            let older = PeerLinks(store: a.store, identity: { a.identity.current }, trustFolder: a.directory + "/ssl/peers", schemaVersion: Store.latestSchemaVersion - 1,
                                  logger: TestManager.quiet)
            let status = try #require(try await older.checkAll().first)
            #expect(!status.connected)
            #expect(status.lastError?.contains("schema version \(Store.latestSchemaVersion) and this manager \(Store.latestSchemaVersion - 1)") == true, "\(status.lastError ?? "")")
        }
    }

    /// A one-request client with `identity` as its client certificate, trusting `manager`'s certificate.
    static func caller(as identity: IdentityGenerator.Generated, trusting manager: TestManager) async throws -> @Sendable (String) async throws -> UInt {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(Array(identity.certificatePEM.utf8)).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(identity.privateKeyPEM.utf8), format: .pem))
        tls.trustRoots = .certificates(manager.identity.current.chain)
        tls.certificateVerification = .noHostnameVerification
        let configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        return { url in
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            do {
                var request = HTTPClientRequest(url: url)
                request.method = .POST
                request.body = .bytes(ByteBuffer(string: #"{"site_id":"x","schema_version":1}"#))
                let response = try await client.execute(request, timeout: .seconds(10))
                try await client.shutdown()
                return response.status.code
            } catch {
                try? await client.shutdown()
                throw error
            }
        }
    }

    @Test func peersNamedInTheConfigFileAreTrustedAndRecorded() async throws {
        let a = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "site-a")
        let b = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "site-b")
        // A names B in its config (B's address is not known yet: A will fail to call it);
        // B names A with A's real address.
        try await TestManager.with(site: "site-a", before: { dir in
            try IdentityGenerator.write(a, certificatePath: dir + "/ssl/server.crt", privateKeyPath: dir + "/ssl/server.key")
            try b.certificatePEM.write(toFile: dir + "/site-b.crt", atomically: true, encoding: .utf8)
        }, extraYAML: "peers:\n  - {name: site-b, url: \"https://127.0.0.1:1\", certificate: site-b.crt}") { managerA in
            #expect(try await managerA.store.peers().map(\.name) == ["site-b"])
            try await TestManager.with(site: "site-b", before: { dir in
                try IdentityGenerator.write(b, certificatePath: dir + "/ssl/server.crt", privateKeyPath: dir + "/ssl/server.key")
                try a.certificatePEM.write(toFile: dir + "/site-a.crt", atomically: true, encoding: .utf8)
            }, extraYAML: "peers:\n  - {name: site-a, url: \"\(managerA.replicationURL)\", certificate: site-a.crt}") { managerB in
                let fromB = try await managerB.links.checkAll()
                #expect(fromB.map(\.connected) == [true], "\(fromB)")
                let fromA = try await managerA.links.checkAll()
                #expect(fromA.map(\.connected) == [false] && fromA.first?.lastError != nil)
            }
        }
    }
}
