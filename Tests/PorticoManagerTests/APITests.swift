import Foundation
import NIOHTTP1
import PorticoAgent
@testable import PorticoManager
import PorticoProtocol
import PorticoStore
import Testing
import Yams

@Suite struct APITests {
    @Test func theServedOpenAPIDocumentListsExactlyTheRoutesWithTheirScopes() async throws {
        try await TestManager.with { manager in
            try await APICaller.with(manager) { api in
                let answer = try await api.call(.GET, "/openapi.yaml")
                #expect(answer.status == 200)
                let document = try #require(try Yams.load(yaml: answer.text) as? [String: Any])
                #expect(document["openapi"] as? String == "3.1.0")
                let paths = try #require(document["paths"] as? [String: Any])
                var documented: [String: String?] = [:]
                var unauthenticated: Set<String> = []
                for (path, item) in paths {
                    for (method, operation) in try #require(item as? [String: Any]) where ["get", "post", "put", "patch", "delete"].contains(method) {
                        let operation = try #require(operation as? [String: Any])
                        let key = "\(method.uppercased()) \(path)"
                        documented[key] = operation["x-portico-scope"] as? String
                        if let security = operation["security"] as? [Any], security.isEmpty { unauthenticated.insert(key) }
                    }
                }
                var routes: [String: String?] = [:]
                var open: Set<String> = []
                for route in APIService.routes {
                    let key = "\(route.method.rawValue) \(route.pattern)"
                    switch route.access {
                    case .permission(let permission): routes[key] = permission.scope
                    case .anyone: routes[key] = String?.none; open.insert(key)
                    case .signedIn: routes[key] = String?.none
                    }
                }
                #expect(Set(documented.keys).subtracting(routes.keys).isEmpty, "documented but not served")
                #expect(Set(routes.keys).subtracting(documented.keys).isEmpty, "served but not documented")
                for (key, scope) in routes { #expect(documented[key] == scope, "\(key): scope") }
                #expect(unauthenticated == open)
            }
        }
    }

    @Test func loginRefreshAndLogout() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("ada", role: .admin)
            try await APICaller.with(manager) { api in
                let login = try await api.call(.POST, "/auth/login", json: #"{"name":"ada","password":"correct horse battery"}"#)
                #expect(login.status == 200)
                let access = try #require(login.json["access_token"] as? String)
                let refresh = try #require(login.json["refresh_token"] as? String)
                #expect(login.json["expires_in"] as? Int == 900)
                #expect(try await api.call(.GET, "/auth/whoami", token: access).json["role"] as? String == "admin")

                let renewed = try await api.call(.POST, "/auth/refresh", json: "{\"refresh_token\":\"\(refresh)\"}")
                #expect(renewed.status == 200)
                let access2 = try #require(renewed.json["access_token"] as? String)
                let refresh2 = try #require(renewed.json["refresh_token"] as? String)
                #expect(access2 != access && refresh2 != refresh)
                // The replaced access token stops working; the new one works.
                #expect(try await api.call(.GET, "/devices", token: access).status == 401)
                #expect(try await api.call(.GET, "/devices", token: access2).status == 200)
                // Presenting the replaced refresh token again means it was copied: the session ends.
                let reused = try await api.call(.POST, "/auth/refresh", json: "{\"refresh_token\":\"\(refresh)\"}")
                #expect(reused.problemType == "urn:portico:problem:token-revoked")
                #expect(try await api.call(.GET, "/devices", token: access2).problemType == "urn:portico:problem:token-revoked")

                // Logout ends a fresh session.
                let again = try await api.call(.POST, "/auth/login", json: #"{"name":"ada","password":"correct horse battery"}"#)
                let access3 = try #require(again.json["access_token"] as? String)
                #expect(try await api.call(.POST, "/auth/logout", token: access3).status == 204)
                #expect(try await api.call(.GET, "/devices", token: access3).status == 401)

                let logins = try await manager.store.auditEntries(AuditFilter(action: "auth.login"))
                #expect(logins.count == 2 && logins.allSatisfy { $0.result == "ok" && $0.actor == "operator:ada" && $0.source == "127.0.0.1" })
            }
        }
    }

