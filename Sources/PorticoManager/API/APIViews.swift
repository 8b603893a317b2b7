import Foundation
import PorticoGateway
import PorticoServer
import PorticoStore

/// Any JSON value, for policy documents and command arguments that the API stores as given.
enum JSONValue: Codable, Sendable, Equatable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value):
            if value.rounded() == value, abs(value) < 9e15 { try container.encode(Int64(value)) } else { try container.encode(value) }
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    var isObject: Bool { if case .object = self { true } else { false } }

    /// Compact JSON with sorted keys: the form stored, so equal documents are equal text.
    func canonicalText() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    /// Parses stored text back; text that is not JSON comes back as a string.
    static func parse(_ text: String) -> JSONValue {
        (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .string(text)
    }
}

struct DeviceView: Encodable, Sendable {
    var id: String
    var hostname: String
    var os: String
    var state: String
    var enrolledAt: String
    var lastCheckInAt: String?
    var policySerial: Int64
    var status: String?
    var groups: [String]?
    /// The manager holding the device's wait now (push), or nil when it only checks in.
    var pushHeldBy: String?

    init(_ device: DeviceRecord, groups: [String]? = nil, now: Int64 = Int64(Date().timeIntervalSince1970 * 1000)) {
        id = device.id
        hostname = device.hostname
        os = device.os
        state = device.state.rawValue
        enrolledAt = APIJSON.time(device.enrolledMilliseconds)
        lastCheckInAt = APIJSON.time(device.lastCheckInMilliseconds)
        policySerial = device.policySerial
        status = device.status
        self.groups = groups
        pushHeldBy = device.pushHeld(at: now)
    }
}

struct GroupView: Encodable, Sendable {
    var id: String
    var name: String
    var description: String
    var deviceCount: Int

    init(_ group: GroupRecord, deviceCount: Int) {
        id = group.id
        name = group.name
        description = group.description
        self.deviceCount = deviceCount
    }
}

struct PolicyView: Encodable, Sendable {
    var id: String
    var name: String
    var currentVersion: Int
    var publishedVersion: Int?
    var groups: [String]?

    init(_ policy: PolicyRecord, groups: [String]? = nil) {
        id = policy.id
        name = policy.name
        currentVersion = policy.currentVersion
        publishedVersion = policy.publishedVersion
        self.groups = groups
    }
}

struct PolicyVersionView: Encodable, Sendable {
    var policyId: String
    var version: Int
    var createdBy: String
    var createdAt: String
    var published: Bool
    var document: JSONValue?

    init(_ version: PolicyVersionRecord, published: Bool, withDocument: Bool) {
        policyId = version.policyID
        self.version = version.version
        createdBy = version.createdBy
        createdAt = APIJSON.time(version.createdMilliseconds)
        self.published = published
        document = withDocument ? JSONValue.parse(version.document) : nil
    }
}

struct EnrollmentTokenView: Encodable, Sendable {
    var id: String
    var groupId: String?
    var usesAllowed: Int?
    var uses: Int
    var expiresAt: String?
    var revoked: Bool
    var createdBy: String
    var createdAt: String
    /// Only in the answer to the request that created it.
    var token: String?

    init(_ record: EnrollmentTokenRecord, token: String? = nil) {
        id = record.id
        groupId = record.groupID
        usesAllowed = record.usesAllowed
        uses = record.uses
        expiresAt = APIJSON.time(record.expiresMilliseconds)
        revoked = record.revoked
        createdBy = record.createdBy
        createdAt = APIJSON.time(record.createdMilliseconds)
        self.token = token
    }
}

struct CommandView: Encodable, Sendable {
    var id: String
    var deviceId: String
    var kind: String
    var arguments: JSONValue
    var state: String
    var result: String?
    var issuedBy: String
    var issuedAt: String
    var expiresAt: String?

    init(_ command: CommandRecord) {
        id = command.id
        deviceId = command.deviceID
        kind = command.kind.rawValue
        arguments = command.arguments.isEmpty ? .object([:]) : JSONValue.parse(command.arguments)
        state = command.state.rawValue
        result = command.result
        issuedBy = command.issuedBy
        issuedAt = APIJSON.time(command.issuedMilliseconds)
        expiresAt = APIJSON.time(command.expiresMilliseconds)
    }
}

