import Foundation
import SQLKit

/// A named policy; its documents are versions, one of which may be published.
public struct PolicyRecord: Sendable, Equatable {
    public var id: String
    public var name: String
    public var currentVersion: Int
    public var publishedVersion: Int?
}

public struct PolicyVersionRecord: Sendable, Equatable {
    public var policyID: String
    public var version: Int
    public var document: String
    public var createdBy: String
    public var createdMilliseconds: Int64
    /// The policy's name (filled where the query has it).
    public var policyName: String = ""
}

extension Store {
    /// The largest policy document stored.
    public static let maxPolicyBytes = 1 << 20

    /// The site-wide policy serial: it moves on every policy change, so an agent holding the
    /// current serial knows at check-in that nothing changed.
    public func policySerial() async throws -> Int64 {
        try await read { db in
            try await db.raw("SELECT value FROM counters WHERE name = 'policy_serial'").first()?.decode(column: "value", as: Int64.self) ?? 0
        }
    }

    /// Creates a policy with its first version.
    public func createPolicy(name: String, document: String, by author: String) async throws -> PolicyRecord {
        try await write { try await $0.createPolicy(name: name, document: document, by: author) }
    }

    /// Adds a new version of a policy's document; returns its number.
    public func addPolicyVersion(policyID: String, document: String, by author: String) async throws -> Int {
        try await write { try await $0.addPolicyVersion(policyID: policyID, document: document, by: author) }
    }

    /// Makes a version the one agents receive.
    public func publishPolicy(policyID: String, version: Int) async throws {
        try await write { try await $0.publishPolicy(policyID: policyID, version: version) }
    }

    public func assignPolicy(policyID: String, toGroup groupID: String) async throws {
        try await write { try await $0.assignPolicy(policyID: policyID, toGroup: groupID) }
    }

    /// Every policy, by name.
    public func policies() async throws -> [PolicyRecord] {
        try await read { db in
            try await db.raw("SELECT id, name, current_version, published_version FROM policies ORDER BY name").all().map(PolicyRecord.init(row:))
        }
    }

    /// The groups a policy is assigned to.
    public func policyAssignments(policyID: String) async throws -> [String] {
        try await read { db in
            try await db.raw("SELECT group_id FROM policy_assignments WHERE policy_id = \(bind: policyID) ORDER BY group_id").all().map { try $0.decode(column: "group_id", as: String.self) }
        }
    }

    public func policy(id: String) async throws -> PolicyRecord? {
        try await read { db in
            try await db.raw("SELECT id, name, current_version, published_version FROM policies WHERE id = \(bind: id)").first().map(PolicyRecord.init(row:))
        }
    }

    /// Every version of a policy, oldest first.
    public func policyVersions(policyID: String) async throws -> [PolicyVersionRecord] {
        try await read { db in
            try await db.raw("SELECT policy_id, version, document, created_by, created_ms FROM policy_versions WHERE policy_id = \(bind: policyID) ORDER BY version").all().map {
                PolicyVersionRecord(policyID: try $0.decode(column: "policy_id", as: String.self), version: try $0.decode(column: "version", as: Int.self),
                                    document: try $0.decode(column: "document", as: String.self), createdBy: try $0.decode(column: "created_by", as: String.self),
                                    createdMilliseconds: try $0.decode(column: "created_ms", as: Int64.self))
            }
        }
    }

    /// Published documents that apply to a device through its groups.
    public func publishedPolicies(forDevice deviceID: String) async throws -> [PolicyVersionRecord] {
        try await read { db in
            try await db.raw("""
                SELECT DISTINCT v.policy_id, v.version, v.document, v.created_by, v.created_ms, p.name
                FROM device_group_members m
                JOIN policy_assignments a ON a.group_id = m.group_id
                JOIN policies p ON p.id = a.policy_id
                JOIN policy_versions v ON v.policy_id = p.id AND v.version = p.published_version
                WHERE m.device_id = \(bind: deviceID) ORDER BY v.policy_id
                """).all().map {
                PolicyVersionRecord(policyID: try $0.decode(column: "policy_id", as: String.self), version: try $0.decode(column: "version", as: Int.self),
                                    document: try $0.decode(column: "document", as: String.self), createdBy: try $0.decode(column: "created_by", as: String.self),
                                    createdMilliseconds: try $0.decode(column: "created_ms", as: Int64.self), policyName: try $0.decode(column: "name", as: String.self))
            }
        }
    }
}

