import AsyncHTTPClient
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import PorticoGateway
import PorticoStore
import ServiceLifecycle

/// This manager's side of each peer link: it calls every configured peer on the peer's
/// replication listener with mutual TLS (its own identity as the client certificate, and
/// only the peer's certificate trusted), says hello, and keeps each link's status for the
/// API and the console.
public final class PeerLinks: Service, Sendable {
    public struct Status: Sendable, Equatable {
        public var name: String
        public var connected: Bool
        public var lastContactMilliseconds: Int64?
        public var lastError: String?
    }

    let store: Store
    let identity: @Sendable () -> ServerIdentity
    /// Where peers' certificates are kept (`listeners.replication.trust`), as `<name>.pem`.
    let trustFolder: String?
    /// Certificates of the peers named in the config file, by name.
    let configured: [String: String]
    let schemaVersion: Int
    let interval: Duration
    let logger: Logger
    private let board = NIOLockedValueBox<[String: Status]>([:])

    public init(store: Store, identity: @escaping @Sendable () -> ServerIdentity, trustFolder: String?, configured: [PeerConfiguration] = [],
                schemaVersion: Int = Store.latestSchemaVersion, interval: Duration = .seconds(10), logger: Logger = Logger(label: "portico.replication")) {
        self.store = store
        self.identity = identity
        self.trustFolder = trustFolder
        self.configured = Dictionary(configured.map { ($0.name, $0.certificate) }, uniquingKeysWith: { first, _ in first })
        self.schemaVersion = schemaVersion
        self.interval = interval
        self.logger = logger
    }

    /// The last known status of every link, by peer name.
    public var statuses: [String: Status] { board.withLockedValue { $0 } }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                _ = try? await self.checkAll()
                try? await Task.sleep(for: self.interval)
            }
        }
    }

    /// Says hello to every peer now; returns the statuses.
    @discardableResult
    public func checkAll() async throws -> [Status] {
        var statuses: [Status] = []
        for peer in try await store.peers() {
            let status = await hello(peer)
            let before = board.withLockedValue { table -> Status? in
                let before = table[peer.name]
                table[peer.name] = status
                return before
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

    private func hello(_ peer: PeerRecord) async -> Status {
        var status = Status(name: peer.name, connected: false, lastContactMilliseconds: board.withLockedValue { $0[peer.name]?.lastContactMilliseconds }, lastError: nil)
        guard let path = configured[peer.name] ?? trustFolder.map({ $0 + "/" + peer.name + ".pem" }), let pem = FileManager.default.contents(atPath: path),
              let certificates = try? NIOSSLCertificate.fromPEMBytes(Array(pem)), !certificates.isEmpty else {
            status.lastError = "no certificate for \(peer.name) in the config file's peers or the replication trust folder"
            return status
        }
        let own = identity()
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.certificateChain = own.chain.map { .certificate($0) }
        tls.privateKey = .privateKey(own.privateKey)
        tls.trustRoots = .certificates(certificates)
        tls.certificateVerification = .noHostnameVerification
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(10))
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
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
                if let site = answer?["site_id"] as? String, site != peer.siteID { try? await store.write { try await $0.setPeerSite(name: peer.name, siteID: site) } }
            } else if let theirs = answer?["schema_version"] as? Int, theirs != schemaVersion {
                status.lastError = "the peer writes schema version \(theirs) and this manager \(schemaVersion); they do not replicate until both run the same version"
            } else {
                status.lastError = "the peer answered \(response.status.code): \(answer?["error"] as? String ?? "")"
            }
        } catch {
            status.lastError = "\(error)"
        }
    }
}
