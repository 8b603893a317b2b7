import PorticoStore

/// Policies: versions, publishing, and the groups they apply to.
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
}
