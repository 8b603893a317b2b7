import Foundation
import SQLKit

/// The lifecycle state of a device.
public enum DeviceState: String, Sendable, CaseIterable {
    case active, locked, wiped, revoked
}

/// An enrolled device.
public struct DeviceRecord: Sendable, Equatable {
    /// Derived from the agent's public signing key.
    public var id: String
    public var signingKey: [UInt8]
    public var agreementKey: [UInt8]
    public var hostname: String
    public var os: String
    public var state: DeviceState
    public var enrolledMilliseconds: Int64
    public var lastCheckInMilliseconds: Int64?
    public var policySerial: Int64
    public var status: String?
    /// The manager holding the device's wait (push), and until when at most; nil when its
    /// agent last checked in without waiting.
    public var pushManager: String?
    public var pushUntilMilliseconds: Int64?

    /// The manager holding the device's wait at `now`, or nil when it only pulls.
    public func pushHeld(at now: Int64) -> String? {
        guard let pushManager, let until = pushUntilMilliseconds, until > now else { return nil }
        return pushManager
    }

    public init(id: String, signingKey: [UInt8], agreementKey: [UInt8], hostname: String, os: String, state: DeviceState = .active,
                enrolledMilliseconds: Int64 = Int64(HybridLogicalClock.wallMilliseconds()), lastCheckInMilliseconds: Int64? = nil, policySerial: Int64 = 0, status: String? = nil) {
        self.id = id
        self.signingKey = signingKey
        self.agreementKey = agreementKey
        self.hostname = hostname
        self.os = os
        self.state = state
        self.enrolledMilliseconds = enrolledMilliseconds
        self.lastCheckInMilliseconds = lastCheckInMilliseconds
        self.policySerial = policySerial
        self.status = status
    }

    func validate() throws {
        try Validate.identifier(id, field: "device.id")
        guard !signingKey.isEmpty, signingKey.count <= 1024 else { throw StoreError.invalid("device.signing_key", "must be 1 to 1024 bytes") }
        guard !agreementKey.isEmpty, agreementKey.count <= 1024 else { throw StoreError.invalid("device.agreement_key", "must be 1 to 1024 bytes") }
        try Validate.text(hostname, field: "device.hostname", maxBytes: 255)
        guard !hostname.isEmpty else { throw StoreError.invalid("device.hostname", "must not be empty") }
        try Validate.text(os, field: "device.os", maxBytes: 255)
        try Validate.text(status ?? "", field: "device.status", maxBytes: 4096)
    }
}

/// What an agent says at check-in.
public struct CheckIn: Sendable, Equatable {
    public var deviceID: String
    public var atMilliseconds: Int64
    public var policySerial: Int64
    public var status: String
    /// SHA-256 fingerprints (hex) of the manager certificates the agent has pinned.
    public var pinned: [String]
    /// For a wait (push): the manager holding it and until when at most. A check-in without
    /// it records that the device is not held.
    public var heldBy: (manager: String, untilMilliseconds: Int64)?

    public init(deviceID: String, atMilliseconds: Int64, policySerial: Int64, status: String, pinned: [String] = [], heldBy: (manager: String, untilMilliseconds: Int64)? = nil) {
        self.deviceID = deviceID
        self.atMilliseconds = atMilliseconds
        self.policySerial = policySerial
        self.status = status
        self.pinned = pinned
        self.heldBy = heldBy
    }

    public static func == (a: CheckIn, b: CheckIn) -> Bool {
        a.deviceID == b.deviceID && a.atMilliseconds == b.atMilliseconds && a.policySerial == b.policySerial && a.status == b.status && a.pinned == b.pinned
            && a.heldBy?.manager == b.heldBy?.manager && a.heldBy?.untilMilliseconds == b.heldBy?.untilMilliseconds
    }

    /// The pinned fingerprints as stored: lower-case hex, space-separated.
    var pinnedText: String { pinned.prefix(8).map { $0.lowercased() }.filter { $0.count == 64 && $0.allSatisfy(\.isHexDigit) }.joined(separator: " ") }
}

