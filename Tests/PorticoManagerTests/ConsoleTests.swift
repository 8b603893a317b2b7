import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
@testable import PorticoManager
import PorticoProtocol
import PorticoStore
import Testing

/// A browser, as far as the console needs one: cookies kept, redirects not followed.
final class ConsoleBrowser {
    let client: HTTPClient
    let base: String
    var cookies: [String: String] = [:]

    struct Page {
        let status: UInt
        let headers: HTTPHeaders
        let html: String
        var location: String? { headers.first(name: "location") }

        /// The value of a hidden `csrf` field on the page.
        var csrf: String? {
            guard let range = html.range(of: "name=\"csrf\" value=\"") else { return nil }
            return String(html[range.upperBound...].prefix { $0 != "\"" })
        }
    }

    init(_ manager: TestManager, base: String? = nil) {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(manager.identity.current.chain)
        tls.certificateVerification = .noHostnameVerification
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.redirectConfiguration = .disallow
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        self.base = base ?? manager.consoleURL
    }

    func shutdown() async { try? await client.shutdown() }

    /// Runs `body` with a fresh browser and shuts it down after.
    static func with<T>(_ manager: TestManager, base: String? = nil, _ body: (ConsoleBrowser) async throws -> T) async throws -> T {
        let browser = ConsoleBrowser(manager, base: base)
        do {
            let result = try await body(browser)
            await browser.shutdown()
            return result
        } catch {
            await browser.shutdown()
            throw error
        }
    }

    func get(_ path: String) async throws -> Page { try await send(.GET, path, form: nil) }

    func post(_ path: String, _ form: [(String, String)]) async throws -> Page { try await send(.POST, path, form: form) }

    private func send(_ method: HTTPMethod, _ path: String, form: [(String, String)]?) async throws -> Page {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        if !cookies.isEmpty { request.headers.add(name: "cookie", value: cookies.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")) }
        if let form {
            var allowed = CharacterSet.alphanumerics
            allowed.insert(charactersIn: "-._~")
            let body = form.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")" }.joined(separator: "&")
            request.headers.add(name: "content-type", value: "application/x-www-form-urlencoded")
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await client.execute(request, timeout: .seconds(30))
        for header in response.headers["set-cookie"] {
            let pair = header.split(separator: ";")[0].split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(pair[0])
            let value = pair.count > 1 ? String(pair[1]) : ""
            if value.isEmpty || header.contains("Max-Age=0") { cookies[name] = nil } else { cookies[name] = value }
        }
        let body = try await response.body.collect(upTo: 4 << 20)
        return Page(status: response.status.code, headers: response.headers, html: String(buffer: body))
    }

    /// Signs in through the login form.
    func signIn(_ name: String, password: String = "correct horse battery") async throws -> Page {
        let form = try await get("/login")
        return try await post("/login", [("csrf", form.csrf ?? ""), ("name", name), ("password", password)])
    }
}

@Suite struct ConsoleTests {
    @Test func signingInSetsAStrictSessionCookieAndTheDashboardShowsTheFleet() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("ada", role: .admin)
            _ = try await manager.makeDevice(hostname: "kiosk-1")
            try await ConsoleBrowser.with(manager) { browser in
            let anonymous = try await browser.get("/")
            #expect(anonymous.status == 303 && anonymous.location == "/login")
            let form = try await browser.get("/login")
            #expect(form.status == 200 && form.csrf != nil)
            #expect(form.headers["set-cookie"].contains { $0.hasPrefix("portico_login=") && $0.contains("Secure") && $0.contains("HttpOnly") && $0.contains("SameSite=Strict") })
            #expect(form.headers.first(name: "content-security-policy")?.contains("default-src 'none'") == true)
            #expect(!form.html.contains("<script"))

            let wrong = try await browser.post("/login", [("csrf", form.csrf ?? ""), ("name", "ada"), ("password", "not it")])
            #expect(wrong.status == 401 && wrong.html.contains("The name or password is not right"))
            let signedIn = try await browser.signIn("ada")
            #expect(signedIn.status == 303 && signedIn.location == "/")
            let cookie = try #require(signedIn.headers["set-cookie"].first { $0.hasPrefix("portico_session=") })
            #expect(cookie.contains("Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/"))

            let dashboard = try await browser.get("/")
            #expect(dashboard.status == 200)
            #expect(dashboard.html.contains("<b id=\"devices-total\">1</b>"))
            #expect(dashboard.html.contains("ada (admin)"))
            // Nothing unset shows through as "nil".
            #expect(!dashboard.html.contains("nil"))
            let logins = try await manager.store.auditEntries(AuditFilter(action: "auth.login"))
            #expect(logins.map(\.result) == ["ok", "failed"] && logins.allSatisfy { $0.detail.hasPrefix("console") })
            }
        }
    }

