import Foundation
import SQLKit

/// What an operator can ask a device to do.
public enum CommandKind: String, Sendable, CaseIterable {
    case lock, unlock, wipe
    case remoteHelp = "remote_help"
    case passwordReset = "password_reset"
}

/// Where a command is in its life.
public enum CommandState: String, Sendable, CaseIterable {
    case pending, delivered, acknowledged, failed, expired
}

public struct CommandRecord: Sendable, Equatable {
    public var id: String
    public var deviceID: String
    public var kind: CommandKind
    public var arguments: String
    public var state: CommandState
    public var result: String?
    public var issuedBy: String
    public var issuedMilliseconds: Int64
    public var expiresMilliseconds: Int64?

    public init(id: String = UUID().uuidString.lowercased(), deviceID: String, kind: CommandKind, arguments: String = "", state: CommandState = .pending, result: String? = nil,
                issuedBy: String, issuedMilliseconds: Int64 = Int64(HybridLogicalClock.wallMilliseconds()), expiresMilliseconds: Int64? = nil) {
        self.id = id
        self.deviceID = deviceID
        self.kind = kind
        self.arguments = arguments
        self.state = state
        self.result = result
        self.issuedBy = issuedBy
        self.issuedMilliseconds = issuedMilliseconds
        self.expiresMilliseconds = expiresMilliseconds
    }
}

extension Store {
    /// Queues a command for a device.
    public func enqueueCommand(_ command: CommandRecord) async throws {
        try await write { try await $0.enqueueCommand(command) }
    }

    /// Commands, newest first, optionally for one device or in one state; `before` is the
    /// (issued time, id) of the last one of the previous page.
    public func commands(deviceID: String? = nil, state: CommandState? = nil, before: (Int64, String)? = nil, limit: Int = 100) async throws -> [CommandRecord] {
        try await read { db in
            var query = SQLQueryString("SELECT * FROM commands WHERE 1 = 1")
            if let deviceID { query.appendInterpolation(unsafeRaw: " AND device_id = "); query.appendInterpolation(bind: deviceID) }
            if let state { query.appendInterpolation(unsafeRaw: " AND state = "); query.appendInterpolation(bind: state.rawValue) }
            if let before {
                query.appendInterpolation(unsafeRaw: " AND (issued_ms < "); query.appendInterpolation(bind: before.0)
                query.appendInterpolation(unsafeRaw: " OR (issued_ms = "); query.appendInterpolation(bind: before.0)
                query.appendInterpolation(unsafeRaw: " AND id < "); query.appendInterpolation(bind: before.1); query.appendInterpolation(unsafeRaw: "))")
            }
            query.appendInterpolation(unsafeRaw: " ORDER BY issued_ms DESC, id DESC LIMIT "); query.appendInterpolation(bind: limit)
            return try await db.raw(query).all().map(CommandRecord.init(row:))
        }
    }

    /// How many commands are in each state.
    public func commandCounts() async throws -> [CommandState: Int] {
        try await read { db in
            var counts: [CommandState: Int] = [:]
            for row in try await db.raw("SELECT state, COUNT(*) AS n FROM commands GROUP BY state").all() {
                if let state = CommandState(rawValue: try row.decode(column: "state", as: String.self)) { counts[state] = try row.decode(column: "n", as: Int.self) }
            }
            return counts
        }
    }

