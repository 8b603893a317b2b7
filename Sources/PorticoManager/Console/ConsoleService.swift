import Crypto
import Foundation
import Logging
import Mustache
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

/// The console role: server-rendered pages for operators in a browser. No script and no
/// outside fetch: every page works with JavaScript off. A login sets a session cookie
/// (`Secure`, `HttpOnly`, `SameSite=Strict`); every form carries the session's CSRF token,
/// and the login form one of its own. What each role sees and may do is what the API allows
/// it (the same permissions, the same operations and audit entries).
public final class ConsoleService: HTTPService {
    public struct Configuration: Sendable {
        /// How long a console session lasts from login.
        public var sessionMilliseconds: Int64 = 8 * 3_600_000
        public init() {}
    }

    static let sessionCookie = "portico_session"
    static let loginCookie = "portico_login"

    let store: Store
    let api: APIService
    let operations: ManagerOperations
    /// Notification rules and scheduled reports, when they run on this manager.
    let notifier: Notifier?
    /// The agents' waits this manager holds, for the dashboard.
    private let push: PushHub?
    let authenticator: OperatorAuthenticator
    let throttle: LoginThrottle
    let identityStatus: @Sendable () -> APIService.IdentityStatus?
    let links: PeerLinks?
    let configuration: Configuration
    let logger: Logger
    let pages: ConsolePages
    /// The directory's sync, when there is a directory (its progress on the users page).
    let directorySync: DirectorySync?

    /// - Parameter api: the API of the same manager: sign-ins share its lockout policy and
    ///   its per-address limit, so the console is no way around either.
    public init(store: Store, agent: AgentService?, api: APIService, identityStatus: @escaping @Sendable () -> APIService.IdentityStatus?,
                configuration: Configuration = Configuration(), reportsURL: String? = nil, links: PeerLinks? = nil, notifier: Notifier? = nil,
                directorySync: DirectorySync? = nil, logger: Logger = Logger(label: "portico.console")) throws {
        self.notifier = notifier
        self.directorySync = directorySync
        self.links = links
        self.store = store
        self.api = api
        self.operations = ManagerOperations(store: store, agent: agent)
        self.push = agent?.push
        self.authenticator = api.authenticator
        self.throttle = api.throttle
        self.identityStatus = identityStatus
        self.configuration = configuration
        self.logger = logger
        self.pages = try ConsolePages(store: store, reportsURL: reportsURL)
    }

    typealias Session = ConsoleSession

    public var routes: [ServiceRoute] {
        Self.pages.map { route in
            ServiceRoute(route.method, route.pattern, scope: route.scope) { [self] request in try await answer(request, route: route) }
        }
    }

    public func refusal(_ refusal: RouteRefusal, for request: GatewayRequest) async -> GatewayResponse {
        // The page keeps the menu for a signed-in operator.
        let session = try? await session(of: request, source: request.clientAddress?.ipAddress ?? "-")
        switch refusal {
        case .notFound:
            return page(.notFound, title: "Not found", template: "message", ["heading": "Not found", "text": "There is no page at \(request.path).", "back": "/"], session: session)
        case .methodNotAllowed(let allow):
            var response = page(.methodNotAllowed, title: "Not allowed", template: "message",
                                ["heading": "Not allowed", "text": "\(request.path) does not take \(request.method.rawValue).", "back": "/"], session: session)
            response.headers.add(name: "allow", value: allow)
            return response
        case .failed:
            return page(.internalServerError, title: "Failed", template: "message",
                        ["heading": "The console failed to answer", "text": "The manager's log says why.", "back": "/"], session: session)
        }
    }

