import Foundation
import SQLKit

/// What a notification rule watches for.
public enum NotificationKind: String, Sendable, CaseIterable {
    /// More than `threshold` events of `eventKind` within `windowMinutes`.
    case events
    /// An active device not seen for `days`.
    case unseen
    /// A command a device reported as failed.
    case commandFailed = "command_failed"
    /// The server certificate expires within `days`.
    case certificateExpiry = "certificate_expiry"
    /// A report (`report`, the last `days` days) sent every `windowMinutes` as CSV.
    case scheduledReport = "scheduled_report"
}

/// A notification rule, or a scheduled report: what to watch (or send) and where to say so.
/// The webhook's HMAC key is stored sealed by the manager.
public struct NotificationRule: Sendable, Equatable {
    public var id: String
    public var name: String
    public var kind: NotificationKind
    public var eventKind: String
    public var threshold: Int
    public var windowMinutes: Int
    public var days: Int
    public var report: String
    public var webhookURL: String
    /// The webhook's signing key, sealed (base64 of the manager's sealed form), or empty.
    public var webhookSecret: String
    public var email: String
    public var enabled: Bool
    public var createdBy: String
    public var createdMilliseconds: Int64
    /// When a manager last checked the rule (claimed by compare-and-set, so one manager of a
    /// site checks it each time).
    public var checkedMilliseconds: Int64
    public var firedMilliseconds: Int64

    public init(id: String = UUID().uuidString.lowercased(), name: String, kind: NotificationKind, eventKind: String = "", threshold: Int = 0, windowMinutes: Int = 0,
                days: Int = 0, report: String = "", webhookURL: String = "", webhookSecret: String = "", email: String = "", enabled: Bool = true, createdBy: String,
                createdMilliseconds: Int64 = Int64(HybridLogicalClock.wallMilliseconds()), checkedMilliseconds: Int64 = 0, firedMilliseconds: Int64 = 0) {
        self.id = id
        self.name = name
        self.kind = kind
        self.eventKind = eventKind
        self.threshold = threshold
        self.windowMinutes = windowMinutes
        self.days = days
        self.report = report
        self.webhookURL = webhookURL
        self.webhookSecret = webhookSecret
        self.email = email
        self.enabled = enabled
        self.createdBy = createdBy
        self.createdMilliseconds = createdMilliseconds
        self.checkedMilliseconds = checkedMilliseconds
        self.firedMilliseconds = firedMilliseconds
    }
}

/// One message to one channel, and how its delivery went.
public struct NotificationDelivery: Sendable, Equatable {
    public enum State: String, Sendable { case pending, delivered, failed }

    public var id: String
    public var ruleID: String
    public var ruleName: String
    /// `webhook` or `email`.
    public var channel: String
    /// The URL or the address.
    public var target: String
    public var subject: String
    public var body: String
    public var contentType: String
    public var state: State
    public var attempts: Int
    public var nextMilliseconds: Int64
    public var lastError: String
    public var createdMilliseconds: Int64
    public var doneMilliseconds: Int64?

    public init(id: String = UUID().uuidString.lowercased(), ruleID: String, ruleName: String, channel: String, target: String, subject: String, body: String,
                contentType: String, state: State = .pending, attempts: Int = 0, nextMilliseconds: Int64, lastError: String = "",
                createdMilliseconds: Int64 = Int64(HybridLogicalClock.wallMilliseconds()), doneMilliseconds: Int64? = nil) {
        self.id = id
        self.ruleID = ruleID
        self.ruleName = ruleName
        self.channel = channel
        self.target = target
        self.subject = subject
        self.body = body
        self.contentType = contentType
        self.state = state
        self.attempts = attempts
        self.nextMilliseconds = nextMilliseconds
        self.lastError = lastError
        self.createdMilliseconds = createdMilliseconds
        self.doneMilliseconds = doneMilliseconds
    }
}

extension Transaction {
    public func createNotificationRule(_ rule: NotificationRule) async throws {
        try Validate.text(rule.name, field: "rule.name", maxBytes: 128)
        guard !rule.name.trimmingCharacters(in: .whitespaces).isEmpty else { throw StoreError.invalid("rule.name", "must not be empty") }
        if try await database.raw("SELECT id FROM notification_rules WHERE name = \(bind: rule.name)").first() != nil {
            throw StoreError.conflict("a rule named \(rule.name) already exists")
        }
        try await database.raw("""
            INSERT INTO notification_rules (id, name, kind, event_kind, threshold, window_minutes, days, report, webhook_url, webhook_secret, email, enabled,
                                            created_by, created_ms, checked_ms, fired_ms)
            VALUES (\(bind: rule.id), \(bind: rule.name), \(bind: rule.kind.rawValue), \(bind: rule.eventKind), \(bind: rule.threshold), \(bind: rule.windowMinutes),
                    \(bind: rule.days), \(bind: rule.report), \(bind: rule.webhookURL), \(bind: rule.webhookSecret), \(bind: rule.email), \(bind: rule.enabled ? 1 : 0),
                    \(bind: rule.createdBy), \(bind: rule.createdMilliseconds), \(bind: rule.checkedMilliseconds), \(bind: rule.firedMilliseconds))
            """).run()
    }

