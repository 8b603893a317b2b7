import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL
@testable import PorticoManager
import PorticoGateway
import PorticoServer
import PorticoStore
import Testing

/// Three managers on loopback in a chain, A - B - C (A and C know only B), each with its
/// own database, identity and ports, replicating over their mutual-TLS listeners.
@Suite(.timeLimit(.minutes(3))) struct ReplicationStreamTests {
    struct Chain {
        let a: TestManager
        let b: TestManager
        let c: TestManager
        var all: [TestManager] { [a, b, c] }
    }

    static func withChain(linkTiming: PeerLinks.Timing = .fast, startLinks: Bool = true, _ body: (Chain) async throws -> Void) async throws {
        let identities = try ["site-a", "site-b", "site-c"].map { try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: $0) }
        func place(_ own: Int, peers: [Int]) -> (String) throws -> Void {
            { dir in
                try IdentityGenerator.write(identities[own], certificatePath: dir + "/ssl/server.crt", privateKeyPath: dir + "/ssl/server.key")
                for peer in peers { try identities[peer].certificatePEM.write(toFile: dir + "/ssl/peers/site-\(["a", "b", "c"][peer]).pem", atomically: true, encoding: .utf8) }
            }
        }
        try await TestManager.with(site: "site-a", before: place(0, peers: [1]), linkTiming: linkTiming) { a in
            try await TestManager.with(site: "site-b", before: place(1, peers: [0, 2]), linkTiming: linkTiming) { b in
                try await TestManager.with(site: "site-c", before: place(2, peers: [1]), linkTiming: linkTiming) { c in
                    let fingerprints = try identities.map { try ReplicationLinkTests.fingerprint($0.certificatePEM) }
                    try await a.store.addPeer(PeerRecord(name: "site-b", url: b.replicationURL, certificateFingerprint: fingerprints[1]))
                    try await b.store.addPeer(PeerRecord(name: "site-a", url: a.replicationURL, certificateFingerprint: fingerprints[0]))
                    try await b.store.addPeer(PeerRecord(name: "site-c", url: c.replicationURL, certificateFingerprint: fingerprints[2]))
                    try await c.store.addPeer(PeerRecord(name: "site-b", url: b.replicationURL, certificateFingerprint: fingerprints[1]))
                    let chain = Chain(a: a, b: b, c: c)
                    guard startLinks else { return try await body(chain) }
                    try await Self.running(chain.all) { try await body(chain) }
                }
            }
        }
    }

    /// Runs the managers' peer links while `body` runs.
    static func running(_ managers: [TestManager], _ body: () async throws -> Void) async throws {
        let tasks = managers.map { manager in Task { try await manager.links.run() } }
        defer {
            for task in tasks { task.cancel() }
            for manager in managers { manager.links.stopPullers() }
        }
        try await body()
    }

    static func currentDocument(_ store: Store, policyNamed name: String) async throws -> String? {
        guard let policy = try await store.policies().first(where: { $0.name == name }) else { return nil }
        return try await store.policyVersions(policyID: policy.id).first { $0.version == policy.currentVersion }?.document
    }

    @Test func editsCrossTheChainBothWaysConvergeAndAreNotDuplicated() async throws {
        try await Self.withChain { chain in
            let (a, b, c) = (chain.a, chain.b, chain.c)
            // A policy made through A's API reaches C through B.
            let admin = try await a.apiToken(role: .admin)
            let created = try await APICaller.with(a) { api in
                try await api.call(.POST, "/policies", token: admin, json: #"{"name":"Baseline","document":{"firewall":true}}"#)
            }
            let policyID = try #require(created.json["id"] as? String, "\(created.status) \(created.text)")
            try await eventually("the policy reaches C", watching: chain.all) { try await c.store.policy(id: policyID) != nil }
            #expect(try await Self.currentDocument(c.store, policyNamed: "Baseline")?.contains("firewall") == true)
            #expect(try await c.store.auditEntries(action: "policy.create").count == 1, "the audit entry travels with it")

            // Concurrent edits at both ends converge on one winner everywhere.
            async let fromA = a.store.addPolicyVersion(policyID: policyID, document: #"{"edit":"a"}"#, by: "alice")
            async let fromC = c.store.addPolicyVersion(policyID: policyID, document: #"{"edit":"c"}"#, by: "carol")
            _ = try await (fromA, fromC)
            try await eventually("every site holds the same current document", watching: chain.all) {
                var documents: Set<String?> = []
                for manager in chain.all { documents.insert(try await Self.currentDocument(manager.store, policyNamed: "Baseline")) }
                return documents.count == 1 && documents.first! != nil && documents.first!!.contains("edit")
            }

            // Same-name creations at both ends: both kept, the later renamed, identically.
            async let groupA = a.store.createGroup(name: "Laptops")
            async let groupC = c.store.createGroup(name: "Laptops")
            let (laptopsA, laptopsC) = try await (groupA, groupC)
            try await eventually("both groups everywhere, one renamed", watching: chain.all) {
                for manager in chain.all {
                    let names = try await manager.store.groups().map(\.name).sorted()
                    if names != ["Laptops", "Laptops ~1"] { return false }
                }
                return true
            }
            let namesAtA = Dictionary(uniqueKeysWithValues: try await a.store.groups().map { ($0.id, $0.name) })
            for manager in [b, c] {
                #expect(Dictionary(uniqueKeysWithValues: try await manager.store.groups().map { ($0.id, $0.name) }) == namesAtA)
            }
            #expect(Set(namesAtA.keys) == [laptopsA.id, laptopsC.id])

            // Events reported at C arrive at A once, however many paths.
            try await c.store.ingestEvents((1...50).map { EventRecord(deviceID: "dev-c", eventID: "e\($0)", kind: "scan", occurredMilliseconds: Int64($0), body: "{}") })
            try await eventually("C's events at A", watching: chain.all) { try await a.store.eventCount() == 50 }
            #expect(try await b.store.eventCount() == 50)

            // Caught up: digests agree and the API and /metrics say where each link stands.
            try await eventually("B caught up with A and C", watching: chain.all) {
                let statuses = b.links.statuses
                return statuses["site-a"]?.catchingUp == false && statuses["site-c"]?.catchingUp == false && statuses["site-a"]?.cursor != nil
            }
            try await eventually("digests agree", watching: chain.all) {
                try await a.links.compareDigestsNow()
                try await c.links.compareDigestsNow()
                return a.links.statuses["site-b"]?.divergent == [] && c.links.statuses["site-b"]?.divergent == []
            }
            #expect(try await a.store.replicationDigest() == c.store.replicationDigest())
            let token = try await b.apiToken(role: .auditor)
            let peers = try await APICaller.with(b) { api in try await api.call(.GET, "/peers", token: token) }
            let siteA = try #require(peers.items.first { $0["name"] as? String == "site-a" })
            #expect(siteA["behind"] as? Int == 0 && (siteA["cursor"] as? Int ?? 0) > 0 && (siteA["applied"] as? Int ?? 0) > 0, "\(siteA)")
            let metrics = try await APICaller.with(b) { api in
                try await APICaller(client: api.client, base: b.apiURL.replacingOccurrences(of: "/api/v1", with: "")).call(.GET, "/metrics").text
            }
            #expect(metrics.contains(#"portico_replication_connected{peer="site-c"} 1"#), "\(metrics.prefix(2000))")
            #expect(metrics.contains(#"portico_replication_behind_changes{peer="site-a"} 0"#))
            #expect(metrics.contains(#"portico_replication_applied_total{peer="site-a"}"#))
        }
    }

    @Test func aManagerThatWasDownCatchesUpFromItsCursorAndAppliesEachChangeOnce() async throws {
        var timing = PeerLinks.Timing.fast
        timing.pageSize = 50
        try await Self.withChain(linkTiming: timing, startLinks: false) { chain in
            let (a, b) = (chain.a, chain.b)
            // While B is not replicating, A changes a lot.
            for index in 1...120 { _ = try await a.store.createGroup(name: "group-\(index)") }
            try await a.store.ingestEvents((1...300).map { EventRecord(deviceID: "dev-a", eventID: "e\($0)", kind: "scan", occurredMilliseconds: Int64($0), body: "{}") })
            // B comes up and catches up in pages of 50, showing progress.
            try await Self.running([a, b]) {
                try await eventually("B has A's groups and events", watching: [a, b]) {
                    let groups = try await b.store.groups().count
                    let events = try await b.store.eventCount()
                    return groups == 120 && events == 300
                }
                try await eventually("B reports itself caught up", watching: [a, b]) { b.links.statuses["site-a"].map { !$0.catchingUp && $0.cursor != nil } ?? false }
            }
            let cursor = try #require(try await b.store.replicationCursors()["site-a"])
            #expect(cursor.position == cursor.head && cursor.position > 0)
            let appliedFirst = b.links.statuses["site-a"]?.applied ?? 0
            #expect(appliedFirst >= 420)
            // Down again; A changes a little; back up: only the new changes are pulled.
            for index in 121...125 { _ = try await a.store.createGroup(name: "group-\(index)") }
            try await Self.running([a, b]) {
                // The groups are committed before the link counts them: wait for both.
                try await eventually("B has the 5 new groups and has counted them", watching: [a, b]) {
                    let groups = try await b.store.groups().count
                    return groups == 125 && (b.links.statuses["site-a"]?.applied ?? 0) - appliedFirst >= 5
                }
            }
            #expect((b.links.statuses["site-a"]?.applied ?? 0) - appliedFirst == 5, "only what changed since the cursor is applied")
            #expect(try await b.store.eventCount() == 300)
        }
    }

    @Test func eventsAndAuditGoOneWayWhenThePeerSaysSo() async throws {
        try await Self.withChain(startLinks: false) { chain in
            let (a, b) = (chain.a, chain.b)
            // A sends its history to B and takes none of B's.
            let peerB = try #require(try await a.store.peers().first { $0.name == "site-b" })
            try await a.store.write { try await $0.upsertPeer(PeerRecord(name: peerB.name, url: peerB.url, certificateFingerprint: peerB.certificateFingerprint, history: .send)) }
            try await a.store.ingestEvents([EventRecord(deviceID: "dev-a", eventID: "a1", kind: "scan", occurredMilliseconds: 1, body: "{}")])
            try await b.store.ingestEvents([EventRecord(deviceID: "dev-b", eventID: "b1", kind: "scan", occurredMilliseconds: 1, body: "{}")])
            try await b.store.audit(AuditEntry(actor: "operator:bob", action: "group.create", target: "x", source: "127.0.0.1", result: "ok"))
            _ = try await b.store.createGroup(name: "made-at-b-after-its-events")
            try await Self.running([a, b]) {
                try await eventually("A's events at B", watching: [a, b]) { try await b.store.eventCount() == 2 }
                try await eventually("B's group at A", watching: [a, b]) { try await a.store.groups().map(\.name) == ["made-at-b-after-its-events"] }
            }
            // B's group came after B's event and audit entry in B's log: they were left out, not late.
            #expect(try await a.store.eventCount() == 1)
            #expect(try await a.store.auditEntries(actor: "operator:bob").isEmpty)
            let console = try await ConsoleBrowser.with(b) { browser in
                try await b.makeOperator("audrey", role: .auditor)
                _ = try await browser.signIn("audrey")
                return try await browser.get("/peers").html
            }
            #expect(console.contains("<td class=\"peer-replication\">up to date at"), "\(console)")
        }
    }

    @Test func changesAreRefusedToAnUnlistedCertificateAndToAnotherSchemaVersion() async throws {
        try await Self.withChain(startLinks: false) { chain in
            let (a, b) = (chain.a, chain.b)
            _ = try await b.links.checkAll()
            // C is not A's peer and A's listener does not trust its certificate: refused in the handshake.
            let c = chain.c
            _ = try await a.store.createGroup(name: "secret-ish")
            let pulled = try await Self.get(a.replicationURL + "/replication/v1/changes?after=0", as: c, trusting: a)
            #expect(pulled.status == 0, "A's listener does not trust C's certificate: \(pulled)")
            // B is A's peer, but asks as an older schema version: 409 and why.
            _ = try await a.links.checkAll()
            let older = try await Self.get(a.replicationURL + "/replication/v1/changes?after=0&schema=\(Store.latestSchemaVersion - 1)", as: b, trusting: a)
            #expect(older.status == 409 && older.body.contains("schema version"), "\(older)")
            let current = try await Self.get(a.replicationURL + "/replication/v1/changes?after=0&schema=\(Store.latestSchemaVersion)", as: b, trusting: a)
            #expect(current.status == 200 && current.body.contains("secret-ish"), "\(current)")
        }
    }

    /// One GET over mutual TLS with `manager`'s identity as client certificate, trusting `server`.
    /// Status 0: the TLS handshake itself was refused.
    static func get(_ url: String, as manager: TestManager, trusting server: TestManager) async throws -> (status: UInt, body: String) {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateChain = manager.identity.current.chain.map { .certificate($0) }
        tls.privateKey = .privateKey(manager.identity.current.privateKey)
        tls.trustRoots = .certificates(server.identity.current.chain)
        tls.certificateVerification = .noHostnameVerification
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: HTTPClient.Configuration(tlsConfiguration: tls))
        defer { _ = client.shutdown() }
        do {
            let response = try await client.execute(HTTPClientRequest(url: url), timeout: .seconds(10))
            let body = try await response.body.collect(upTo: 1 << 20)
            return (response.status.code, String(buffer: body))
        } catch {
            return (0, "\(error)")
        }
    }
}
