import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import PorticoGateway
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

    public func respond(to request: GatewayRequest) async throws -> GatewayResponse {
        guard let fingerprint = try? request.clientCertificate?.sha256Hex() else {
            return Self.answer(.forbidden, ["error": "a peer certificate is required"])
        }
        guard let peer = try await store.peers().first(where: { $0.certificateFingerprint == fingerprint }) else {
            logger.warning("replication refused: the client certificate is not a configured peer's", metadata: ["fingerprint": "\(fingerprint)"])
            return Self.answer(.forbidden, ["error": "this certificate (SHA-256 \(fingerprint)) is not a configured peer's"])
        }
        switch (request.method, String(request.path)) {
        case (.POST, "/replication/v1/hello"):
            guard let theirs = try? JSONDecoder().decode(ReplicationHello.self, from: Data(request.body.readableBytesView)) else {
                return Self.answer(.badRequest, ["error": "the hello is not the expected JSON"])
            }
            guard theirs.schemaVersion == schemaVersion else {
                logger.error("replication refused: another schema version", metadata: ["peer": "\(peer.name)", "theirs": "\(theirs.schemaVersion)", "ours": "\(schemaVersion)"])
                return Self.answer(.conflict, ["error": "schema version \(theirs.schemaVersion) cannot replicate with this manager's \(schemaVersion); upgrade the older manager",
                                               "schema_version": schemaVersion])
            }
            if peer.siteID != theirs.siteID { try await store.write { try await $0.setPeerSite(name: peer.name, siteID: theirs.siteID) } }
            return Self.answer(.ok, ["site_id": store.siteID, "schema_version": schemaVersion, "peer": peer.name])
        default:
            return Self.answer(.notFound, ["error": "no replication endpoint \(request.method.rawValue) \(request.path)"])
        }
    }

    static func answer(_ status: HTTPResponseStatus, _ body: [String: any Sendable]) -> GatewayResponse {
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
        return GatewayResponse(status: status, headers: ["content-type": "application/json"], body: ByteBuffer(bytes: data))
    }
}
