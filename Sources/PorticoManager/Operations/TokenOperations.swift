import Crypto
import Foundation
import PorticoProtocol
import PorticoStore

/// Enrollment tokens for agents and API tokens for automation. Their secrets are returned
/// once and only their hashes are stored.
extension ManagerOperations {
    /// A token to install agents with; the returned text (`<id>.<secret>`) is shown once.
    public func createEnrollmentToken(groupID: String?, uses: Int?, expiresInSeconds: Int, by actor: Actor) async throws -> (record: EnrollmentTokenRecord, token: String) {
        if let groupID, try await store.group(id: groupID) == nil { throw StoreError.invalid("group_id", "names no group") }
        let id = "t-" + BearerSecret.newID().prefix(12)
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let record = EnrollmentTokenRecord(id: id, secretHash: Array(SHA256.hash(data: secret)), groupID: groupID, usesAllowed: uses,
                                           expiresMilliseconds: now + Int64(expiresInSeconds) * 1000, createdBy: actor.name, createdMilliseconds: now)
        try await store.write { transaction in
            try await transaction.createEnrollmentToken(record)
            try await transaction.audit(actor.entry("enrollment_token.create", target: id, detail: "uses \(uses.map(String.init) ?? "unlimited"), group \(groupID ?? "-")"))
        }
        return (record, "\(id).\(Base64URL.encode(secret))")
    }

    public func revokeEnrollmentToken(id: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.revokeEnrollmentToken(id: id)
            try await transaction.audit(actor.entry("enrollment_token.revoke", target: id))
        }
    }

    /// A token for automation; the returned text is the bearer secret, shown once.
    public func createAPIToken(name: String, role: OperatorRole, scopes: [String], expiresInSeconds: Int, by actor: Actor) async throws -> (record: APITokenRecord, token: String) {
        let id = BearerSecret.newID()
        let secret = BearerSecret.make(.token, id: id)
        let record = APITokenRecord(id: id, secretHash: secret.hash, name: name, role: role, scopes: scopes.sorted(),
                                    expiresMilliseconds: Int64(HybridLogicalClock.wallMilliseconds()) + Int64(expiresInSeconds) * 1000, createdBy: actor.name)
        try await store.write { transaction in
            try await transaction.createAPIToken(record)
            try await transaction.audit(actor.entry("api_token.create", target: id, detail: "\(name), role \(role.rawValue)"))
        }
        return (record, secret.text)
    }

    public func revokeAPIToken(id: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.revokeAPIToken(id: id)
            try await transaction.audit(actor.entry("api_token.revoke", target: id))
        }
    }
}
