import Foundation
import SQLKit

/// One line of the audit log: who did what to what, when, from where, and how it ended.
public struct AuditEntry: Sendable, Equatable {
    public var id: Int64?
    public var atMilliseconds: Int64
    public var actor: String
    public var action: String
    public var target: String
    public var source: String
    public var result: String
    public var detail: String

    public init(id: Int64? = nil, atMilliseconds: Int64 = Int64(HybridLogicalClock.wallMilliseconds()), actor: String, action: String, target: String, source: String, result: String, detail: String = "") {
        self.id = id
        self.atMilliseconds = atMilliseconds
        self.actor = actor
        self.action = action
        self.target = target
        self.source = source
        self.result = result
        self.detail = detail
    }
}

extension Transaction {
    /// Appends to the audit log in this transaction, so that the record and the change it
    /// describes are stored together or not at all.
    public func audit(_ entry: AuditEntry) async throws {
        try Validate.text(entry.actor, field: "audit.actor", maxBytes: 256)
        try Validate.text(entry.action, field: "audit.action", maxBytes: 128)
        try Validate.text(entry.target, field: "audit.target", maxBytes: 512)
        try Validate.text(entry.detail, field: "audit.detail", maxBytes: 8192)
        let key = UUID().uuidString.lowercased()
        let hlc = timestamp()
        try await database.raw("""
            INSERT INTO audit_log (at_ms, actor, action, target, source, result, detail, entry_key, origin_site, hlc)
            VALUES (\(bind: entry.atMilliseconds), \(bind: entry.actor), \(bind: entry.action), \(bind: entry.target), \(bind: entry.source),
                    \(bind: entry.result), \(bind: entry.detail), \(bind: key), \(bind: siteID), \(bind: Int64(bitPattern: hlc)))
            """).run()
        try await logChange(entity: "audit", key: key, op: .upsert, hlc: hlc)
    }
}

extension Store {
    /// Records an event that changes nothing else (a failed login, say).
    public func audit(_ entry: AuditEntry) async throws {
        try await write { transaction in try await transaction.audit(entry) }
    }

    /// Audit entries, newest first, before `beforeID` when paging.
    public func auditEntries(actor: String? = nil, action: String? = nil, beforeID: Int64? = nil, limit: Int = 100) async throws -> [AuditEntry] {
        try await auditEntries(AuditFilter(actor: actor, action: action), beforeID: beforeID, limit: limit)
    }
}

extension AuditEntry {
    init(row: any SQLRow) throws {
        self.init(id: try row.decode(column: "id", as: Int64.self), atMilliseconds: try row.decode(column: "at_ms", as: Int64.self),
                  actor: try row.decode(column: "actor", as: String.self), action: try row.decode(column: "action", as: String.self),
                  target: try row.decode(column: "target", as: String.self), source: try row.decode(column: "source", as: String.self),
                  result: try row.decode(column: "result", as: String.self), detail: try row.decode(column: "detail", as: String.self))
    }
}
