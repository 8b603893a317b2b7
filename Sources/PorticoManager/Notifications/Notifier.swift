import AsyncHTTPClient
import Crypto
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoProtocol
import PorticoStore
import ServiceLifecycle

/// Notification rules and scheduled reports: checks each rule at an interval (one manager of
/// a site per rule and moment, by compare-and-set on the rule), queues what fired in the
/// database's outbox, and delivers it to webhooks (JSON or CSV signed with HMAC-SHA256) and
/// by mail, retrying with back-off and logging each delivery.
public final class Notifier: Service, Sendable {
    /// `notifications`.
    public struct Configuration: Sendable, Equatable {
        public var smtp: SMTPSettings?
        /// `notifications.check_interval`: how often rules are checked and the outbox read.
        public var checkInterval: Duration = .seconds(30)
        /// `notifications.retry`: the first wait after a failed delivery; it doubles each time.
        public var retryBase: Duration = .seconds(30)
        /// `notifications.attempts`: tries before a delivery is given up as failed.
        public var attempts = 8
        /// `notifications.webhook_timeout`.
        public var webhookTimeout: Duration = .seconds(10)
        public init() {}
    }

    let store: Store
    let secrets: SecretsKey
    let identityStatus: @Sendable () -> APIService.IdentityStatus?
    let configuration: Configuration
    let logger: Logger

