import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

struct APITokenBody: APIRequestBody {
    static let fields: Set<String> = ["name", "role", "scopes", "expires_in_seconds"]
    var name: String
    var role: String
    var scopes: [String]?
    var expiresInSeconds: Int?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if name.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty || name.utf8.count > 128 { problems.append(.init(field: "name", message: "must be 1 to 128 bytes, not only spaces")) }
        if OperatorRole(rawValue: role) == nil { problems.append(.init(field: "role", message: "must be admin, operator or auditor")) }
        let unknown = (scopes ?? []).filter { !APIService.scopes.contains($0) }
        if !unknown.isEmpty { problems.append(.init(field: "scopes", message: "has unknown scopes: \(unknown.joined(separator: ", "))")) }
        if let role = OperatorRole(rawValue: role) {
            let beyond = (scopes ?? []).filter { APIService.scopeRoles[$0].map { !$0.contains(role) } ?? false }
            if !beyond.isEmpty { problems.append(.init(field: "scopes", message: "has scopes the \(role.rawValue) role can never use: \(beyond.joined(separator: ", "))")) }
        }
        if let expiresInSeconds, !(60...63_072_000).contains(expiresInSeconds) { problems.append(.init(field: "expires_in_seconds", message: "must be from 60 to 63072000 (two years)")) }
        return problems
    }
}

/// API tokens for automation.
extension APIService {
    func listAPITokens(_ context: APIContext) async throws -> APIReply {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        var items: [APITokenView] = []
        for token in try await store.apiTokens() { items.append(APITokenView(token, state: try await tokenState(token, now: now))) }
        return try .json(Page(items: items, nextCursor: nil))
    }

    /// A token for automation with a role and optional scopes, 90 days unless
    /// `expires_in_seconds` says otherwise. The secret is in this answer only.
    func createAPIToken(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(APITokenBody.self, from: context.request)
        guard let role = OperatorRole(rawValue: body.role) else { throw APIProblem.invalid("role", "must be admin, operator or auditor") }
        let created = try await operations.createAPIToken(name: body.name, role: role, scopes: body.scopes ?? [], expiresInSeconds: body.expiresInSeconds ?? 90 * 86_400,
                                                          by: try context.actor)
        return try .json(APITokenView(created.record, state: "usable", token: created.token), status: .created)
    }

    func showAPIToken(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        guard let token = try await store.apiToken(id: id) else { throw APIProblem.notFound("API token \(id)") }
        return try .json(APITokenView(token, state: try await tokenState(token, now: Int64(HybridLogicalClock.wallMilliseconds()))))
    }

    func revokeAPIToken(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        try await operations.revokeAPIToken(id: id, by: try context.actor)
        guard let token = try await store.apiToken(id: id) else { throw APIProblem.notFound("API token \(id)") }
        return try .json(APITokenView(token, state: "revoked"))
    }
}