    @Test func failedLoginsLockTheAccountAndAreThrottledPerAddressAndAccount() async throws {
        var configuration = APIService.Configuration()
        configuration.lockAfterFailures = 3
        configuration.loginFailuresPerSource = 6
        try await TestManager.with(api: configuration) { manager in
            try await manager.makeOperator("olive", role: .operator)
            let admin = try await manager.apiToken(role: .admin)
            try await APICaller.with(manager) { api in
                for _ in 0..<3 {
                    let wrong = try await api.call(.POST, "/auth/login", json: #"{"name":"olive","password":"not the password"}"#)
                    #expect(wrong.status == 401)
                    #expect(wrong.problemType == "urn:portico:problem:unauthenticated")
                }
                // Locked now: the right password is refused too, and the answer says so.
                let locked = try await api.call(.POST, "/auth/login", json: #"{"name":"olive","password":"correct horse battery"}"#)
                #expect(locked.status == 403)
                #expect(locked.problemType == "urn:portico:problem:account-locked")
                // Visible to an admin, and reversible.
                let account = try await api.call(.GET, "/operators/olive", token: admin)
                #expect(account.json["locked"] as? Bool == true)
                #expect(account.json["failed_logins"] as? Int == 3)
                #expect(account.json["locked_until"] is String)
                let unlocked = try await api.call(.POST, "/operators/olive/unlock", token: admin)
                #expect(unlocked.json["locked"] as? Bool == false)
                #expect(try await api.call(.POST, "/auth/login", json: #"{"name":"olive","password":"correct horse battery"}"#).status == 200)

                // Per address and account: four failures for olive from here so far, and two
                // more reach the limit; then olive must wait from this address, while another
                // name from the same address (a NAT's other operators) is not held back.
                for _ in 0..<2 {
                    #expect(try await api.call(.POST, "/auth/login", json: #"{"name":"olive","password":"guess"}"#).status == 401)
                }
                let throttled = try await api.call(.POST, "/auth/login", json: #"{"name":"olive","password":"correct horse battery"}"#)
                #expect(throttled.status == 429)
                #expect(throttled.problemType == "urn:portico:problem:rate-limited")
                #expect(Int(throttled.headers.first(name: "retry-after") ?? "") ?? 0 > 0)
                #expect(try await api.call(.POST, "/auth/login", json: #"{"name":"nobody","password":"guess"}"#).status == 401)

                let failed = try await manager.store.auditEntries(AuditFilter(action: "auth.login", result: "failed"))
                #expect(failed.count == 7)
                #expect(failed.contains { $0.target == "olive" && $0.detail == "locked" && $0.source == "127.0.0.1" })
                #expect(try await manager.store.auditEntries(AuditFilter(action: "operator.unlock")).first?.actor.hasPrefix("token:") == true)
            }
        }
    }

    @Test func pagesNeitherRepeatNorSkipWhileTheListChanges() async throws {
        try await TestManager.with { manager in
            let token = try await manager.apiToken(role: .auditor)
            for index in 0..<25 { _ = try await manager.makeDevice(hostname: "h\(index)", id: String(format: "d-%02d", index)) }
            try await APICaller.with(manager) { api in
                var seen: [String] = []
                var cursor: String?
                var pages = 0
                repeat {
                    let answer = try await api.call(.GET, "/devices?limit=10" + (cursor.map { "&cursor=\($0)" } ?? ""), token: token)
                    #expect(answer.status == 200)
                    seen += answer.items.compactMap { $0["id"] as? String }
                    cursor = answer.json["next_cursor"] as? String
                    pages += 1
                    if pages == 1 {
                        // Meanwhile: one added before the cursor, one after, one unseen removed.
                        _ = try await manager.makeDevice(id: "d-05a")
                        _ = try await manager.makeDevice(id: "d-99")
                        try await manager.store.write { try await $0.deleteDevice(id: "d-15") }
                    }
                } while cursor != nil && pages < 10
                let expected = (0..<25).filter { $0 != 15 }.map { String(format: "d-%02d", $0) } + ["d-99"]
                #expect(seen == expected)

                // Events that share a timestamp page by device and id, each exactly once.
                var events: [EventRecord] = []
                for device in ["d-01", "d-02", "d-03"] {
                    for index in 0..<10 { events.append(EventRecord(deviceID: device, eventID: "e\(index)", kind: "scan", occurredMilliseconds: 1_700_000_000_000, body: "{}")) }
                }
                try await manager.store.ingestEvents(events)
                var eventKeys: [String] = []
                cursor = nil
                repeat {
                    let answer = try await api.call(.GET, "/events?kind=scan&limit=7" + (cursor.map { "&cursor=\($0)" } ?? ""), token: token)
                    eventKeys += answer.items.map { "\($0["device_id"] as? String ?? "")/\($0["event_id"] as? String ?? "")" }
                    cursor = answer.json["next_cursor"] as? String
                } while cursor != nil && eventKeys.count < 100
                #expect(eventKeys.count == 30 && Set(eventKeys).count == 30)
                #expect(try await api.call(.GET, "/events?since=2023-11-14T22:13:20Z&until=2023-11-14T22:13:21Z&limit=500", token: token).items.count == 30)
                #expect(try await api.call(.GET, "/events?since=2023-11-14T22:13:21Z", token: token).items.isEmpty)
                let badCursor = try await api.call(.GET, "/events?cursor=bm90IG9uZQ", token: token)
                #expect(badCursor.status == 422 && (badCursor.json["errors"] as? [[String: Any]])?.first?["field"] as? String == "cursor")
            }
        }
    }

    @Test func badRequestsGetProblemDocumentsNamingTheField() async throws {
        try await TestManager.with { manager in
            let token = try await manager.apiToken(role: .operator)
            try await APICaller.with(manager) { api in
                func fields(_ answer: APIAnswer) -> [String] { (answer.json["errors"] as? [[String: Any]] ?? []).compactMap { $0["field"] as? String } }

                let notJSON = try await api.call(.POST, "/groups", token: token, json: "{name: x")
                #expect(notJSON.status == 400 && notJSON.problemType == "urn:portico:problem:malformed-body")
                #expect(try await api.call(.POST, "/groups", token: token, json: "[1]").status == 400)
                let unknown = try await api.call(.POST, "/groups", token: token, json: #"{"name":"x","colour":"red"}"#)
                #expect(unknown.status == 422 && fields(unknown) == ["colour"])
                let wrongType = try await api.call(.POST, "/groups", token: token, json: #"{"name":5}"#)
                #expect(wrongType.status == 422 && fields(wrongType) == ["name"])
                #expect((wrongType.json["detail"] as? String)?.contains("must be a string") == true)
                let missing = try await api.call(.POST, "/groups", token: token, json: "{}")
                #expect(missing.status == 422 && fields(missing) == ["name"])
                let null = try await api.call(.POST, "/groups", token: token, json: #"{"name":"x","description":null}"#)
                #expect(null.status == 422 && fields(null) == ["description"])
                let wipe = try await api.call(.POST, "/commands", token: token, json: #"{"device_id":"d","kind":"wipe"}"#)
                #expect(wipe.status == 422 && fields(wipe) == ["confirm"])
                let text = try await api.call(.POST, "/groups", token: token, json: #"{"name":"x"}"#, contentType: "text/plain")
                #expect(text.status == 415 && text.problemType == "urn:portico:problem:unsupported-media-type")
                let method = try await api.call(.PUT, "/groups", token: token, json: "{}")
                // HEAD is answered wherever GET is, so it is allowed too (RFC 9110 9.3.2).
                #expect(method.status == 405 && method.headers.first(name: "allow") == "GET, HEAD, POST" && method.problemType == "urn:portico:problem:method-not-allowed")
                let nowhere = try await api.call(.GET, "/nowhere", token: token)
                #expect(nowhere.status == 404 && nowhere.problemType == "urn:portico:problem:not-found")
                #expect(nowhere.json["instance"] as? String == "/api/v1/nowhere")
                let duplicate = try await api.call(.POST, "/groups", token: token, json: #"{"name":"Laptops"}"#)
                #expect(duplicate.status == 201)
                let conflict = try await api.call(.POST, "/groups", token: token, json: #"{"name":"Laptops"}"#)
                #expect(conflict.status == 409 && conflict.problemType == "urn:portico:problem:conflict")
                #expect(try await manager.store.groups().map(\.name) == ["Laptops"])
            }
        }
    }

    @Test func changesAreAuditedWithTheirOutcome() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("ada", role: .admin)
            try await manager.makeOperator("audrey", role: .auditor)
            let ada = try await manager.session(for: "ada").access
            let audrey = try await manager.session(for: "audrey").access
            try await APICaller.with(manager) { api in
                let created = try await api.call(.POST, "/groups", token: ada, json: #"{"name":"Servers"}"#)
                let id = try #require(created.json["id"] as? String)
                #expect(try await api.call(.POST, "/groups", token: ada, json: #"{"name":"Servers"}"#).status == 409)
                #expect(try await api.call(.POST, "/groups", token: audrey, json: #"{"name":"Mine"}"#).status == 403)

                let log = try await api.call(.GET, "/audit?action=group.create", token: audrey)
                #expect(log.status == 200)
                let entries = log.items
                #expect(entries.count == 3)
                let ok = try #require(entries.first { $0["result"] as? String == "ok" })
                #expect(ok["actor"] as? String == "operator:ada" && ok["target"] as? String == id && ok["source"] as? String == "127.0.0.1")
                #expect(ok["at"] is String)
                #expect(entries.contains { $0["result"] as? String == "failed" && ($0["detail"] as? String)?.contains("already exists") == true })
                #expect(entries.contains { $0["result"] as? String == "denied" && $0["actor"] as? String == "operator:audrey" })
                // An operator may not read the audit log.
                #expect(try await api.call(.GET, "/audit", token: try await manager.apiToken(role: .operator)).status == 403)
            }
        }
    }

    @Test func theLastAdminCannotBeDemotedDisabledOrDeleted() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("ada", role: .admin)
            try await manager.makeOperator("olive", role: .operator)
            let token = try await manager.apiToken(role: .admin)
            let olive = try await manager.session(for: "olive").access
            try await APICaller.with(manager) { api in
                #expect(try await api.call(.PATCH, "/operators/ada", token: token, json: #"{"role":"operator"}"#).status == 409)
                #expect(try await api.call(.PATCH, "/operators/ada", token: token, json: #"{"disabled":true}"#).status == 409)
                #expect(try await api.call(.DELETE, "/operators/ada", token: token).status == 409)
                #expect(try await manager.store.operatorAccount(named: "ada")?.role == .admin)
                // A new password ends the operator's sessions.
                #expect(try await api.call(.GET, "/devices", token: olive).status == 200)
                #expect(try await api.call(.PATCH, "/operators/olive", token: token, json: #"{"password":"a brand new password"}"#).status == 200)
                #expect(try await api.call(.GET, "/devices", token: olive).problemType == "urn:portico:problem:token-revoked")
                // Promote olive; now ada may go.
                #expect(try await api.call(.PATCH, "/operators/olive", token: token, json: #"{"role":"admin"}"#).json["role"] as? String == "admin")
                #expect(try await api.call(.DELETE, "/operators/ada", token: token).status == 204)
                let listed = try await api.call(.GET, "/operators", token: token).items.compactMap { $0["name"] as? String }
                #expect(listed == ["olive"])
                // Created tokens are listed without their secret.
                let created = try await api.call(.POST, "/api-tokens", token: token, json: #"{"name":"ci","role":"auditor","scopes":["audit.read"]}"#)
                let secret = try #require(created.json["token"] as? String)
                #expect(try await api.call(.GET, "/audit", token: secret).status == 200)
                #expect(try await api.call(.GET, "/devices", token: secret).status == 403)
                let tokens = try await api.call(.GET, "/api-tokens", token: token)
                #expect(tokens.items.count == 2 && tokens.items.allSatisfy { $0["token"] == nil } && !tokens.text.contains(secret))
            }
        }
    }

    @Test func commandsIssuedThroughTheAPIReachTheAgentAndReportBack() async throws {
        try await TestManager.with { manager in
            let token = try await manager.apiToken(role: .operator)
            try await APICaller.with(manager) { api in
                try await withAgent(try await manager.enrolledAgent(hostname: "kiosk")) { agent in
                    let deviceID = await agent.state.deviceID
                    let listed = try await api.call(.GET, "/devices?hostname=KIO", token: token)
                    #expect(listed.items.compactMap { $0["id"] as? String } == [deviceID])

                    let issued = try await api.call(.POST, "/commands", token: token, json: "{\"device_id\":\"\(deviceID)\",\"kind\":\"lock\",\"arguments\":{\"message\":\"call IT\"}}")
                    #expect(issued.status == 201)
                    let commandID = try #require(issued.json["id"] as? String)
                    #expect(issued.json["state"] as? String == "pending")
                    let reply = try await agent.checkIn()
                    #expect(reply.commands.map(\.id) == [commandID])
                    #expect(reply.commands.first?.arguments == #"{"message":"call IT"}"#)
                    #expect(try await api.call(.GET, "/commands/\(commandID)", token: token).json["state"] as? String == "delivered")
                    try await agent.reportResult(commandID: commandID, succeeded: true, detail: "locked")
                    let done = try await api.call(.GET, "/commands?device_id=\(deviceID)&state=acknowledged", token: token)
                    #expect(done.items.first?["result"] as? String == "locked")
                    #expect(try await api.call(.GET, "/devices/\(deviceID)", token: token).json["state"] as? String == "locked")

                    // Remote help through the API: the device accepts the code.
                    let challenge = RemoteHelp.makeChallenge(now: Int64(Date().timeIntervalSince1970 * 1000))
                    let help = try await api.call(.POST, "/devices/\(deviceID)/remote-help", token: token, json: "{\"challenge\":\"\(challenge)\"}")
                    let response = try #require(help.json["response"] as? String)
                    let managerKey = manager.keys.agreement.publicKey.rawRepresentation
                    #expect(try await agent.verifyRemoteHelp(response: response, challenge: challenge, managerAgreementKey: Array(managerKey)))

                    // Events the agent reports are queryable.
                    _ = try await agent.report([AgentEvent(id: "ev-1", kind: "malware", occurredMilliseconds: 1_750_000_000_000, body: "{\"file\":\"x\"}")])
                    let events = try await api.call(.GET, "/events?device_id=\(deviceID)&kind=malware", token: token)
                    #expect(events.items.first?["event_id"] as? String == "ev-1")

                    // Revoked through the API: the agent is refused at once.
                    #expect(try await api.call(.POST, "/devices/\(deviceID)/revoke", token: token).json["state"] as? String == "revoked")
                    await #expect(throws: ProtocolError.self) { _ = try await agent.checkIn() }
                }
            }
        }
    }
}