extension Store {
    /// Adds an enrolled device (a replicated change).
    public func addDevice(_ device: DeviceRecord) async throws {
        try device.validate()
        try await write { transaction in
            let hlc = transaction.timestamp()
            try await transaction.database.raw("""
                INSERT INTO devices (id, signing_key, agreement_key, hostname, os, state, enrolled_ms, last_checkin_ms, policy_serial, status, origin_site, hlc)
                VALUES (\(bind: device.id), \(bind: Data(device.signingKey)), \(bind: Data(device.agreementKey)), \(bind: device.hostname), \(bind: device.os),
                        \(bind: device.state.rawValue), \(bind: device.enrolledMilliseconds), \(bind: device.lastCheckInMilliseconds), \(bind: device.policySerial),
                        \(bind: device.status), \(bind: transaction.siteID), \(bind: Int64(bitPattern: hlc)))
                """).run()
            try await transaction.logChange(entity: "device", key: device.id, op: .upsert, hlc: hlc)
        }
    }

    public func device(id: String) async throws -> DeviceRecord? {
        try await read { db in
            try await db.raw("SELECT * FROM devices WHERE id = \(bind: id)").first().map(DeviceRecord.init(row:))
        }
    }

    /// Records a check-in; returns false when no such device exists. Durable when it returns.
    /// Check-ins are local bookkeeping, not replicated changes: they would flood peers.
    @discardableResult
    public func recordCheckIn(_ checkIn: CheckIn) async throws -> Bool {
        try Validate.identifier(checkIn.deviceID, field: "checkin.device_id")
        try Validate.text(checkIn.status, field: "checkin.status", maxBytes: 4096)
        try Validate.nonNegative(checkIn.policySerial, field: "checkin.policy_serial")
        return try await write { transaction in
            let updated = try await transaction.database.raw("""
                UPDATE devices SET last_checkin_ms = \(bind: checkIn.atMilliseconds), policy_serial = \(bind: checkIn.policySerial), status = \(bind: checkIn.status),
                pinned = \(bind: checkIn.pinnedText) WHERE id = \(bind: checkIn.deviceID) RETURNING id
                """).all()
            return !updated.isEmpty
        }
    }
}

extension Store {
    /// How many active devices (not wiped or revoked, checked in since `activeSince`) there
    /// are, and how many of them reported `fingerprint` among their pinned certificates.
    public func pinProgress(fingerprint: String, activeSince: Int64) async throws -> (acknowledged: Int, active: Int) {
        try await read { db in
            let row = try await db.raw("""
                SELECT COUNT(*) AS active, COALESCE(SUM(CASE WHEN pinned LIKE \(bind: "%" + fingerprint.lowercased() + "%") THEN 1 ELSE 0 END), 0) AS acknowledged
                FROM devices WHERE state IN ('active', 'locked') AND last_checkin_ms >= \(bind: activeSince)
                """).first()
            return (try row?.decode(column: "acknowledged", as: Int.self) ?? 0, try row?.decode(column: "active", as: Int.self) ?? 0)
        }
    }
}

extension DeviceRecord {
    init(row: any SQLRow) throws {
        self.init(
            id: try row.decode(column: "id", as: String.self),
            signingKey: Array(try row.decode(column: "signing_key", as: Data.self)),
            agreementKey: Array(try row.decode(column: "agreement_key", as: Data.self)),
            hostname: try row.decode(column: "hostname", as: String.self),
            os: try row.decode(column: "os", as: String.self),
            state: DeviceState(rawValue: try row.decode(column: "state", as: String.self)) ?? .active,
            enrolledMilliseconds: try row.decode(column: "enrolled_ms", as: Int64.self),
            lastCheckInMilliseconds: try row.decode(column: "last_checkin_ms", as: Int64?.self),
            policySerial: try row.decode(column: "policy_serial", as: Int64.self),
            status: try row.decode(column: "status", as: String?.self)
        )
        // Pages that read chosen columns leave these out.
        if row.contains(column: "push_manager") {
            pushManager = try row.decode(column: "push_manager", as: String?.self)
            pushUntilMilliseconds = try row.decode(column: "push_until_ms", as: Int64?.self)
        }
    }
}

/// One entry of the change log.
public struct ChangeRecord: Sendable, Equatable {
    public var sequence: Int64
    public var entity: String
    public var key: String
    public var op: ChangeOperation
    public var originSite: String
    public var hlc: UInt64
}

extension Store {
    /// Changes after `sequence`, oldest first, for a peer to pull.
    public func changes(after sequence: Int64, limit: Int = 1000) async throws -> [ChangeRecord] {
        try await read { db in
            try await db.raw("SELECT seq, entity, entity_key, op, origin_site, hlc FROM change_log WHERE seq > \(bind: sequence) ORDER BY seq LIMIT \(bind: limit)").all().map(ChangeRecord.init(row:))
        }
    }
}
