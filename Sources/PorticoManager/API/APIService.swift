import Foundation
import Logging
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoServer
import PorticoStore

/// The web services role: the REST API under `/api/v1` that automation and the console use.
/// Mounted on the `webservices` listener by a route to the service `api`.
///
/// Every request but login, refresh and the OpenAPI document carries a bearer token: an
/// access token from login, or an API token an admin made. Each endpoint needs a scope that
/// the caller's role grants (and that a scoped token lists). Every change is written with
/// its audit entry in one transaction; refusals of changes are audited too.
public final class APIService: HTTPService {
    public struct Configuration: Sendable {
        /// How long an access token from login is good for.
        public var accessTokenMilliseconds: Int64 = 15 * 60_000
        /// How long a refresh token is good for (each refresh issues a new one).
        public var refreshTokenMilliseconds: Int64 = 12 * 3_600_000
        /// Failed logins from one address within the window before it gets 429.
        public var loginFailuresPerSource: Int = 20
        public var loginWindowMilliseconds: Int64 = 5 * 60_000
        /// Failed logins in a row before an account locks, and for how long.
        public var lockAfterFailures: Int = 5
        public var lockoutMilliseconds: Int64 = 15 * 60_000
        /// The shortest password an endpoint user local to Portico may be given.
        public var minimumUserPasswordLength = 10

        public init() {}
    }

    /// What the API reports about the server identity.
    public struct IdentityStatus: Sendable {
        public var current: IdentitySummary
        public var staged: IdentitySummary?

        public init(current: IdentitySummary, staged: IdentitySummary?) {
            self.current = current
            self.staged = staged
        }
    }

    let store: Store
    let agent: AgentService?
    let rotation: IdentityRotation?
    let links: PeerLinks?
    let identityStatus: @Sendable () -> IdentityStatus?
    let configuration: Configuration
    let logger: Logger
    let throttle: LoginThrottle
    let authenticator: OperatorAuthenticator
    let operations: ManagerOperations
    /// Endpoint users' passwords set by operators (in the directory for its users).
    let users: UserSignIns?

    public init(store: Store, agent: AgentService?, rotation: IdentityRotation? = nil, links: PeerLinks? = nil, identityStatus: @escaping @Sendable () -> IdentityStatus?,
                configuration: Configuration = Configuration(), users: UserSignIns? = nil, logger: Logger = Logger(label: "portico.api")) {
        self.store = store
        self.agent = agent
        self.rotation = rotation
        self.links = links
        self.identityStatus = identityStatus
        self.configuration = configuration
        self.logger = logger
        self.throttle = LoginThrottle(limit: configuration.loginFailuresPerSource, windowMilliseconds: configuration.loginWindowMilliseconds)
        self.authenticator = OperatorAuthenticator(store: store, policy: .init(lockAfterFailures: configuration.lockAfterFailures, lockoutMilliseconds: configuration.lockoutMilliseconds),
                                                   directory: users?.directory)
        self.operations = ManagerOperations(store: store, agent: agent)
        self.users = users
    }

    static let prefix = "/api/v1"

    public var routes: [ServiceRoute] {
        Self.routes.map { route in
            ServiceRoute(route.method, Self.prefix + route.pattern, scope: route.scope) { [self] request in await answer(request, route: route) }
        }
    }

    public func refusal(_ refusal: RouteRefusal, for request: GatewayRequest) async -> GatewayResponse {
        let path = String(request.path)
        let problem = switch refusal {
        case .notFound: APIProblem.notFound(path)
        case .methodNotAllowed(let allow):
            APIProblem(.methodNotAllowed, "\(request.method.rawValue) is not allowed here; use \(allow)", allow: allow.components(separatedBy: ", "))
        case .failed: APIProblem(.internalError, "the manager failed to answer; the log says why")
        }
        return Self.response(problem, instance: path)
    }

    /// Runs one endpoint: authenticates and authorizes the caller, runs the handler, and
    /// answers a problem document for anything refused (audited when it was a change).
    private func answer(_ request: GatewayRequest, route: APIRoute) async -> GatewayResponse {
        let path = String(request.path)
        var parameters: [String: String] = [:]
        for (name, value) in request.parameters { parameters[name] = value.removingPercentEncoding ?? value }
        var context = APIContext(request: request, parameters: parameters, query: APIContext.parseQuery(request.uri), principal: nil,
                                 source: request.clientAddress?.ipAddress ?? "-")
        do {
            switch route.access {
            case .anyone:
                break
            case .signedIn:
                context.principal = try await authenticate(request)
            case .permission(let permission):
                let principal = try await authenticate(request)
                context.principal = principal
                guard permission.allows(principal) else {
                    if route.method != .GET {
                        await operations.refused(context.entry(route.action, target: context.parameters.values.first ?? "", result: "denied",
                                                             detail: "needs \(permission.scope)"))
                    }
                    throw APIProblem(.forbidden, "\(principal.actor) with role \(principal.role.rawValue) may not use \(request.method.rawValue) \(route.pattern) (needs \(permission.scope))")
                }
            }
            do {
                let reply = try await route.handler(self, context)
                return Self.response(reply)
            } catch {
                let problem = Self.problem(for: error, logger: logger, path: path)
                if route.method != .GET, let principal = context.principal, problem.kind != .internalError {
                    await operations.refused(AuditEntry(actor: principal.actor, action: route.action, target: context.parameters.values.first ?? "",
                                                      source: context.source, result: "failed", detail: problem.detail))
                }
                throw problem
            }
        } catch {
            let problem = Self.problem(for: error, logger: logger, path: path)
            return Self.response(problem, instance: path)
        }
    }

