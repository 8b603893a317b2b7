import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

struct PolicyBody: APIRequestBody {
    static let fields: Set<String> = ["name", "document"]
    var name: String
    var document: JSONValue

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if name.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty || name.utf8.count > 128 { problems.append(.init(field: "name", message: "must be 1 to 128 bytes, not only spaces")) }
        if !document.isObject { problems.append(.init(field: "document", message: "must be a JSON object")) }
        return problems
    }
}

struct PolicyVersionBody: APIRequestBody {
    static let fields: Set<String> = ["document"]
    var document: JSONValue

    func validate() -> [APIProblem.FieldError] { document.isObject ? [] : [.init(field: "document", message: "must be a JSON object")] }
}

struct PublishBody: APIRequestBody {
    static let fields: Set<String> = ["version"]
    var version: Int

    func validate() -> [APIProblem.FieldError] { version >= 1 ? [] : [.init(field: "version", message: "must be at least 1")] }
}

/// Policies, their versions, publishing, and the groups they apply to.
extension APIService {
    func listPolicies(_ context: APIContext) async throws -> APIReply {
        try .json(Page(items: try await store.policies().map { PolicyView($0) }, nextCursor: nil))
    }

    func createPolicy(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(PolicyBody.self, from: context.request)
        let document = try body.document.canonicalText()
        let policy = try await operations.createPolicy(name: body.name, document: document, by: try context.actor)
        return try .json(PolicyView(policy, groups: []), status: .created)
    }

    func showPolicy(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        guard let policy = try await store.policy(id: id) else { throw APIProblem.notFound("policy \(id)") }
        return try .json(PolicyView(policy, groups: try await store.policyAssignments(policyID: id)))
    }

    func policyHistory(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        guard let policy = try await store.policy(id: id) else { throw APIProblem.notFound("policy \(id)") }
        let versions = try await store.policyVersions(policyID: id).reversed()
        return try .json(Page(items: versions.map { PolicyVersionView($0, published: $0.version == policy.publishedVersion, withDocument: false) }, nextCursor: nil))
    }

    func showPolicyVersion(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        guard let number = Int(context.parameter("version")), number >= 1 else { throw APIProblem.invalid("version", "must be a version number (1, 2, ...)") }
        guard let policy = try await store.policy(id: id) else { throw APIProblem.notFound("policy \(id)") }
        guard let version = try await store.policyVersions(policyID: id).first(where: { $0.version == number }) else {
            throw APIProblem.notFound("version \(number) of policy \(id)")
        }
        return try .json(PolicyVersionView(version, published: number == policy.publishedVersion, withDocument: true))
    }

    func addPolicyVersion(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        let body = try APIJSON.decode(PolicyVersionBody.self, from: context.request)
        let document = try body.document.canonicalText()
        let number = try await operations.addPolicyVersion(policyID: id, document: document, by: try context.actor)
        guard let policy = try await store.policy(id: id), let version = try await store.policyVersions(policyID: id).first(where: { $0.version == number }) else {
            throw APIProblem.notFound("policy \(id)")
        }
        return try .json(PolicyVersionView(version, published: number == policy.publishedVersion, withDocument: true), status: .created)
    }

    func publishPolicy(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        let body = try APIJSON.decode(PublishBody.self, from: context.request)
        try await operations.publishPolicy(policyID: id, version: body.version, by: try context.actor)
        guard let policy = try await store.policy(id: id) else { throw APIProblem.notFound("policy \(id)") }
        return try .json(PolicyView(policy, groups: try await store.policyAssignments(policyID: id)))
    }

    func assignPolicy(_ context: APIContext) async throws -> APIReply {
        let (policy, group) = (context.parameter("id"), context.parameter("group_id"))
        try await operations.assignPolicy(policyID: policy, groupID: group, by: try context.actor)
        return .noContent
    }

    func unassignPolicy(_ context: APIContext) async throws -> APIReply {
        let (policy, group) = (context.parameter("id"), context.parameter("group_id"))
        try await operations.unassignPolicy(policyID: policy, groupID: group, by: try context.actor)
        return .noContent
    }
}
