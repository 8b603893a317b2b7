import Foundation
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoServer
import PorticoStore

/// Notification rules, scheduled reports and the delivery log.
extension ConsoleService {
    func notificationsPage(_ call: ConsoleCall, createdSecret: String? = nil) async throws -> GatewayResponse {
        let session = call.session
        let rules = try await store.notificationRules()
        let deliveries = try await store.notificationDeliveries(limit: 50)
        let canWrite = session.may(.write("notifications"))
        let draft = call.draft
        var context: [String: Any] = [
            "rules": rules.map { rule -> [String: Any] in
                ["id": rule.id, "name": rule.name, "what": Self.describe(rule), "enabled": rule.enabled, "canWrite": canWrite, "csrf": session.record.csrfToken,
                 "channels": [rule.webhookURL.isEmpty ? nil : "webhook \(rule.webhookURL)", rule.email.isEmpty ? nil : "mail to \(rule.email)"].compactMap { $0 }.joined(separator: "; "),
                 "fired": rule.firedMilliseconds == 0 ? "never" : ConsolePages.time(rule.firedMilliseconds)]
            },
            "deliveries": deliveries.map { delivery -> [String: Any] in
                ["at": ConsolePages.time(delivery.createdMilliseconds), "rule": delivery.ruleName, "channel": delivery.channel, "target": delivery.target,
                 "state": delivery.state.rawValue, "attempts": delivery.attempts, "error": delivery.lastError,
                 "next": delivery.state == .pending && delivery.attempts > 0 ? "retry at \(ConsolePages.time(delivery.nextMilliseconds))" : ""]
            },
            "kinds": [("events", "more than N events of a kind in M minutes"), ("unseen", "a device not seen for D days"), ("command_failed", "a command failed"),
                      ("certificate_expiry", "the server certificate expires within D days")]
                .map { ["value": $0.0, "label": $0.1, "selected": $0.0 == (draft["kind"] ?? "events")] },
            "reports": ReportingService.catalog.map { ["value": $0.name, "label": $0.title, "selected": $0.name == draft["report"]] },
            "canWrite": canWrite, "csrf": session.record.csrfToken, "draft": draft,
            "smtp": notifier?.configuration.smtp != nil,
            "tab": ["notifications": true],
        ]
        if let createdSecret { context["secret"] = createdSecret }
        return page(createdSecret == nil ? call.status : .created, title: "Notifications", template: "notifications", context, session: session, nav: "monitors",
                    notice: call.query["done"].flatMap { ["created": "The rule is saved.", "deleted": "The rule is deleted.", "enabled": "The rule is on.", "disabled": "The rule is off."][$0] },
                    error: call.refusal?.message)
    }

    static func describe(_ rule: NotificationRule) -> String {
        switch rule.kind {
        case .events: "more than \(rule.threshold) \(rule.eventKind) events in \(rule.windowMinutes) minutes"
        case .unseen: "a device not seen for \(rule.days) days"
        case .commandFailed: "a command failed"
        case .certificateExpiry: "the server certificate expires within \(rule.days) days"
        case .scheduledReport: "the \(rule.report) report of the last \(rule.days) days, every \(rule.windowMinutes >= 10_080 ? "week" : "day")"
        }
    }

    /// A rule, or a scheduled report (`kind=scheduled_report`), from the form.
    func createNotificationRule(_ call: ConsoleCall) async throws -> GatewayResponse {
        guard let notifier else { throw ConsoleRefusal.invalid("Notifications are not running on this manager.") }
        let form = call.form
        func number(_ name: String, _ range: ClosedRange<Int>, _ what: String) throws -> Int {
            guard let value = Int((form[name] ?? "").trimmingCharacters(in: .whitespaces)), range.contains(value) else {
                throw ConsoleRefusal.invalid("\(what) must be a whole number from \(range.lowerBound) to \(range.upperBound).")
            }
            return value
        }
        let name = (form["name"] ?? "").trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty else { throw ConsoleRefusal.invalid("A rule needs a name.") }
        guard let kind = form["kind"].flatMap(NotificationKind.init(rawValue:)) else { throw ConsoleRefusal.invalid("Choose what the rule watches for.") }
        var rule = NotificationRule(name: name, kind: kind, createdBy: call.session.actor.name)
        switch kind {
        case .events:
            rule.eventKind = (form["event_kind"] ?? "").trimmingCharacters(in: .whitespaces)
            guard !rule.eventKind.isEmpty, rule.eventKind.utf8.count <= 64 else { throw ConsoleRefusal.invalid("Name the kind of event to count.") }
            rule.threshold = try number("threshold", 0...1_000_000, "The number of events")
            rule.windowMinutes = try number("window_minutes", 1...10_080, "The minutes")
        case .unseen, .certificateExpiry:
            rule.days = try number("days", 1...365, "The days")
        case .commandFailed:
            break
        case .scheduledReport:
            guard let report = form["report"], ReportingService.catalog.contains(where: { $0.name == report }) else { throw ConsoleRefusal.invalid("Choose a report.") }
            rule.report = report
            rule.days = try number("days", 1...366, "The days the report covers")
            rule.windowMinutes = form["every"] == "week" ? 10_080 : 1440
        }
        let webhook = (form["webhook_url"] ?? "").trimmingCharacters(in: .whitespaces)
        let email = (form["email"] ?? "").trimmingCharacters(in: .whitespaces)
        guard !webhook.isEmpty || !email.isEmpty else { throw ConsoleRefusal.invalid("Give a webhook URL, a mail address, or both.") }
        var secret: String?
        if !webhook.isEmpty {
            guard let url = URL(string: webhook), ["https", "http"].contains(url.scheme?.lowercased() ?? ""), url.host != nil, webhook.utf8.count <= 2048 else {
                throw ConsoleRefusal.invalid("The webhook must be an https:// (or http://) URL.")
            }
            let made = try notifier.makeWebhookSecret()
            rule.webhookURL = webhook
            rule.webhookSecret = made.sealed
            secret = made.shown
        }
        if !email.isEmpty {
            let parts = email.split(separator: "@")
            guard parts.count == 2, !parts[0].isEmpty, parts[1].contains("."), email.utf8.count <= 254, !email.contains(where: { $0 == " " || $0 == "<" || $0 == ">" || $0 == "," }) else {
                throw ConsoleRefusal.invalid("\(email) is not a mail address.")
            }
            guard notifier.configuration.smtp != nil else { throw ConsoleRefusal.invalid("No mail server is configured (notifications.smtp in the config), so nothing can be mailed.") }
            rule.email = email
        }
        try await operations.createNotificationRule(rule, by: call.session.actor)
        // The webhook's signing key, shown this once (only its sealed form is stored).
        if let secret { return try await notificationsPage(call, createdSecret: secret) }
        return ConsolePages.redirect("/notifications?done=created")
    }

    func deleteNotificationRule(_ call: ConsoleCall) async throws -> GatewayResponse {
        try await operations.deleteNotificationRule(id: call.parameter("id"), by: call.session.actor)
        return ConsolePages.redirect("/notifications?done=deleted")
    }

    func enableNotificationRule(_ call: ConsoleCall) async throws -> GatewayResponse {
        let enabled = call.form["enabled"] == "yes"
        try await operations.setNotificationRule(id: call.parameter("id"), enabled: enabled, by: call.session.actor)
        return ConsolePages.redirect("/notifications?done=" + (enabled ? "enabled" : "disabled"))
    }
}
