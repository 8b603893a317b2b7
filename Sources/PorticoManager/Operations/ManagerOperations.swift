import Crypto
import Foundation
import PorticoProtocol
import PorticoStore

/// The one write path: every change to the store, whichever way it comes in (the API, the
/// console, the CLI, an agent, a peer), is made here, with its audit entry in the same
/// transaction, so that every door behaves the same and is audited the same way. Refusals
/// are audited here too (``refused(_:)``).
///
/// The files of this folder hold the operations by what they change.
public struct ManagerOperations: Sendable {
    /// Who acts, as the audit log names them, and from where.
    public struct Actor: Sendable {
        public var name: String
        public var source: String

        public init(name: String, source: String) {
            self.name = name
            self.source = source
        }

        /// The operating system's user running a `portico` command on this host.
        public static func commandLine(user: String) -> Actor {
            Actor(name: "cli:\(user)", source: "local")
        }

        func entry(_ action: String, target: String, result: String = "ok", detail: String = "") -> AuditEntry {
            AuditEntry(actor: name, action: action, target: target, source: source, result: result, detail: detail)
        }
    }

    let store: Store
    let agent: AgentService?

    public init(store: Store, agent: AgentService?) {
        self.store = store
        self.agent = agent
    }

    /// Audits a refusal: a change that was not made, a sign-in that failed, a request turned
    /// away. Best effort: a refusal is answered even when the audit log cannot be written.
    public func refused(_ entry: AuditEntry) async {
        try? await store.audit(entry)
    }

    /// Audits an action whose effect is outside the store (identity files, for example).
    public func record(_ entry: AuditEntry) async throws {
        try await store.audit(entry)
    }
}
