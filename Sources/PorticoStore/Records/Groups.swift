import Foundation
import SQLKit

/// A named set of devices that policies are assigned to.
public struct GroupRecord: Sendable, Equatable {
    public var id: String
    public var name: String
    public var description: String

    public init(id: String, name: String, description: String) {
        self.id = id
        self.name = name
        self.description = description
    }
}

extension Transaction {
    /// Creates a group; the name must be unused.
    public func createGroup(name: String, description: String = "") async throws -> GroupRecord {
        try Self.validateGroup(name: name, description: description)
        let group = GroupRecord(id: UUID().uuidString.lowercased(), name: name, description: description)
        let hlc = timestamp()
        if try await database.raw("SELECT id FROM device_groups WHERE name = \(bind: name)").first() != nil {
            throw StoreError(kind: .conflict, message: "a group named \(name) already exists")
        }
        try await database.raw("""
            INSERT INTO device_groups (id, name, description, created_hlc, origin_site, hlc)
            VALUES (\(bind: group.id), \(bind: name), \(bind: description), \(bind: Int64(bitPattern: hlc)), \(bind: siteID), \(bind: Int64(bitPattern: hlc)))
            """).run()
        try await logChange(entity: "group", key: group.id, op: .upsert, hlc: hlc)
        return group
    }

    /// Renames or redescribes a group; nil leaves a field as it is.
    public func updateGroup(id: String, name: String?, description: String?) async throws -> GroupRecord {
        guard var group = try await database.raw("SELECT id, name, description FROM device_groups WHERE id = \(bind: id)").first().map(GroupRecord.init(row:)) else {
            throw StoreError.notFound("group \(id)")
        }
        if let name, name != group.name {
            if try await database.raw("SELECT id FROM device_groups WHERE name = \(bind: name)").first() != nil {
                throw StoreError(kind: .conflict, message: "a group named \(name) already exists")
            }
            group.name = name
        }
        if let description { group.description = description }
        try Self.validateGroup(name: group.name, description: group.description)
        let hlc = timestamp()
        try await database.raw("UPDATE device_groups SET name = \(bind: group.name), description = \(bind: group.description), hlc = \(bind: Int64(bitPattern: hlc)) WHERE id = \(bind: id)").run()
        try await logChange(entity: "group", key: id, op: .upsert, hlc: hlc)
        return group
    }

    /// Deletes a group with its memberships and policy assignments (the devices stay).
    public func deleteGroup(id: String) async throws {
        let removed = try await database.raw("DELETE FROM device_groups WHERE id = \(bind: id) RETURNING id").all()
        guard !removed.isEmpty else { throw StoreError.notFound("group \(id)") }
        let hlc = timestamp()
        try await database.raw("DELETE FROM device_group_members WHERE group_id = \(bind: id)").run()
        try await database.raw("DELETE FROM user_sign_in_grants WHERE group_id = \(bind: id)").run()
        let assignments = try await database.raw("DELETE FROM policy_assignments WHERE group_id = \(bind: id) RETURNING policy_id").all()
        try await logChange(entity: "group", key: id, op: .delete, hlc: hlc)
        if !assignments.isEmpty { try await Store.bumpPolicySerial(self) }
    }

    /// Puts a device in a group (no-op when it already is).
    public func addDevice(_ deviceID: String, toGroup groupID: String) async throws {
        let hlc = timestamp()
        try await database.raw("""
            INSERT INTO device_group_members (device_id, group_id, origin_site, hlc)
            VALUES (\(bind: deviceID), \(bind: groupID), \(bind: siteID), \(bind: Int64(bitPattern: hlc)))
            ON CONFLICT (device_id, group_id) DO NOTHING
            """).run()
        try await logChange(entity: "group_member", key: "\(groupID)/\(deviceID)", op: .upsert, hlc: hlc)
    }

    /// Adds a device to a group after checking that both exist; the policies of the group
    /// then apply to it.
    public func addExistingDevice(_ deviceID: String, toGroup groupID: String) async throws {
        guard try await database.raw("SELECT id FROM device_groups WHERE id = \(bind: groupID)").first() != nil else { throw StoreError.notFound("group \(groupID)") }
        guard try await database.raw("SELECT id FROM devices WHERE id = \(bind: deviceID)").first() != nil else { throw StoreError.notFound("device \(deviceID)") }
        try await addDevice(deviceID, toGroup: groupID)
        try await Store.bumpPolicySerial(self)
    }