    public init(store: Store, secrets: SecretsKey, identityStatus: @escaping @Sendable () -> APIService.IdentityStatus?,
                configuration: Configuration = Configuration(), logger: Logger = Logger(label: "portico.notifications")) {
        self.store = store
        self.secrets = secrets
        self.identityStatus = identityStatus
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.tick(now: Int64(HybridLogicalClock.wallMilliseconds()))
                try? await Task.sleep(for: self.configuration.checkInterval)
            }
        }
    }

    /// One round: every rule checked, every due delivery tried.
    func tick(now: Int64) async {
        do {
            for rule in try await store.notificationRules() where rule.enabled {
                do { try await check(rule, now: now) } catch {
                    logger.error("notification rule not checked", metadata: ["rule": "\(rule.name)", "error": "\(error)"])
                }
            }
            await deliverDue(now: now)
        } catch {
            logger.error("notification rules not read", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Secrets

    /// A new webhook signing key: the text to show once, and its sealed form to store.
    func makeWebhookSecret() throws -> (shown: String, sealed: String) {
        let secret = "whsec_" + Base64URL.encode((0..<32).map { _ in UInt8.random(in: 0...255) })
        let sealed = try secrets.seal(Array(secret.utf8), name: "webhook")
        return (secret, sealed.keyID + ":" + Data(sealed.sealed).base64EncodedString())
    }

    func openWebhookSecret(_ stored: String) throws -> [UInt8] {
        guard let colon = stored.firstIndex(of: ":"), let bytes = Data(base64Encoded: String(stored[stored.index(after: colon)...])) else {
            throw ManagerError("the webhook's key is not one this manager sealed")
        }
        return try secrets.open(SealedSecret(sealed: Array(bytes), keyID: String(stored[..<colon])), name: "webhook")
    }

    /// The signature a receiver checks: HMAC-SHA256 over `<timestamp>.<body>`, in hex.
    static func signature(secret: [UInt8], timestamp: String, body: [UInt8]) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Array(timestamp.utf8) + [UInt8(ascii: ".")] + body, using: SymmetricKey(data: secret))
        return "sha256=" + mac.map { String(format: "%02x", $0) }.joined()
    }

    // MARK: - Rules

    /// What a rule found: a summary line, details for the payload, and what to remember.
    struct Finding {
        var summary: String
        var details: [String: Any]
        var marks: [String] = []
        var attachment: (name: String, contentType: String, body: String)?
    }

    private func check(_ rule: NotificationRule, now: Int64) async throws {
        // Each manager of a site checks; the compare-and-set lets one of them act.
        guard try await store.claimRule(id: rule.id, checkedAt: rule.checkedMilliseconds, now: now) else { return }
        guard let finding = try await evaluate(rule, now: now) else { return }
        let deliveries = try message(rule, finding, now: now)
        let marks = finding.marks
        try await store.write { transaction in
            try await transaction.fire(rule: rule.id, at: now, marks: marks, deliveries: deliveries)
        }
        logger.info("notification rule fired", metadata: ["rule": "\(rule.name)", "summary": "\(finding.summary)"])
    }

    func evaluate(_ rule: NotificationRule, now: Int64) async throws -> Finding? {
        switch rule.kind {
        case .events:
            let window = Int64(rule.windowMinutes) * 60_000
            // Once per window: a burst is told of once, not at every check.
            guard now - rule.firedMilliseconds >= window else { return nil }
            let count = try await store.eventCount(kind: rule.eventKind, since: now - window)
            guard count > rule.threshold else { return nil }
            return Finding(summary: "\(count) \(rule.eventKind) events in the last \(rule.windowMinutes) minutes (more than \(rule.threshold))",
                           details: ["event_kind": rule.eventKind, "events": count, "threshold": rule.threshold, "window_minutes": rule.windowMinutes])
        case .unseen:
            let stale = try await store.devices(DeviceFilter(state: .active, lastCheckInBefore: now - Int64(rule.days) * 86_400_000), limit: 10_000)
            let marked = try await store.notificationMarks(rule: rule.id)
            let staleIDs = Set(stale.map(\.id))
            // Devices seen again may be told of again later.
            try await store.write { try await $0.clearMarks(rule: rule.id, keeping: staleIDs) }
            let fresh = stale.filter { !marked.contains($0.id) }
            guard !fresh.isEmpty else { return nil }
            return Finding(summary: "\(fresh.count) device\(fresh.count == 1 ? "" : "s") not seen for \(rule.days) days",
                           details: ["days": rule.days, "devices": fresh.prefix(100).map { ["id": $0.id, "hostname": $0.hostname, "last_check_in": APIJSON.time($0.lastCheckInMilliseconds) ?? "never"] }],
                           marks: fresh.map(\.id))
        case .commandFailed:
            let failed = try await store.failedCommands(since: now - 7 * 86_400_000)
            let marked = try await store.notificationMarks(rule: rule.id)
            try await store.write { try await $0.clearMarks(rule: rule.id, keeping: Set(failed.map(\.id))) }
            let fresh = failed.filter { !marked.contains($0.id) }
            guard !fresh.isEmpty else { return nil }
            return Finding(summary: "\(fresh.count) command\(fresh.count == 1 ? "" : "s") failed",
                           details: ["commands": fresh.prefix(100).map { ["id": $0.id, "device_id": $0.deviceID, "kind": $0.kind.rawValue, "result": $0.result ?? ""] }],
                           marks: fresh.map(\.id))
        case .certificateExpiry:
            guard let identity = identityStatus()?.current else { return nil }
            let days = identity.daysRemaining()
            guard days <= rule.days else { return nil }
            let marked = try await store.notificationMarks(rule: rule.id)
            guard !marked.contains(identity.fingerprint) else { return nil }
            return Finding(summary: "the server certificate expires in \(days) days (\(APIJSON.time(Int64(identity.notAfter.timeIntervalSince1970 * 1000))))",
                           details: ["days_remaining": days, "fingerprint": identity.fingerprint, "not_after": APIJSON.time(Int64(identity.notAfter.timeIntervalSince1970 * 1000))],
                           marks: [identity.fingerprint])
        case .scheduledReport:
            guard now - rule.firedMilliseconds >= Int64(rule.windowMinutes) * 60_000 else { return nil }
            let to = Store.day(of: now)
            let from = Store.day(of: now - Int64(max(1, rule.days) - 1) * 86_400_000)
            let report = try await Reports(store: store).report(rule.report, from: from, to: to)
            let csv = ReportingService.csvText(report)
            return Finding(summary: "\(report.title) report, \(from) to \(to): \(report.summary)",
                           details: ["report": rule.report, "from": from, "to": to], attachment: (ReportingService.fileName(report, name: rule.report, suffix: "csv"), "text/csv", csv))
        }
    }

    /// The messages of a finding: one per channel the rule names.
    func message(_ rule: NotificationRule, _ finding: Finding, now: Int64) throws -> [NotificationDelivery] {
        var deliveries: [NotificationDelivery] = []
        let subject = "[Portico] \(rule.name): \(finding.summary)"
        if !rule.webhookURL.isEmpty {
            let body: String
            let contentType: String
            if let attachment = finding.attachment {
                body = attachment.body
                contentType = attachment.contentType + "; charset=utf-8"
            } else {
                let payload: [String: Any] = ["rule": rule.name, "rule_id": rule.id, "kind": rule.kind.rawValue, "at": APIJSON.time(now), "summary": finding.summary,
                                              "details": finding.details]
                body = String(decoding: try JSONSerialization.data(withJSONObject: payload, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
                contentType = "application/json"
            }
            deliveries.append(NotificationDelivery(ruleID: rule.id, ruleName: rule.name, channel: "webhook", target: rule.webhookURL, subject: subject, body: body,
                                                   contentType: contentType, nextMilliseconds: now))
        }
        if !rule.email.isEmpty {
            var text = "\(finding.summary).\n\nRule: \(rule.name) (\(rule.kind.rawValue))\nAt: \(APIJSON.time(now))\n"
            if finding.attachment == nil, let details = try? JSONSerialization.data(withJSONObject: finding.details, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]) {
                text += "\n" + String(decoding: details, as: UTF8.self) + "\n"
            }
            let mail = Mailer.message(from: configuration.smtp?.from ?? "portico@localhost", to: rule.email, subject: subject, text: text, attachment: finding.attachment)
            deliveries.append(NotificationDelivery(ruleID: rule.id, ruleName: rule.name, channel: "email", target: rule.email, subject: subject, body: mail,
                                                   contentType: "message/rfc822", nextMilliseconds: now))
        }
        return deliveries
    }

    // MARK: - Delivery

    func deliverDue(now: Int64) async {
        let due: [NotificationDelivery]
        do { due = try await store.claimDeliveries(now: now, lease: 5 * 60_000, limit: 100) } catch {
            logger.error("notification outbox not read", metadata: ["error": "\(error)"])
            return
        }
        let rules = Dictionary((try? await store.notificationRules())?.map { ($0.id, $0) } ?? [], uniquingKeysWith: { a, _ in a })
        for delivery in due {
            var failure: String?
            do {
                switch delivery.channel {
                case "webhook": try await post(delivery, secret: rules[delivery.ruleID]?.webhookSecret ?? "")
                default: try await mail(delivery)
                }
            } catch {
                failure = "\(error)"
            }
            let attempt = delivery.attempts + 1
            let base = Int64(configuration.retryBase / .milliseconds(1))
            let retry: Int64? = failure == nil || attempt >= configuration.attempts ? nil : now + base << min(attempt - 1, 20)
            do {
                try await store.finishDelivery(id: delivery.id, delivered: failure == nil, error: failure ?? "", retryAt: retry, now: Int64(HybridLogicalClock.wallMilliseconds()))
            } catch {
                logger.error("notification delivery not recorded", metadata: ["delivery": "\(delivery.id)", "error": "\(error)"])
            }
            if let failure {
                logger.warning("notification not delivered", metadata: ["rule": "\(delivery.ruleName)", "channel": "\(delivery.channel)", "attempt": "\(attempt)",
                                                                         "error": "\(failure)", "retry": "\(retry.map { APIJSON.time($0) } ?? "no more")"])
            }
        }
    }

    struct WebhookRefused: Error, CustomStringConvertible {
        var status: UInt
        var description: String { "the webhook answered \(status)" }
    }

    private func post(_ delivery: NotificationDelivery, secret sealed: String) async throws {
        let body = Array(delivery.body.utf8)
        let timestamp = "\(Int64(Date().timeIntervalSince1970))"
        var request = HTTPClientRequest(url: delivery.target)
        request.method = .POST
        request.headers.add(name: "content-type", value: delivery.contentType)
        request.headers.add(name: "user-agent", value: "Portico")
        request.headers.add(name: "x-portico-delivery", value: delivery.id)
        request.headers.add(name: "x-portico-timestamp", value: timestamp)
        if !sealed.isEmpty {
            request.headers.add(name: "x-portico-signature", value: Self.signature(secret: try openWebhookSecret(sealed), timestamp: timestamp, body: body))
        }
        request.body = .bytes(ByteBuffer(bytes: body))
        let response = try await HTTPClient.shared.execute(request, timeout: .milliseconds(Int64(configuration.webhookTimeout / .milliseconds(1))))
        _ = try? await response.body.collect(upTo: 64 * 1024)
        guard (200..<300).contains(response.status.code) else { throw WebhookRefused(status: response.status.code) }
    }

    private func mail(_ delivery: NotificationDelivery) async throws {
        guard let smtp = configuration.smtp else { throw Mailer.Failure(description: "no mail server is configured (notifications.smtp)") }
        let mailer = Mailer(settings: smtp)
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            // libcurl blocks: a thread of its own, not an event loop or the cooperative pool.
            Thread.detachNewThread {
                do {
                    try mailer.send(delivery.body, to: delivery.target)
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }
}
