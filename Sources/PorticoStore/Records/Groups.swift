import Foundation
import SQLKit

/// A named set of devices that policies are assigned to.
public struct GroupRecord: Sendable, Equatable {
    public var id: String
    public var name: String
    public var description: String
}

extension Store {
    /// Creates a group; the name must be unused.
    public func createGroup(name: String, description: String = "") async throws -> GroupRecord {
        try Validate.text(name, field: "group.name", maxBytes: 128)
        guard !name.isEmpty else { throw StoreError.invalid("group.name", "must not be empty") }
        try Validate.text(description, field: "group.description", maxBytes: 1024)
        let group = GroupRecord(id: UUID().uuidString.lowercased(), name: name, description: description)
        try await write { transaction in
            let hlc = transaction.timestamp()
            let existing = try await transaction.database.raw("SELECT id FROM device_groups WHERE name = \(bind: name)").first()
            if existing != nil { throw StoreError(kind: .conflict, message: "a group named \(name) already exists") }
            try await transaction.database.raw("""
                INSERT INTO device_groups (id, name, description, origin_site, hlc)
                VALUES (\(bind: group.id), \(bind: name), \(bind: description), \(bind: transaction.siteID), \(bind: Int64(bitPattern: hlc)))
                """).run()
            try await transaction.logChange(entity: "group", key: group.id, op: .upsert, hlc: hlc)
        }
        return group
    }

    public func groups() async throws -> [GroupRecord] {
        try await read { db in
            try await db.raw("SELECT id, name, description FROM device_groups ORDER BY name").all().map {
                GroupRecord(id: try $0.decode(column: "id", as: String.self), name: try $0.decode(column: "name", as: String.self), description: try $0.decode(column: "description", as: String.self))
            }
        }
    }

    /// Puts a device in a group (no-op when it already is).
    public func addDevice(_ deviceID: String, toGroup groupID: String) async throws {
        try await write { transaction in
            let hlc = transaction.timestamp()
            try await transaction.database.raw("""
                INSERT INTO device_group_members (device_id, group_id, origin_site, hlc)
                VALUES (\(bind: deviceID), \(bind: groupID), \(bind: transaction.siteID), \(bind: Int64(bitPattern: hlc)))
                ON CONFLICT (device_id, group_id) DO NOTHING
                """).run()
            try await transaction.logChange(entity: "group_member", key: "\(groupID)/\(deviceID)", op: .upsert, hlc: hlc)
        }
    }

    public func groupIDs(ofDevice deviceID: String) async throws -> [String] {
        try await read { db in
            try await db.raw("SELECT group_id FROM device_group_members WHERE device_id = \(bind: deviceID) ORDER BY group_id").all().map { try $0.decode(column: "group_id", as: String.self) }
        }
    }
}
