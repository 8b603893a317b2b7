import PorticoStore

/// Notification rules and scheduled reports, audited like every other change.
extension ManagerOperations {
    public func createNotificationRule(_ rule: NotificationRule, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.createNotificationRule(rule)
            let channels = [rule.webhookURL.isEmpty ? nil : "webhook \(rule.webhookURL)", rule.email.isEmpty ? nil : "email \(rule.email)"].compactMap { $0 }
            try await transaction.audit(actor.entry("notification.create", target: rule.id, detail: "\(rule.name): \(rule.kind.rawValue) to \(channels.joined(separator: ", "))"))
        }
    }

    public func deleteNotificationRule(id: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.deleteNotificationRule(id: id)
            try await transaction.audit(actor.entry("notification.delete", target: id))
        }
    }

    public func setNotificationRule(id: String, enabled: Bool, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.setNotificationRule(id: id, enabled: enabled)
            try await transaction.audit(actor.entry(enabled ? "notification.enable" : "notification.disable", target: id))
        }
    }
}
