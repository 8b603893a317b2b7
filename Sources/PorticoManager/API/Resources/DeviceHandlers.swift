import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

struct RemoteHelpBody: APIRequestBody {
    static let fields: Set<String> = ["challenge", "user"]
    var challenge: String
    /// A user locked on the device to unlock (the device's challenge for that user).
    var user: String?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if challenge.isEmpty || challenge.utf8.count > 64 { problems.append(.init(field: "challenge", message: "must be the 1 to 64 character code the device shows")) }
        if let user, (try? EndpointUser.validate(name: user)) == nil { problems.append(.init(field: "user", message: "must be a user's sign-in name")) }
        return problems
    }
}

struct RemoteHelpAnswer: Encodable, Sendable {
    var deviceId: String
    var response: String
    /// The user the response unlocks on the device, when it unlocks one.
    var user: String?
}

/// Devices: listed, shown, revoked, deleted, and remote help.
extension APIService {
    func listDevices(_ context: APIContext) async throws -> APIReply {
        let (limit, cursor) = try context.paging(parts: 1)
        let filter = DeviceFilter(state: try context.choice("state", as: DeviceState.self), hostname: try context.string("hostname"), os: try context.string("os"),
                                  groupID: try context.string("group_id"), lastCheckInBefore: try context.time("checked_in_before"))
        let devices = try await store.devices(filter, after: cursor?[0], limit: limit + 1)
        let page = Array(devices.prefix(limit))
        return try .json(Page(items: page.map { DeviceView($0) }, nextCursor: devices.count > limit ? page.last.map { Cursor.encode([$0.id]) } : nil))
    }

    func showDevice(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        guard let device = try await store.device(id: id) else { throw APIProblem.notFound("device \(id)") }
        return try .json(DeviceView(device, groups: try await store.groupIDs(ofDevice: id)))
    }

    func revokeDevice(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        try await operations.revokeDevice(id: id, by: try context.actor)
        guard let device = try await store.device(id: id) else { throw APIProblem.notFound("device \(id)") }
        return try .json(DeviceView(device, groups: try await store.groupIDs(ofDevice: id)))
    }

    func deleteDevice(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        try await operations.deleteDevice(id: id, by: try context.actor)
        return .noContent
    }

    /// The response code for a challenge a locked device shows its user (read out over the
    /// phone); it unlocks that device only. Audited, as it grants access.
    func remoteHelp(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        let body = try APIJSON.decode(RemoteHelpBody.self, from: context.request)
        let response = try await operations.remoteHelpResponse(deviceID: id, challenge: body.challenge, unlockingUser: body.user, by: try context.actor)
        return try .json(RemoteHelpAnswer(deviceId: id, response: response, user: body.user))
    }
}