    /// Runs a page or form: finds the session (sending a browser without one to sign in),
    /// checks a form's CSRF token and the role's permission, and shows a refused form again
    /// on its page with the reason and what was typed. Every refused form is audited.
    private func answer(_ request: GatewayRequest, route: ConsoleRoute) async throws -> GatewayResponse {
        let path = String(request.path)
        let source = request.clientAddress?.ipAddress ?? "-"
        let query = APIContext.parseQuery(request.uri)
        if case .anyone = route.access {
            return try await route.handler(self, ConsoleCall(request: request, signedIn: nil, form: [:], query: query, source: source))
        }
        guard let session = try await session(of: request, source: source) else {
            if request.method == .GET { return ConsolePages.redirect(ConsolePages.loginURL(next: request.uri)) }
            return page(.forbidden, title: "Signed out", template: "message", ["heading": "Your session has ended", "text": "Sign in again to continue.", "back": "/login"], session: nil)
        }
        var form: [String: String] = [:]
        if request.method == .POST {
            form = ConsolePages.form(request.body)
            guard let token = form["csrf"], ConstantTime.equal(Array(token.utf8), Array(session.record.csrfToken.utf8)) else {
                await operations.refused(AuditEntry(actor: session.actor.name, action: "console.form", target: path, source: source, result: "denied", detail: "missing or wrong CSRF token"))
                return page(.forbidden, title: "Refused", template: "message",
                            ["heading": "This form was refused", "text": "It did not carry this session's form token. Reload the page and try again.", "back": "/"], session: session)
            }
        }
        if case .permission(let permission) = route.access, !session.may(permission) {
            if request.method == .POST {
                await operations.refused(AuditEntry(actor: session.actor.name, action: route.action, target: path, source: source, result: "denied", detail: "needs \(permission.scope)"))
            }
            return forbidden(session)
        }
        var call = ConsoleCall(request: request, signedIn: session, form: form, query: query, source: source)
        do {
            return try await route.handler(self, call)
        } catch let error as StoreError where error.kind == .notFound || error.kind == .conflict || error.kind == .invalidValue {
            call.refusal = ConsoleRefusal(status: error.kind == .notFound ? .notFound : error.kind == .conflict ? .conflict : .unprocessableEntity, message: error.message)
        } catch let refusal as ConsoleRefusal {
            call.refusal = refusal
        }
        let refusal = call.refusal!
        if request.method == .POST {
            let target = request.parameters.values.first.map { $0.removingPercentEncoding ?? $0 } ?? path
            await operations.refused(AuditEntry(actor: session.actor.name, action: route.action.isEmpty ? "console.form" : route.action, target: target, source: source,
                                                result: "failed", detail: "console: \(refusal.message)"))
        }
        if let formPage = route.formPage { return try await formPage(self, call) }
        return page(refusal.status, title: "Not done", template: "message", ["heading": "Not done", "text": refusal.message, "back": "/"], session: session)
    }

    // MARK: - Sessions

    private func session(of request: GatewayRequest, source: String) async throws -> Session? {
        try await pages.session(of: request, source: source)
    }

    func login(_ request: GatewayRequest, source: String) async throws -> GatewayResponse {
        let form = ConsolePages.form(request.body)
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        guard let cookie = ConsolePages.cookies(request.headers)[Self.loginCookie], let token = form["csrf"], ConstantTime.equal(Array(cookie.utf8), Array(token.utf8)) else {
            return loginPage(error: "The sign-in form expired. Please try again.", name: form["name"] ?? "", status: .forbidden, request: request)
        }
        let name = form["name"] ?? ""
        if let retry = throttle.retryAfter(source: source, name: name, now: now) {
            var response = loginPage(error: "Too many failed sign-ins to this account from this address. Try again in \(retry) seconds.", name: name, status: .tooManyRequests, request: request)
            response.headers.add(name: "retry-after", value: "\(retry)")
            return response
        }
        let outcome = try await authenticator.authenticate(name: name, password: form["password"] ?? "", now: now)
        guard case .accepted(let account) = outcome else {
            throttle.recordFailure(source: source, name: name, now: now)
            await operations.refused(AuditEntry(actor: "operator:\(name)", action: "auth.login", target: name, source: source, result: "failed", detail: "console: \(outcome.auditReason)"))
            if case .locked(let until) = outcome {
                return loginPage(error: "This account is locked until \(ConsolePages.time(until)) after repeated failed sign-ins. An admin can unlock it.", name: name, status: .forbidden, request: request)
            }
            return loginPage(error: "The name or password is not right.", name: name, status: .unauthorized, request: request)
        }
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let csrf = Base64URL.encode((0..<32).map { _ in UInt8.random(in: 0...255) })
        let record = ConsoleSessionRecord(idHash: Array(SHA256.hash(data: secret)), operatorName: account.name, csrfToken: csrf, createdMilliseconds: now,
                                          expiresMilliseconds: now + configuration.sessionMilliseconds, source: source)
        try await operations.openConsoleSession(record)
        var response = ConsolePages.redirect(ConsolePages.localPath(form["next"]) ?? "/")
        response.headers.add(name: "set-cookie", value: "\(Self.sessionCookie)=\(Base64URL.encode(secret)); Path=/; Max-Age=\(configuration.sessionMilliseconds / 1000); Secure; HttpOnly; SameSite=Strict")
        response.headers.add(name: "set-cookie", value: "\(Self.loginCookie)=; Path=/login; Max-Age=0; Secure; HttpOnly; SameSite=Strict")
        return response
    }

