import AsyncHTTPClient
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import PorticoGateway
import PorticoServer
import PorticoStore
import Prometheus
import ServiceLifecycle

/// This manager's side of each peer link: it calls every configured peer on the peer's
/// replication listener with mutual TLS (its own identity as the client certificate, and
/// only the peer's certificate trusted), says hello, pulls the peer's change log from its
/// cursor (long polls, so that a change there arrives here within a round trip), compares
/// digests now and then, and keeps each link's status for the API, the console and
/// `/metrics`.
public final class PeerLinks: Service, Sendable {
    public struct Status: Sendable, Equatable {
        public var name: String
        public var connected: Bool
        public var lastContactMilliseconds: Int64?
        public var lastError: String?
        /// The site the peer said it is.
        public var siteID: String?
        /// How far this site has applied the peer's change log, and the log's end when last asked.
        public var cursor: Int64?
        public var head: Int64?
        /// Milliseconds between the newest change applied from the peer being made there and
        /// now, while this site is behind; 0 once caught up.
        public var lagMilliseconds: Int64?
        /// Changes applied from this peer since the manager started.
        public var applied: Int = 0
        /// Entities whose digests differed from the peer's in the last comparison made
        /// while both were caught up.
        public var divergent: [String] = []
        /// Another manager of this site that pulls from the peer meanwhile (managers sharing
        /// a database take turns); nil when this one does.
        public var pulledBy: String?

        public var behind: Int64 { max(0, (head ?? 0) - (cursor ?? 0)) }
        public var catchingUp: Bool { behind > 0 }
    }

    /// How the link behaves; tests shorten the intervals.
    public struct Timing: Sendable {
        /// Between hellos (and retries of a link that is down).
        public var hello: Duration = .seconds(10)
        /// The longest a pull waits at the peer for a change.
        public var longPoll: Duration = .seconds(10)
        /// Between digest comparisons.
        public var digest: Duration = .seconds(300)
        /// Changes per page.
        public var pageSize = 2000

        public init() {}
    }

    let store: Store
    let identity: @Sendable () -> ServerIdentity
    /// Where peers' certificates are kept (`listeners.replication.trust`), as `<name>.pem`.
    let trustFolder: String?
    /// Certificates of the peers named in the config file, by name.
    let configured: [String: String]
    let schemaVersion: Int
    let timing: Timing
    let logger: Logger
    let metrics: PrometheusCollectorRegistry?
    /// Moves whenever a link's status changes (for whoever waits on the links).
    public let changes = ChangeFeed()
    /// How this manager names itself when it holds a pull lease.
    public let instance: String
    /// This manager's copy of the peers' certificates the database holds, as `<name>.pem`,
    /// which its replication listener trusts.
    let peersFolder: String?
    private let board = NIOLockedValueBox<[String: Status]>([:])
    private let pullers = NIOLockedValueBox<[String: Task<Void, Never>]>([:])
    private let trustChanged = NIOLockedValueBox<(@Sendable () async -> Void)?>(nil)

