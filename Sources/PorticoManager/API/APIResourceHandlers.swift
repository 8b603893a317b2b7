import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoStore

// MARK: - Request bodies

struct RemoteHelpBody: APIRequestBody {
    static let fields: Set<String> = ["challenge"]
    var challenge: String

    func validate() -> [APIProblem.FieldError] {
        challenge.isEmpty || challenge.utf8.count > 64 ? [.init(field: "challenge", message: "must be the 1 to 64 character code the device shows")] : []
    }
}

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

struct OperatorBody: APIRequestBody {
    static let fields: Set<String> = ["name", "role", "password"]
    var name: String
    var role: String
    var password: String

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if name.isEmpty || name.utf8.count > 64 || !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }) {
            problems.append(.init(field: "name", message: "must be 1 to 64 letters, digits, '-', '_', '.' or '@'"))
        }
        if OperatorRole(rawValue: role) == nil { problems.append(.init(field: "role", message: "must be admin, operator or auditor")) }
        problems += OperatorPatch.passwordProblems(password)
        return problems
    }
}

struct OperatorPatch: APIRequestBody {
    static let fields: Set<String> = ["role", "password", "disabled"]
    var role: String?
    var password: String?
    var disabled: Bool?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if let role, OperatorRole(rawValue: role) == nil { problems.append(.init(field: "role", message: "must be admin, operator or auditor")) }
        if let password { problems += Self.passwordProblems(password) }
        return problems
    }

    static func passwordProblems(_ password: String) -> [APIProblem.FieldError] {
        password.count < 12 || password.utf8.count > 1024 ? [.init(field: "password", message: "must be 12 to 1024 characters")] : []
    }
}

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
        if let expiresInSeconds, !(60...63_072_000).contains(expiresInSeconds) { problems.append(.init(field: "expires_in_seconds", message: "must be from 60 to 63072000 (two years)")) }
        return problems
    }
}

struct CSRBody: APIRequestBody {
    static let fields: Set<String> = ["staged", "names"]
    var staged: Bool?
    var names: [String]?

    func validate() -> [APIProblem.FieldError] {
        if let names, !CertificateNames.acceptable(names) { return [.init(field: "names", message: CertificateNames.rule)] }
        return []
    }
}

/// Names a certificate may carry: DNS names (a `*.` wildcard first at most) or IP addresses.
enum CertificateNames {
    static let rule = "must be up to 32 DNS names (letters, digits, '-', dots; '*.' first at most) or IP addresses"

    static func acceptable(_ names: [String]) -> Bool {
        names.count <= 32 && names.allSatisfy { name in
            if IdentityGenerator.ipBytesForCSR(name) != nil { return true }
            let host = name.hasPrefix("*.") ? String(name.dropFirst(2)) : name
            guard !host.isEmpty, host.utf8.count <= 253 else { return false }
            return host.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
                !label.isEmpty && label.utf8.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
                    && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
            }
        }
    }
}

struct CSRAnswer: Encodable, Sendable {
    var csr: String
}

struct ImportBody: APIRequestBody {
    static let fields: Set<String> = ["certificate", "key", "pkcs12", "password", "live"]
    var certificate: String?
    var key: String?
    var pkcs12: String?
    var password: String?
    var live: Bool?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if (certificate == nil) == (pkcs12 == nil) { problems.append(.init(field: "certificate", message: "or pkcs12 must be given, not both")) }
        if pkcs12 == nil, password != nil { problems.append(.init(field: "password", message: "goes with pkcs12 only")) }
        if pkcs12 != nil, key != nil { problems.append(.init(field: "key", message: "goes with certificate only")) }
        for (field, value) in [("certificate", certificate), ("key", key), ("pkcs12", pkcs12)] where (value?.unicodeScalars.count ?? 0) > 65_536 {
            problems.append(.init(field: field, message: "must be at most 65536 characters"))
        }
        return problems
    }
}

struct RemoteHelpAnswer: Encodable, Sendable {
    var deviceId: String
    var response: String
}

