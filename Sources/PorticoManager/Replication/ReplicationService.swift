import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import PorticoGateway
import PorticoServer
import PorticoStore

/// What two managers say first: who they are and which schema they write. Managers with
/// different schema versions do not replicate, and both say why.
public struct ReplicationHello: Codable, Sendable, Equatable {
    public var siteID: String
    public var schemaVersion: Int

    public init(siteID: String, schemaVersion: Int) {
        self.siteID = siteID
        self.schemaVersion = schemaVersion
    }

    enum CodingKeys: String, CodingKey { case siteID = "site_id", schemaVersion = "schema_version" }
}

/// The replication role, on its mutual-TLS listener: the listener has already refused any
/// client whose certificate does not chain to `trust`; this service further requires the
/// certificate to be a configured peer's (by SHA-256 fingerprint) before it reads anything.
public final class ReplicationService: HTTPService {
    let store: Store
    let schemaVersion: Int
    let logger: Logger

    /// - Parameter schemaVersion: the schema this manager writes (tests may pretend otherwise).
    public init(store: Store, schemaVersion: Int = Store.latestSchemaVersion, logger: Logger = Logger(label: "portico.replication")) {
        self.store = store
        self.schemaVersion = schemaVersion
        self.logger = logger
    }

    public var routes: [ServiceRoute] {
        [
            ServiceRoute(.POST, "/replication/v1/hello") { [self] request in
                try await fromPeer(request) { peer in try await hello(from: peer, request) }
            },
            ServiceRoute(.GET, "/replication/v1/changes") { [self] request in
                try await fromPeer(request) { peer in try await changes(for: peer, request) }
            },
            ServiceRoute(.GET, "/replication/v1/digest") { [self] request in
                try await fromPeer(request) { _ in
                    let digest = try await store.replicationDigest()
                    return GatewayResponse(status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(bytes: try JSONEncoder().encode(digest)))
                }
            },
        ]
    }

    public func refusal(_ refusal: RouteRefusal, for request: GatewayRequest) async -> GatewayResponse {
        // Nothing is said to a caller that is not a peer, not even which paths exist.
        guard case .success = try? await peer(of: request) else { return Self.answer(.forbidden, ["error": "a configured peer's certificate is required"]) }
        switch refusal {
        case .notFound:
            return Self.answer(.notFound, ["error": "no replication endpoint \(request.method.rawValue) \(request.path)"])
        case .methodNotAllowed(let allow):
            var response = Self.answer(.methodNotAllowed, ["error": "\(request.method.rawValue) is not allowed at \(request.path); use \(allow)"])
            response.headers.add(name: "allow", value: allow)
            return response
        case .failed:
            return Self.answer(.internalServerError, ["error": "the manager failed to answer; its log says why"])
        }
    }

    /// The configured peer whose certificate the caller presented, or the answer refusing it.
    private func peer(of request: GatewayRequest) async throws -> Result<PeerRecord, Refused> {
        guard let fingerprint = try? request.clientCertificate?.sha256Hex() else {
            return .failure(Refused(response: Self.answer(.forbidden, ["error": "a peer certificate is required"])))
        }
        guard let peer = try await store.peers().first(where: { $0.certificateFingerprint == fingerprint }) else {
            logger.warning("replication refused: the client certificate is not a configured peer's", metadata: ["fingerprint": "\(fingerprint)"])
            return .failure(Refused(response: Self.answer(.forbidden, ["error": "this certificate (SHA-256 \(fingerprint)) is not a configured peer's"])))
        }
        return .success(peer)
    }

    private struct Refused: Error {
        let response: GatewayResponse
    }

    /// Runs an endpoint for a configured peer only.
    private func fromPeer(_ request: GatewayRequest, _ body: (PeerRecord) async throws -> GatewayResponse) async throws -> GatewayResponse {
        switch try await peer(of: request) {
        case .success(let peer): return try await body(peer)
        case .failure(let refused): return refused.response
        }
    }

    private func hello(from peer: PeerRecord, _ request: GatewayRequest) async throws -> GatewayResponse {
        guard let theirs = try? JSONDecoder().decode(ReplicationHello.self, from: Data(request.body.readableBytesView)) else {
            return Self.answer(.badRequest, ["error": "the hello is not the expected JSON"])
        }
        guard theirs.schemaVersion == schemaVersion else {
            logger.error("replication refused: another schema version", metadata: ["peer": "\(peer.name)", "theirs": "\(theirs.schemaVersion)", "ours": "\(schemaVersion)"])
            return Self.answer(.conflict, ["error": "schema version \(theirs.schemaVersion) cannot replicate with this manager's \(schemaVersion); upgrade the older manager",
                                           "schema_version": schemaVersion])
        }
        if peer.siteID != theirs.siteID { try await ManagerOperations(store: store, agent: nil).learnPeerSite(name: peer.name, siteID: theirs.siteID) }
        return Self.answer(.ok, ["site_id": store.siteID, "schema_version": schemaVersion, "peer": peer.name])
    }

    /// The longest a request for changes waits for one.
    static let longestWait = 30_000

    /// `GET /replication/v1/changes?after=N&limit=N&wait=ms&history=0|1&schema=N`: a page of
    /// this site's change log after `after`, leaving out the asking site's own changes. When
    /// there is nothing new it waits up to `wait` ms and answers as soon as a change commits.
    private func changes(for peer: PeerRecord, _ request: GatewayRequest) async throws -> GatewayResponse {
        let query = Dictionary((URLComponents(string: request.uri)?.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { _, last in last })
        if let schema = query["schema"], Int(schema) != schemaVersion {
            return Self.answer(.conflict, ["error": "schema version \(schema) cannot replicate with this manager's \(schemaVersion); upgrade the older manager", "schema_version": schemaVersion])
        }
        guard let site = peer.siteID else {
            return Self.answer(.conflict, ["error": "say hello first: this manager does not know the peer's site yet"])
        }
        guard let after = Int64(query["after"] ?? "0"), after >= 0 else { return Self.answer(.badRequest, ["error": "after must be a log position, 0 or more"]) }
        guard let limit = Int(query["limit"] ?? "1000"), (1...10_000).contains(limit) else { return Self.answer(.badRequest, ["error": "limit must be 1 to 10000"]) }
        guard let wait = Int(query["wait"] ?? "0"), (0...Self.longestWait).contains(wait) else {
            return Self.answer(.badRequest, ["error": "wait must be 0 to \(Self.longestWait) milliseconds"])
        }
        // History goes to the peer only when this side sends it and the peer takes it.
        let history = peer.history.sends && query["history"] != "0"
        let generation = store.changeFeed.generation
        var batch = try await store.changeBatch(after: after, excludingOrigin: site, history: history, limit: limit)
        if batch.changes.isEmpty, batch.next >= batch.head, wait > 0 {
            await store.waitForChanges(past: generation, timeout: .milliseconds(wait))
            batch = try await store.changeBatch(after: batch.next, excludingOrigin: site, history: history, limit: limit)
        }
        return GatewayResponse(status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(bytes: batch.json()))
    }

    static func answer(_ status: HTTPResponseStatus, _ body: [String: any Sendable]) -> GatewayResponse {
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
        return GatewayResponse(status: status, headers: ["content-type": "application/json"], body: ByteBuffer(bytes: data))
    }
}