    @Test func aFormWithoutTheSessionsTokenIsRefusedAndChangesNothing() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("olive", role: .operator)
            let device = try await manager.makeDevice(hostname: "laptop")
            try await ConsoleBrowser.with(manager) { browser in
            // The login form needs its token too.
            let noLoginToken = try await browser.post("/login", [("name", "olive"), ("password", "correct horse battery")])
            #expect(noLoginToken.status == 403)
            _ = try await browser.signIn("olive")

            let missing = try await browser.post("/devices/\(device)/commands", [("kind", "lock")])
            #expect(missing.status == 403 && missing.html.contains("form token"))
            let forged = try await browser.post("/devices/\(device)/commands", [("csrf", "forged"), ("kind", "lock")])
            #expect(forged.status == 403)
            #expect(try await manager.store.commands(deviceID: device).isEmpty)
            #expect(try await manager.store.auditEntries(AuditFilter(action: "console.form", result: "denied")).count == 2)
            }
        }
    }

    @Test func eachRoleSeesAndDoesWhatTheAPIAllowsIt() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("audrey", role: .auditor)
            try await manager.makeOperator("olive", role: .operator)
            let device = try await manager.makeDevice(hostname: "desk")

            try await ConsoleBrowser.with(manager) { auditor in
            _ = try await auditor.signIn("audrey")
            let seen = try await auditor.get("/devices/\(device)")
            #expect(seen.status == 200 && seen.html.contains("desk"))
            #expect(!seen.html.contains("id=\"lock\"") && !seen.html.contains("id=\"wipe\""))
            let csrf = try #require(seen.csrf)
            let refused = try await auditor.post("/devices/\(device)/commands", [("csrf", csrf), ("kind", "lock")])
            #expect(refused.status == 403)
            #expect(try await manager.store.commands(deviceID: device).isEmpty)
            }

            try await ConsoleBrowser.with(manager) { operator_ in
            _ = try await operator_.signIn("olive")
            let page = try await operator_.get("/devices/\(device)")
            #expect(page.html.contains("id=\"lock\"") && page.html.contains("id=\"wipe\""))
            let token = try #require(page.csrf)
            let locked = try await operator_.post("/devices/\(device)/commands", [("csrf", token), ("kind", "lock")])
            #expect(locked.status == 303 && locked.location == "/devices/\(device)?done=lock")
            let after = try await operator_.get(try #require(locked.location))
            #expect(after.html.contains("The lock command is queued"))
            #expect(after.html.contains("<td class=\"command-state\">pending</td>"))
            // Wiping needs the box ticked.
            let unconfirmed = try await operator_.post("/devices/\(device)/commands", [("csrf", token), ("kind", "wipe")])
            #expect(unconfirmed.status == 422)
            #expect(try await manager.store.commands(deviceID: device).map(\.kind) == [.lock])
            let wiped = try await operator_.post("/devices/\(device)/commands", [("csrf", token), ("kind", "wipe"), ("confirm", "yes")])
            #expect(wiped.status == 303)
            #expect(try await manager.store.commands(deviceID: device).map(\.kind) == [.wipe, .lock])
            // The unconfirmed wipe was refused, and audited as such.
            #expect(try await manager.store.auditEntries(AuditFilter(action: "command.issue", result: "failed")).count == 1)
            let audit = try await manager.store.auditEntries(AuditFilter(action: "command.issue", result: "ok"))
            #expect(audit.count == 2 && audit.allSatisfy { $0.actor == "operator:olive" && $0.target == device && $0.source == "127.0.0.1" })

            // Remote help answers the code the manager computes for that device.
            let challenge = RemoteHelp.makeChallenge(now: Int64(Date().timeIntervalSince1970 * 1000))
            let help = try await operator_.post("/devices/\(device)/remote-help", [("csrf", token), ("challenge", challenge)])
            let expected = try await manager.agent.remoteHelpResponse(deviceID: device, challenge: challenge)
            #expect(help.status == 200 && help.html.contains("<span class=\"code\" id=\"remote-help-response\">\(expected)</span>"))

            // Searching finds it; logging out ends the session.
            #expect(try await operator_.get("/devices?q=DES").html.contains("/devices/\(device)"))
            #expect(!(try await operator_.get("/devices?q=nothing").html.contains("/devices/\(device)")))
            let out = try await operator_.post("/logout", [("csrf", token)])
            #expect(out.status == 303 && out.location == "/login")
            #expect(try await operator_.get("/").location == "/login")
            }
        }
    }

    @Test func theAuditLogPageIsForAdminsAndAuditorsAndFilters() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("audrey", role: .auditor)
            try await manager.makeOperator("olive", role: .operator)
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("olive")
                let home = try await browser.get("/")
                #expect(!home.html.contains("href=\"/audit\""))
                #expect(try await browser.get("/audit").status == 403)
            }
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("audrey")
                #expect(try await browser.get("/").html.contains("href=\"/audit\""))
                let all = try await browser.get("/audit")
                #expect(all.status == 200 && all.html.contains("operator:olive") && all.html.contains("operator:audrey"))
                let filtered = try await browser.get("/audit?actor=operator%3Aolive&action=auth.login")
                #expect(filtered.html.contains("operator:olive") && !filtered.html.contains("<td>operator:audrey</td>"))
            }
        }
    }

    @Test func theComplianceReportIsAPageWithAChartAndCSVAndJSONForScripts() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("audrey", role: .auditor)
            let policy = try await manager.store.createPolicy(name: "Base", document: "{}", by: "t")
            let serial = try await manager.store.policySerial()
            for index in 0..<4 { _ = try await manager.makeDevice(hostname: "m\(index)", id: "d-\(index)") }
            for id in ["d-0", "d-1", "d-2"] { try await manager.store.recordCheckIn(CheckIn(deviceID: id, atMilliseconds: Int64(Date().timeIntervalSince1970 * 1000), policySerial: serial, status: "ok")) }
            _ = policy
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("audrey")
                let page = try await browser.get("/reports/compliance")
                #expect(page.status == 200)
                #expect(page.html.contains("3 of 4 active devices (75.0%)"))
                #expect(page.html.contains("<svg") && page.html.contains("class=\"bar\""))
                let csv = try await browser.get("/reports/compliance.csv")
                #expect(csv.headers.first(name: "content-type")?.hasPrefix("text/csv") == true)
                let lines = csv.html.split(separator: "\r\n")
                #expect(lines.first == "day,devices,compliant,compliant_percent,online,stale,policy_serial")
                #expect(lines.last?.hasSuffix(",4,3,75.0,3,1,\(serial)") == true, "\(csv.html)")
                let bad = try await browser.get("/reports/compliance.json?from=yesterday")
                #expect(bad.status == 422)
            }
            // Scripts: a bearer token, on the reporting listener itself.
            let token = try await manager.apiToken(role: .auditor)
            try await APICaller.with(manager) { api in
                let base = manager.reportingURL
                let unauthenticated = try await api.client.execute(HTTPClientRequest(url: base + "/reports/compliance.json"), timeout: .seconds(10))
                #expect(unauthenticated.status == .unauthorized)
                var request = HTTPClientRequest(url: base + "/reports/compliance.json")
                request.headers.add(name: "authorization", value: "Bearer \(token)")
                let answer = try await api.client.execute(request, timeout: .seconds(10))
                let body = try await answer.body.collect(upTo: 1 << 20)
                let json = try #require(try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any])
                let items = try #require(json["items"] as? [[String: Any]])
                #expect(answer.status == .ok && items.last?["compliant"] as? Int == 3 && items.last?["devices"] as? Int == 4)
                let scoped = try await manager.apiToken(role: .admin, scopes: ["devices.read"])
                var refused = HTTPClientRequest(url: base + "/reports/compliance.csv")
                refused.headers.add(name: "authorization", value: "Bearer \(scoped)")
                #expect(try await api.client.execute(refused, timeout: .seconds(10)).status == .forbidden)
            }
        }
    }

    @Test func rolloutFreshnessEventAndCommandReportsCountWhatHappened() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("audrey", role: .auditor)
            let group = try await manager.store.createGroup(name: "Fleet")
            let policy = try await manager.store.createPolicy(name: "Base", document: "{}", by: "t")
            try await manager.store.publishPolicy(policyID: policy.id, version: 1)
            try await manager.store.assignPolicy(policyID: policy.id, toGroup: group.id)
            let serial = try await manager.store.policySerial()
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            for index in 0..<3 {
                let id = try await manager.makeDevice(hostname: "m\(index)", id: "d-\(index)")
                try await manager.store.addDevice(id, toGroup: group.id)
            }
            try await manager.store.recordCheckIn(CheckIn(deviceID: "d-0", atMilliseconds: now, policySerial: serial, status: "ok"))
            try await manager.store.recordCheckIn(CheckIn(deviceID: "d-1", atMilliseconds: now - 2 * 86_400_000, policySerial: 0, status: "ok"))
            try await manager.store.ingestEvents([
                EventRecord(deviceID: "d-0", eventID: "1", kind: "malware", occurredMilliseconds: now, body: "{}"),
                EventRecord(deviceID: "d-0", eventID: "2", kind: "malware", occurredMilliseconds: now, body: "{}"),
                EventRecord(deviceID: "d-1", eventID: "3", kind: "scan", occurredMilliseconds: now - 86_400_000, body: "{}"),
            ])
            try await manager.store.enqueueCommand(CommandRecord(id: "c1", deviceID: "d-0", kind: .lock, issuedBy: "t"))
            try await manager.store.enqueueCommand(CommandRecord(id: "c2", deviceID: "d-0", kind: .lock, issuedBy: "t"))
            try await manager.store.acknowledgeCommand(id: "c1", deviceID: "d-0", succeeded: true, result: "locked")
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("audrey")
                func items(_ name: String) async throws -> [[String: Any]] {
                    let page = try await browser.get("/reports/\(name).json")
                    #expect(page.status == 200, "\(name): \(page.html)")
                    return (try JSONSerialization.jsonObject(with: Data(page.html.utf8)) as? [String: Any])?["items"] as? [[String: Any]] ?? []
                }
                let index = try await browser.get("/reports")
                #expect(["compliance", "rollout", "freshness", "events", "commands"].allSatisfy { index.html.contains("href=\"/reports/\($0)\"") })
                let rollout = try await items("rollout")
                #expect(rollout.count == 1 && rollout[0]["policy"] as? String == "Base" && rollout[0]["targeted"] as? Int == 3 && rollout[0]["current"] as? Int == 1)
                let freshness = Dictionary(uniqueKeysWithValues: try await items("freshness").map { ($0["last_check_in"] as? String ?? "", $0["devices"] as? Int ?? -1) })
                #expect(freshness == ["under an hour": 1, "under a day": 0, "under a week": 1, "a week or more": 0, "never": 1])
                let events = try await items("events").map { "\($0["kind"] as? String ?? "")=\($0["events"] as? Int ?? -1)" }
                #expect(events.sorted() == ["malware=2", "scan=1"])
                let commands = try await items("commands").map { "\($0["kind"] as? String ?? "")/\($0["state"] as? String ?? "")=\($0["commands"] as? Int ?? -1)" }
                #expect(commands == ["lock/acknowledged=1", "lock/pending=1"])
                for name in ["rollout", "freshness", "events", "commands"] {
                    let page = try await browser.get("/reports/\(name)")
                    #expect(page.status == 200 && page.html.contains("<svg"), "\(name)")
                }
                #expect(try await browser.get("/reports/nothing").status == 404)
            }
        }
    }

    @Test func policiesAreCreatedVersionedComparedPublishedAndAssignedFromTheConsole() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("olive", role: .operator)
            try await manager.makeOperator("audrey", role: .auditor)
            let group = try await manager.store.createGroup(name: "Laptops")
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("olive")
                let list = try await browser.get("/policies")
                let csrf = try #require(list.csrf)
                let broken = try await browser.post("/policies", [("csrf", csrf), ("name", "Firewall"), ("document", "{not json")])
                #expect(broken.status == 422)
                #expect(try await manager.store.policies().isEmpty)
                let created = try await browser.post("/policies", [("csrf", csrf), ("name", "Firewall"), ("document", #"{"inbound":"deny","log":true}"#)])
                #expect(created.status == 303)
                let path = try #require(created.location)
                let id = String(path.dropFirst("/policies/".count))
                let next = try await browser.post(path + "/versions", [("csrf", csrf), ("document", #"{"inbound":"allow","log":true}"#)])
                #expect(next.location == path + "?version=2&diff=1")
                let diff = try await browser.get(try #require(next.location))
                #expect(diff.html.contains("<span class=\"removed\">-   &quot;inbound&quot; : &quot;deny&quot;,</span>") || diff.html.contains("<span class=\"removed\">-   &quot;inbound&quot;:&quot;deny&quot;"),
                        "\(diff.html)")
                #expect(diff.html.contains("class=\"added\">+"))
                #expect(try await browser.post(path + "/publish", [("csrf", csrf), ("version", "2")]).status == 303)
                #expect(try await browser.post(path + "/assign", [("csrf", csrf), ("group", group.id)]).status == 303)
                let shown = try await browser.get(path)
                #expect(shown.html.contains("<span id=\"published\">version 2</span>") && shown.html.contains("<td>Laptops</td>"))
                #expect(try await manager.store.policy(id: id)?.publishedVersion == 2)
                #expect(try await manager.store.policyAssignments(policyID: id) == [group.id])
                let audit = try await manager.store.auditEntries(AuditFilter(actor: "operator:olive")).map(\.action)
                #expect(["policy.create", "policy.add_version", "policy.publish", "policy.assign"].allSatisfy(audit.contains))
            }
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("audrey")
                let policy = try #require(try await manager.store.policies().first)
                let page = try await browser.get("/policies/\(policy.id)")
                #expect(page.status == 200 && !page.html.contains("id=\"publish\"") && !page.html.contains("id=\"add-version\""))
                #expect(try await browser.post("/policies/\(policy.id)/publish", [("csrf", try #require(page.csrf)), ("version", "1")]).status == 403)
                #expect(try await manager.store.policy(id: policy.id)?.publishedVersion == 2)
            }
        }
    }

    @Test func enrollmentTokensOperatorsAPITokensAndPeersFromTheConsole() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("ada", role: .admin)
            try await manager.makeOperator("olive", role: .operator)
            try await manager.store.addPeer(PeerRecord(name: "site-b", url: "https://b.example:8444", certificateFingerprint: String(repeating: "ab", count: 32)))
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("olive")
                #expect(try await browser.get("/operators").status == 403)
                #expect(!(try await browser.get("/").html.contains("href=\"/operators\"")))
                let tokens = try await browser.get("/enrollment-tokens")
                let csrf = try #require(tokens.csrf)
                let created = try await browser.post("/enrollment-tokens", [("csrf", csrf), ("group", ""), ("uses", "5"), ("hours", "2")])
                #expect(created.status == 201)
                let token = try #require(created.html.range(of: "<code id=\"new-token\">").map { String(created.html[$0.upperBound...].prefix { $0 != "<" }) })
                let id = String(token.prefix { $0 != "." })
                #expect(try await manager.store.enrollmentToken(id: id)?.usesAllowed == 5)
                // The secret is shown once: the list does not carry it.
                #expect(!(try await browser.get("/enrollment-tokens").html.contains(token)))
                #expect(try await browser.post("/enrollment-tokens/\(id)/revoke", [("csrf", csrf)]).status == 303)
                #expect(try await manager.store.enrollmentToken(id: id)?.revoked == true)
                #expect(try await browser.get("/peers").html.contains("https://b.example:8444"))
            }
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("ada")
                let page = try await browser.get("/operators")
                let csrf = try #require(page.csrf)
                #expect(try await browser.post("/operators", [("csrf", csrf), ("name", "newbie"), ("role", "auditor"), ("password", "short")]).status == 422)
                #expect(try await browser.post("/operators", [("csrf", csrf), ("name", "newbie"), ("role", "auditor"), ("password", "long enough password")]).status == 303)
                #expect(try await manager.store.operatorAccount(named: "newbie")?.role == .auditor)
                for _ in 0..<5 { _ = try await manager.store.recordLoginFailure(name: "olive", now: Int64(Date().timeIntervalSince1970 * 1000), lockAfter: 5, lockFor: 600_000) }
                #expect(try await browser.get("/operators").html.contains("action=\"/operators/olive/unlock\""))
                #expect(try await browser.post("/operators/olive/unlock", [("csrf", csrf)]).status == 303)
                #expect(try await manager.store.operatorAccount(named: "olive")?.lockedUntilMilliseconds == nil)
                let made = try await browser.post("/api-tokens", [("csrf", csrf), ("name", "ci"), ("role", "auditor"), ("days", "7")])
                #expect(made.status == 201)
                let secret = try #require(made.html.range(of: "<code id=\"new-api-token\">").map { String(made.html[$0.upperBound...].prefix { $0 != "<" }) })
                let status = try await APICaller.with(manager) { api in try await api.call(.GET, "/devices", token: secret).status }
                #expect(status == 200)
                let tokenID = try #require(try await manager.store.apiTokens().first { $0.name == "ci" }?.id)
                #expect(try await browser.post("/api-tokens/\(tokenID)/revoke", [("csrf", csrf)]).status == 303)
                #expect(try await manager.store.apiToken(id: tokenID)?.revoked == true)
            }
        }
    }

    @Test func everyPageAnswersEachRoleAsTheAPIWould() async throws {
        try await TestManager.with { manager in
            for role in OperatorRole.allCases { try await manager.makeOperator("op-\(role.rawValue)", role: role) }
            let device = try await manager.makeDevice(hostname: "box")
            let policy = try await manager.store.createPolicy(name: "P", document: "{}", by: "t")
            let pages: [(path: String, roles: Set<OperatorRole>)] = [
                ("/", [.admin, .operator, .auditor]), ("/devices", [.admin, .operator, .auditor]), ("/devices/\(device)", [.admin, .operator, .auditor]),
                ("/policies", [.admin, .operator, .auditor]), ("/policies/\(policy.id)", [.admin, .operator, .auditor]),
                ("/enrollment-tokens", [.admin, .operator, .auditor]), ("/peers", [.admin, .operator, .auditor]),
                ("/audit", [.admin, .auditor]), ("/operators", [.admin]),
                ("/reports", [.admin, .operator, .auditor]), ("/reports/compliance", [.admin, .operator, .auditor]),
            ]
            var mismatches: [String] = []
            for role in OperatorRole.allCases {
                try await ConsoleBrowser.with(manager) { browser in
                    _ = try await browser.signIn("op-\(role.rawValue)")
                    for page in pages {
                        let answer = try await browser.get(page.path)
                        let expected: UInt = page.roles.contains(role) ? 200 : 403
                        if answer.status != expected { mismatches.append("\(page.path) as \(role): \(answer.status), expected \(expected)") }
                        if answer.status == 200 {
                            // Forms that change things appear only for roles that may use them.
                            let writes = answer.html.contains("id=\"lock\"") || answer.html.contains("id=\"create-policy\"") || answer.html.contains("id=\"create-token\"")
                            if role == .auditor, writes { mismatches.append("\(page.path) shows a changing form to an auditor") }
                        }
                    }
                    let anonymous = ConsoleBrowser(manager)
                    for page in pages where page.path != "/reports" && !page.path.hasPrefix("/reports/") {
                        let answer = try await anonymous.get(page.path)
                        let back = page.path == "/" ? "/login" : "/login?next=\(page.path)"
                        if answer.status != 303 || answer.location != back { mismatches.append("\(page.path) without a session: \(answer.status) \(answer.location ?? "")") }
                    }
                    await anonymous.shutdown()
                }
            }
            #expect(mismatches.isEmpty, "\(mismatches.joined(separator: "\n"))")
        }
    }
}