struct IdentityView: Encodable, Sendable {
    var current: CertificateView
    var staged: CertificateView?
    var rotation: RotationView?
}

struct RotationView: Encodable, Sendable {
    var acknowledged: Int
    var active: Int
    var share: Double
    var switchAt: Double
    var activeWindowSeconds: Int
    var startedAt: String

    init(_ status: IdentityRotation.Status) {
        acknowledged = status.acknowledged
        active = status.active
        share = (status.share * 1000).rounded() / 1000
        switchAt = status.plan.switchAt
        activeWindowSeconds = status.plan.activeWindowSeconds
        startedAt = APIJSON.time(status.plan.startedMilliseconds)
    }
}

struct RotateBody: APIRequestBody {
    static let fields: Set<String> = ["key", "days", "names", "switch_at", "active_window_seconds"]
    var key: String?
    var days: Int?
    var names: [String]?
    var switchAt: Double?
    var activeWindowSeconds: Int?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if let key, KeyType(rawValue: key) == nil { problems.append(.init(field: "key", message: "must be rsa-2048, rsa-3072 or ecdsa-p256")) }
        if let days, !(1...3650).contains(days) { problems.append(.init(field: "days", message: "must be from 1 to 3650")) }
        if let names, !CertificateNames.acceptable(names) { problems.append(.init(field: "names", message: CertificateNames.rule)) }
        if let switchAt, !(switchAt > 0 && switchAt <= 1) { problems.append(.init(field: "switch_at", message: "must be a share above 0 and at most 1")) }
        if let activeWindowSeconds, !(3600...31_536_000).contains(activeWindowSeconds) { problems.append(.init(field: "active_window_seconds", message: "must be from 3600 to 31536000")) }
        return problems
    }
}

// MARK: - Handlers

extension APIService {
    var now: Int64 { Int64(HybridLogicalClock.wallMilliseconds()) }