    public func deleteNotificationRule(id: String) async throws {
        let removed = try await database.raw("DELETE FROM notification_rules WHERE id = \(bind: id) RETURNING id").all()
        guard !removed.isEmpty else { throw StoreError.notFound("rule \(id)") }
        try await database.raw("DELETE FROM notification_marks WHERE rule_id = \(bind: id)").run()
    }

    public func setNotificationRule(id: String, enabled: Bool) async throws {
        let updated = try await database.raw("UPDATE notification_rules SET enabled = \(bind: enabled ? 1 : 0) WHERE id = \(bind: id) RETURNING id").all()
        guard !updated.isEmpty else { throw StoreError.notFound("rule \(id)") }
    }

    /// Queues messages and records what the rule told of, in the transaction that decided to.
    public func fire(rule: String, at now: Int64, marks: [String], deliveries: [NotificationDelivery]) async throws {
        try await database.raw("UPDATE notification_rules SET fired_ms = \(bind: now) WHERE id = \(bind: rule)").run()
        for mark in marks {
            try await database.raw("""
                INSERT INTO notification_marks (rule_id, mark, at_ms) VALUES (\(bind: rule), \(bind: mark), \(bind: now)) ON CONFLICT (rule_id, mark) DO NOTHING
                """).run()
        }
        for delivery in deliveries {
            try await database.raw("""
                INSERT INTO notification_deliveries (id, rule_id, rule_name, channel, target, subject, body, content_type, state, attempts, next_ms, created_ms)
                VALUES (\(bind: delivery.id), \(bind: delivery.ruleID), \(bind: delivery.ruleName), \(bind: delivery.channel), \(bind: delivery.target),
                        \(bind: delivery.subject), \(bind: delivery.body), \(bind: delivery.contentType), 'pending', 0, \(bind: delivery.nextMilliseconds),
                        \(bind: delivery.createdMilliseconds))
                """).run()
        }
    }

    /// Forgets marks that no longer hold (a device seen again), so the rule may tell of them again.
    public func clearMarks(rule: String, keeping: Set<String>) async throws {
        for row in try await database.raw("SELECT mark FROM notification_marks WHERE rule_id = \(bind: rule)").all() {
            let mark = try row.decode(column: "mark", as: String.self)
            if !keeping.contains(mark) { try await database.raw("DELETE FROM notification_marks WHERE rule_id = \(bind: rule) AND mark = \(bind: mark)").run() }
        }
    }
}

extension Store {
    public func notificationRules() async throws -> [NotificationRule] {
        try await read { db in try await db.raw("SELECT * FROM notification_rules ORDER BY name").all().map(NotificationRule.init(row:)) }
    }

    /// Takes the rule's turn: true when this manager moved `checked_ms` from what it read, so
    /// no other manager of the site checks the rule for the same moment.
    public func claimRule(id: String, checkedAt previous: Int64, now: Int64) async throws -> Bool {
        try await write { transaction in
            !(try await transaction.database.raw("""
                UPDATE notification_rules SET checked_ms = \(bind: now) WHERE id = \(bind: id) AND checked_ms = \(bind: previous) RETURNING id
                """).all().isEmpty)
        }
    }

    public func notificationMarks(rule: String) async throws -> Set<String> {
        try await read { db in Set(try await db.raw("SELECT mark FROM notification_marks WHERE rule_id = \(bind: rule)").all().map { try $0.decode(column: "mark", as: String.self) }) }
    }

    /// Events of a kind since a time.
    public func eventCount(kind: String, since: Int64) async throws -> Int {
        try await read { db in
            try await db.raw("SELECT COUNT(*) AS n FROM events WHERE kind = \(bind: kind) AND occurred_ms >= \(bind: since)").first()?.decode(column: "n", as: Int.self) ?? 0
        }
    }

