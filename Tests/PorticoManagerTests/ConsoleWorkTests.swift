import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
@testable import PorticoManager
import PorticoStore
import Testing

/// The operator's daily work in the console: groups, the devices table and its bulk actions,
/// operators' accounts, refused forms that keep what was typed, and the reporting listener
/// opened first.
@Suite struct ConsoleWorkTests {
    /// The text of an element with `id`, up to the next tag.
    static func text(of id: String, in html: String) -> String? {
        guard let start = html.range(of: "id=\"\(id)\"") else { return nil }
        guard let close = html[start.upperBound...].firstIndex(of: ">") else { return nil }
        return String(html[html.index(after: close)...].prefix { $0 != "<" })
    }

    @Test func theReportingListenerOpenedFirstSignsInThereAndSignsOut() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("ada", role: .admin)
            try await ConsoleBrowser.with(manager, base: manager.reportingURL) { browser in
                let first = try await browser.get("/reports/")
                #expect(first.status == 303 && first.location == "/login?next=/reports/")
                // The sign-in page is served here, not a redirect to itself.
                let form = try await browser.get(try #require(first.location))
                #expect(form.status == 200 && form.html.contains("name=\"next\" value=\"/reports/\""))
                let signedIn = try await browser.post("/login", [("csrf", form.csrf ?? ""), ("name", "ada"), ("password", "correct horse battery"), ("next", "/reports/")])
                #expect(signedIn.status == 303 && signedIn.location == "/reports/")
                let index = try await browser.get("/reports/")
                #expect(index.status == 200 && index.html.contains("href=\"/reports/compliance\""))
                // No link to console pages that this listener does not have.
                for path in ["/devices", "/policies", "/enrollment-tokens", "/operators", "/peers", "/audit", "/groups"] {
                    #expect(!index.html.contains("href=\"\(path)\""), "the reports' menu links to \(path)")
                }
                #expect(index.headers.first(name: "strict-transport-security") == "max-age=31536000")
                // A next that leaves the host is not followed.
                let again = try await browser.get("/login")
                let elsewhere = try await browser.post("/login", [("csrf", again.csrf ?? ""), ("name", "ada"), ("password", "correct horse battery"), ("next", "//evil.example/")])
                #expect(elsewhere.location == "/")
                let out = try await browser.post("/logout", [("csrf", try #require(try await browser.get("/reports/").csrf))])
                #expect(out.status == 303 && out.location == "/login")
                #expect(try await browser.get("/reports/compliance").status == 303)
                let logouts = try await manager.store.auditEntries(AuditFilter(action: "auth.logout"))
                #expect(logouts.count == 1 && logouts[0].actor == "operator:ada")
            }
        }
    }

    @Test func reportsGiveNumbersAsNumbersRangesAndProblemsForScripts() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("audrey", role: .auditor)
            for index in 0..<5 { _ = try await manager.makeDevice(hostname: "m\(index)", id: "d-\(index)") }
            _ = try await manager.store.createPolicy(name: "Base", document: "{}", by: "t")
            let serial = try await manager.store.policySerial()
            try await manager.store.recordCheckIn(CheckIn(deviceID: "d-0", atMilliseconds: Int64(Date().timeIntervalSince1970 * 1000), policySerial: serial, status: "ok"))
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            try await manager.store.ingestEvents((0..<7).map { EventRecord(deviceID: "d-0", eventID: "e\($0)", kind: "scan", occurredMilliseconds: now, body: "{}") })
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("audrey")
                let json = try await browser.get("/reports/compliance.json")
                let document = try #require(try JSONSerialization.jsonObject(with: Data(json.html.utf8)) as? [String: Any])
                let item = try #require((document["items"] as? [[String: Any]])?.last)
                #expect(item["compliant_percent"] as? Double == 20.0, "\(json.html)")
                #expect(document["report"] as? String == "compliance" && document["from"] is String)
                let csv = try await browser.get("/reports/rollout.csv")
                let disposition = try #require(csv.headers.first(name: "content-disposition"))
                #expect(disposition == "attachment; filename=\"rollout.csv\"")
                let ranged = try await browser.get("/reports/events.csv?from=2026-01-01&to=2026-01-31")
                #expect(ranged.headers.first(name: "content-disposition")?.contains("events-2026-01-01-to-2026-01-31.csv") == true)
                // Counts are drawn on a count axis, not as percentages.
                let events = try await browser.get("/reports/events")
                #expect(events.html.contains("<text class=\"tick\" x=\"4\" y=\"14.0\" font-size=\"11\">10</text>"), "\(events.html)")
                #expect(!events.html.contains(">100%<"))
                #expect(events.html.contains("<input type=\"date\" name=\"from\""))
                // A wrong range on the page says so beside the form.
                let wrong = try await browser.get("/reports/events?from=2026-02-01&to=2026-01-01")
                #expect(wrong.status == 422 && wrong.html.contains("must not be after to") && wrong.html.contains("Log out"))
                // Scripts get RFC 9457 problem documents.
                let unknown = try await browser.get("/reports/nothing.json")
                #expect(unknown.status == 404 && unknown.headers.first(name: "content-type") == "application/problem+json")
                let badRange = try await browser.get("/reports/events.json?from=yesterday")
                #expect(badRange.status == 422 && badRange.headers.first(name: "content-type") == "application/problem+json")
            }
            try await ConsoleBrowser.with(manager, base: manager.reportingURL) { anonymous in
                let refused = try await anonymous.get("/reports/compliance.csv")
                #expect(refused.status == 401 && refused.headers.first(name: "content-type") == "application/problem+json")
            }
        }
    }

    @Test func groupsAreMadeRenamedAndDeletedAndDevicesMoved() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("olive", role: .operator)
            let device = try await manager.makeDevice(hostname: "laptop-1")
            let policy = try await manager.store.createPolicy(name: "Base", document: "{}", by: "t")
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("olive")
                // On a fresh install the lists say how to make a group.
                #expect(try await browser.get("/policies/\(policy.id)").html.contains("make one on the Groups page"))
                #expect(try await browser.get("/enrollment-tokens").html.contains("id=\"no-groups\""))
                let page = try await browser.get("/groups")
                #expect(page.status == 200 && page.html.contains("No groups yet"))
                let csrf = try #require(page.csrf)
                #expect(try await browser.post("/groups", [("csrf", csrf), ("name", "Laptops"), ("description", "field staff")]).location == "/groups?done=created")
                let group = try #require(try await manager.store.groups().first)
                // A second group of the same name: the page again, with the menu, the reason and what was typed.
                let twice = try await browser.post("/groups", [("csrf", csrf), ("name", "Laptops"), ("description", "again")])
                #expect(twice.status == 409 && twice.html.contains("already exists") && twice.html.contains("Log out"))
                #expect(twice.html.contains("value=\"again\""))
                let refused = try await manager.store.auditEntries(AuditFilter(action: "group.create", result: "failed"))
                #expect(refused.count == 1 && refused[0].actor == "operator:olive" && refused[0].detail.contains("already exists"))

                #expect(try await browser.post("/groups/\(group.id)", [("csrf", csrf), ("name", "Field laptops"), ("description", "")]).status == 303)
                #expect(try await manager.store.group(id: group.id)?.name == "Field laptops")
                let moved = try await browser.post("/devices/\(device)/group", [("csrf", csrf), ("to_group", group.id)])
                #expect(moved.location == "/devices/\(device)?done=move")
                #expect(try await manager.store.groupIDs(ofDevice: device) == [group.id])
                let shown = try await browser.get("/devices/\(device)")
                #expect(Self.text(of: "device-groups", in: shown.html) == "Field laptops")
                #expect(try await browser.get("/policies/\(policy.id)").html.contains("<option value=\"\(group.id)\">Field laptops</option>"))
                #expect(try await browser.get("/groups").html.contains("<a href=\"/devices?group=\(group.id)\">1</a>"))

                #expect(try await browser.post("/groups/\(group.id)/delete", [("csrf", csrf)]).status == 422)
                #expect(try await browser.post("/groups/\(group.id)/delete", [("csrf", csrf), ("confirm", "yes")]).location == "/groups?done=deleted")
                #expect(try await manager.store.groups().isEmpty)
                #expect(try await manager.store.device(id: device) != nil)
                let actions = try await manager.store.auditEntries(AuditFilter(actor: "operator:olive", result: "ok")).map(\.action)
                #expect(["group.create", "group.update", "group.move_device", "group.delete"].allSatisfy(actions.contains))
            }
        }
    }

    @Test func theDevicesTableSortsFiltersLocksInBulkAndExports() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("olive", role: .operator)
            _ = try await manager.store.createPolicy(name: "Base", document: "{}", by: "t")
            let group = try await manager.store.createGroup(name: "Kiosks")
            var ids: [String] = []
            for (index, name) in ["delta", "alpha", "charlie", "bravo"].enumerated() {
                ids.append(try await manager.makeDevice(hostname: name, id: "d-\(index)"))
            }
            try await manager.store.addDevice("d-1", toGroup: group.id)
            try await manager.store.addDevice("d-3", toGroup: group.id)
            try await manager.store.recordCheckIn(CheckIn(deviceID: "d-2", atMilliseconds: Int64(Date().timeIntervalSince1970 * 1000), policySerial: 0, status: "ok"))
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("olive")
                func order(_ html: String) -> [String] {
                    ["alpha", "bravo", "charlie", "delta"].sorted { (html.range(of: ">\($0)</a>")?.lowerBound ?? html.endIndex) < (html.range(of: ">\($1)</a>")?.lowerBound ?? html.endIndex) }
                }
                #expect(order(try await browser.get("/devices").html) == ["alpha", "bravo", "charlie", "delta"])
                #expect(order(try await browser.get("/devices?sort=hostname&dir=desc").html) == ["delta", "charlie", "bravo", "alpha"])
                let kiosks = try await browser.get("/devices?group=\(group.id)")
                #expect(Self.text(of: "device-count", in: kiosks.html) == "2" && kiosks.html.contains(">alpha</a>") && !kiosks.html.contains(">delta</a>"))
                let seen = try await browser.get("/devices?seen=1h")
                #expect(Self.text(of: "device-count", in: seen.html) == "1" && seen.html.contains(">charlie</a>"))
                #expect(Self.text(of: "device-count", in: try await browser.get("/devices?policy=behind").html) == "4")
                // The OS filter offers the systems devices report.
                let byOS = try await browser.get("/devices?os=linux")
                #expect(byOS.html.contains("<option value=\"linux\" selected>linux</option>") && Self.text(of: "device-count", in: byOS.html) == "4")

                // Lock the group's devices: a confirmation naming the count first, then the commands.
                let csrf = try #require(kiosks.csrf)
                let confirm = try await browser.post("/devices/bulk", [("csrf", csrf), ("group", group.id), ("action", "lock"), ("all", "yes")])
                #expect(confirm.status == 200 && confirm.html.contains("Lock 2 devices?"))
                #expect(try await manager.store.commands(deviceID: "d-1").isEmpty)
                let done = try await browser.post("/devices/bulk", [("csrf", csrf), ("group", group.id), ("action", "lock"), ("device", "d-1"), ("device", "d-3"), ("confirm", "yes")])
                #expect(done.status == 303 && done.location?.contains("done=lock&count=2") == true)
                #expect(try await manager.store.commands(deviceID: "d-1").map(\.kind) == [.lock])
                #expect(try await manager.store.commands(deviceID: "d-3").map(\.kind) == [.lock])
                #expect(try await manager.store.commands(deviceID: "d-0").isEmpty)
                #expect(try await browser.get(try #require(done.location)).html.contains("Lock queued for 2 devices."))
                // Nothing ticked: the table again, saying so.
                let none = try await browser.post("/devices/bulk", [("csrf", csrf), ("action", "unlock")])
                #expect(none.status == 422 && none.html.contains("Tick the devices"))
                // Ticked devices moved to a group in one go.
                _ = try await browser.post("/devices/bulk", [("csrf", csrf), ("action", "move"), ("to_group", group.id), ("device", "d-0"), ("device", "d-2"), ("confirm", "yes")])
                #expect(try await manager.store.groupIDs(ofDevice: "d-0") == [group.id])
                #expect(try await manager.store.groupIDs(ofDevice: "d-2") == [group.id])

                let csv = try await browser.get("/devices.csv?q=a&sort=hostname")
                #expect(csv.headers.first(name: "content-disposition") == "attachment; filename=\"devices.csv\"")
                let lines = csv.html.split(separator: "\r\n").map(String.init)
                #expect(lines.first == "id,hostname,os,state,groups,enrolled,last_check_in,policy_serial,connection")
                #expect(lines.dropFirst().map { $0.split(separator: ",")[1] } == ["alpha", "bravo", "charlie", "delta"])
            }
        }
    }

    @Test func aLockedDeviceOffersUnlockAndTimesReadAsPeopleWriteThem() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("olive", role: .operator)
            let device = try await manager.makeDevice(hostname: "stolen")
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("olive")
                let active = try await browser.get("/devices/\(device)")
                #expect(active.html.contains("id=\"lock\"") && !active.html.contains("id=\"unlock\""))
                try await manager.store.setDeviceState(id: device, to: .locked)
                let locked = try await browser.get("/devices/\(device)")
                #expect(!locked.html.contains("id=\"lock\"") && locked.html.contains("id=\"unlock\""))
                // 2026-12-07 16:44:05 UTC, not 2026-12-07T16:44:05.123Z.
                let enrolled = try #require(locked.html.range(of: "<tr><th>Enrolled</th><td>").map { String(locked.html[$0.upperBound...].prefix { $0 != "<" }) })
                #expect(enrolled.range(of: #"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"#, options: .regularExpression) != nil, "\(enrolled)")
                #expect(locked.headers.first(name: "strict-transport-security") != nil)
            }
        }
    }

    @Test func aRefusedFormKeepsWhatWasTypedAndSaysWhereTheJSONIsWrong() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("ada", role: .admin)
            _ = try await manager.store.createPolicy(name: "Firewall", document: "{}", by: "t")
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("ada")
                let csrf = try #require(try await browser.get("/policies").csrf)
                let trailing = try await browser.post("/policies", [("csrf", csrf), ("name", "USB"), ("document", "{\"usb_storage\":\"block\",}")])
                #expect(trailing.status == 422)
                #expect(trailing.html.contains("line 1, column 24") && trailing.html.contains("trailing comma"), "\(trailing.html)")
                #expect(trailing.html.contains("value=\"USB\"") && trailing.html.contains("{&quot;usb_storage&quot;:&quot;block&quot;,}"))
                #expect(try await manager.store.policies().count == 1)
                let secondLine = try await browser.post("/policies", [("csrf", csrf), ("name", "USB"), ("document", "{\n  \"a\": tru\n}")])
                #expect(secondLine.html.contains("line 2, column 8"), "\(secondLine.html)")
                // A duplicate: the form again with the menu and the typed document, and the refusal audited.
                let duplicate = try await browser.post("/policies", [("csrf", csrf), ("name", "Firewall"), ("document", "{\"inbound\":\"deny\"}")])
                #expect(duplicate.status == 409 && duplicate.html.contains("Log out") && duplicate.html.contains("action=\"/policies\""))
                #expect(duplicate.html.contains("value=\"Firewall\"") && duplicate.html.contains("{&quot;inbound&quot;:&quot;deny&quot;}"))
                let audited = try await manager.store.auditEntries(AuditFilter(action: "policy.create", result: "failed"))
                #expect(audited.count == 3 && audited.allSatisfy { $0.actor == "operator:ada" })
                // The operator form keeps the name and role, never the password.
                let short = try await browser.post("/operators", [("csrf", csrf), ("name", "newbie"), ("role", "auditor"), ("password", "short-pass")])
                #expect(short.status == 422 && short.html.contains("value=\"newbie\"") && short.html.contains("<option selected>auditor</option>"))
                #expect(!short.html.contains("short-pass"))
            }
            // The API's reader is as strict.
            let token = try await manager.apiToken(role: .admin)
            try await APICaller.with(manager) { (api: APICaller) async throws in
                let answer = try await api.call(.POST, "/groups", token: token, json: "{\"name\":\"x\",}")
                #expect(answer.status == 400 && answer.json["detail"] as? String == "the body is not valid JSON: line 1, column 13: a comma before '}' (JSON allows no trailing comma)",
                        "\(answer.text)")
            }
        }
    }

    @Test func signInLimitsAreSharedByConsoleAndAPIAndKeyedByAccount() async throws {
        var settings = APIService.Configuration()
        settings.loginFailuresPerSource = 3
        settings.lockAfterFailures = 100
        try await TestManager.with(api: settings) { manager in
            try await manager.makeOperator("ada", role: .admin)
            try await manager.makeOperator("bob", role: .operator)
            // Two failures through the API and one in the console reach the limit for ada.
            try await APICaller.with(manager) { (api: APICaller) async throws in
                for _ in 0..<2 {
                    #expect(try await api.call(.POST, "/auth/login", json: #"{"name":"ada","password":"wrong"}"#).status == 401)
                }
            }
            try await ConsoleBrowser.with(manager) { browser in
                #expect(try await browser.signIn("ada", password: "wrong").status == 401)
                let limited = try await browser.signIn("ada")
                #expect(limited.status == 429 && limited.headers.first(name: "retry-after") != nil)
                // Another operator behind the same address still signs in.
                #expect(try await browser.signIn("bob").status == 303)
            }
            try await APICaller.with(manager) { (api: APICaller) async throws in
                #expect(try await api.call(.POST, "/auth/login", json: #"{"name":"ada","password":"correct horse battery"}"#).status == 429)
                #expect(try await api.call(.POST, "/auth/login", json: #"{"name":"bob","password":"correct horse battery"}"#).status == 200)
            }
        }
    }

    @Test func operatorsAreChangedDisabledDeletedAndTheirTokensEndWithThem() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("ada", role: .admin)
            try await manager.makeOperator("carol", role: .admin)
            try await manager.makeOperator("olive", role: .operator)
            // carol makes an API token through the API, and one the auditor role could never use is refused.
            let carol = try await manager.session(for: "carol")
            let token = try await APICaller.with(manager) { api -> String in
                let beyond = try await api.call(.POST, "/api-tokens", token: carol.access, json: #"{"name":"x","role":"auditor","scopes":["devices.write"]}"#)
                #expect(beyond.status == 422 && beyond.text.contains("the auditor role can never use: devices.write"))
                let made = try await api.call(.POST, "/api-tokens", token: carol.access, json: #"{"name":"ci","role":"operator"}"#)
                #expect(made.status == 201)
                return try #require(made.json["token"] as? String)
            }
            try await ConsoleBrowser.with(manager) { browser in
                _ = try await browser.signIn("ada")
                let csrf = try #require(try await browser.get("/operators").csrf)
                #expect(try await browser.post("/operators/olive", [("csrf", csrf), ("change", "role"), ("role", "auditor")]).location == "/operators?done=role")
                #expect(try await manager.store.operatorAccount(named: "olive")?.role == .auditor)
                #expect(try await browser.post("/operators/olive", [("csrf", csrf), ("change", "password"), ("new_password", "a brand new password")]).status == 303)
                #expect(try await ConsoleBrowser.with(manager) { try await $0.signIn("olive", password: "a brand new password").status } == 303)
                // Disabling carol suspends her token; enabling her brings it back.
                #expect(try await browser.post("/operators/carol", [("csrf", csrf), ("change", "disable")]).status == 303)
                try await APICaller.with(manager) { (api: APICaller) async throws in
                    let refused = try await api.call(.GET, "/devices", token: token)
                    #expect(refused.status == 401 && refused.text.contains("the operator carol who made it is disabled"))
                }
                #expect(try await browser.get("/operators").html.contains("unusable: the operator carol who made it is disabled"))
                #expect(try await browser.post("/operators/carol", [("csrf", csrf), ("change", "enable")]).status == 303)
                try await APICaller.with(manager) { (api: APICaller) async throws in #expect(try await api.call(.GET, "/devices", token: token).status == 200) }
                // Deleting her revokes it for good.
                #expect(try await browser.post("/operators/carol/delete", [("csrf", csrf)]).status == 422)
                #expect(try await browser.post("/operators/carol/delete", [("csrf", csrf), ("confirm", "yes")]).location == "/operators?done=deleted")
                try await APICaller.with(manager) { (api: APICaller) async throws in #expect(try await api.call(.GET, "/devices", token: token).status == 401) }
                #expect(try await manager.store.apiTokens().first { $0.name == "ci" }?.revoked == true)
                // An admin does not disable or delete themselves here.
                #expect(try await browser.post("/operators/ada", [("csrf", csrf), ("change", "disable")]).status == 422)
                let audit = try await manager.store.auditEntries(AuditFilter(action: "operator.delete"))
                #expect(audit.map(\.result) == ["ok", "failed"] && audit[0].detail.contains("API tokens revoked"))
            }
        }
    }

    @Test func anOperatorChangesTheirOwnPasswordAndTheirOtherSessionsEnd() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("olive", role: .operator)
            try await ConsoleBrowser.with(manager) { other in
                _ = try await other.signIn("olive")
                #expect(try await other.get("/").status == 200)
                try await ConsoleBrowser.with(manager) { browser in
                    _ = try await browser.signIn("olive")
                    let page = try await browser.get("/account")
                    let csrf = try #require(page.csrf)
                    let wrong = try await browser.post("/account/password", [("csrf", csrf), ("current_password", "nope"), ("new_password", "another long password"), ("repeat_password", "another long password")])
                    #expect(wrong.status == 403 && wrong.html.contains("The current password is not right"))
                    let differ = try await browser.post("/account/password", [("csrf", csrf), ("current_password", "correct horse battery"), ("new_password", "another long password"), ("repeat_password", "another long passwore")])
                    #expect(differ.status == 422)
                    let changed = try await browser.post("/account/password", [("csrf", csrf), ("current_password", "correct horse battery"), ("new_password", "another long password"), ("repeat_password", "another long password")])
                    #expect(changed.location == "/account?done=password", "\(changed.status) \(changed.html.components(separatedBy: "role=\"alert\">").last?.prefix(200) ?? "")")
                    #expect(try await browser.get("/").status == 200)
                }
                #expect(try await other.get("/").location?.hasPrefix("/login") == true)
            }
            let audit = try await manager.store.auditEntries(AuditFilter(action: "operator.update"))
            #expect(audit.count == 1 && audit[0].actor == "operator:olive" && audit[0].detail == "password")
        }
    }
}