    // MARK: - Authentication

    func authenticate(_ request: GatewayRequest) async throws -> Principal {
        guard let header = request.headers.first(name: "authorization") else {
            throw APIProblem(.unauthenticated, "send Authorization: Bearer <token>")
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { throw APIProblem(.unauthenticated, "the Authorization header must be Bearer <token>") }
        let token = String(parts[1]).trimmingCharacters(in: .whitespaces)
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        if let (id, hash) = BearerSecret.parse(token, as: .access) {
            guard let session = try await store.authSession(id: id), ConstantTime.equal(session.accessHash, hash) else {
                throw APIProblem(.unauthenticated, "the access token is not valid")
            }
            if session.revoked { throw APIProblem(.tokenRevoked, "the session was ended; log in again") }
            if session.accessExpiresMilliseconds <= now { throw APIProblem(.tokenExpired, "the access token has expired; refresh it or log in again") }
            guard let account = try await store.operatorAccount(named: session.operatorName), !account.disabled else {
                throw APIProblem(.tokenRevoked, "the operator account no longer exists or is disabled")
            }
            return Principal(kind: .session(id: id), name: account.name, role: account.role, scopes: [])
        }
        if let (id, hash) = BearerSecret.parse(token, as: .token) {
            guard let record = try await store.apiToken(id: id), ConstantTime.equal(record.secretHash, hash) else {
                throw APIProblem(.unauthenticated, "the API token is not valid")
            }
            if record.revoked { throw APIProblem(.tokenRevoked, "the API token \(id) has been revoked") }
            if let expires = record.expiresMilliseconds, expires <= now { throw APIProblem(.tokenExpired, "the API token \(id) expired at \(APIJSON.time(expires))") }
            if let reason = try await creatorStanding(record, now: now) { throw APIProblem(.tokenRevoked, "the API token \(id) no longer works: \(reason)") }
            return Principal(kind: .token(id: id), name: id, role: record.role, scopes: record.scopes)
        }
        throw APIProblem(.unauthenticated, "the bearer token is not one this manager issued")
    }

    /// Why a token may not be used because of who made it, or nil: a token ends with its
    /// creator (an operator deleted or disabled, or a token revoked or expired), whatever
    /// site's change it was (deleting an operator revokes its tokens, but a change replicated
    /// from an older manager may not have). Tokens made on the command line have no creator
    /// account.
    func creatorStanding(_ token: APITokenRecord, now: Int64) async throws -> String? {
        var creator = token.createdBy
        for _ in 0..<8 {
            if creator.hasPrefix("operator:") {
                let name = String(creator.dropFirst("operator:".count))
                guard let account = try await store.operatorAccount(named: name) else { return "the operator \(name) who made it no longer exists" }
                return account.disabled ? "the operator \(name) who made it is disabled" : nil
            }
            if creator.hasPrefix("token:") {
                let id = String(creator.dropFirst("token:".count))
                guard let parent = try await store.apiToken(id: id), parent.isUsable(at: now) else { return "the API token \(id) that made it no longer works" }
                creator = parent.createdBy
                continue
            }
            return nil
        }
        return "it was made by a chain of tokens too long to check"
    }

    /// How a token stands now: "usable", or why not.
    func tokenState(_ token: APITokenRecord, now: Int64) async throws -> String {
        if token.revoked { return "revoked" }
        if let expires = token.expiresMilliseconds, expires <= now { return "expired" }
        if let reason = try await creatorStanding(token, now: now) { return "unusable: " + reason }
        let beyond = token.scopes.filter { !(Self.scopeRoles[$0]?.contains(token.role) ?? false) }
        if !beyond.isEmpty { return "limited: the \(token.role.rawValue) role can never use \(beyond.joined(separator: ", "))" }
        return "usable"
    }

    // MARK: - Responses

    static func problem(for error: any Error, logger: Logger, path: String) -> APIProblem {
        switch error {
        case let problem as APIProblem: return problem
        case let error as StoreError:
            if error.kind == .unavailable || error.kind == .schemaTooNew { logger.error("API store failure", metadata: ["path": "\(path)", "error": "\(error)"]) }
            return APIProblem(error)
        default:
            logger.error("API request failed", metadata: ["path": "\(path)", "error": "\(error)"])
            return APIProblem(.internalError, "the manager failed to answer; the log says why")
        }
    }

    static func response(_ reply: APIReply) -> GatewayResponse {
        var headers = reply.headers
        headers.replaceOrAdd(name: "cache-control", value: "no-store")
        return GatewayResponse(status: reply.status, headers: headers, body: reply.body ?? ByteBuffer())
    }

    static func response(_ problem: APIProblem, instance: String) -> GatewayResponse {
        var headers: HTTPHeaders = ["content-type": "application/problem+json", "cache-control": "no-store"]
        if let retryAfter = problem.retryAfter { headers.add(name: "retry-after", value: "\(retryAfter)") }
        if !problem.allow.isEmpty { headers.add(name: "allow", value: problem.allow.joined(separator: ", ")) }
        if problem.kind.status == .unauthorized { headers.add(name: "www-authenticate", value: "Bearer realm=\"portico\"") }
        let body = (try? APIJSON.encoder().encode(problem.body(instance: instance))) ?? Data()
        return GatewayResponse(status: problem.kind.status, headers: headers, body: ByteBuffer(bytes: body))
    }
}

/// One endpoint: method, path pattern under `/api/v1`, who may call it, the audit action
/// name for changes, and the handler.
typealias APIRoute = ManagerRoute<APIService, APIContext, APIReply>

/// A request as a handler sees it.
struct APIContext: Sendable {
    let request: GatewayRequest
    var parameters: [String: String]
    let query: [String: String]
    var principal: Principal?
    let source: String