    /// Commands a device should receive now (pending or delivered but not acknowledged, not
    /// expired), oldest first; they are marked delivered in the same transaction.
    public func takeCommands(forDevice deviceID: String, now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> [CommandRecord] {
        try await write { transaction in try await Self.deliverOpenCommands(transaction, deviceID: deviceID, now: now) }
    }

    /// The device's open commands, oldest first, with the pending ones marked delivered (and
    /// logged as changes) in `transaction`.
    static func deliverOpenCommands(_ transaction: Transaction, deviceID: String, now: Int64) async throws -> [CommandRecord] {
        var commands = try await transaction.database.raw("""
            SELECT * FROM commands WHERE device_id = \(bind: deviceID) AND state IN ('pending', 'delivered')
            AND (expires_ms IS NULL OR expires_ms > \(bind: now)) ORDER BY issued_ms, id
            """).all().map(CommandRecord.init(row:))
        guard commands.contains(where: { $0.state == .pending }) else { return commands }
        let hlc = transaction.timestamp()
        for index in commands.indices where commands[index].state == .pending {
            try await transaction.database.raw("UPDATE commands SET state = 'delivered', updated_ms = \(bind: now), hlc = \(bind: Int64(bitPattern: hlc)) WHERE id = \(bind: commands[index].id)").run()
            try await transaction.logChange(entity: "command", key: commands[index].id, op: .upsert, hlc: hlc)
            commands[index].state = .delivered
        }
        return commands
    }

    /// Records a device's answer to a command it was given.
    ///
    /// A result for a command that is already closed (an agent that did not hear the first
    /// answer sends it again) changes nothing: the first result stands.
    /// - Returns: true when this result closed the command, false when it was closed before.
    /// - Throws: ``StoreError/notFound(_:)`` when the device has no command with that id.
    @discardableResult
    public func acknowledgeCommand(id: String, deviceID: String, succeeded: Bool, result: String, now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> Bool {
        try Validate.text(result, field: "command.result", maxBytes: 16 * 1024)
        return try await write { transaction in
            let hlc = transaction.timestamp()
            let updated = try await transaction.database.raw("""
                UPDATE commands SET state = \(bind: succeeded ? "acknowledged" : "failed"), result = \(bind: result), updated_ms = \(bind: now), hlc = \(bind: Int64(bitPattern: hlc))
                WHERE id = \(bind: id) AND device_id = \(bind: deviceID) AND state IN ('pending', 'delivered') RETURNING id
                """).all()
            if updated.isEmpty {
                guard try await transaction.database.raw("SELECT id FROM commands WHERE id = \(bind: id) AND device_id = \(bind: deviceID)").first() != nil else {
                    throw StoreError.notFound("command \(id) for device \(deviceID)")
                }
                return false
            }
            try await transaction.logChange(entity: "command", key: id, op: .upsert, hlc: hlc)
            return true
        }
    }

    /// Marks commands past their expiry; returns how many.
    @discardableResult
    public func expireCommands(now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> Int {
        try await write { transaction in
            let hlc = transaction.timestamp()
            let expired = try await transaction.database.raw("""
                UPDATE commands SET state = 'expired', updated_ms = \(bind: now), hlc = \(bind: Int64(bitPattern: hlc))
                WHERE state IN ('pending', 'delivered') AND expires_ms IS NOT NULL AND expires_ms <= \(bind: now) RETURNING id
                """).all()
            for row in expired {
                try await transaction.logChange(entity: "command", key: try row.decode(column: "id", as: String.self), op: .upsert, hlc: hlc)
            }
            return expired.count
        }
    }

    public func command(id: String) async throws -> CommandRecord? {
        try await read { db in try await db.raw("SELECT * FROM commands WHERE id = \(bind: id)").first().map(CommandRecord.init(row:)) }
    }
}

extension Transaction {
    /// Queues a command for a device.
    public func enqueueCommand(_ command: CommandRecord) async throws {
        try Validate.identifier(command.id, field: "command.id")
        try Validate.identifier(command.deviceID, field: "command.device_id")
        try Validate.text(command.arguments, field: "command.arguments", maxBytes: 16 * 1024)
        guard try await database.raw("SELECT id FROM devices WHERE id = \(bind: command.deviceID)").first() != nil else {
            throw StoreError.notFound("device \(command.deviceID)")
        }
        let hlc = timestamp()
        try await database.raw("""
            INSERT INTO commands (id, device_id, kind, arguments, state, result, issued_by, issued_ms, updated_ms, expires_ms, origin_site, hlc)
            VALUES (\(bind: command.id), \(bind: command.deviceID), \(bind: command.kind.rawValue), \(bind: command.arguments), 'pending', NULL,
                    \(bind: command.issuedBy), \(bind: command.issuedMilliseconds), \(bind: command.issuedMilliseconds), \(bind: command.expiresMilliseconds),
                    \(bind: siteID), \(bind: Int64(bitPattern: hlc)))
            """).run()
        try await logChange(entity: "command", key: command.id, op: .upsert, hlc: hlc)
        try await wake(device: command.deviceID)
    }
}

extension CommandRecord {
    init(row: any SQLRow) throws {
        let kind = try row.decode(column: "kind", as: String.self)
        let state = try row.decode(column: "state", as: String.self)
        guard let parsedKind = CommandKind(rawValue: kind), let parsedState = CommandState(rawValue: state) else {
            throw StoreError.invalid("command", "has an unknown kind \(kind) or state \(state)")
        }
        self.init(
            id: try row.decode(column: "id", as: String.self), deviceID: try row.decode(column: "device_id", as: String.self), kind: parsedKind,
            arguments: try row.decode(column: "arguments", as: String.self), state: parsedState, result: try row.decode(column: "result", as: String?.self),
            issuedBy: try row.decode(column: "issued_by", as: String.self), issuedMilliseconds: try row.decode(column: "issued_ms", as: Int64.self),
            expiresMilliseconds: try row.decode(column: "expires_ms", as: Int64?.self))
    }
}

extension Store {
    /// A whole check-in in one write: records it, reads the site's policy serial, and takes
    /// the device's pending commands (marking them delivered). Returns nil for an unknown device.
    /// - Parameter advancing: the message's place in its session, taken by the same statement;
    ///   a replay changes nothing (``SessionRefusal``).
    public func checkIn(_ checkIn: CheckIn, advancing: SessionAdvance? = nil) async throws -> (policySerial: Int64, commands: [CommandRecord])? {
        try Validate.identifier(checkIn.deviceID, field: "checkin.device_id")
        try Validate.text(checkIn.status, field: "checkin.status", maxBytes: 4096)
        try Validate.nonNegative(checkIn.policySerial, field: "checkin.policy_serial")
        return try await write { transaction in
            // One statement in the usual case (no command waiting): the update, the message's
            // counter, the serial and whether commands wait come back together. Each statement
            // is a trip to the database's thread and back.
            var query = SQLQueryString("""
                UPDATE devices SET last_checkin_ms = \(bind: checkIn.atMilliseconds), policy_serial = \(bind: checkIn.policySerial), status = \(bind: checkIn.status),
                pinned = \(bind: checkIn.pinnedText), push_manager = \(bind: checkIn.heldBy?.manager), push_until_ms = \(bind: checkIn.heldBy?.untilMilliseconds)
                """)
            if let advancing {
                query.appendInterpolation(unsafeRaw: ", session_counter = ")
                query.appendInterpolation(bind: advancing.storedCounter)
            }
            query.appendInterpolation(unsafeRaw: " WHERE id = ")
            query.appendInterpolation(bind: checkIn.deviceID)
            if let advancing {
                query.appendInterpolation(unsafeRaw: " AND session_id = ")
                query.appendInterpolation(bind: Data(advancing.sessionID))
                query.appendInterpolation(unsafeRaw: " AND session_counter < ")
                query.appendInterpolation(bind: advancing.storedCounter)
                query.appendInterpolation(unsafeRaw: " AND state NOT IN ('revoked', 'wiped')")
            }
            query.appendInterpolation(unsafeRaw: " RETURNING id, (SELECT value FROM counters WHERE name = 'policy_serial') AS serial,")
            query.appendInterpolation(unsafeRaw: " CASE WHEN EXISTS (SELECT 1 FROM commands WHERE device_id = ")
            query.appendInterpolation(bind: checkIn.deviceID)
            query.appendInterpolation(unsafeRaw: " AND state IN ('pending', 'delivered') AND (expires_ms IS NULL OR expires_ms > ")
            query.appendInterpolation(bind: checkIn.atMilliseconds)
            query.appendInterpolation(unsafeRaw: ")) THEN 1 ELSE 0 END AS waiting")
            let row = try await transaction.database.raw(query).first()
            if row == nil, let advancing { throw try await transaction.refusal(of: advancing) }
            guard let row else { return nil }
            let serial = try row.decode(column: "serial", as: Int64?.self) ?? 0
            let waiting = try row.decode(column: "waiting", as: Int.self) != 0
            let commands = waiting ? try await Self.deliverOpenCommands(transaction, deviceID: checkIn.deviceID, now: checkIn.atMilliseconds) : []
            return (serial, commands)
        }
    }
}
