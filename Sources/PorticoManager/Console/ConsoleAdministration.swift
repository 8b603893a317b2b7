import Foundation
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoServer
import PorticoStore

/// Console pages for policies, enrollment tokens, operators and API tokens, and peers. Each
/// page and form needs what the API's endpoint for the same thing needs, and changes go
/// through the same operations.
extension ConsoleService {
    func policiesPage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let session = call.session
        let policies = try await store.policies()
        return page(call.status, title: "Policies", template: "policies", [
            "policies": policies.map { ["id": $0.id, "name": $0.name, "currentVersion": $0.currentVersion, "published": $0.publishedVersion.map { "version \($0)" } ?? "not yet"] },
            "canWrite": session.may(.write("policies")), "csrf": session.record.csrfToken, "draft": call.draft,
        ], session: session, nav: "policies", error: call.refusal?.message)
    }

    func peersPage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let peers = try await store.peers()
        let cursors = try await store.replicationCursors()
        return page(.ok, title: "Peers", template: "peers", [
            "peers": peers.map { peer -> [String: Any] in
                let status = links?.statuses[peer.name]
                let view = PeerView(peer, status: status, cursor: peer.siteID.flatMap { cursors[$0] })
                let replication = view.cursor.map { cursor in
                    view.behind > 0 ? "catching up: \(cursor) of \(view.head ?? cursor), \(view.behind) behind" : "up to date at \(cursor)"
                } ?? "nothing pulled yet"
                return ["name": peer.name, "url": peer.url, "fingerprint": peer.certificateFingerprint, "site": peer.siteID ?? "not yet seen",
                        "link": status.map { $0.connected ? "connected, last contact \(APIJSON.time($0.lastContactMilliseconds) ?? "-")" : "down: \($0.lastError ?? "unknown")" } ?? "not tried yet",
                        "replication": replication + (view.divergent.isEmpty ? "" : "; differs in " + view.divergent.joined(separator: ", ")),
                        "history": peer.history.rawValue]
            },
        ], session: call.session, nav: "peers")
    }

    // MARK: - Forms

    func createPolicy(_ call: ConsoleCall) async throws -> GatewayResponse {
        let document = try Self.jsonObject(call.form["document"], what: "The document")
        let name = (call.form["name"] ?? "").trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty else { throw ConsoleRefusal.invalid("A policy needs a name.") }
        let policy = try await operations.createPolicy(name: name, document: document, by: call.session.actor)
        return ConsolePages.redirect("/policies/\(policy.id)")
    }

    func addPolicyVersion(_ call: ConsoleCall) async throws -> GatewayResponse {
        let id = call.parameter("id")
        let document = try Self.jsonObject(call.form["document"], what: "The new version")
        let number = try await operations.addPolicyVersion(policyID: id, document: document, by: call.session.actor)
        return ConsolePages.redirect("/policies/\(id)?version=\(number)&diff=\(number - 1)")
    }

    func publishPolicy(_ call: ConsoleCall) async throws -> GatewayResponse {
        let id = call.parameter("id")
        guard let version = call.form["version"].flatMap({ Int($0) }) else { throw ConsoleRefusal.invalid("Choose a version to publish.") }
        try await operations.publishPolicy(policyID: id, version: version, by: call.session.actor)
        return ConsolePages.redirect("/policies/\(id)")
    }

    func assignPolicy(_ call: ConsoleCall, assign: Bool) async throws -> GatewayResponse {
        let id = call.parameter("id")
        let group = call.form["group"] ?? ""
        guard !group.isEmpty else { throw ConsoleRefusal.invalid("Choose a group.") }
        if assign {
            try await operations.assignPolicy(policyID: id, groupID: group, by: call.session.actor)
        } else {
            try await operations.unassignPolicy(policyID: id, groupID: group, by: call.session.actor)
        }
        return ConsolePages.redirect("/policies/\(id)")
    }

    func createEnrollmentToken(_ call: ConsoleCall) async throws -> GatewayResponse {
        let form = call.form
        guard let uses = Int(form["uses"] ?? "1"), (1...1_000_000).contains(uses), let hours = Int(form["hours"] ?? "168"), (1...8760).contains(hours) else {
            throw ConsoleRefusal.invalid("Uses must be 1 to 1000000 and hours 1 to 8760.")
        }
        let group = form["group"].flatMap { $0.isEmpty ? nil : $0 }
        let created = try await operations.createEnrollmentToken(groupID: group, uses: uses, expiresInSeconds: hours * 3600, by: call.session.actor)
        return try await tokensPage(call, created: created.token)
    }

    func revokeEnrollmentToken(_ call: ConsoleCall) async throws -> GatewayResponse {
        try await operations.revokeEnrollmentToken(id: call.parameter("id"), by: call.session.actor)
        return ConsolePages.redirect("/enrollment-tokens")
    }

    /// Names operators may have: letters, digits and `-_.@`, up to 64.
    static func validOperatorName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }
    }

    static func checkPassword(_ password: String?, repeated: String?) throws -> String {
        guard let password, password.count >= 12, password.utf8.count <= 1024 else { throw ConsoleRefusal.invalid("A password needs at least 12 characters.") }
        if let repeated, repeated != password { throw ConsoleRefusal.invalid("The two passwords differ.") }
        return password
    }

    func createOperator(_ call: ConsoleCall) async throws -> GatewayResponse {
        let form = call.form
        let name = form["name"] ?? ""
        guard Self.validOperatorName(name) else { throw ConsoleRefusal.invalid("A name is 1 to 64 letters, digits, '-', '_', '.' or '@'.") }
        guard let role = form["role"].flatMap(OperatorRole.init(rawValue:)) else { throw ConsoleRefusal.invalid("Choose a role.") }
        let password = try Self.checkPassword(form["password"], repeated: nil)
        _ = try await operations.createOperator(name: name, role: role, password: password, by: call.session.actor)
        return ConsolePages.redirect("/operators?done=created")
    }

    func unlockOperator(_ call: ConsoleCall) async throws -> GatewayResponse {
        try await operations.unlockOperator(name: call.parameter("name"), by: call.session.actor)
        return ConsolePages.redirect("/operators?done=unlocked")
    }

    /// An admin changes another operator's role, enables or disables the account, or sets a
    /// new password for it (the account's sessions end with a new password or when disabled).
    func updateOperator(_ call: ConsoleCall) async throws -> GatewayResponse {
        let name = call.parameter("name")
        let form = call.form
        var role: OperatorRole?
        var disabled: Bool?
        var password: String?
        switch form["change"] {
        case "role":
            guard let chosen = form["role"].flatMap(OperatorRole.init(rawValue:)) else { throw ConsoleRefusal.invalid("Choose a role.") }
            role = chosen
        case "disable": disabled = true
        case "enable": disabled = false
        case "password": password = try Self.checkPassword(form["new_password"], repeated: nil)
        default: throw ConsoleRefusal.invalid("Choose what to change.")
        }
        if name == call.session.account.name, disabled == true { throw ConsoleRefusal.invalid("You cannot disable your own account.") }
        _ = try await operations.updateOperator(name: name, role: role, password: password, disabled: disabled, by: call.session.actor)
        return ConsolePages.redirect("/operators?done=" + (form["change"] ?? ""))
    }

    func deleteOperator(_ call: ConsoleCall) async throws -> GatewayResponse {
        let name = call.parameter("name")
        guard call.form["confirm"] == "yes" else { throw ConsoleRefusal.invalid("Tick the box to confirm that \(name) is to be deleted.") }
        guard name != call.session.account.name else { throw ConsoleRefusal.invalid("You cannot delete your own account.") }
        try await operations.deleteOperator(name: name, by: call.session.actor)
        return ConsolePages.redirect("/operators?done=deleted")
    }

    func createAPIToken(_ call: ConsoleCall) async throws -> GatewayResponse {
        let form = call.form
        let name = (form["name"] ?? "").trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty, name.utf8.count <= 128, let role = form["role"].flatMap(OperatorRole.init(rawValue:)),
              let days = Int(form["days"] ?? "90"), (1...730).contains(days) else {
            throw ConsoleRefusal.invalid("A name, a role and 1 to 730 days are needed.")
        }
        let created = try await operations.createAPIToken(name: name, role: role, scopes: [], expiresInSeconds: days * 86_400, by: call.session.actor)
        return try await operatorsPage(call, created: created.token)
    }

    func revokeAPIToken(_ call: ConsoleCall) async throws -> GatewayResponse {
        try await operations.revokeAPIToken(id: call.parameter("id"), by: call.session.actor)
        return ConsolePages.redirect("/operators?done=revoked")
    }

    /// The signed-in operator's own account: a new password, given the current one.
    func accountPage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let session = call.session
        return page(call.status, title: "Your account", template: "account", [
            "name": session.account.name, "role": session.account.role.rawValue, "csrf": session.record.csrfToken, "fromDirectory": session.account.fromDirectory,
        ], session: session, nav: "account", notice: call.query["done"] == "password" ? "Your password is changed; your other sessions have ended." : nil, error: call.refusal?.message)
    }

    func changeOwnPassword(_ call: ConsoleCall) async throws -> GatewayResponse {
        let session = call.session
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        guard case .accepted = try await authenticator.authenticate(name: session.account.name, password: call.form["current_password"] ?? "", now: now) else {
            throw ConsoleRefusal(status: .forbidden, message: "The current password is not right.")
        }
        let password = try Self.checkPassword(call.form["new_password"], repeated: call.form["repeat_password"])
        _ = try await operations.updateOperator(name: session.account.name, role: nil, password: password, disabled: nil, by: session.actor, keepingConsoleSession: session.record.idHash)
        return ConsolePages.redirect("/account?done=password")
    }

    // MARK: - Pages

    func policyPage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let session = call.session
        let id = call.parameter("id")
        let query = call.query
        guard let policy = try await store.policy(id: id) else {
            return page(.notFound, title: "Not found", template: "message", ["heading": "No such policy", "text": "There is no policy \(id).", "back": "/policies"], session: session)
        }
        let versions = try await store.policyVersions(policyID: id)
        let groups = try await store.groups()
        let assigned = Set(try await store.policyAssignments(policyID: id))
        let canWrite = session.may(.write("policies"))
        var context: [String: Any] = [
            "policy": ["id": policy.id, "name": policy.name, "currentVersion": policy.currentVersion, "published": policy.publishedVersion.map { "version \($0)" } ?? "not yet"],
            "versions": versions.reversed().map { version -> [String: Any] in
                var row: [String: Any] = ["policyId": id, "version": version.version, "createdBy": version.createdBy, "createdAt": ConsolePages.time(version.createdMilliseconds),
                                          "published": version.version == policy.publishedVersion]
                if version.version > 1 { row["previous"] = version.version - 1 }
                return row
            },
            "groups": groups.filter { !assigned.contains($0.id) }.map { ["id": $0.id, "name": $0.name] },
            "noGroups": groups.isEmpty, "hasGroups": groups.contains { !assigned.contains($0.id) },
            "assigned": groups.filter { assigned.contains($0.id) }.map { ["id": $0.id, "name": $0.name, "policyId": id, "canWrite": canWrite, "csrf": session.record.csrfToken] },
            "canWrite": canWrite, "csrf": session.record.csrfToken,
            // A refused new version keeps what was typed.
            "latest": call.draft["document"] ?? Self.pretty(versions.last?.document ?? "{}"),
        ]
        if let number = query["version"].flatMap({ Int($0) }), let shown = versions.first(where: { $0.version == number }) {
            if let against = query["diff"].flatMap({ Int($0) }), let other = versions.first(where: { $0.version == against }) {
                context["diff"] = ["version": number, "against": against,
                                   "lines": Self.diff(Self.pretty(other.document), Self.pretty(shown.document)).map { ["kind": $0.kind, "sign": $0.sign, "text": $0.text] }]
            } else {
                context["shown"] = ["version": number, "document": Self.pretty(shown.document)]
            }
        }
        return page(call.status, title: policy.name, template: "policy", context, session: session, nav: "policies", error: call.refusal?.message)
    }

    func tokensPage(_ call: ConsoleCall, created: String?) async throws -> GatewayResponse {
        let session = call.session
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let groups = try await store.groups()
        let names = Dictionary(uniqueKeysWithValues: groups.map { ($0.id, $0.name) })
        let canWrite = session.may(.write("enrollment_tokens"))
        let tokens = try await store.enrollmentTokens().reversed().map { token -> [String: Any] in
            let expired = token.expiresMilliseconds.map { $0 <= now } ?? false
            let usedUp = token.usesAllowed.map { token.uses >= $0 } ?? false
            return ["id": token.id, "group": token.groupID.map { names[$0] ?? $0 } ?? "-", "uses": token.uses, "allowed": token.usesAllowed.map(String.init) ?? "unlimited",
                    "expires": ConsolePages.time(token.expiresMilliseconds) ?? "never",
                    "state": token.revoked ? "revoked" : expired ? "expired" : usedUp ? "used up" : "usable",
                    "revocable": canWrite && !token.revoked, "csrf": session.record.csrfToken]
        }
        let draft = call.draft
        var context: [String: Any] = ["tokens": tokens, "groups": groups.map { ["id": $0.id, "name": $0.name, "selected": draft["group"] == $0.id] }, "noGroups": groups.isEmpty,
                                      "canWrite": canWrite, "csrf": session.record.csrfToken,
                                      "draft": ["uses": draft["uses"] ?? "1", "hours": draft["hours"] ?? "168"]]
        if let created { context["created"] = created }
        return page(created == nil ? call.status : .created, title: "Enrollment tokens", template: "tokens", context, session: session, nav: "tokens", error: call.refusal?.message)
    }

    func operatorsPage(_ call: ConsoleCall, created: String?) async throws -> GatewayResponse {
        let session = call.session
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let roles = OperatorRole.allCases.map(\.rawValue)
        let operators = try await store.operators().map { account -> [String: Any] in
            ["name": account.name, "role": account.role.rawValue, "locked": account.isLocked(at: now), "csrf": session.record.csrfToken,
             "roles": roles.map { ["value": $0, "selected": $0 == account.role.rawValue] },
             "disabled": account.disabled, "self": account.name == session.account.name,
             "state": account.disabled ? "disabled" : account.isLocked(at: now) ? "locked until \(ConsolePages.time(account.lockedUntilMilliseconds) ?? "")" : "active"]
        }
        var tokens: [[String: Any]] = []
        for token in try await store.apiTokens() {
            tokens.append(["id": token.id, "name": token.name, "role": token.role.rawValue, "scopes": token.scopes.isEmpty ? "all of the role" : token.scopes.joined(separator: " "),
                           "createdBy": token.createdBy, "expires": ConsolePages.time(token.expiresMilliseconds) ?? "never",
                           "state": try await api.tokenState(token, now: now), "revocable": !token.revoked, "csrf": session.record.csrfToken])
        }
        let draft = call.refusal != nil && call.request.parameters.isEmpty ? call.draft : [:]
        var context: [String: Any] = ["operators": operators, "apiTokens": tokens, "csrf": session.record.csrfToken,
                                      "roles": roles.map { ["value": $0, "selected": $0 == (draft["role"] ?? "operator")] },
                                      "draft": draft]
        if let created { context["created"] = created }
        let notice = call.query["done"].flatMap {
            ["created": "The operator is created.", "unlocked": "The account is unlocked.", "role": "The role is changed.", "disable": "The account is disabled; its sessions have ended.",
             "enable": "The account is enabled.", "password": "The password is set; the account's sessions have ended.",
             "deleted": "The operator is deleted; the API tokens it made are revoked.", "revoked": "The API token is revoked."][$0]
        }
        return page(created == nil ? call.status : .created, title: "Operators", template: "operators", context, session: session, nav: "operators",
                    notice: notice, error: call.refusal?.message)
    }

    // MARK: - Documents

    /// The text as compact canonical JSON, when it is a JSON object; else a refusal saying
    /// where it is not (line and column).
    static func jsonObject(_ text: String?, what: String) throws -> String {
        let text = text ?? ""
        guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw ConsoleRefusal.invalid("\(what) is empty; it must be a JSON object, such as {\"usb_storage\": \"block\"}.") }
        if let error = JSONSyntax.check(text.utf8) { throw ConsoleRefusal.invalid("\(what) is not valid JSON: \(error.description). Nothing was saved.") }
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)), value.isObject, let canonical = try? value.canonicalText() else {
            throw ConsoleRefusal.invalid("\(what) must be a JSON object ({ ... }), not another kind of value. Nothing was saved.")
        }
        return canonical
    }

    /// A stored document laid out one key per line, for reading and comparing.
    static func pretty(_ document: String) -> String {
        guard let object = try? JSONSerialization.jsonObject(with: Data(document.utf8)),
              let data = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]) else { return document }
        return String(decoding: data, as: UTF8.self)
    }

    /// A line diff (longest common subsequence) of two documents.
    static func diff(_ old: String, _ new: String) -> [(kind: String, sign: String, text: String)] {
        let a = old.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let b = new.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard a.count * b.count <= 4_000_000 else { return [("removed", "-", "(too large to compare line by line)")] }
        var lengths = Array(repeating: Array(repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in stride(from: a.count - 1, through: 0, by: -1) {
            for j in stride(from: b.count - 1, through: 0, by: -1) {
                lengths[i][j] = a[i] == b[j] ? lengths[i + 1][j + 1] + 1 : max(lengths[i + 1][j], lengths[i][j + 1])
            }
        }
        var lines: [(String, String, String)] = []
        var (i, j) = (0, 0)
        while i < a.count || j < b.count {
            if i < a.count, j < b.count, a[i] == b[j] {
                lines.append(("same", " ", a[i])); i += 1; j += 1
            } else if j < b.count, i == a.count || lengths[i][j + 1] >= lengths[i + 1][j] {
                lines.append(("added", "+", b[j])); j += 1
            } else {
                lines.append(("removed", "-", a[i])); i += 1
            }
        }
        return lines
    }
}