    func logout(_ session: Session) async throws -> GatewayResponse {
        try await operations.endConsoleSession(idHash: session.record.idHash, by: session.actor, name: session.account.name)
        var response = ConsolePages.redirect("/login")
        response.headers.add(name: "set-cookie", value: "\(Self.sessionCookie)=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict")
        return response
    }

    /// The sign-in form. Its token is the browser's login cookie (made here when it has none,
    /// kept when it has one, so that two tabs or a stray request do not spoil each other's form).
    func loginPage(error: String?, name: String, status: HTTPResponseStatus, request: GatewayRequest) -> GatewayResponse {
        let existing = ConsolePages.cookies(request.headers)[Self.loginCookie].flatMap { Base64URL.decode($0)?.count == 24 ? $0 : nil }
        let token = existing ?? Base64URL.encode((0..<24).map { _ in UInt8.random(in: 0...255) })
        let next = ConsolePages.localPath(ConsolePages.form(request.body)["next"] ?? APIContext.parseQuery(request.uri)["next"]) ?? ""
        var response = page(status, title: "Sign in", template: "login", ["csrf": token, "name": name, "next": next], session: nil, error: error)
        response.headers.add(name: "set-cookie", value: "\(Self.loginCookie)=\(token); Path=/login; Max-Age=3600; Secure; HttpOnly; SameSite=Strict")
        return response
    }

    // MARK: - Pages

    func dashboard(_ session: Session) async throws -> GatewayResponse {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let fleet = try await FleetHistory.summary(store, now: now)
        let events = try await store.events(EventFilter(), limit: 10)
        let identity = identityStatus()
        let peerCount = try await store.peers().count
        let connected = links?.statuses.values.filter(\.connected).count ?? 0
        let peers = peerCount == 0 ? "none" : "\(connected) of \(peerCount) connected"
        let context: [String: Any] = [
            "devices": ["total": fleet.total, "online": fleet.online, "stale": fleet.stale, "compliant": fleet.compliant],
            "commandsPending": fleet.commandsOpen,
            "certificate": ["days": identity.map { $0.current.daysRemaining() } ?? 0, "rotating": identity?.staged != nil],
            "peers": peers,
            // Push on this manager: waits held now, and how many a fan-out has still to wake.
            "push": ["held": push?.heldCount ?? 0, "fanOut": push.map { $0.fanOutPending > 0 ? "\($0.fanOutPending) still to wake after a publication" : "" } ?? ""],
            "events": events.map { ["at": ConsolePages.time($0.occurredMilliseconds), "deviceId": $0.deviceID, "kind": $0.kind] },
        ]
        return page(.ok, title: "Dashboard", template: "dashboard", context, session: session, nav: "dashboard")
    }

