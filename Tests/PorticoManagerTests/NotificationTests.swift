import Crypto
import Foundation
import PorticoGateway
@testable import PorticoManager
import PorticoStore
import PorticoTestSupport
import Testing

@Suite struct NotificationTests {
    static func settings(mail port: Int?) -> Notifier.Configuration {
        var settings = Notifier.Configuration()
        settings.retryBase = .seconds(60)
        settings.attempts = 3
        if let port {
            var smtp = SMTPSettings(host: "127.0.0.1", from: "portico@example.test")
            smtp.port = port
            smtp.security = .none
            settings.smtp = smtp
        }
        return settings
    }

    @Test(.enabled(if: MailSink.usable || MailSink.required, "needs aiosmtpd for python3 on PATH (pip install aiosmtpd)"))
    func aRuleFiresToASignedWebhookAndByMailAndRetriesWithBackOff() async throws {
        let dir = try TemporaryDirectory()
        let sink = try await MailSink(directory: dir.path)
        defer { sink.stop() }
        // The webhook fails once, then takes the retry.
        let hook = try await WebhookReceiver.start { $0 == 0 ? 500 : 204 }
        try await TestManager.with(notifications: Self.settings(mail: sink.port)) { manager in
            try await manager.makeOperator("olive", role: .operator)
            let device = try await manager.makeDevice(hostname: "laptop-7")
            let secret = try await ConsoleBrowser.with(manager) { browser -> String in
                _ = try await browser.signIn("olive")
                let page = try await browser.get("/notifications")
                let created = try await browser.post("/notifications", [("csrf", try #require(page.csrf)), ("name", "Malware burst"), ("kind", "events"),
                                                                        ("event_kind", "malware"), ("threshold", "2"), ("window_minutes", "10"),
                                                                        ("webhook_url", hook.url), ("email", "soc@example.test")])
                #expect(created.status == 201)
                return try #require(ConsoleWorkTests.text(of: "webhook-secret", in: created.html))
            }
            #expect(secret.hasPrefix("whsec_"))
            let rule = try #require(try await manager.store.notificationRules().first)
            #expect(!rule.webhookSecret.contains(secret), "the signing key is stored sealed")
            #expect(try await manager.store.auditEntries(AuditFilter(action: "notification.create")).first?.actor == "operator:olive")

            let now = Int64(Date().timeIntervalSince1970 * 1000)
            // Two events are not more than two: nothing fires.
            try await manager.store.ingestEvents((0..<2).map { EventRecord(deviceID: device, eventID: "e\($0)", kind: "malware", occurredMilliseconds: now - 1000, body: "{}") })
            await manager.notifier.tick(now: now)
            #expect(try await manager.store.notificationDeliveries().isEmpty)
            try await manager.store.ingestEvents([EventRecord(deviceID: device, eventID: "e3", kind: "malware", occurredMilliseconds: now - 500, body: "{}")])
            await manager.notifier.tick(now: now + 1000)
            let first = try await manager.store.notificationDeliveries()
            #expect(Set(first.map { "\($0.channel)=\($0.state.rawValue)" }) == ["webhook=pending", "email=delivered"])
            let failed = try #require(first.first { $0.channel == "webhook" })
            #expect(failed.attempts == 1 && failed.lastError.contains("500") && failed.nextMilliseconds == now + 1000 + 60_000)

            // The mail: to the address, with the rule and the count.
            let mail = try #require(sink.messages.first)
            #expect(mail.contains("To: soc@example.test") && mail.contains("Subject: [Portico] Malware burst: 3 malware events in the last 10 minutes"))

            // Before the back-off nothing is tried again; after it the webhook takes it.
            await manager.notifier.tick(now: now + 30_000)
            #expect(hook.requests.count == 1)
            await manager.notifier.tick(now: now + 62_000)
            #expect(try await manager.store.notificationDeliveries().allSatisfy { $0.state == .delivered })
            let requests = hook.requests
            #expect(requests.count == 2)
            let delivered = try #require(requests.last)
            let timestamp = try #require(delivered.headers["x-portico-timestamp"])
            #expect(delivered.headers["x-portico-signature"] == Notifier.signature(secret: Array(secret.utf8), timestamp: timestamp, body: delivered.body))
            let payload = try #require(try JSONSerialization.jsonObject(with: Data(delivered.body)) as? [String: Any])
            #expect(payload["rule"] as? String == "Malware burst" && (payload["details"] as? [String: Any])?["events"] as? Int == 3)
            // Within its window the burst is not told of again.
            await manager.notifier.tick(now: now + 120_000)
            #expect(try await manager.store.notificationDeliveries().count == 2)

            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("olive")
                let log = try await browser.get("/notifications")
                #expect(log.html.contains("soc@example.test") && log.html.contains("<td class=\"delivery-state\">delivered"))
            }
        }
        await hook.stop()
    }