    /// Takes a device out of a group.
    public func removeDevice(_ deviceID: String, fromGroup groupID: String) async throws {
        let removed = try await database.raw("DELETE FROM device_group_members WHERE device_id = \(bind: deviceID) AND group_id = \(bind: groupID) RETURNING device_id").all()
        guard !removed.isEmpty else { throw StoreError.notFound("device \(deviceID) in group \(groupID)") }
        try await logChange(entity: "group_member", key: "\(groupID)/\(deviceID)", op: .delete, hlc: timestamp())
        try await Store.bumpPolicySerial(self)
    }

    /// Makes `groupID` the device's only group (none when nil): the console's "move".
    /// Returns the groups it left.
    @discardableResult
    public func moveDevice(_ deviceID: String, toGroup groupID: String?) async throws -> [String] {
        guard try await database.raw("SELECT id FROM devices WHERE id = \(bind: deviceID)").first() != nil else { throw StoreError.notFound("device \(deviceID)") }
        if let groupID, try await database.raw("SELECT id FROM device_groups WHERE id = \(bind: groupID)").first() == nil { throw StoreError.notFound("group \(groupID)") }
        let current = try await database.raw("SELECT group_id FROM device_group_members WHERE device_id = \(bind: deviceID)").all().map { try $0.decode(column: "group_id", as: String.self) }
        let leaving = current.filter { $0 != groupID }
        for group in leaving {
            try await database.raw("DELETE FROM device_group_members WHERE device_id = \(bind: deviceID) AND group_id = \(bind: group)").run()
            try await logChange(entity: "group_member", key: "\(group)/\(deviceID)", op: .delete, hlc: timestamp())
        }
        if let groupID, !current.contains(groupID) { try await addDevice(deviceID, toGroup: groupID) }
        if !leaving.isEmpty || (groupID.map { !current.contains($0) } ?? false) { try await Store.bumpPolicySerial(self) }
        return leaving
    }

    static func validateGroup(name: String, description: String) throws {
        try Validate.text(name, field: "group.name", maxBytes: 128)
        guard !name.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw StoreError.invalid("group.name", "must not be empty") }
        try Validate.text(description, field: "group.description", maxBytes: 1024)
    }
}

extension Store {
    /// Creates a group; the name must be unused.
    public func createGroup(name: String, description: String = "") async throws -> GroupRecord {
        try await write { try await $0.createGroup(name: name, description: description) }
    }

    public func groups() async throws -> [GroupRecord] {
        try await read { db in
            try await db.raw("SELECT id, name, description FROM device_groups ORDER BY name").all().map(GroupRecord.init(row:))
        }
    }

    public func group(id: String) async throws -> GroupRecord? {
        try await read { db in try await db.raw("SELECT id, name, description FROM device_groups WHERE id = \(bind: id)").first().map(GroupRecord.init(row:)) }
    }

    /// Puts a device in a group (no-op when it already is).
    public func addDevice(_ deviceID: String, toGroup groupID: String) async throws {
        try await write { try await $0.addDevice(deviceID, toGroup: groupID) }
    }

    public func groupIDs(ofDevice deviceID: String) async throws -> [String] {
        try await read { db in
            try await db.raw("SELECT group_id FROM device_group_members WHERE device_id = \(bind: deviceID) ORDER BY group_id").all().map { try $0.decode(column: "group_id", as: String.self) }
        }
    }

    /// The groups of each of `deviceIDs`, by device id.
    public func groupMemberships(of deviceIDs: [String]) async throws -> [String: [String]] {
        guard !deviceIDs.isEmpty else { return [:] }
        return try await read { db in
            var query: SQLQueryString = "SELECT device_id, group_id FROM device_group_members WHERE device_id IN ("
            for (index, id) in deviceIDs.enumerated() {
                if index > 0 { query.appendInterpolation(unsafeRaw: ", ") }
                query.appendInterpolation(bind: id)
            }
            query.appendInterpolation(unsafeRaw: ") ORDER BY group_id")
            var memberships: [String: [String]] = [:]
            for row in try await db.raw(query).all() {
                memberships[try row.decode(column: "device_id", as: String.self), default: []].append(try row.decode(column: "group_id", as: String.self))
            }
            return memberships
        }
    }

    /// How many devices each group has, by group id.
    public func groupSizes() async throws -> [String: Int] {
        try await read { db in
            var sizes: [String: Int] = [:]
            for row in try await db.raw("SELECT group_id, COUNT(*) AS n FROM device_group_members GROUP BY group_id").all() {
                sizes[try row.decode(column: "group_id", as: String.self)] = try row.decode(column: "n", as: Int.self)
            }
            return sizes
        }
    }
}

extension GroupRecord {
    init(row: any SQLRow) throws {
        self.init(id: try row.decode(column: "id", as: String.self), name: try row.decode(column: "name", as: String.self), description: try row.decode(column: "description", as: String.self))
    }
}
