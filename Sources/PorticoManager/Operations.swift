import Foundation
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
