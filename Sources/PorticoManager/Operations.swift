import Crypto
import Foundation
import PorticoProtocol
import PorticoStore

/// Changes an operator makes, whichever way they come in (the API, the console): each is
/// written with its audit entry in one transaction, so both doors behave the same.
public struct ManagerOperations: Sendable {
    /// Who acts, as the audit log names them, and from where.
    public struct Actor: Sendable {
        public var name: String
        public var source: String

        public init(name: String, source: String) {
            self.name = name
            self.source = source
        }

        func entry(_ action: String, target: String, detail: String = "") -> AuditEntry {
            AuditEntry(actor: name, action: action, target: target, source: source, result: "ok", detail: detail)
        }
    }

    let store: Store
    let agent: AgentService?

    public init(store: Store, agent: AgentService?) {
        self.store = store
        self.agent = agent
    }

    /// Queues a command for a device; it is delivered at the device's next check-in.
    public func issueCommand(deviceID: String, kind: CommandKind, arguments: String = "", expiresInSeconds: Int = 7 * 86_400, by actor: Actor) async throws -> CommandRecord {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let command = CommandRecord(deviceID: deviceID, kind: kind, arguments: arguments, issuedBy: actor.name, issuedMilliseconds: now,
                                    expiresMilliseconds: now + Int64(expiresInSeconds) * 1000)
        try await store.write { transaction in
            try await transaction.enqueueCommand(command)
            try await transaction.audit(actor.entry("command.issue", target: deviceID, detail: "\(kind.rawValue) \(command.id)"))
        }
        return command
    }

    /// The response code for a challenge a locked device shows; audited, as it grants access.
    public func remoteHelpResponse(deviceID: String, challenge: String, by actor: Actor) async throws -> String {
        guard let agent else { throw StoreError.conflict("remote help needs the agent service, which this manager does not run") }
        guard try await store.device(id: deviceID) != nil else { throw StoreError.notFound("device \(deviceID)") }
        let response = try await agent.remoteHelpResponse(deviceID: deviceID, challenge: challenge)
        try await store.audit(actor.entry("device.remote_help", target: deviceID))
        return response
    }
}

extension ManagerOperations {
    public func createPolicy(name: String, document: String, by actor: Actor) async throws -> PolicyRecord {
        try await store.write { transaction in
            let policy = try await transaction.createPolicy(name: name, document: document, by: actor.name)
            try await transaction.audit(actor.entry("policy.create", target: policy.id, detail: "name \(policy.name)"))
            return policy
        }
    }

    public func addPolicyVersion(policyID: String, document: String, by actor: Actor) async throws -> Int {
        try await store.write { transaction in
            let number = try await transaction.addPolicyVersion(policyID: policyID, document: document, by: actor.name)
            try await transaction.audit(actor.entry("policy.add_version", target: policyID, detail: "version \(number)"))
            return number
        }
    }

    public func publishPolicy(policyID: String, version: Int, by actor: Actor) async throws {
        guard let current = try await store.policy(id: policyID) else { throw StoreError.notFound("policy \(policyID)") }
        guard (1...current.currentVersion).contains(version) else { throw StoreError.invalid("version", "must be an existing version, 1 to \(current.currentVersion)") }
        try await store.write { transaction in
            try await transaction.publishPolicy(policyID: policyID, version: version)
            try await transaction.audit(actor.entry("policy.publish", target: policyID, detail: "version \(version)"))
        }
    }

    public func assignPolicy(policyID: String, groupID: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.assignExistingPolicy(policyID: policyID, toGroup: groupID)
            try await transaction.audit(actor.entry("policy.assign", target: policyID, detail: "group \(groupID)"))
        }
    }

    public func unassignPolicy(policyID: String, groupID: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.unassignPolicy(policyID: policyID, fromGroup: groupID)
            try await transaction.audit(actor.entry("policy.unassign", target: policyID, detail: "group \(groupID)"))
        }
    }

    /// A token to install agents with; the returned text (`<id>.<secret>`) is shown once.
    public func createEnrollmentToken(groupID: String?, uses: Int, expiresInSeconds: Int, by actor: Actor) async throws -> (record: EnrollmentTokenRecord, token: String) {
        if let groupID, try await store.group(id: groupID) == nil { throw StoreError.invalid("group_id", "names no group") }
        let id = "t-" + BearerSecret.newID().prefix(12)
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let record = EnrollmentTokenRecord(id: id, secretHash: Array(SHA256.hash(data: secret)), groupID: groupID, usesAllowed: uses,
                                           expiresMilliseconds: now + Int64(expiresInSeconds) * 1000, createdBy: actor.name, createdMilliseconds: now)
        try await store.write { transaction in
            try await transaction.createEnrollmentToken(record)
            try await transaction.audit(actor.entry("enrollment_token.create", target: id, detail: "uses \(uses), group \(groupID ?? "-")"))
        }
        return (record, "\(id).\(Base64URL.encode(secret))")
    }

    public func revokeEnrollmentToken(id: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.revokeEnrollmentToken(id: id)
            try await transaction.audit(actor.entry("enrollment_token.revoke", target: id))
        }
    }

    public func createOperator(name: String, role: OperatorRole, password: String, by actor: Actor) async throws -> OperatorRecord {
        let record = OperatorRecord(name: name, passwordHash: try await PasswordHasher.hash(password), role: role)
        try await store.write { transaction in
            try await transaction.createOperator(record)
            try await transaction.audit(actor.entry("operator.create", target: name, detail: "role \(role.rawValue)"))
        }
        return record
    }

    public func unlockOperator(name: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.unlockOperator(name: name)
            try await transaction.audit(actor.entry("operator.unlock", target: name))
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
