import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

struct EnrollmentTokenBody: APIRequestBody {
    static let fields: Set<String> = ["group_id", "uses", "expires_in_seconds"]
    var groupId: String?
    var uses: Int?
    var expiresInSeconds: Int?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if let uses, !(1...1_000_000).contains(uses) { problems.append(.init(field: "uses", message: "must be from 1 to 1000000")) }
        if let expiresInSeconds, !(60...31_536_000).contains(expiresInSeconds) { problems.append(.init(field: "expires_in_seconds", message: "must be from 60 to 31536000 (a year)")) }
        if let groupId, groupId.isEmpty || groupId.utf8.count > 128 { problems.append(.init(field: "group_id", message: "must be a group id")) }
        return problems
    }
}

/// Enrollment tokens for agents.
extension APIService {
    func listEnrollmentTokens(_ context: APIContext) async throws -> APIReply {
        try .json(Page(items: try await store.enrollmentTokens().map { EnrollmentTokenView($0) }, nextCursor: nil))
    }

    /// A token to install agents with: one use unless `uses` says more, a week unless
    /// `expires_in_seconds` says otherwise. The secret is in this answer only.
    func createEnrollmentToken(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(EnrollmentTokenBody.self, from: context.request)
        let created = try await operations.createEnrollmentToken(groupID: body.groupId, uses: body.uses ?? 1, expiresInSeconds: body.expiresInSeconds ?? 7 * 86_400,
                                                                 by: try context.actor)
        return try .json(EnrollmentTokenView(created.record, token: created.token), status: .created)
    }

    func showEnrollmentToken(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        guard let token = try await store.enrollmentToken(id: id) else { throw APIProblem.notFound("enrollment token \(id)") }
        return try .json(EnrollmentTokenView(token))
    }

    func revokeEnrollmentToken(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        try await operations.revokeEnrollmentToken(id: id, by: try context.actor)
        guard let token = try await store.enrollmentToken(id: id) else { throw APIProblem.notFound("enrollment token \(id)") }
        return try .json(EnrollmentTokenView(token))
    }
}
