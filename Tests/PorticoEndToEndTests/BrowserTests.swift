import Foundation
import PorticoGateway
@testable import PorticoManager
import PorticoServer
import PorticoTestSupport
import Testing

/// The console in a real browser: Debian's headless Chromium driven by Selenium through
/// chromedriver, against the real `portico serve`, with a real `portico-agent`. The script
/// (Tests/browser/console_flow.py) signs in, locks the agent from its page, sees the lock
/// acknowledged and audited, opens the compliance report, and saves screenshots.
@Suite(.serialized, .timeLimit(.minutes(3))) struct BrowserTests {
    static let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"].first { FileManager.default.isExecutableFile(atPath: $0) }
    /// The first `python3` on the PATH, if it has Selenium.
    static let python: String? = {
        guard let python = Tools.path(of: "python3") else { return nil }
        let environment = URL(fileURLWithPath: python).resolvingSymlinksInPath().deletingLastPathComponent().deletingLastPathComponent()
        let candidates = [URL(fileURLWithPath: python).deletingLastPathComponent().deletingLastPathComponent(), environment]
        for root in candidates {
            let lib = root.appendingPathComponent("lib")
            for version in (try? FileManager.default.contentsOfDirectory(atPath: lib.path)) ?? [] where version.hasPrefix("python3") {
                if FileManager.default.fileExists(atPath: lib.appendingPathComponent(version).appendingPathComponent("site-packages/selenium").path) { return python }
            }
        }
        return nil
    }()
    static let usable = chromium != nil && chromedriver != nil && python != nil
    static let required = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil

    @Test(.enabled(if: (usable && MailSink.usable && Slapd.usable) || required,
                   "needs chromium, chromium-driver, slapd and ldap-utils (apt-get install chromium chromium-driver slapd ldap-utils), and Selenium and aiosmtpd for python3 on PATH (pip install selenium aiosmtpd)"))
    func anOperatorLocksADeviceFromTheConsoleInChromium() async throws {
        let chromium = try #require(Self.chromium, "chromium is not installed")
        let chromedriver = try #require(Self.chromedriver, "chromium-driver is not installed")
        let python = try #require(Self.python, "python3 on PATH has no Selenium")
        let portico = try #require(ServerProcess.executable(named: "portico"))
        let agent = try #require(ServerProcess.executable(named: "portico-agent"))
        let dir = try TemporaryDirectory()
        // Where notifications go: a webhook that records what it is sent, and a mail server.
        let hook = try await WebhookReceiver.start()
        let sink = try await MailSink(directory: dir.path)
        defer { sink.stop() }
        // The directory operators and endpoint users sign in against.
        let slapd = try await Slapd(in: dir)
        defer { slapd.stop() }
        _ = try dir.write("directory.password", Slapd.searchPassword)
        chmod(dir.file("directory.password"), 0o600)
        let config = try ManagerConfigFile.write(in: dir, listeners: [.client: "", .console: ""], routes: [
            "{listeners: [client], path: /agent/v1/*, service: agent}",
            "{listener: console, path: /*, service: console}",
            "{listener: console, path: /reports/*, service: reporting}",
        ], more: """
            notifications: {check_interval: 200ms, retry: 1s, smtp: {host: 127.0.0.1, port: \(sink.port), security: none, from: portico@example.test}}
            directory:
              url: \(slapd.ldapsURL)
              trust: \(slapd.certificate)
              bind_dn: \(Slapd.searchDN)
              bind_password_file: directory.password
              base_dn: \(Slapd.baseDN)
              operator_roles: {portico-admins: admin}
            """)
        let admin = try await Tools.run(portico, ["admin", "create", "--config", config, "--name", "ada", "--role", "admin"], input: "correct horse battery\n")
        #expect(admin.status == 0, "\(admin.output)")
        let serve = try ServerProcess(["serve", "--config", config])
        await serve.waitFor("listening", count: 2)
        let client = try #require(serve.boundPort(.client))
        let console = try #require(serve.boundPort(.console))

        let token = try await Tools.run(portico, ["token", "create", "--config", config, "--expires", "1h"])
        let bootstrap = dir.file("bootstrap.json")
        let export = try await Tools.run(portico, ["agent-config", "export", "--config", config, "--url", "https://127.0.0.1:\(client)",
                                                   "--token", token.output.trimmingCharacters(in: .whitespacesAndNewlines), "--output", bootstrap])
        #expect(export.status == 0, "\(export.output)")
        let enrolled = try await Tools.run(agent, ["enroll", "--bootstrap", bootstrap, "--state", dir.file("agent")])
        #expect(enrolled.status == 0, "\(enrolled.output)")
        let device = try #require(enrolled.output.split(separator: " ").first { $0.hasPrefix("d-") }.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })

        let shots = dir.file("screenshots")
        try FileManager.default.createDirectory(atPath: shots, withIntermediateDirectories: true)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("browser/console_flow.py").path
        let flow = try await Tools.run("/usr/bin/env", [
            "CONSOLE=https://127.0.0.1:\(console)", "NAME=ada", "PASSWORD=correct horse battery", "DEVICE=\(device)",
            "AGENT_RUN=\(agent) run --state \(dir.file("agent")) --once", "AGENT_REPORT=\(agent) report --state \(dir.file("agent")) --kind malware.detected --count 3",
            "WEBHOOK=\(hook.url)", "SCREENSHOTS=\(shots)", "CHROMIUM=\(chromium)", "CHROMEDRIVER=\(chromedriver)",
            "DIRECTORY_NAME=alice", "DIRECTORY_PASSWORD=alice password 1", "USER_NAME=bob", "USER_PASSWORD=bob password 22",
            "AGENT_USER_AUTH=\(agent) user-auth --state \(dir.file("agent")) --user bob",
            python, script,
        ])
        #expect(flow.status == 0, "the browser flow failed:\n\(flow.output)")
        // What the webhook was sent: the rule's JSON, signed with the key the page showed, and the report's CSV.
        let secret = try String(contentsOfFile: shots + "/webhook-secret.txt", encoding: .utf8)
        let json = try #require(hook.requests.first { $0.headers["content-type"] == "application/json" })
        let timestamp = try #require(json.headers["x-portico-timestamp"])
        #expect(json.headers["x-portico-signature"] == Notifier.signature(secret: Array(secret.utf8), timestamp: timestamp, body: json.body))
        #expect(json.text.contains("\"rule\":\"Malware burst\""))
        #expect(hook.requests.contains { $0.headers["content-type"] == "text/csv; charset=utf-8" && $0.text.hasPrefix("day,devices,compliant") })
        #expect(sink.messages.contains { $0.contains("To: soc@example.test") && $0.contains("Malware burst") })
        await hook.stop()
        let screenshots = ["dashboard.png", "compliance-report.png", "devices.png", "notifications.png", "users.png"]
        for name in screenshots {
            let png = FileManager.default.contents(atPath: shots + "/" + name) ?? Data()
            #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]) && png.count > 5_000, "\(name) is not a screenshot")
        }
        // Kept for review where CI collects artifacts.
        if let keep = ProcessInfo.processInfo.environment["PORTICO_SCREENSHOTS"] {
            try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
            for name in screenshots {
                try? FileManager.default.removeItem(atPath: keep + "/" + name)
                try? FileManager.default.copyItem(atPath: shots + "/" + name, toPath: keep + "/" + name)
            }
        }
        serve.signal(SIGTERM)
        #expect(await serve.wait() == 0)
    }
}
