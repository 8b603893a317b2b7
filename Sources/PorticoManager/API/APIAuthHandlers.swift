import Foundation
import PorticoStore

struct LoginBody: APIRequestBody {
    static let fields: Set<String> = ["name", "password"]
    var name: String
    var password: String

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if name.isEmpty || name.utf8.count > 64 { problems.append(.init(field: "name", message: "must be 1 to 64 characters")) }
        if password.isEmpty || password.utf8.count > 1024 { problems.append(.init(field: "password", message: "must be 1 to 1024 bytes")) }
        return problems
    }
}

struct RefreshBody: APIRequestBody {
    static let fields: Set<String> = ["refresh_token"]
    var refreshToken: String
}

struct TokenPair: Encodable, Sendable {
    var accessToken: String
    var tokenType = "Bearer"
    var expiresIn: Int
    var refreshToken: String
    var refreshExpiresIn: Int
    var `operator`: OperatorSummary

    struct OperatorSummary: Encodable, Sendable {
        var name: String
        var role: String
    }
}

struct WhoAmI: Encodable, Sendable {
    var name: String
    var role: String
    var kind: String
    var scopes: [String]
}

extension APIService {
    func openAPIDocument() -> APIReply {
        APIReply(status: .ok, body: .init(bytes: OpenAPIDocument.bytes), headers: ["content-type": "application/yaml"])
    }

    /// Name and password for an access token (short-lived) and a refresh token. Failures are
    /// audited, count towards the account's lockout, and from one address are throttled.
    func login(_ context: APIContext) async throws -> APIReply {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let body = try APIJSON.decode(LoginBody.self, from: context.request)
        if let retry = throttle.retryAfter(source: context.source, name: body.name, now: now) {
            throw APIProblem(.rateLimited, "too many failed logins to \(body.name) from \(context.source); try again in \(retry) s", retryAfter: retry)
        }
        let outcome = try await authenticator.authenticate(name: body.name, password: body.password, now: now)
        guard case .accepted(let account) = outcome else {
            throttle.recordFailure(source: context.source, name: body.name, now: now)
            await operations.refused(AuditEntry(actor: "operator:\(body.name)", action: "auth.login", target: body.name, source: context.source, result: "failed", detail: outcome.auditReason))
            if case .locked(let until) = outcome {
                throw APIProblem(.accountLocked, "the account is locked until \(APIJSON.time(until)) after repeated failed logins; an admin can unlock it")
            }
            throw APIProblem(.unauthenticated, "the name or password is not right")
        }
        let id = BearerSecret.newID()
        let access = BearerSecret.make(.access, id: id)
        let refresh = BearerSecret.make(.refresh, id: id)
        let session = AuthSessionRecord(id: id, operatorName: account.name, accessHash: access.hash, accessExpiresMilliseconds: now + configuration.accessTokenMilliseconds,
                                        refreshHash: refresh.hash, refreshExpiresMilliseconds: now + configuration.refreshTokenMilliseconds, source: context.source)
        try await operations.openAPISession(session, now: now)
        return try .json(TokenPair(accessToken: access.text, expiresIn: Int(configuration.accessTokenMilliseconds / 1000), refreshToken: refresh.text,
                                   refreshExpiresIn: Int(configuration.refreshTokenMilliseconds / 1000), operator: .init(name: account.name, role: account.role.rawValue)))
    }

    /// A refresh token for a new pair. The old refresh token stops working; presenting it
    /// again ends the session, since only a copy could.
    func refresh(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(RefreshBody.self, from: context.request)
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        guard let (id, hash) = BearerSecret.parse(body.refreshToken, as: .refresh), let session = try await store.authSession(id: id) else {
            throw APIProblem(.unauthenticated, "the refresh token is not valid")
        }
        guard ConstantTime.equal(session.refreshHash, hash) else {
            if !session.revoked {
                try await operations.endAPISession(id: id, audit: AuditEntry(actor: "operator:\(session.operatorName)", action: "auth.refresh", target: id, source: context.source,
                                                                            result: "failed", detail: "a replaced refresh token was presented; session ended"))
            }
            throw APIProblem(.tokenRevoked, "the refresh token was already used; log in again")
        }
        if session.revoked { throw APIProblem(.tokenRevoked, "the session was ended; log in again") }
        if session.refreshExpiresMilliseconds <= now { throw APIProblem(.tokenExpired, "the refresh token has expired; log in again") }
        guard let account = try await store.operatorAccount(named: session.operatorName), !account.disabled else {
            throw APIProblem(.tokenRevoked, "the operator account no longer exists or is disabled")
        }
        let access = BearerSecret.make(.access, id: id)
        let refresh = BearerSecret.make(.refresh, id: id)
        try await operations.renewAPISession(id: id, accessHash: access.hash, accessExpiresMilliseconds: now + configuration.accessTokenMilliseconds, refreshHash: refresh.hash)
        return try .json(TokenPair(accessToken: access.text, expiresIn: Int(configuration.accessTokenMilliseconds / 1000), refreshToken: refresh.text,
                                   refreshExpiresIn: Int((session.refreshExpiresMilliseconds - now) / 1000), operator: .init(name: account.name, role: account.role.rawValue)))
    }

    /// Ends the caller's session (access and refresh tokens both stop working).
    func logout(_ context: APIContext) async throws -> APIReply {
        let caller = try context.caller
        guard case .session(let id) = caller.kind else {
            throw APIProblem(.conflict, "an API token has no session to end; an admin revokes it with POST /api/v1/api-tokens/{id}/revoke")
        }
        try await operations.endAPISession(id: id, audit: context.entry("auth.logout", target: caller.name))
        return .noContent
    }

    func whoami(_ context: APIContext) async throws -> APIReply {
        let caller = try context.caller
        let kind: String = if case .session = caller.kind { "session" } else { "token" }
        return try .json(WhoAmI(name: caller.name, role: caller.role.rawValue, kind: kind, scopes: caller.scopes))
    }
}