    /// - Parameter peersFolder: where to keep the copy of the peers' certificates.
    public init(store: Store, identity: @escaping @Sendable () -> ServerIdentity, trustFolder: String?, configured: [PeerConfiguration] = [],
                peersFolder: String? = nil, schemaVersion: Int = Store.latestSchemaVersion, timing: Timing = Timing(), metrics: PrometheusCollectorRegistry? = nil,
                logger: Logger = Logger(label: "portico.replication")) {
        self.peersFolder = peersFolder
        self.store = store
        self.identity = identity
        self.trustFolder = trustFolder
        self.configured = Dictionary(configured.map { ($0.name, $0.certificate) }, uniquingKeysWith: { first, _ in first })
        self.schemaVersion = schemaVersion
        self.timing = timing
        self.metrics = metrics
        self.logger = logger
        self.instance = "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier):\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// How long a pull lease lasts; it is renewed at a third of that.
    static let leaseMilliseconds: Int64 = 30_000

    /// The last known status of every link, by peer name.
    public var statuses: [String: Status] { board.withLockedValue { $0 } }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                _ = try? await self.checkAll()
                self.startPullers()
                try? await Task.sleep(for: self.timing.hello)
            }
        }
        // Wait for the pulls to end, so that they give their leases back before the store closes.
        for task in stopPullers() { await task.value }
    }

    /// Stops every pull (when the manager shuts down, or a test is done with the links);
    /// returns them, to be awaited.
    @discardableResult
    public func stopPullers() -> [Task<Void, Never>] {
        let running = pullers.withLockedValue { running in
            defer { running = [:] }
            return running
        }
        for task in running.values { task.cancel() }
        return Array(running.values)
    }

    /// Starts pulling from every connected peer that is not pulled from yet.
    public func startPullers() {
        for status in statuses.values where status.connected {
            pullers.withLockedValue { running in
                guard running[status.name] == nil else { return }
                running[status.name] = Task { await self.pull(from: status.name) }
            }
        }
    }

    /// Says hello to every peer now; returns the statuses.
    @discardableResult
    public func checkAll() async throws -> [Status] {
        var statuses: [Status] = []
        let peers = try await store.peers()
        await copyCertificates(peers)
        for peer in peers {
            let hello = await hello(peer)
            let (before, status) = update(peer.name) { status in
                status.connected = hello.connected
                status.lastError = hello.lastError
                status.siteID = hello.siteID ?? status.siteID
                if hello.connected { status.lastContactMilliseconds = hello.lastContactMilliseconds }
            }
            if before?.connected != status.connected || before?.lastError != status.lastError {
                if status.connected { logger.notice("peer link up", metadata: ["peer": "\(peer.name)"]) } else {
                    logger.warning("peer link down", metadata: ["peer": "\(peer.name)", "error": "\(status.lastError ?? "-")"])
                }
            }
            statuses.append(status)
        }
        return statuses
    }

    /// Runs `handler` when the peers' certificates this manager trusts change (a peer added or
    /// removed on any manager of the site): `serve` reloads the listeners with it.
    public func onTrustChange(_ handler: @escaping @Sendable () async -> Void) {
        trustChanged.withLockedValue { $0 = handler }
    }

    /// Brings ``peersFolder`` up to date with the peers in the database.
    func copyCertificates(_ peers: [PeerRecord]) async {
        guard let folder = peersFolder else { return }
        let wanted = Dictionary(peers.compactMap { peer in peer.certificatePEM.map { (peer.name + ".pem", Array($0.utf8)) } }, uniquingKeysWith: { first, _ in first })
        let present = Set((try? FileManager.default.contentsOfDirectory(atPath: folder))?.filter { $0.hasSuffix(".pem") } ?? [])
        var changed = false
        do {
            for (file, pem) in wanted where FileManager.default.contents(atPath: folder + "/" + file).map(Array.init) != pem {
                try SecureFile.write(pem, to: folder + "/" + file, mode: 0o644)
                changed = true
            }
            for file in present.subtracting(wanted.keys) {
                try FileManager.default.removeItem(atPath: folder + "/" + file)
                changed = true
            }
        } catch {
            logger.error("the peers' certificates cannot be copied", metadata: ["folder": "\(folder)", "error": "\(error)"])
        }
        guard changed else { return }
        if let handler = trustChanged.withLockedValue({ $0 }) { await handler() }
        logger.notice("peers' certificates changed; the replication listener trusts the new set", metadata: ["peers": "\(wanted.keys.sorted())"])
    }

    /// Changes a link's status; returns it before and after.
    @discardableResult
    private func update(_ name: String, _ change: (inout Status) -> Void) -> (before: Status?, after: Status) {
        let (before, after) = board.withLockedValue { table -> (Status?, Status) in
            let before = table[name]
            var status = before ?? Status(name: name, connected: false)
            change(&status)
            table[name] = status
            return (before, status)
        }
        publish(after)
        changes.signal()
        return (before, after)
    }

    // MARK: Calling a peer

    /// A client that presents this manager's identity and trusts only the peer's certificate.
    private func client(for peer: PeerRecord) throws -> HTTPClient {
        let pem = peer.certificatePEM.map { Array($0.utf8) }
            ?? (configured[peer.name] ?? trustFolder.map({ $0 + "/" + peer.name + ".pem" })).flatMap { FileManager.default.contents(atPath: $0).map(Array.init) }
        guard let pem, let certificates = try? NIOSSLCertificate.fromPEMBytes(pem), !certificates.isEmpty else {
            throw ManagerError("no certificate for \(peer.name) in the database, the config file's peers or the replication trust folder")
        }
        let own = identity()
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.certificateChain = own.chain.map { .certificate($0) }
        tls.privateKey = .privateKey(own.privateKey)
        tls.trustRoots = .certificates(certificates)
        tls.certificateVerification = .noHostnameVerification
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(Int64(Self.seconds(timing.longPoll)) + 20))
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    private func hello(_ peer: PeerRecord) async -> Status {
        var status = Status(name: peer.name, connected: false)
        let client: HTTPClient
        do { client = try self.client(for: peer) } catch {
            status.lastError = "\(error)"
            return status
        }
        await say(hello: peer, with: client, into: &status)
        try? await client.shutdown()
        return status
    }

    private func say(hello peer: PeerRecord, with client: HTTPClient, into status: inout Status) async {
        do {
            var request = HTTPClientRequest(url: peer.url + "/replication/v1/hello")
            request.method = .POST
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(ReplicationHello(siteID: store.siteID, schemaVersion: schemaVersion))))
            let response = try await client.execute(request, timeout: .seconds(10))
            let body = try await response.body.collect(upTo: 64 * 1024)
            let answer = (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView))) as? [String: Any]
            if response.status == .ok, let theirs = answer?["schema_version"] as? Int, theirs == schemaVersion {
                status.connected = true
                status.lastContactMilliseconds = Int64(HybridLogicalClock.wallMilliseconds())
                if let site = answer?["site_id"] as? String {
                    status.siteID = site
                    if site != peer.siteID { try? await ManagerOperations(store: store, agent: nil).learnPeerSite(name: peer.name, siteID: site) }
                }
            } else if let theirs = answer?["schema_version"] as? Int, theirs != schemaVersion {
                status.lastError = Self.schemaMismatch(theirs: theirs, ours: schemaVersion)
            } else {
                status.lastError = "the peer answered \(response.status.code): \(answer?["error"] as? String ?? "")"
            }
        } catch {
            status.lastError = "\(error)"
        }
    }

    static func schemaMismatch(theirs: Int, ours: Int) -> String {
        "the peer writes schema version \(theirs) and this manager \(ours); they do not replicate until both run the same version"
    }

    // MARK: Pulling changes

    /// Pulls the peer's change log for as long as the link is up: a page at a time while
    /// behind, then long polls. Stops when the peer is removed or the hello finds it down
    /// (the next hello that succeeds starts it again).
    private func pull(from name: String) async {
        defer { _ = pullers.withLockedValue { $0.removeValue(forKey: name) } }
        var client: (HTTPClient, fingerprint: String)?
        var failures = 0
        var lastDigest = ContinuousClock.now - timing.digest
        var lastProgressLog = ContinuousClock.now
        var ahead: (Int64, Task<ChangeBatch, any Error>)?
        var leased: (site: String, renewAt: ContinuousClock.Instant)?
        pulling: while !Task.isCancelled {
            guard let peer = try? await store.peers().first(where: { $0.name == name }), let site = peer.siteID,
                  statuses[name]?.connected == true else { break pulling }
            do {
                // Managers sharing the database: one pulls each peer, the others stand by.
                if leased?.site != site || ContinuousClock.now >= leased!.renewAt {
                    let lease = try await store.holdReplicationLease(site: site, holder: instance, forMilliseconds: Self.leaseMilliseconds)
                    guard lease.held else {
                        leased = nil
                        ahead?.1.cancel()
                        ahead = nil
                        update(name) { $0.pulledBy = lease.holder }
                        try await Task.sleep(for: timing.hello)
                        continue
                    }
                    leased = (site, .now + .milliseconds(Self.leaseMilliseconds / 3))
                    update(name) { $0.pulledBy = nil }
                }
                let fingerprint = identity().fingerprintHex
                if client?.fingerprint != fingerprint {
                    if let old = client { try? await old.0.shutdown() }
                    client = (try self.client(for: peer), fingerprint)
                }
                guard let http = client?.0 else { break pulling }
                let cursor = try await store.replicationCursors()[site]
                let position = cursor?.position ?? 0
                let batch: ChangeBatch
                if let (after, page) = ahead, after == position {
                    batch = try await page.value
                } else {
                    ahead?.1.cancel()
                    let caughtUp = cursor.map { $0.position >= $0.head } ?? false
                    batch = try await fetch(peer: peer, after: position, wait: caughtUp ? timing.longPoll : .zero, with: http)
                }
                ahead = nil
                guard batch.siteID == site else {
                    throw ManagerError("the peer now says it is site \(batch.siteID), not \(site); its hello will be checked again")
                }
                // While behind, the next page is read while this one is applied.
                if batch.next < batch.head {
                    let next = batch.next
                    ahead = (next, Task { try await self.fetch(peer: peer, after: next, wait: .zero, with: http) })
                }
                let outcome = try await ManagerOperations(store: store, agent: nil).applyChanges(batch, history: peer.history.receives)
                failures = 0
                let newest = batch.changes.map(\.hlc).max()
                let now = Int64(HybridLogicalClock.wallMilliseconds())
                let (_, status) = update(name) { status in
                    status.cursor = max(status.cursor ?? 0, batch.next)
                    status.head = batch.head
                    status.applied += outcome.applied
                    status.lastError = nil
                    status.lastContactMilliseconds = now
                    if let newest { status.lagMilliseconds = max(0, now - Int64(HybridLogicalClock.milliseconds(of: newest))) }
                    if batch.next >= batch.head { status.lagMilliseconds = 0 }
                }
                appliedCounter(name)?.increment(by: Int64(outcome.applied))
                if status.catchingUp, ContinuousClock.now - lastProgressLog > .seconds(10) {
                    lastProgressLog = .now
                    logger.notice("catching up with peer", metadata: ["peer": "\(name)", "at": "\(batch.next)", "of": "\(batch.head)", "behind": "\(status.behind)"])
                }
                if !status.catchingUp, ContinuousClock.now - lastDigest >= timing.digest {
                    lastDigest = .now
                    try await compareDigests(with: peer, using: http)
                }
            } catch is CancellationError {
                break pulling
            } catch {
                ahead?.1.cancel()
                ahead = nil
                failures += 1
                update(name) { $0.lastError = "\(error)" }
                errorCounter(name)?.increment()
                if failures == 1 { logger.warning("pulling changes from peer failed", metadata: ["peer": "\(name)", "error": "\(error)"]) }
                try? await Task.sleep(for: min(.milliseconds(200) * (1 << min(failures, 6)), timing.hello))
            }
        }
        ahead?.1.cancel()
        if let client { try? await client.0.shutdown() }
        if let leased { try? await store.releaseReplicationLease(site: leased.site, holder: instance) }
    }

    private func fetch(peer: PeerRecord, after: Int64, wait: Duration, with client: HTTPClient) async throws -> ChangeBatch {
        let query = "after=\(after)&limit=\(timing.pageSize)&wait=\(Int(Self.seconds(wait) * 1000))&history=\(peer.history.receives ? 1 : 0)&schema=\(schemaVersion)"
        let request = HTTPClientRequest(url: peer.url + "/replication/v1/changes?" + query)
        let response = try await client.execute(request, timeout: .seconds(Int64(Self.seconds(wait)) + 30))
        let body = try await response.body.collect(upTo: 256 * 1024 * 1024)
        guard response.status == .ok else {
            let answer = (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView))) as? [String: Any]
            if response.status == .conflict, let theirs = answer?["schema_version"] as? Int {
                update(peer.name) { $0.connected = false }
                throw ManagerError(Self.schemaMismatch(theirs: theirs, ours: schemaVersion))
            }
            throw ManagerError("the peer answered \(response.status.code): \(answer?["error"] as? String ?? "")")
        }
        return try ChangeBatch(json: Array(body.readableBytesView))
    }

    /// Compares this site's digest with the peer's and records the entities that differ.
    /// Both sides must have applied each other's changes for a difference to mean
    /// divergence, so a difference is logged only when it is seen twice in a row.
    private func compareDigests(with peer: PeerRecord, using client: HTTPClient) async throws {
        let response = try await client.execute(HTTPClientRequest(url: peer.url + "/replication/v1/digest"), timeout: .seconds(60))
        let body = try await response.body.collect(upTo: 1024 * 1024)
        guard response.status == .ok else { throw ManagerError("the peer answered \(response.status.code) for its digest") }
        let theirs = try JSONDecoder().decode([String: EntityDigest].self, from: Data(body.readableBytesView))
        let ours = try await store.replicationDigest()
        let divergent = Set(ours.keys).union(theirs.keys).filter { ours[$0] != theirs[$0] }.sorted()
        let (before, _) = update(peer.name) { $0.divergent = divergent }
        if !divergent.isEmpty, before?.divergent == divergent {
            logger.warning("this site and the peer hold different data", metadata: ["peer": "\(peer.name)", "entities": "\(divergent.joined(separator: ","))"])
        }
    }

    /// Compares digests with every connected peer now (tests; the pull loops do it on their own).
    public func compareDigestsNow() async throws {
        for peer in try await store.peers() where statuses[peer.name]?.connected == true {
            let http = try client(for: peer)
            do {
                try await compareDigests(with: peer, using: http)
                try await http.shutdown()
            } catch {
                try? await http.shutdown()
                throw error
            }
        }
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    // MARK: Metrics

    private func publish(_ status: Status) {
        guard let metrics else { return }
        let labels = [("peer", status.name)]
        metrics.makeGauge(descriptor: .portico("replication_connected", unit: "", help: "1 while the link to the peer is up"), labels: labels).set(to: status.connected ? 1 : 0)
        metrics.makeGauge(descriptor: .portico("replication_cursor", unit: "", help: "How far this site has applied the peer's change log"), labels: labels).set(to: Double(status.cursor ?? 0))
        metrics.makeGauge(descriptor: .portico("replication_behind", unit: "changes", help: "Entries of the peer's change log not applied yet"), labels: labels).set(to: Double(status.behind))
        metrics.makeGauge(descriptor: .portico("replication_lag", unit: "seconds", help: "Age of the newest change applied from the peer while behind; 0 when caught up"), labels: labels)
            .set(to: Double(status.lagMilliseconds ?? 0) / 1000)
        metrics.makeGauge(descriptor: .portico("replication_divergent", unit: "entities", help: "Entities whose digest differed from the peer's at the last comparison"), labels: labels)
            .set(to: Double(status.divergent.count))
    }

    private func appliedCounter(_ peer: String) -> Counter? {
        metrics?.makeCounter(descriptor: .portico("replication_applied", unit: "total", help: "Changes from the peer applied here"), labels: [("peer", peer)])
    }

    private func errorCounter(_ peer: String) -> Counter? {
        metrics?.makeCounter(descriptor: .portico("replication_errors", unit: "total", help: "Failed pulls from the peer"), labels: [("peer", peer)])
    }
}