extension Transaction {
    /// Creates a policy with its first version.
    public func createPolicy(name: String, document: String, by author: String) async throws -> PolicyRecord {
        try Validate.text(name, field: "policy.name", maxBytes: 128)
        guard !name.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw StoreError.invalid("policy.name", "must not be empty") }
        try Validate.text(document, field: "policy.document", maxBytes: Store.maxPolicyBytes)
        let id = UUID().uuidString.lowercased()
        if try await database.raw("SELECT id FROM policies WHERE name = \(bind: name)").first() != nil {
            throw StoreError(kind: .conflict, message: "a policy named \(name) already exists")
        }
        let hlc = timestamp()
        try await database.raw("INSERT INTO policies (id, name, current_version, published_version, created_hlc, origin_site, hlc) VALUES (\(bind: id), \(bind: name), 1, NULL, \(bind: Int64(bitPattern: hlc)), \(bind: siteID), \(bind: Int64(bitPattern: hlc)))").run()
        try await insertVersion(policyID: id, version: 1, document: document, author: author, hlc: hlc)
        try await logChange(entity: "policy", key: id, op: .upsert, hlc: hlc)
        try await Store.bumpPolicySerial(self)
        return PolicyRecord(id: id, name: name, currentVersion: 1, publishedVersion: nil)
    }

    /// Adds a new version of a policy's document; returns its number.
    public func addPolicyVersion(policyID: String, document: String, by author: String) async throws -> Int {
        try Validate.text(document, field: "policy.document", maxBytes: Store.maxPolicyBytes)
        guard let row = try await database.raw("SELECT current_version FROM policies WHERE id = \(bind: policyID)").first() else {
            throw StoreError.notFound("policy \(policyID)")
        }
        let version = try row.decode(column: "current_version", as: Int.self) + 1
        let hlc = timestamp()
        try await database.raw("UPDATE policies SET current_version = \(bind: version), hlc = \(bind: Int64(bitPattern: hlc)) WHERE id = \(bind: policyID)").run()
        try await insertVersion(policyID: policyID, version: version, document: document, author: author, hlc: hlc)
        try await logChange(entity: "policy", key: policyID, op: .upsert, hlc: hlc)
        try await Store.bumpPolicySerial(self)
        return version
    }

    /// Makes a version the one agents receive.
    public func publishPolicy(policyID: String, version: Int) async throws {
        guard try await database.raw("SELECT id FROM policies WHERE id = \(bind: policyID)").first() != nil else { throw StoreError.notFound("policy \(policyID)") }
        guard try await database.raw("SELECT version FROM policy_versions WHERE policy_id = \(bind: policyID) AND version = \(bind: version)").first() != nil else {
            throw StoreError.notFound("version \(version) of policy \(policyID)")
        }
        let hlc = timestamp()
        try await database.raw("UPDATE policies SET published_version = \(bind: version), hlc = \(bind: Int64(bitPattern: hlc)) WHERE id = \(bind: policyID)").run()
        try await logChange(entity: "policy", key: policyID, op: .upsert, hlc: hlc)
        try await Store.bumpPolicySerial(self)
    }

    /// Assigns a policy to a group (no-op when it already is).
    public func assignPolicy(policyID: String, toGroup groupID: String) async throws {
        let hlc = timestamp()
        try await database.raw("""
            INSERT INTO policy_assignments (policy_id, group_id, origin_site, hlc) VALUES (\(bind: policyID), \(bind: groupID), \(bind: siteID), \(bind: Int64(bitPattern: hlc)))
            ON CONFLICT (policy_id, group_id) DO NOTHING
            """).run()
        try await logChange(entity: "policy_assignment", key: "\(policyID)/\(groupID)", op: .upsert, hlc: hlc)
        try await Store.bumpPolicySerial(self)
    }

    /// Assigns after checking that the policy and the group exist.
    public func assignExistingPolicy(policyID: String, toGroup groupID: String) async throws {
        guard try await database.raw("SELECT id FROM policies WHERE id = \(bind: policyID)").first() != nil else { throw StoreError.notFound("policy \(policyID)") }
        guard try await database.raw("SELECT id FROM device_groups WHERE id = \(bind: groupID)").first() != nil else { throw StoreError.notFound("group \(groupID)") }
        try await assignPolicy(policyID: policyID, toGroup: groupID)
    }

    /// Withdraws a policy from a group.
    public func unassignPolicy(policyID: String, fromGroup groupID: String) async throws {
        let removed = try await database.raw("DELETE FROM policy_assignments WHERE policy_id = \(bind: policyID) AND group_id = \(bind: groupID) RETURNING policy_id").all()
        guard !removed.isEmpty else { throw StoreError.notFound("an assignment of policy \(policyID) to group \(groupID)") }
        try await logChange(entity: "policy_assignment", key: "\(policyID)/\(groupID)", op: .delete, hlc: timestamp())
        try await Store.bumpPolicySerial(self)
    }

    private func insertVersion(policyID: String, version: Int, document: String, author: String, hlc: UInt64) async throws {
        try await database.raw("""
            INSERT INTO policy_versions (policy_id, version, document, created_by, created_ms, origin_site, hlc)
            VALUES (\(bind: policyID), \(bind: version), \(bind: document), \(bind: author), \(bind: Int64(HybridLogicalClock.wallMilliseconds())), \(bind: siteID), \(bind: Int64(bitPattern: hlc)))
            """).run()
        try await logChange(entity: "policy_version", key: "\(policyID)/\(version)", op: .upsert, hlc: hlc)
    }
}

extension Store {
    static func bumpPolicySerial(_ transaction: Transaction) async throws {
        try await transaction.database.raw("""
            INSERT INTO counters (name, value) VALUES ('policy_serial', 1)
            ON CONFLICT (name) DO UPDATE SET value = counters.value + 1
            """).run()
        try await transaction.wakeEveryDevice()
    }
}

extension PolicyRecord {
    init(row: any SQLRow) throws {
        self.init(id: try row.decode(column: "id", as: String.self), name: try row.decode(column: "name", as: String.self),
                  currentVersion: try row.decode(column: "current_version", as: Int.self), publishedVersion: try row.decode(column: "published_version", as: Int?.self))
    }
}