    /// The audit log, newest first, for the roles the API lets read it.
    func audit(_ request: GatewayRequest, session: Session) async throws -> GatewayResponse {
        guard session.mayAudit else { return forbidden(session) }
        let query = APIContext.parseQuery(request.uri)
        func value(_ name: String) -> String? { query[name].map { String($0.trimmingCharacters(in: .whitespaces).prefix(256)) }.flatMap { $0.isEmpty ? nil : $0 } }
        let filter = AuditFilter(actor: value("actor"), action: value("action"), result: value("result"))
        let entries = try await store.auditEntries(filter, beforeID: value("before").flatMap { Int64($0) }, limit: 101)
        let shown = entries.prefix(100)
        var older: String?
        if entries.count > 100, let last = shown.last?.id {
            var components = URLComponents()
            components.queryItems = [URLQueryItem(name: "actor", value: filter.actor ?? ""), URLQueryItem(name: "action", value: filter.action ?? ""),
                                     URLQueryItem(name: "result", value: filter.result ?? ""), URLQueryItem(name: "before", value: "\(last)")]
            older = components.percentEncodedQuery
        }
        var context: [String: Any] = [
            "filter": ["actor": filter.actor ?? "", "action": filter.action ?? ""],
            "results": ["ok", "failed", "denied"].map { ["value": $0, "selected": $0 == (filter.result ?? "")] },
            "entries": shown.map { ["at": ConsolePages.time($0.atMilliseconds), "actor": $0.actor, "action": $0.action, "target": $0.target, "source": $0.source, "result": $0.result, "detail": $0.detail] },
        ]
        if let older { context["older"] = older }
        return page(.ok, title: "Audit log", template: "audit", context, session: session, nav: "audit")
    }

    func forbidden(_ session: Session) -> GatewayResponse {
        page(.forbidden, title: "Not allowed", template: "message",
             ["heading": "Not allowed", "text": "The \(session.account.role.rawValue) role may not do this.", "back": "/"], session: session)
    }

    func page(_ status: HTTPResponseStatus, title: String, template: String, _ context: [String: Any], session: ConsoleSession?, nav: String? = nil,
                      notice: String? = nil, error: String? = nil) -> GatewayResponse {
        pages.page(status, title: title, template: template, context, session: session, nav: nav, notice: notice, error: error)
    }

    static func deviceContext(_ device: DeviceRecord, groups: [String: String] = [:], memberships: [String] = []) -> [String: Any] {
        ["id": device.id, "hostname": device.hostname, "os": device.os, "state": device.state.rawValue, "enrolled": ConsolePages.time(device.enrolledMilliseconds),
         "lastCheckIn": ConsolePages.time(device.lastCheckInMilliseconds) ?? "never", "policySerial": device.policySerial,
         "groups": memberships.map { groups[$0] ?? $0 }.joined(separator: ", "),
         // Push: the manager holding the device's wait now, or "pull" (it checks in at its interval).
         "connection": device.pushHeld(at: Int64(Date().timeIntervalSince1970 * 1000)).map { "push (\($0))" } ?? "pull"]
    }
}

/// The page templates, compiled into the binary.
enum ConsoleTemplates {
    static let all: [(String, [UInt8])] = [
        ("layout", PackageResources.layout_mustache), ("login", PackageResources.login_mustache), ("dashboard", PackageResources.dashboard_mustache),
        ("devices", PackageResources.devices_mustache), ("device", PackageResources.device_mustache), ("message", PackageResources.message_mustache),
        ("audit", PackageResources.audit_mustache), ("report", PackageResources.report_mustache), ("reports", PackageResources.reports_mustache),
        ("policies", PackageResources.policies_mustache), ("policy", PackageResources.policy_mustache), ("tokens", PackageResources.tokens_mustache),
        ("operators", PackageResources.operators_mustache), ("peers", PackageResources.peers_mustache), ("groups", PackageResources.groups_mustache),
        ("account", PackageResources.account_mustache), ("confirm", PackageResources.confirm_mustache), ("events", PackageResources.events_mustache),
        ("commands", PackageResources.commands_mustache), ("notifications", PackageResources.notifications_mustache),
        ("users", PackageResources.users_mustache), ("user", PackageResources.user_mustache),
    ]
}
