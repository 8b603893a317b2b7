import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

struct CommandBody: APIRequestBody {
    static let fields: Set<String> = ["device_id", "kind", "arguments", "expires_in_seconds", "confirm"]
    var deviceId: String
    var kind: String
    var arguments: JSONValue?
    var expiresInSeconds: Int?
    var confirm: Bool?

    /// What the API may queue: every kind an agent carries out. (`remote_help` queued lets a
    /// connected device's user past its sign-in once; a device with no network path is helped
    /// by the challenge/response of `POST /devices/{id}/remote-help` instead.)
    static let kinds: [CommandKind] = [.lock, .unlock, .wipe, .remoteHelp, .passwordReset]

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if deviceId.isEmpty || deviceId.utf8.count > 128 { problems.append(.init(field: "device_id", message: "must be a device id")) }
        if let parsed = CommandKind(rawValue: kind), Self.kinds.contains(parsed) {
            if parsed == .wipe, confirm != true { problems.append(.init(field: "confirm", message: "must be true to wipe a device: wiping erases it")) }
        } else {
            problems.append(.init(field: "kind", message: "must be one of \(Self.kinds.map(\.rawValue).joined(separator: ", "))"))
        }
        if let arguments, !arguments.isObject { problems.append(.init(field: "arguments", message: "must be a JSON object")) }
        if let expiresInSeconds, !(60...2_592_000).contains(expiresInSeconds) { problems.append(.init(field: "expires_in_seconds", message: "must be from 60 to 2592000 (30 days)")) }
        return problems
    }
}

/// Commands queued for devices.
extension APIService {
    func listCommands(_ context: APIContext) async throws -> APIReply {
        let (limit, cursor) = try context.paging(parts: 2)
        var before: (Int64, String)?
        if let cursor {
            guard let issued = Int64(cursor[0]) else { throw APIProblem.invalid("cursor", "is not one this API gave out") }
            before = (issued, cursor[1])
        }
        let commands = try await store.commands(deviceID: try context.string("device_id"), state: try context.choice("state", as: CommandState.self), before: before, limit: limit + 1)
        let page = Array(commands.prefix(limit))
        return try .json(Page(items: page.map(CommandView.init), nextCursor: commands.count > limit ? page.last.map { Cursor.encode(["\($0.issuedMilliseconds)", $0.id]) } : nil))
    }

    func issueCommand(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(CommandBody.self, from: context.request)
        guard try await store.device(id: body.deviceId) != nil else { throw APIProblem.invalid("device_id", "names no enrolled device") }
        guard let kind = CommandKind(rawValue: body.kind) else { throw APIProblem.invalid("kind", "is not a command") }
        let command = try await operations.issueCommand(deviceID: body.deviceId, kind: kind, arguments: try body.arguments.map { try $0.canonicalText() } ?? "",
                                                        expiresInSeconds: body.expiresInSeconds ?? 7 * 86_400, by: try context.actor)
        return try .json(CommandView(command), status: .created)
    }

    func showCommand(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        guard let command = try await store.command(id: id) else { throw APIProblem.notFound("command \(id)") }
        return try .json(CommandView(command))
    }
}