    @Test(.enabled(if: MailSink.usable || MailSink.required, "needs aiosmtpd for python3 on PATH (pip install aiosmtpd)"))
    func mailGoesOverSTARTTLSToAVerifiedServerOrNotAtAll() async throws {
        let dir = try TemporaryDirectory()
        let made = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "mail.test")
        let certificate = try dir.write("mail.crt", made.certificatePEM)
        let key = try dir.write("mail.key", made.privateKeyPEM)
        for folder in ["tls", "plain"] { try FileManager.default.createDirectory(atPath: dir.file(folder), withIntermediateDirectories: true) }
        let tls = try await MailSink(directory: dir.path + "/tls", tls: (certificate, key))
        defer { tls.stop() }
        let plain = try await MailSink(directory: dir.path + "/plain")
        defer { plain.stop() }
        var settings = SMTPSettings(host: "127.0.0.1", from: "portico@example.test")
        settings.timeoutSeconds = 10
        let message = Mailer.message(from: settings.from, to: "soc@example.test", subject: "Über TLS", text: "hello")
        // STARTTLS, the server verified against the given certificate.
        settings.port = tls.port
        settings.trust = certificate
        try Mailer(settings: settings).send(message, to: "soc@example.test")
        #expect(tls.messages.first?.contains("Subject: =?utf-8?b?") == true)
        // A server verified against other roots is not sent to.
        let other = try dir.write("other.crt", try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "other").certificatePEM)
        settings.trust = other
        #expect(throws: Mailer.Failure.self) { try Mailer(settings: settings).send(message, to: "soc@example.test") }
        // A server that offers no STARTTLS is not sent to, unless the config says none.
        settings.port = plain.port
        settings.trust = nil
        let refused = #expect(throws: Mailer.Failure.self) { try Mailer(settings: settings).send(message, to: "soc@example.test") }
        #expect(refused?.description.contains("127.0.0.1:\(plain.port)") == true)
        #expect(plain.messages.isEmpty && tls.messages.count == 1)
    }

    @Test func unseenDevicesFailedCommandsAndTheCertificateAreEachToldOnce() async throws {
        let hook = try await WebhookReceiver.start()
        try await TestManager.with(notifications: Self.settings(mail: nil)) { manager in
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let quiet = try await manager.makeDevice(hostname: "quiet")
            _ = try await manager.makeDevice(hostname: "busy", id: "d-busy")
            try await manager.store.recordCheckIn(CheckIn(deviceID: quiet, atMilliseconds: now - 10 * 86_400_000, policySerial: 0, status: "ok"))
            try await manager.store.recordCheckIn(CheckIn(deviceID: "d-busy", atMilliseconds: now, policySerial: 0, status: "ok"))
            try await manager.store.enqueueCommand(CommandRecord(id: "c-1", deviceID: "d-busy", kind: .lock, issuedBy: "t"))
            try await manager.store.acknowledgeCommand(id: "c-1", deviceID: "d-busy", succeeded: false, result: "screen lock unavailable")
            for (kind, days) in [(NotificationKind.unseen, 7), (.commandFailed, 0), (.certificateExpiry, 3650)] {
                try await manager.store.write { try await $0.createNotificationRule(NotificationRule(name: kind.rawValue, kind: kind, days: days, webhookURL: hook.url, createdBy: "t")) }
            }
            await manager.notifier.tick(now: now)
            var told = Dictionary(uniqueKeysWithValues: hook.requests.compactMap { request -> (String, [String: Any])? in
                guard let payload = try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any], let rule = payload["rule"] as? String else { return nil }
                return (rule, payload)
            })
            #expect(Set(told.keys) == ["unseen", "command_failed", "certificate_expiry"])
            let unseen = (told["unseen"]?["details"] as? [String: Any])?["devices"] as? [[String: Any]]
            #expect(unseen?.map { $0["hostname"] as? String } == ["quiet"])
            #expect(((told["command_failed"]?["details"] as? [String: Any])?["commands"] as? [[String: Any]])?.first?["result"] as? String == "screen lock unavailable")
            // Told once: the next round has nothing new.
            await manager.notifier.tick(now: now + 1000)
            #expect(hook.requests.count == 3)
            // Seen again, then quiet again: told again.
            try await manager.store.recordCheckIn(CheckIn(deviceID: quiet, atMilliseconds: now, policySerial: 0, status: "ok"))
            await manager.notifier.tick(now: now + 2000)
            try await manager.store.recordCheckIn(CheckIn(deviceID: quiet, atMilliseconds: now - 9 * 86_400_000, policySerial: 0, status: "ok"))
            await manager.notifier.tick(now: now + 3000)
            told = [:]
            #expect(hook.requests.count == 4)
            // A second manager of the site that read the rule before this round does not act on it too.
            let rule = try #require(try await manager.store.notificationRules().first { $0.kind == .unseen })
            #expect(try await manager.store.claimRule(id: rule.id, checkedAt: rule.checkedMilliseconds - 1, now: now + 4000) == false)
            #expect(try await manager.store.claimRule(id: rule.id, checkedAt: rule.checkedMilliseconds, now: now + 4000) == true)
        }
        await hook.stop()
    }

    @Test func aScheduledReportIsSentAsCSV() async throws {
        let hook = try await WebhookReceiver.start()
        try await TestManager.with(notifications: Self.settings(mail: nil)) { manager in
            try await manager.makeOperator("ada", role: .admin)
            _ = try await manager.makeDevice(hostname: "m1")
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("ada")
                let page = try await browser.get("/notifications")
                let made = try await browser.post("/notifications", [("csrf", try #require(page.csrf)), ("name", "Weekly compliance"), ("kind", "scheduled_report"),
                                                                     ("report", "compliance"), ("days", "7"), ("every", "week"), ("webhook_url", hook.url)])
                #expect(made.status == 201)
                // A mail address with no mail server configured is refused, saying why.
                let noMail = try await browser.post("/notifications", [("csrf", try #require(page.csrf)), ("name", "Mailed"), ("kind", "commandFailed"),
                                                                       ("email", "soc@example.test")])
                #expect(noMail.status == 422)
                let noServer = try await browser.post("/notifications", [("csrf", try #require(page.csrf)), ("name", "Mailed"), ("kind", "command_failed"),
                                                                         ("email", "soc@example.test")])
                #expect(noServer.status == 422 && noServer.html.contains("No mail server is configured") && noServer.html.contains("value=\"Mailed\""))
            }
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            await manager.notifier.tick(now: now)
            let sent = try #require(hook.requests.first)
            #expect(sent.headers["content-type"] == "text/csv; charset=utf-8")
            #expect(sent.text.hasPrefix("day,devices,compliant,compliant_percent,online,stale,policy_serial\r\n"))
            // Not again until a week has passed.
            await manager.notifier.tick(now: now + 86_400_000)
            #expect(hook.requests.count == 1)
            await manager.notifier.tick(now: now + 7 * 86_400_000)
            #expect(hook.requests.count == 2)
        }
        await hook.stop()
    }
}
