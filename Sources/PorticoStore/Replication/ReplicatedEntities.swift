import Foundation
import SQLKit

/// A column that replicates, with how it is carried between managers.
struct ReplicatedColumn: Sendable {
    enum Kind: Sendable { case text, integer, blob }
    let name: String
    let kind: Kind
    let nullable: Bool

    static func text(_ name: String, nullable: Bool = false) -> Self { .init(name: name, kind: .text, nullable: nullable) }
    static func integer(_ name: String, nullable: Bool = false) -> Self { .init(name: name, kind: .integer, nullable: nullable) }
    static func blob(_ name: String) -> Self { .init(name: name, kind: .blob, nullable: false) }

    func sqlType(_ dialect: Dialect) -> String {
        switch kind {
        case .text: "TEXT"
        case .integer: "BIGINT"
        case .blob: dialect.blob
        }
    }
}

/// A kind of row peers exchange: its table, the columns of its key (in the order the change
/// log writes them, joined by `/`), and the columns that replicate. Columns not named here
/// (a device's last check-in, an operator's failed logins) are this manager's own
/// bookkeeping and never leave it.
struct ReplicatedEntity: Sendable {
    let name: String
    let table: String
    let key: [ReplicatedColumn]
    let columns: [ReplicatedColumn]
    /// The `name` column is unique: the later of two same-name creations becomes `Name ~1`.
    var uniqueName = false
    /// Events and audit entries: written once, never changed; sent only where the peer's
    /// history setting says so.
    var history = false
    /// Applying it changes what agents receive, so the policy serial moves.
    var movesPolicySerial = false

    static let all: [ReplicatedEntity] = [
        ReplicatedEntity(name: "site", table: "sites", key: [.text("id")], columns: [.text("name"), .integer("created_ms")]),
        ReplicatedEntity(name: "device", table: "devices", key: [.text("id")], columns: [
            .blob("signing_key"), .blob("agreement_key"), .text("hostname"), .text("os"), .text("state"), .integer("enrolled_ms"),
        ]),
        ReplicatedEntity(name: "group", table: "device_groups", key: [.text("id")], columns: [.text("name"), .text("description"), .integer("created_hlc")], uniqueName: true, movesPolicySerial: true),
        ReplicatedEntity(name: "group_member", table: "device_group_members", key: [.text("group_id"), .text("device_id")], columns: [], movesPolicySerial: true),
        ReplicatedEntity(name: "enrollment_token", table: "enrollment_tokens", key: [.text("id")], columns: [
            .blob("secret_hash"), .text("group_id", nullable: true), .integer("uses_allowed", nullable: true), .integer("uses"),
            .integer("expires_ms", nullable: true), .integer("revoked"), .text("created_by"), .integer("created_ms"),
        ]),
        ReplicatedEntity(name: "policy", table: "policies", key: [.text("id")], columns: [
            .text("name"), .integer("current_version"), .integer("published_version", nullable: true), .integer("created_hlc"),
        ], uniqueName: true, movesPolicySerial: true),
        ReplicatedEntity(name: "policy_version", table: "policy_versions", key: [.text("policy_id"), .integer("version")], columns: [
            .text("document"), .text("created_by"), .integer("created_ms"),
        ], movesPolicySerial: true),
        ReplicatedEntity(name: "policy_assignment", table: "policy_assignments", key: [.text("policy_id"), .text("group_id")], columns: [], movesPolicySerial: true),
        ReplicatedEntity(name: "command", table: "commands", key: [.text("id")], columns: [
            .text("device_id"), .text("kind"), .text("arguments"), .text("state"), .text("result", nullable: true), .text("issued_by"),
            .integer("issued_ms"), .integer("updated_ms"), .integer("expires_ms", nullable: true),
        ]),
        ReplicatedEntity(name: "operator", table: "operators", key: [.text("name")], columns: [
            .text("password_hash"), .text("role"), .integer("disabled"), .integer("created_ms"),
        ]),
        ReplicatedEntity(name: "api_token", table: "api_tokens", key: [.text("id")], columns: [
            .blob("secret_hash"), .text("name"), .text("role"), .text("scopes"), .integer("expires_ms", nullable: true), .integer("revoked"),
            .text("created_by"), .integer("created_ms"),
        ]),
        ReplicatedEntity(name: "event", table: "events", key: [.text("device_id"), .text("event_id")], columns: [
            .text("kind"), .integer("occurred_ms"), .integer("received_ms"), .text("body"),
        ], history: true),
        ReplicatedEntity(name: "audit", table: "audit_log", key: [.text("entry_key")], columns: [
            .integer("at_ms"), .text("actor"), .text("action"), .text("target"), .text("source"), .text("result"), .text("detail"),
        ], history: true),
    ]