struct EventView: Encodable, Sendable {
    var deviceId: String
    var eventId: String
    var kind: String
    var occurredAt: String
    var body: String

    init(_ event: EventRecord) {
        deviceId = event.deviceID
        eventId = event.eventID
        kind = event.kind
        occurredAt = APIJSON.time(event.occurredMilliseconds)
        body = event.body
    }
}

struct AuditView: Encodable, Sendable {
    var id: Int64
    var at: String
    var actor: String
    var action: String
    var target: String
    var source: String
    var result: String
    var detail: String

    init(_ entry: AuditEntry) {
        id = entry.id ?? 0
        at = APIJSON.time(entry.atMilliseconds)
        actor = entry.actor
        action = entry.action
        target = entry.target
        source = entry.source
        result = entry.result
        detail = entry.detail
    }
}

struct OperatorView: Encodable, Sendable {
    var name: String
    var role: String
    var disabled: Bool
    var failedLogins: Int
    var locked: Bool
    var lockedUntil: String?

    init(_ account: OperatorRecord, now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) {
        name = account.name
        role = account.role.rawValue
        disabled = account.disabled
        failedLogins = account.failedLogins
        locked = account.isLocked(at: now)
        lockedUntil = locked ? APIJSON.time(account.lockedUntilMilliseconds) : nil
    }
}

struct APITokenView: Encodable, Sendable {
    var id: String
    var name: String
    var role: String
    var scopes: [String]
    var expiresAt: String?
    var revoked: Bool
    var createdBy: String
    /// "usable", "revoked", "expired", "unusable: <why>" (its creator is gone or disabled) or
    /// "limited: <scopes its role can never use>".
    var state: String
    /// Only in the answer to the request that created it.
    var token: String?

    init(_ record: APITokenRecord, state: String, token: String? = nil) {
        self.state = state
        id = record.id
        name = record.name
        role = record.role.rawValue
        scopes = record.scopes
        expiresAt = APIJSON.time(record.expiresMilliseconds)
        revoked = record.revoked
        createdBy = record.createdBy
        self.token = token
    }
}

struct PeerView: Encodable, Sendable {
    var name: String
    var url: String
    var certificateFingerprint: String
    var siteId: String?
    var connected: Bool
    var lastContactAt: String?
    var lastError: String?
    var history: String
    var cursor: Int64?
    var head: Int64?
    var behind: Int64
    var lagMs: Int64?
    var applied: Int
    var divergent: [String]
    var pulledBy: String?

    init(_ peer: PeerRecord, status: PeerLinks.Status?, cursor stored: ReplicationCursor?) {
        name = peer.name
        url = peer.url
        certificateFingerprint = peer.certificateFingerprint
        siteId = peer.siteID
        connected = status?.connected ?? false
        lastContactAt = APIJSON.time(status?.lastContactMilliseconds)
        lastError = status?.lastError
        history = peer.history.rawValue
        cursor = status?.cursor ?? stored?.position
        head = status?.head ?? stored?.head
        behind = max(0, (head ?? 0) - (cursor ?? 0))
        lagMs = status?.lagMilliseconds
        applied = status?.applied ?? 0
        divergent = status?.divergent ?? []
        pulledBy = status?.pulledBy
    }
}

struct CertificateView: Encodable, Sendable {
    var subject: String
    var issuer: String
    var selfSigned: Bool
    var names: [String]
    var key: String
    var serial: String
    var notBefore: String
    var notAfter: String
    var daysRemaining: Int
    var fingerprintSha256: String
    var listeners: [String]

    init(_ s: IdentitySummary) {
        subject = s.subject
        issuer = s.issuer
        selfSigned = s.selfSigned
        names = s.names
        key = s.key
        serial = s.serialHex
        notBefore = APIJSON.time(Int64(s.notBefore.timeIntervalSince1970 * 1000))
        notAfter = APIJSON.time(Int64(s.notAfter.timeIntervalSince1970 * 1000))
        daysRemaining = s.daysRemaining()
        fingerprintSha256 = s.fingerprint
        listeners = s.listeners.map(\.rawValue)
    }
}