    func parameter(_ name: String) -> String { parameters[name] ?? "" }

    /// The signed-in caller (handlers behind a permission always have one).
    var caller: Principal {
        get throws {
            guard let principal else { throw APIProblem(.unauthenticated, "this endpoint needs a bearer token") }
            return principal
        }
    }

    /// The caller as the shared operations name them.
    var actor: ManagerOperations.Actor {
        get throws { ManagerOperations.Actor(name: try caller.actor, source: source) }
    }

    /// An audit entry for this caller and source.
    func entry(_ action: String, target: String, result: String = "ok", detail: String = "") -> AuditEntry {
        AuditEntry(actor: principal?.actor ?? "anonymous", action: action, target: target, source: source, result: result, detail: detail)
    }

    static func parseQuery(_ uri: String) -> [String: String] {
        guard let question = uri.firstIndex(of: "?") else { return [:] }
        var query: [String: String] = [:]
        for (key, value) in parsePairs(uri[uri.index(after: question)...]) where query[key] == nil { query[key] = value }
        return query
    }

    /// `a=1&b=2` (a query, or a form body) as its pairs in order, decoded.
    static func parsePairs(_ text: Substring) -> [(String, String)] {
        text.split(separator: "&").map { pair in
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(kv[0]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(kv[0])
            let value = kv.count > 1 ? (String(kv[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(kv[1])) : ""
            return (key, value)
        }
    }

    /// A query string value, nil when absent or empty.
    func string(_ name: String, maxLength: Int = 256) throws -> String? {
        guard let value = query[name], !value.isEmpty else { return nil }
        guard value.utf8.count <= maxLength else { throw APIProblem.invalid(name, "must be at most \(maxLength) bytes") }
        return value
    }

    func integer(_ name: String, default fallback: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text = query[name] else { return fallback }
        guard let value = Int(text), range.contains(value) else { throw APIProblem.invalid(name, "must be an integer from \(range.lowerBound) to \(range.upperBound)") }
        return value
    }

    func time(_ name: String) throws -> Int64? {
        guard let text = query[name] else { return nil }
        guard let value = APIJSON.parseTime(text) else { throw APIProblem.invalid(name, "must be an RFC 3339 time such as 2026-01-31T12:00:00Z") }
        return value
    }

    func choice<E: RawRepresentable & CaseIterable>(_ name: String, as type: E.Type) throws -> E? where E.RawValue == String {
        guard let text = query[name] else { return nil }
        guard let value = E(rawValue: text) else { throw APIProblem.invalid(name, "must be one of \(E.allCases.map(\.rawValue).joined(separator: ", "))") }
        return value
    }

    /// `limit` and `cursor` of a listing.
    func paging(parts: Int) throws -> (limit: Int, cursor: [String]?) {
        let limit = try integer("limit", default: 100, range: 1...500)
        guard let text = query["cursor"], !text.isEmpty else { return (limit, nil) }
        return (limit, try Cursor.decode(text, parts: parts))
    }
}
