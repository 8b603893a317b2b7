import PorticoStore

/// Groups of devices and their members.
extension ManagerOperations {
    public func createGroup(name: String, description: String, by actor: Actor) async throws -> GroupRecord {
        try await store.write { transaction in
            let group = try await transaction.createGroup(name: name, description: description)
            try await transaction.audit(actor.entry("group.create", target: group.id, detail: "name \(group.name)"))
            return group
        }
    }

    public func updateGroup(id: String, name: String?, description: String?, by actor: Actor) async throws -> GroupRecord {
        try await store.write { transaction in
            let group = try await transaction.updateGroup(id: id, name: name, description: description)
            try await transaction.audit(actor.entry("group.update", target: id, detail: "name \(group.name)"))
            return group
        }
    }

    public func deleteGroup(id: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.deleteGroup(id: id)
            try await transaction.audit(actor.entry("group.delete", target: id))
        }
    }

    public func addGroupMember(group: String, device: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.addExistingDevice(device, toGroup: group)
            try await transaction.audit(actor.entry("group.add_device", target: group, detail: "device \(device)"))
        }
    }

    public func removeGroupMember(group: String, device: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.removeDevice(device, fromGroup: group)
            try await transaction.audit(actor.entry("group.remove_device", target: group, detail: "device \(device)"))
        }
    }

    /// Puts a device in one group only (or none), in one change.
    public func moveDevice(_ device: String, toGroup group: String?, by actor: Actor) async throws {
        try await store.write { transaction in
            let left = try await transaction.moveDevice(device, toGroup: group)
            try await transaction.audit(actor.entry("group.move_device", target: device,
                                                    detail: "to \(group ?? "no group")" + (left.isEmpty ? "" : ", from \(left.joined(separator: ", "))")))
        }
    }
}
