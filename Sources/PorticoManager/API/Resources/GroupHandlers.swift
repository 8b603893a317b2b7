import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

struct GroupBody: APIRequestBody {
    static let fields: Set<String> = ["name", "description"]
    var name: String
    var description: String?

    func validate() -> [APIProblem.FieldError] { GroupPatch(name: name, description: description).validate() }
}

struct GroupPatch: APIRequestBody {
    static let fields: Set<String> = ["name", "description"]
    var name: String?
    var description: String?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if let name, name.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty || name.utf8.count > 128 { problems.append(.init(field: "name", message: "must be 1 to 128 bytes, not only spaces")) }
        if let description, description.utf8.count > 1024 { problems.append(.init(field: "description", message: "must be at most 1024 bytes")) }
        return problems
    }
}

/// Groups of devices and their members.
extension APIService {
    func listGroups(_ context: APIContext) async throws -> APIReply {
        let sizes = try await store.groupSizes()
        let groups = try await store.groups()
        return try .json(Page(items: groups.map { GroupView($0, deviceCount: sizes[$0.id] ?? 0) }, nextCursor: nil))
    }

    func createGroup(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(GroupBody.self, from: context.request)
        let group = try await operations.createGroup(name: body.name, description: body.description ?? "", by: try context.actor)
        return try .json(GroupView(group, deviceCount: 0), status: .created)
    }

    func showGroup(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        guard let group = try await store.group(id: id) else { throw APIProblem.notFound("group \(id)") }
        return try .json(GroupView(group, deviceCount: try await store.groupSizes()[id] ?? 0))
    }

    func updateGroup(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        let body = try APIJSON.decode(GroupPatch.self, from: context.request)
        let group = try await operations.updateGroup(id: id, name: body.name, description: body.description, by: try context.actor)
        return try .json(GroupView(group, deviceCount: try await store.groupSizes()[id] ?? 0))
    }

    func deleteGroup(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        try await operations.deleteGroup(id: id, by: try context.actor)
        return .noContent
    }

    func addGroupMember(_ context: APIContext) async throws -> APIReply {
        let (group, device) = (context.parameter("id"), context.parameter("device_id"))
        try await operations.addGroupMember(group: group, device: device, by: try context.actor)
        return .noContent
    }

    func removeGroupMember(_ context: APIContext) async throws -> APIReply {
        let (group, device) = (context.parameter("id"), context.parameter("device_id"))
        try await operations.removeGroupMember(group: group, device: device, by: try context.actor)
        return .noContent
    }
}
