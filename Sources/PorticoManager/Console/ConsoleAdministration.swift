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
        return page(.ok, title: "Policies", template: "policies", [
            "policies": policies.map { ["id": $0.id, "name": $0.name, "currentVersion": $0.currentVersion, "published": $0.publishedVersion.map { "version \($0)" } ?? "not yet"] },
            "canWrite": session.may(.write("policies")), "csrf": session.record.csrfToken,
        ], session: session, nav: "policies", notice: call.query["done"])
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
        guard let document = Self.jsonObject(call.form["document"]) else { return invalid("The document is not a JSON object.", back: "/policies", session: call.session) }
        let name = (call.form["name"] ?? "").trimmingCharacters(in: .whitespaces)
        let policy = try await operations.createPolicy(name: name, document: document, by: call.session.actor)
        return ConsolePages.redirect("/policies/\(policy.id)")
    }

    func addPolicyVersion(_ call: ConsoleCall) async throws -> GatewayResponse {
        let id = call.parameter("id")
        guard let document = Self.jsonObject(call.form["document"]) else {
            return invalid("The new version is not a JSON object; nothing was saved.", back: "/policies/\(id)", session: call.session)
        }
        let number = try await operations.addPolicyVersion(policyID: id, document: document, by: call.session.actor)
        return ConsolePages.redirect("/policies/\(id)?version=\(number)&diff=\(number - 1)")
    }

    func publishPolicy(_ call: ConsoleCall) async throws -> GatewayResponse {
        let id = call.parameter("id")
        guard let version = call.form["version"].flatMap({ Int($0) }) else { return invalid("Choose a version to publish.", back: "/policies/\(id)", session: call.session) }
        try await operations.publishPolicy(policyID: id, version: version, by: call.session.actor)
        return ConsolePages.redirect("/policies/\(id)")
    }

    func assignPolicy(_ call: ConsoleCall, assign: Bool) async throws -> GatewayResponse {
        let id = call.parameter("id")
        let group = call.form["group"] ?? ""
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
            return invalid("Uses must be 1 to 1000000 and hours 1 to 8760.", back: "/enrollment-tokens", session: call.session)
        }
        let group = form["group"].flatMap { $0.isEmpty ? nil : $0 }
        let created = try await operations.createEnrollmentToken(groupID: group, uses: uses, expiresInSeconds: hours * 3600, by: call.session.actor)
        return try await tokensPage(session: call.session, created: created.token)
    }

    func revokeEnrollmentToken(_ call: ConsoleCall) async throws -> GatewayResponse {
        try await operations.revokeEnrollmentToken(id: call.parameter("id"), by: call.session.actor)
        return ConsolePages.redirect("/enrollment-tokens")
    }

    func createOperator(_ call: ConsoleCall) async throws -> GatewayResponse {
        let form = call.form
        let name = form["name"] ?? ""
        guard let role = form["role"].flatMap(OperatorRole.init(rawValue:)), let password = form["password"], password.count >= 12,
              !name.isEmpty, name.utf8.count <= 64, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }) else {
            return invalid("A name of letters, digits, '-', '_', '.' or '@', a role, and a password of at least 12 characters are needed.", back: "/operators", session: call.session)
        }
        _ = try await operations.createOperator(name: name, role: role, password: password, by: call.session.actor)
        return ConsolePages.redirect("/operators?done=" + (name.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""))
    }

    func unlockOperator(_ call: ConsoleCall) async throws -> GatewayResponse {
        try await operations.unlockOperator(name: call.parameter("name"), by: call.session.actor)
        return ConsolePages.redirect("/operators")
    }

    func createAPIToken(_ call: ConsoleCall) async throws -> GatewayResponse {
        let form = call.form
        let name = (form["name"] ?? "").trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty, name.utf8.count <= 128, let role = form["role"].flatMap(OperatorRole.init(rawValue:)),
              let days = Int(form["days"] ?? "90"), (1...730).contains(days) else {
            return invalid("A name, a role and 1 to 730 days are needed.", back: "/operators", session: call.session)
        }
        let created = try await operations.createAPIToken(name: name, role: role, scopes: [], expiresInSeconds: days * 86_400, by: call.session.actor)
        return try await operatorsPage(session: call.session, created: created.token, notice: nil)
    }

    func revokeAPIToken(_ call: ConsoleCall) async throws -> GatewayResponse {
        try await operations.revokeAPIToken(id: call.parameter("id"), by: call.session.actor)
        return ConsolePages.redirect("/operators")
    }

    // MARK: - Pages

    func policyPage(_ id: String, query: [String: String], session: ConsoleSession) async throws -> GatewayResponse {
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
                var row: [String: Any] = ["policyId": id, "version": version.version, "createdBy": version.createdBy, "createdAt": APIJSON.time(version.createdMilliseconds),
                                          "published": version.version == policy.publishedVersion]
                if version.version > 1 { row["previous"] = version.version - 1 }
                return row
            },
            "groups": groups.filter { !assigned.contains($0.id) }.map { ["id": $0.id, "name": $0.name] },
            "assigned": groups.filter { assigned.contains($0.id) }.map { ["id": $0.id, "name": $0.name, "policyId": id, "canWrite": canWrite, "csrf": session.record.csrfToken] },
            "canWrite": canWrite, "csrf": session.record.csrfToken,
            "latest": Self.pretty(versions.last?.document ?? "{}"),
        ]
        if let number = query["version"].flatMap({ Int($0) }), let shown = versions.first(where: { $0.version == number }) {
            if let against = query["diff"].flatMap({ Int($0) }), let other = versions.first(where: { $0.version == against }) {
                context["diff"] = ["version": number, "against": against,
                                   "lines": Self.diff(Self.pretty(other.document), Self.pretty(shown.document)).map { ["kind": $0.kind, "sign": $0.sign, "text": $0.text] }]
            } else {
                context["shown"] = ["version": number, "document": Self.pretty(shown.document)]
            }
        }
        return page(.ok, title: policy.name, template: "policy", context, session: session, nav: "policies")
    }

    func tokensPage(session: ConsoleSession, created: String?) async throws -> GatewayResponse {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let groups = try await store.groups()
        let names = Dictionary(uniqueKeysWithValues: groups.map { ($0.id, $0.name) })
        let canWrite = session.may(.write("enrollment_tokens"))
        let tokens = try await store.enrollmentTokens().reversed().map { token -> [String: Any] in
            let expired = token.expiresMilliseconds.map { $0 <= now } ?? false
            let usedUp = token.usesAllowed.map { token.uses >= $0 } ?? false
            return ["id": token.id, "group": token.groupID.map { names[$0] ?? $0 } ?? "-", "uses": token.uses, "allowed": token.usesAllowed.map(String.init) ?? "unlimited",
                    "expires": APIJSON.time(token.expiresMilliseconds) ?? "never",
                    "state": token.revoked ? "revoked" : expired ? "expired" : usedUp ? "used up" : "usable",
                    "revocable": canWrite && !token.revoked, "csrf": session.record.csrfToken]
        }
        var context: [String: Any] = ["tokens": tokens, "groups": groups.map { ["id": $0.id, "name": $0.name] }, "canWrite": canWrite, "csrf": session.record.csrfToken]
        if let created { context["created"] = created }
        return page(created == nil ? .ok : .created, title: "Enrollment tokens", template: "tokens", context, session: session, nav: "tokens")
    }

    func operatorsPage(session: ConsoleSession, created: String?, notice: String?) async throws -> GatewayResponse {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let operators = try await store.operators().map { account -> [String: Any] in
            ["name": account.name, "role": account.role.rawValue, "locked": account.isLocked(at: now), "csrf": session.record.csrfToken,
             "state": account.disabled ? "disabled" : account.isLocked(at: now) ? "locked until \(APIJSON.time(account.lockedUntilMilliseconds) ?? "")" : "active"]
        }
        let tokens = try await store.apiTokens().map { token -> [String: Any] in
            let expired = token.expiresMilliseconds.map { $0 <= now } ?? false
            return ["id": token.id, "name": token.name, "role": token.role.rawValue, "scopes": token.scopes.isEmpty ? "all of the role" : token.scopes.joined(separator: " "),
                    "expires": APIJSON.time(token.expiresMilliseconds) ?? "never", "state": token.revoked ? "revoked" : expired ? "expired" : "usable",
                    "revocable": !token.revoked, "csrf": session.record.csrfToken]
        }
        var context: [String: Any] = ["operators": operators, "apiTokens": tokens, "csrf": session.record.csrfToken]
        if let created { context["created"] = created }
        return page(created == nil ? .ok : .created, title: "Operators", template: "operators", context, session: session, nav: "operators",
                    notice: notice.map { "Created \($0)." })
    }

    private func invalid(_ text: String, back: String, session: ConsoleSession) -> GatewayResponse {
        page(.unprocessableEntity, title: "Not done", template: "message", ["heading": "Not done", "text": text, "back": back], session: session)
    }

    // MARK: - Documents

    /// The text as compact canonical JSON, if it is a JSON object.
    static func jsonObject(_ text: String?) -> String? {
        guard let text, let value = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)), value.isObject else { return nil }
        return try? value.canonicalText()
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
