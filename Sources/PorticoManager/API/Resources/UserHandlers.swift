import Foundation
import PorticoStore

struct UserBody: APIRequestBody {
    static let fields: Set<String> = ["name", "display_name", "password"]
    var name: String
    var displayName: String?
    var password: String

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if (try? EndpointUser.validate(name: name)) == nil { problems.append(.init(field: "name", message: "must be 1 to 256 bytes, without line breaks or spaces at either end")) }
        problems += UserPatch(displayName: displayName).validate()
        if password.isEmpty || password.utf8.count > 1024 { problems.append(.init(field: "password", message: "must be 1 to 1024 bytes")) }
        return problems
    }
}

struct UserPatch: APIRequestBody {
    static let fields: Set<String> = ["display_name", "password", "disabled"]
    var displayName: String?
    var password: String?
    var disabled: Bool?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if let displayName, displayName.utf8.count > 256 { problems.append(.init(field: "display_name", message: "must be at most 256 bytes")) }
        if let password, password.isEmpty || password.utf8.count > 1024 { problems.append(.init(field: "password", message: "must be 1 to 1024 bytes")) }
        return problems
    }
}

struct SignInGrantBody: APIRequestBody {
    static let fields: Set<String> = ["group_id", "principal"]
    var groupId: String
    var principal: String

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if groupId.isEmpty || groupId.utf8.count > 128 { problems.append(.init(field: "group_id", message: "must be a group's id, or * for every device")) }
        let parts = principal.split(separator: ":", maxSplits: 1)
        if parts.count != 2 || !["user", "group"].contains(parts[0]) || principal.utf8.count > 300 {
            problems.append(.init(field: "principal", message: "must be user:<name> or group:<directory group>"))
        }
        return problems
    }
}

struct SignInCodeBody: APIRequestBody {
    static let fields: Set<String> = ["expires_in_seconds"]
    var expiresInSeconds: Int?

    func validate() -> [APIProblem.FieldError] {
        if let expiresInSeconds, !(60...86_400).contains(expiresInSeconds) { return [.init(field: "expires_in_seconds", message: "must be from 60 to 86400")] }
        return []
    }
}

struct SignInCodeView: Encodable, Sendable {
    var user: String
    var code: String
    var expiresAt: String
}

struct UserView: Encodable, Sendable {
    var name: String
    var source: String
    var displayName: String
    var directoryDn: String?
    var directoryGroups: [String]
    var disabled: Bool
    var lastSignInAt: String?
    var lastDevice: String?

    init(_ user: EndpointUser) {
        name = user.name
        source = user.source.rawValue
        displayName = user.displayName
        directoryDn = user.source == .directory ? user.directoryDN : nil
        directoryGroups = user.directoryGroups
        disabled = user.disabled
        lastSignInAt = user.lastSignInMilliseconds > 0 ? APIJSON.time(user.lastSignInMilliseconds) : nil
        lastDevice = user.lastDevice.isEmpty ? nil : user.lastDevice
    }
}

struct SignInGrantView: Encodable, Sendable {
    var groupId: String
    var principal: String
    var createdBy: String
    var createdAt: String?

    init(_ grant: SignInGrant) {
        groupId = grant.groupID
        principal = grant.principal
        createdBy = grant.createdBy
        createdAt = APIJSON.time(grant.createdMilliseconds)
    }
}

/// Endpoint users (who sign in on devices) and where they may sign in.
extension APIService {
    func listUsers(_ context: APIContext) async throws -> APIReply {
        let (limit, cursor) = try context.paging(parts: 1)
        let found = try await store.endpointUsers(matching: try context.string("q"), source: try context.choice("source", as: EndpointUser.Source.self),
                                                  after: cursor?.first, limit: limit + 1)
        let page = Array(found.users.prefix(limit))
        return try .json(Page(items: page.map(UserView.init), nextCursor: found.users.count > limit ? page.last.map { Cursor.encode([$0.name]) } : nil))
    }

    func createUser(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(UserBody.self, from: context.request)
        let user = try await operations.createLocalUser(name: body.name, displayName: body.displayName ?? "", password: body.password,
                                                        minimumLength: configuration.minimumUserPasswordLength, by: try context.actor)
        return try .json(UserView(user), status: .created)
    }

    func showUser(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        guard let user = try await store.endpointUser(named: name) else { throw APIProblem.notFound("user \(name)") }
        return try .json(UserView(user))
    }

    /// A new password is an operator's reset: a directory user's is set in the directory.
    func updateUser(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        let body = try APIJSON.decode(UserPatch.self, from: context.request)
        let actor = try context.actor
        if let password = body.password, let users { try await users.resetPassword(user: name, to: password, by: actor) }
        if body.displayName != nil || body.disabled != nil || (body.password != nil && users == nil) {
            _ = try await operations.updateUser(name: name, displayName: body.displayName, password: users == nil ? body.password : nil, disabled: body.disabled,
                                                minimumLength: configuration.minimumUserPasswordLength, by: actor)
        }
        guard let user = try await store.endpointUser(named: name) else { throw APIProblem.notFound("user \(name)") }
        return try .json(UserView(user))
    }

    func deleteUser(_ context: APIContext) async throws -> APIReply {
        try await operations.deleteUser(name: context.parameter("name"), by: try context.actor)
        return .noContent
    }

    func unlockUser(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        guard let user = try await store.endpointUser(named: name) else { throw APIProblem.notFound("user \(name)") }
        try await operations.unlockUser(name: name, by: try context.actor)
        return try .json(UserView(user))
    }

    /// A one-time sign-in code for the user (shown once; only its hash is kept).
    func issueSignInCode(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        let body = context.request.body.readableBytes == 0 ? SignInCodeBody() : try APIJSON.decode(SignInCodeBody.self, from: context.request)
        guard let users else { throw APIProblem.notFound("user \(name)") }
        guard try await store.endpointUser(named: name) != nil else { throw APIProblem.notFound("user \(name)") }
        let issued = try await users.issueCode(user: name, lifetime: Int64(body.expiresInSeconds ?? 900) * 1000, by: try context.actor)
        return try .json(SignInCodeView(user: name, code: issued.code, expiresAt: APIJSON.time(issued.expires)), status: .created)
    }

    func listSignInGrants(_ context: APIContext) async throws -> APIReply {
        try .json(Page(items: try await store.signInGrants(groupID: try context.string("group_id", maxLength: 128)).map(SignInGrantView.init), nextCursor: nil))
    }

    func grantSignIn(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(SignInGrantBody.self, from: context.request)
        let actor = try context.actor
        try await operations.grantSignIn(groupID: body.groupId, principal: body.principal, by: actor)
        return try .json(SignInGrantView(SignInGrant(groupID: body.groupId, principal: body.principal, createdBy: actor.name)), status: .created)
    }

    func revokeSignInGrant(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(SignInGrantBody.self, from: context.request)
        try await operations.revokeSignIn(groupID: body.groupId, principal: body.principal, by: try context.actor)
        return .noContent
    }
}