    static let byName: [String: ReplicatedEntity] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    /// The entity names that are history (events, audit).
    static let historyNames: [String] = all.filter(\.history).map(\.name)

    /// The key's parts, typed; nil when the key does not have the entity's shape.
    func keyValues(_ key: String) -> [ReplicatedValue]? {
        let parts = key.split(separator: "/", maxSplits: self.key.count - 1, omittingEmptySubsequences: false).map(String.init)
        guard parts.count == self.key.count else { return nil }
        var values: [ReplicatedValue] = []
        for (column, part) in zip(self.key, parts) {
            switch column.kind {
            case .integer:
                guard let number = Int64(part) else { return nil }
                values.append(.integer(number))
            case .text, .blob:
                guard !part.isEmpty else { return nil }
                values.append(.text(part))
            }
        }
        return values
    }

    /// Where a replicated column sits in a change's row.
    func columnIndex(_ name: String) -> Int? { columns.firstIndex { $0.name == name } }

    /// The change log's key of a row that has the key columns.
    func keyString(of row: any SQLRow) throws -> String {
        var parts: [String] = []
        for column in key {
            switch try ReplicatedValue(row: row, column: column) {
            case .integer(let number): parts.append(String(number))
            case .text(let text): parts.append(text)
            case .null: parts.append("")
            }
        }
        return parts.joined(separator: "/")
    }

    /// `k1 = ? AND k2 = ?` for one key.
    func keyCondition(_ values: [ReplicatedValue]) -> SQLQueryString {
        var condition = SQLQueryString("")
        for (index, (column, value)) in zip(key, values).enumerated() {
            if index > 0 { condition.appendInterpolation(unsafeRaw: " AND ") }
            condition.appendInterpolation(unsafeRaw: column.name + " = ")
            condition.appendInterpolation(value.bind(as: column))
        }
        return condition
    }
}

/// A column's value on the wire: blobs travel as base64 text and are typed back by the
/// entity's description.
public enum ReplicatedValue: Sendable, Equatable {
    case null
    case integer(Int64)
    case text(String)

    /// Reads a column of a row.
    init(row: any SQLRow, column: ReplicatedColumn) throws {
        switch column.kind {
        case .text:
            self = try row.decode(column: column.name, as: String?.self).map(ReplicatedValue.text) ?? .null
        case .integer:
            self = try row.decode(column: column.name, as: Int64?.self).map(ReplicatedValue.integer) ?? .null
        case .blob:
            self = try row.decode(column: column.name, as: Data?.self).map { .text($0.base64EncodedString()) } ?? .null
        }
    }

    /// The value as a bind of the column's type, checked.
    func bind(as column: ReplicatedColumn) -> any SQLExpression {
        switch (self, column.kind) {
        case (.null, _): SQLLiteral.null
        case (.integer(let number), _): SQLBind(number)
        case (.text(let text), .blob): SQLBind(Data(base64Encoded: text) ?? Data())
        case (.text(let text), _): SQLBind(text)
        }
    }

    /// Whether it fits the column (type and nullability).
    func fits(_ column: ReplicatedColumn) -> Bool {
        switch (self, column.kind) {
        case (.null, _): column.nullable
        case (.integer, .integer): true
        case (.text, .text): true
        case (.text(let text), .blob): Data(base64Encoded: text) != nil
        default: false
        }
    }

    var text: String? { if case .text(let text) = self { text } else { nil } }
}