    /// Commands that failed since a time, oldest first.
    public func failedCommands(since: Int64, limit: Int = 1000) async throws -> [CommandRecord] {
        try await read { db in
            try await db.raw("SELECT * FROM commands WHERE state = 'failed' AND updated_ms >= \(bind: since) ORDER BY updated_ms, id LIMIT \(bind: limit)").all().map(CommandRecord.init(row:))
        }
    }

    /// Claims up to `limit` deliveries that are due, for `lease` milliseconds: another manager
    /// of the site does not take them meanwhile.
    public func claimDeliveries(now: Int64, lease: Int64, limit: Int) async throws -> [NotificationDelivery] {
        try await write { transaction in
            let due = try await transaction.database.raw("""
                SELECT * FROM notification_deliveries WHERE state = 'pending' AND next_ms <= \(bind: now) AND claimed_until_ms <= \(bind: now)
                ORDER BY next_ms LIMIT \(bind: limit)
                """).all().map(NotificationDelivery.init(row:))
            var claimed: [NotificationDelivery] = []
            for delivery in due {
                let taken = try await transaction.database.raw("""
                    UPDATE notification_deliveries SET claimed_until_ms = \(bind: now + lease)
                    WHERE id = \(bind: delivery.id) AND claimed_until_ms <= \(bind: now) RETURNING id
                    """).all()
                if !taken.isEmpty { claimed.append(delivery) }
            }
            return claimed
        }
    }

    /// Records an attempt: delivered, or failed with the error and when to try again (nil: no more tries).
    public func finishDelivery(id: String, delivered: Bool, error: String, retryAt: Int64?, now: Int64) async throws {
        try await write { transaction in
            let state: NotificationDelivery.State = delivered ? .delivered : retryAt == nil ? .failed : .pending
            try await transaction.database.raw("""
                UPDATE notification_deliveries SET state = \(bind: state.rawValue), attempts = attempts + 1, last_error = \(bind: String(error.prefix(1000))),
                    next_ms = \(bind: retryAt ?? now), claimed_until_ms = 0, done_ms = \(bind: state == .pending ? nil : now)
                WHERE id = \(bind: id)
                """).run()
        }
    }

    /// The delivery log, newest first.
    public func notificationDeliveries(limit: Int = 100) async throws -> [NotificationDelivery] {
        try await read { db in
            try await db.raw("SELECT * FROM notification_deliveries ORDER BY created_ms DESC, id DESC LIMIT \(bind: limit)").all().map(NotificationDelivery.init(row:))
        }
    }
}

extension NotificationRule {
    init(row: any SQLRow) throws {
        self.init(id: try row.decode(column: "id", as: String.self), name: try row.decode(column: "name", as: String.self),
                  kind: NotificationKind(rawValue: try row.decode(column: "kind", as: String.self)) ?? .events,
                  eventKind: try row.decode(column: "event_kind", as: String.self), threshold: try row.decode(column: "threshold", as: Int.self),
                  windowMinutes: try row.decode(column: "window_minutes", as: Int.self), days: try row.decode(column: "days", as: Int.self),
                  report: try row.decode(column: "report", as: String.self), webhookURL: try row.decode(column: "webhook_url", as: String.self),
                  webhookSecret: try row.decode(column: "webhook_secret", as: String.self), email: try row.decode(column: "email", as: String.self),
                  enabled: try row.decode(column: "enabled", as: Int.self) != 0, createdBy: try row.decode(column: "created_by", as: String.self),
                  createdMilliseconds: try row.decode(column: "created_ms", as: Int64.self), checkedMilliseconds: try row.decode(column: "checked_ms", as: Int64.self),
                  firedMilliseconds: try row.decode(column: "fired_ms", as: Int64.self))
    }
}

extension NotificationDelivery {
    init(row: any SQLRow) throws {
        self.init(id: try row.decode(column: "id", as: String.self), ruleID: try row.decode(column: "rule_id", as: String.self),
                  ruleName: try row.decode(column: "rule_name", as: String.self), channel: try row.decode(column: "channel", as: String.self),
                  target: try row.decode(column: "target", as: String.self), subject: try row.decode(column: "subject", as: String.self),
                  body: try row.decode(column: "body", as: String.self), contentType: try row.decode(column: "content_type", as: String.self),
                  state: State(rawValue: try row.decode(column: "state", as: String.self)) ?? .pending, attempts: try row.decode(column: "attempts", as: Int.self),
                  nextMilliseconds: try row.decode(column: "next_ms", as: Int64.self), lastError: try row.decode(column: "last_error", as: String.self),
                  createdMilliseconds: try row.decode(column: "created_ms", as: Int64.self), doneMilliseconds: try row.decode(column: "done_ms", as: Int64?.self))
    }
}
