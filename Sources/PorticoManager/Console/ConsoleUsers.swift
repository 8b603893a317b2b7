import Foundation
import PorticoGateway
import PorticoServer
import PorticoStore

/// Endpoint users (who sign in on devices), where they may sign in, and the directory's sync.
extension ConsoleService {
    static let usersPerPage = 100

    func usersPage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let session = call.session
        let query = call.query
        let search = (query["q"] ?? "").trimmingCharacters(in: .whitespaces)
        let source = query["source"].flatMap(EndpointUser.Source.init(rawValue:))
        let pageNumber = max(1, Int(query["page"] ?? "") ?? 1)
        let found = try await store.endpointUsers(matching: search.isEmpty ? nil : search, source: source, limit: Self.usersPerPage,
                                                  offset: (pageNumber - 1) * Self.usersPerPage)
        let groups = try await store.groups()
        let groupNames = Dictionary(uniqueKeysWithValues: groups.map { ($0.id, $0.name) })
        let canWrite = session.may(.write("users"))
        let csrf = session.record.csrfToken
        let draft = call.draft
        var context: [String: Any] = [
            "users": found.users.map { user -> [String: Any] in
                ["name": user.name, "link": Self.userLink(user.name), "displayName": user.displayName, "source": user.source.rawValue,
                 "groups": user.directoryGroups.joined(separator: ", "), "lastSignIn": user.lastSignInMilliseconds > 0 ? ConsolePages.time(user.lastSignInMilliseconds) : "never",
                 "state": user.disabled ? "disabled" : "active"]
            },
            "q": search, "searched": !search.isEmpty, "total": found.total, "canWrite": canWrite, "csrf": csrf, "draft": draft,
            "sources": [["value": "", "label": "Any", "selected": source == nil]] + EndpointUser.Source.allCases.map {
                ["value": $0.rawValue, "label": $0 == .local ? "Local" : "Directory", "selected": $0 == source]
            },
            "grants": try await store.signInGrants().map { grant -> [String: Any] in
                let kind = grant.principal.hasPrefix("group:") ? "Directory group" : "User"
                return ["groupID": grant.groupID, "group": grant.groupID == SignInGrant.everyDevice ? "Every device" : groupNames[grant.groupID] ?? grant.groupID,
                        "principal": grant.principal, "who": "\(kind) \(grant.principal.split(separator: ":", maxSplits: 1).last.map(String.init) ?? "")",
                        "by": grant.createdBy, "canWrite": canWrite, "csrf": csrf]
            },
            "grantGroups": [["id": SignInGrant.everyDevice, "name": "Every device", "selected": draft["group_id"] == SignInGrant.everyDevice]]
                + groups.map { ["id": $0.id, "name": $0.name, "selected": draft["group_id"] == $0.id] },
            "directory": directorySync != nil, "maySync": session.may(.admin("users.sync")),
        ]
        if found.total > pageNumber * Self.usersPerPage { context["next"] = Self.usersURL(q: search, source: source, page: pageNumber + 1) }
        if pageNumber > 1 { context["previous"] = Self.usersURL(q: search, source: source, page: pageNumber - 1) }
        if let sync = try await store.directorySync() {
            var state = "\(sync.seen) seen, \(sync.added) added, \(sync.removed) removed"
            switch sync.state {
            case "running": state = "running since \(ConsolePages.time(sync.startedMilliseconds)): " + "\(sync.seen) seen so far, \(sync.added) added"
            case "failed": state = "failed at \(ConsolePages.time(sync.finishedMilliseconds)) after \(sync.seen) seen: \(sync.error)"
            case "done": state = "done at \(ConsolePages.time(sync.finishedMilliseconds)): " + state
            default: break
            }
            context["sync"] = state
        }
        let notice = call.query["done"].flatMap {
            ["created": "The user is created.", "granted": "The grant is added.", "revoked": "The grant is removed.", "deleted": "The user is deleted.",
             "sync": "The sync has started; its progress shows here."][$0]
        }
        return page(call.status, title: "Users", template: "users", context, session: session, nav: "users", notice: notice, error: call.refusal?.message)
    }

    static func userLink(_ name: String) -> String {
        "/users/" + (name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? name)
    }

    static func usersURL(q: String, source: EndpointUser.Source?, page: Int) -> String {
        var items = [URLQueryItem(name: "page", value: String(page))]
        if !q.isEmpty { items.append(URLQueryItem(name: "q", value: q)) }
        if let source { items.append(URLQueryItem(name: "source", value: source.rawValue)) }
        var components = URLComponents()
        components.path = "/users"
        components.queryItems = items
        return components.string ?? "/users"
    }

    func createUser(_ call: ConsoleCall) async throws -> GatewayResponse {
        let form = call.form
        let name = (form["name"] ?? "").trimmingCharacters(in: .whitespaces)
        guard (try? EndpointUser.validate(name: name)) != nil else { throw ConsoleRefusal.invalid("A user name is 1 to 256 characters, without '/' or control characters.") }
        let password = try userPassword(form)
        let user = try await operations.createLocalUser(name: name, displayName: form["display_name"] ?? "", password: password, minimumLength: api.configuration.minimumUserPasswordLength,
                                                        by: call.session.actor)
        return ConsolePages.redirect(Self.userLink(user.name) + "?done=created")
    }

    /// The new password of a form, checked against the local rules (the directory applies its own).
    private func userPassword(_ form: [String: String]) throws -> String {
        let password = form["password"] ?? ""
        let minimum = api.configuration.minimumUserPasswordLength
        guard password.count >= minimum, password.utf8.count <= 1024 else { throw ConsoleRefusal.invalid("A password needs at least \(minimum) characters.") }
        guard form["repeat_password"] == password else { throw ConsoleRefusal.invalid("The two passwords differ.") }
        return password
    }

    func syncUsers(_ call: ConsoleCall) async throws -> GatewayResponse {
        guard let directorySync else { throw ConsoleRefusal.invalid("This manager has no directory configured (directory in the config file).") }
        let logger = self.logger
        // The sync runs on; the page shows its progress from the database.
        Task {
            do { _ = try await directorySync.syncUsers() } catch { logger.error("the directory's users were not synced", metadata: ["error": "\(error)"]) }
        }
        return ConsolePages.redirect("/users?done=sync")
    }

    func grantSignIn(_ call: ConsoleCall) async throws -> GatewayResponse {
        let form = call.form
        let group = form["group_id"] ?? ""
        let name = (form["name"] ?? "").trimmingCharacters(in: .whitespaces)
        guard !group.isEmpty else { throw ConsoleRefusal.invalid("Choose the devices: a group, or every device.") }
        guard !name.isEmpty, let kind = form["kind"], kind == "user" || kind == "group" else { throw ConsoleRefusal.invalid("Name a user or a directory group.") }
        try await operations.grantSignIn(groupID: group, principal: "\(kind):\(name)", by: call.session.actor)
        return ConsolePages.redirect("/users?done=granted")
    }

    func revokeSignIn(_ call: ConsoleCall) async throws -> GatewayResponse {
        try await operations.revokeSignIn(groupID: call.form["group_id"] ?? "", principal: call.form["principal"] ?? "", by: call.session.actor)
        return ConsolePages.redirect("/users?done=revoked")
    }

    func userPage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let session = call.session
        let name = call.parameter("name")
        guard let user = try await store.endpointUser(named: name) else {
            return page(.notFound, title: "Not found", template: "message", ["heading": "No such user", "text": "There is no user \(name).", "back": "/users"], session: session)
        }
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let locked = try await store.signInLockedUntil(scope: "user", subject: name, now: now)
        let signIns = try await store.auditEntries(actor: "user:" + name, limit: 20)
        let canWrite = session.may(.write("users"))
        var context: [String: Any] = [
            "user": ["name": user.name, "link": Self.userLink(user.name), "displayName": call.draft["display_name"] ?? user.displayName,
                     "source": user.source == .local ? "local to Portico" : "the directory (\(user.directoryDN))",
                     "groups": user.directoryGroups.joined(separator: ", "), "disabled": user.disabled, "directory": user.source == .directory,
                     "lastSignIn": user.lastSignInMilliseconds > 0 ? "\(ConsolePages.time(user.lastSignInMilliseconds)) on \(user.lastDevice)" : "never"],
            "locked": locked.map { ConsolePages.time($0) } as Any,
            "isLocked": locked != nil,
            "signIns": signIns.map { ["at": ConsolePages.time($0.atMilliseconds), "action": $0.action, "device": $0.target, "result": $0.result, "detail": $0.detail] },
            "canWrite": canWrite, "csrf": session.record.csrfToken, "minimum": api.configuration.minimumUserPasswordLength,
        ]
        if let code = call.signInCode { context["code"] = ["code": code.code, "expires": ConsolePages.time(code.expires)] }
        let notice = call.query["done"].flatMap {
            ["created": "The user is created; grant where it may sign in on the users page.", "saved": "The user is saved.", "password": "The password is set.",
             "unlocked": "The user is unlocked."][$0]
        }
        return page(call.status, title: user.name, template: "user", context, session: session, nav: "users", notice: notice, error: call.refusal?.message)
    }

    func issueSignInCode(_ call: ConsoleCall) async throws -> GatewayResponse {
        let name = call.parameter("name")
        guard try await store.endpointUser(named: name) != nil else { throw ConsoleRefusal(status: .notFound, message: "There is no user \(name).") }
        guard let users = api.users else { throw ConsoleRefusal.invalid("This manager does not keep endpoint users.") }
        var answered = call
        answered.signInCode = try await users.issueCode(user: name, lifetime: 15 * 60_000, by: call.session.actor)
        return try await userPage(answered)
    }

    func updateUser(_ call: ConsoleCall) async throws -> GatewayResponse {
        let name = call.parameter("name")
        let disabled: Bool? = switch call.form["state"] { case "disabled": true; case "active": false; default: nil }
        _ = try await operations.updateUser(name: name, displayName: call.form["display_name"], password: nil, disabled: disabled,
                                            minimumLength: api.configuration.minimumUserPasswordLength, by: call.session.actor)
        return ConsolePages.redirect(Self.userLink(name) + "?done=saved")
    }

    func resetUserPassword(_ call: ConsoleCall) async throws -> GatewayResponse {
        let name = call.parameter("name")
        let password = try userPassword(call.form)
        guard let users = api.users else { throw ConsoleRefusal.invalid("This manager does not keep endpoint users.") }
        try await users.resetPassword(user: name, to: password, by: call.session.actor)
        return ConsolePages.redirect(Self.userLink(name) + "?done=password")
    }

    func unlockUser(_ call: ConsoleCall) async throws -> GatewayResponse {
        let name = call.parameter("name")
        guard try await store.endpointUser(named: name) != nil else { throw ConsoleRefusal(status: .notFound, message: "There is no user \(name).") }
        try await operations.unlockUser(name: name, by: call.session.actor)
        return ConsolePages.redirect(Self.userLink(name) + "?done=unlocked")
    }

    func deleteUser(_ call: ConsoleCall) async throws -> GatewayResponse {
        guard call.form["confirm"] == "yes" else { throw ConsoleRefusal.invalid("Tick the box to confirm the user is to be deleted.") }
        try await operations.deleteUser(name: call.parameter("name"), by: call.session.actor)
        return ConsolePages.redirect("/users?done=deleted")
    }
}