    // Devices

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
        let response = try await operations.remoteHelpResponse(deviceID: id, challenge: body.challenge, by: try context.actor)
        return try .json(RemoteHelpAnswer(deviceId: id, response: response))
    }

    // Groups

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

    // Policies

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

    // Enrollment tokens

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

    // Commands

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

    // Events and audit

    func listEvents(_ context: APIContext) async throws -> APIReply {
        let (limit, cursor) = try context.paging(parts: 3)
        var before: (Int64, String, String)?
        if let cursor {
            guard let occurred = Int64(cursor[0]) else { throw APIProblem.invalid("cursor", "is not one this API gave out") }
            before = (occurred, cursor[1], cursor[2])
        }
        let filter = EventFilter(deviceID: try context.string("device_id"), kind: try context.string("kind"), since: try context.time("since"), until: try context.time("until"))
        let events = try await store.events(filter, before: before, limit: limit + 1)
        let page = Array(events.prefix(limit))
        return try .json(Page(items: page.map(EventView.init), nextCursor: events.count > limit ? page.last.map { Cursor.encode(["\($0.occurredMilliseconds)", $0.deviceID, $0.eventID]) } : nil))
    }

    func listAudit(_ context: APIContext) async throws -> APIReply {
        let (limit, cursor) = try context.paging(parts: 1)
        var before: Int64?
        if let cursor {
            guard let id = Int64(cursor[0]) else { throw APIProblem.invalid("cursor", "is not one this API gave out") }
            before = id
        }
        let filter = AuditFilter(actor: try context.string("actor"), action: try context.string("action"), target: try context.string("target"),
                                 result: try context.string("result"), since: try context.time("since"), until: try context.time("until"))
        let entries = try await store.auditEntries(filter, beforeID: before, limit: limit + 1)
        let page = Array(entries.prefix(limit))
        return try .json(Page(items: page.map(AuditView.init), nextCursor: entries.count > limit ? page.last.map { Cursor.encode(["\($0.id ?? 0)"]) } : nil))
    }

    // Operators

    func listOperators(_ context: APIContext) async throws -> APIReply {
        let now = self.now
        return try .json(Page(items: try await store.operators().map { OperatorView($0, now: now) }, nextCursor: nil))
    }

    func createOperator(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(OperatorBody.self, from: context.request)
        guard let role = OperatorRole(rawValue: body.role) else { throw APIProblem.invalid("role", "must be admin, operator or auditor") }
        let record = try await operations.createOperator(name: body.name, role: role, password: body.password, by: try context.actor)
        return try .json(OperatorView(record), status: .created)
    }

    func showOperator(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        guard let account = try await store.operatorAccount(named: name) else { throw APIProblem.notFound("operator \(name)") }
        return try .json(OperatorView(account))
    }

    /// Role, password or disabled flag. The last admin who can sign in cannot be demoted or
    /// disabled, so the manager never loses its last administrator.
    func updateOperator(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        let body = try APIJSON.decode(OperatorPatch.self, from: context.request)
        let role = body.role.flatMap(OperatorRole.init(rawValue:))
        let account = try await operations.updateOperator(name: name, role: role, password: body.password, disabled: body.disabled, by: try context.actor)
        return try .json(OperatorView(account))
    }

    func deleteOperator(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        try await operations.deleteOperator(name: name, by: try context.actor)
        return .noContent
    }

    func unlockOperator(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        try await operations.unlockOperator(name: name, by: try context.actor)
        guard let account = try await store.operatorAccount(named: name) else { throw APIProblem.notFound("operator \(name)") }
        return try .json(OperatorView(account))
    }

    // API tokens

    func listAPITokens(_ context: APIContext) async throws -> APIReply {
        try .json(Page(items: try await store.apiTokens().map { APITokenView($0) }, nextCursor: nil))
    }

    /// A token for automation with a role and optional scopes, 90 days unless
    /// `expires_in_seconds` says otherwise. The secret is in this answer only.
    func createAPIToken(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(APITokenBody.self, from: context.request)
        guard let role = OperatorRole(rawValue: body.role) else { throw APIProblem.invalid("role", "must be admin, operator or auditor") }
        let created = try await operations.createAPIToken(name: body.name, role: role, scopes: body.scopes ?? [], expiresInSeconds: body.expiresInSeconds ?? 90 * 86_400,
                                                          by: try context.actor)
        return try .json(APITokenView(created.record, token: created.token), status: .created)
    }

    func showAPIToken(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        guard let token = try await store.apiToken(id: id) else { throw APIProblem.notFound("API token \(id)") }
        return try .json(APITokenView(token))
    }

    func revokeAPIToken(_ context: APIContext) async throws -> APIReply {
        let id = context.parameter("id")
        try await operations.revokeAPIToken(id: id, by: try context.actor)
        guard let token = try await store.apiToken(id: id) else { throw APIProblem.notFound("API token \(id)") }
        return try .json(APITokenView(token))
    }

    // Peers and identity

    func listPeers(_ context: APIContext) async throws -> APIReply {
        let statuses = links?.statuses ?? [:]
        let cursors = try await store.replicationCursors()
        return try .json(Page(items: try await store.peers().map { PeerView($0, status: statuses[$0.name], cursor: $0.siteID.flatMap { cursors[$0] }) }, nextCursor: nil))
    }

    func showIdentity(_ context: APIContext) async throws -> APIReply {
        try .json(try await identityView())
    }

    func identityView() async throws -> IdentityView {
        guard let status = identityStatus() else { throw APIProblem.notFound("a server identity (no TLS listener is enabled)") }
        let rotation = try await self.rotation?.status()
        return IdentityView(current: CertificateView(status.current), staged: status.staged.map(CertificateView.init), rotation: rotation.map(RotationView.init))
    }

    /// Stages a new self-signed identity and announces it to agents at their check-ins; the
    /// listeners switch when `switch_at` of the active agents have pinned it.
    func rotateIdentity(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(RotateBody.self, from: context.request)
        guard let rotation else { throw APIProblem(.conflict, "identity rotation needs the agent service, which this manager does not run") }
        let keyType = KeyType(rawValue: body.key ?? "rsa-2048") ?? .rsa2048
        let plan = StagedIdentity.Plan(switchAt: body.switchAt ?? 0.95, activeWindowSeconds: body.activeWindowSeconds ?? 7 * 86_400)
        let status: IdentityRotation.Status
        do {
            status = try await rotation.stage(keyType: keyType, days: body.days ?? 825, names: body.names ?? [], plan: plan)
        } catch let error as RotationError {
            throw APIProblem(.conflict, error.description)
        }
        try await operations.record(context.entry("identity.rotate", target: status.fingerprintHex, detail: "\(keyType.rawValue), switch at \(plan.switchAt)"))
        return try .json(try await identityView(), status: .created)
    }

    /// A signing request for the live (or staged) key, for a corporate CA.
    func identityCSR(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(CSRBody.self, from: context.request)
        guard let rotation else { throw APIProblem(.conflict, "this manager has no identity files to sign") }
        let configuration = rotation.configuration
        let paths = body.staged == true ? StagedIdentity.paths(configuration) : (configuration.identity.certificate, configuration.identity.privateKey)
        guard let identity = try? ServerIdentity.load(certificatePath: paths.0, privateKeyPath: paths.1) else {
            throw APIProblem(.conflict, body.staged == true ? "no next identity is staged" : "the live identity does not load")
        }
        return try .json(CSRAnswer(csr: try IdentityRequests.signingRequest(for: identity, names: body.names ?? [])))
    }

    /// Installs an identity from PEM (the certificate with its chain, and its key, or only the
    /// certificate a CA signed from this manager's request) or a base64 PKCS#12 bundle. It is
    /// staged, so that a rotation announces it before the listeners serve it, unless `live`.
    func importIdentity(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(ImportBody.self, from: context.request)
        guard let rotation else { throw APIProblem(.conflict, "this manager has no identity files to replace") }
        let configuration = rotation.configuration
        let certificatePEM: [UInt8]
        let keyPEM: [UInt8]
        let installed: ServerIdentity
        do {
            if let pkcs12 = body.pkcs12 {
                guard let bytes = Data(base64Encoded: pkcs12, options: .ignoreUnknownCharacters) else { throw APIProblem.invalid("pkcs12", "must be base64") }
                (certificatePEM, keyPEM) = try IdentityImport.fromPKCS12(bytes: Array(bytes), password: body.password ?? "")
            } else {
                certificatePEM = Array((body.certificate ?? "").utf8)
                guard let key = body.key.map({ Array($0.utf8) }) ?? IdentityRequests.matchingKey(for: certificatePEM, configuration: configuration) else {
                    throw APIProblem.invalid("key", "is needed: the certificate belongs to neither the live nor the staged key")
                }
                keyPEM = key
            }
            installed = try IdentityRequests.install(certificatePEM: certificatePEM, keyPEM: keyPEM, staged: body.live != true, configuration: configuration)
        } catch let error as IdentityImport.ImportError {
            throw APIProblem.invalid(body.pkcs12 == nil ? "certificate" : "pkcs12", "is refused: \(error.description)")
        } catch let error as IdentityError {
            throw APIProblem.invalid(body.pkcs12 == nil ? "certificate" : "pkcs12", "is refused: \(error.description)")
        }
        if body.live == true { rotation.reloadLive() } else { _ = try await rotation.status() }
        try await operations.record(context.entry("identity.import", target: installed.fingerprintHex, detail: body.live == true ? "live" : "staged"))
        return try .json(try await identityView())
    }

    /// Makes the staged identity live now, whatever share of agents has pinned it.
    func switchIdentity(_ context: APIContext) async throws -> APIReply {
        guard let rotation, let status = try await rotation.status() else { throw APIProblem(.conflict, "no next identity is staged; POST /api/v1/identity/rotate first") }
        try rotation.switchNow()
        try await operations.record(context.entry("identity.switch", target: status.fingerprintHex, detail: "forced at \(status.acknowledged) of \(status.active) agents"))
        return try .json(try await identityView())
    }
}
