import Foundation
import SQLKit

/// An agent session as the database keeps it, so that any manager of the site continues it:
/// its keys sealed by the manager (the store never sees them open) and when it ends. A device
/// has one session at a time: opening one ends the one before. The last message counter taken
/// in it is on the device's row (`session_id`, `session_counter`), where a check-in's one
/// statement takes the next.
public struct AgentSessionRecord: Sendable, Equatable {
    public var id: [UInt8]
    public var deviceID: String
    public var sealedKeys: [UInt8]
    public var expiresMilliseconds: Int64

    public init(id: [UInt8], deviceID: String, sealedKeys: [UInt8], expiresMilliseconds: Int64) {
        self.id = id
        self.deviceID = deviceID
        self.sealedKeys = sealedKeys
        self.expiresMilliseconds = expiresMilliseconds
    }
}

/// A message's place in its session, taken in the transaction of what the message does: a
/// counter at or below the last one taken (a replay, to this manager or another) rolls the
/// whole message back.
public struct SessionAdvance: Sendable {
    public var deviceID: String
    public var sessionID: [UInt8]
    public var counter: UInt64

    public init(deviceID: String, sessionID: [UInt8], counter: UInt64) {
        self.deviceID = deviceID
        self.sessionID = sessionID
        self.counter = counter
    }

    var storedCounter: Int64 { Int64(clamping: counter) }
}

/// Why a message's counter was not taken.
public enum SessionRefusal: Error, Sendable, Equatable {
    /// The counter is not above the last one taken: replayed or reordered.
    case replayed
    /// The session is no longer the device's: a newer one replaced it, or the device was
    /// revoked, wiped or deleted.
    case ended
}

extension Store {
    /// Opens a session, which becomes the device's only one. A handshake nonce seen before
    /// (by any manager of the site, within the sessions kept) is refused.
    /// - Returns: false when the nonce was seen before.
    public func openAgentSession(_ session: AgentSessionRecord, nonce: String, now: Int64) async throws -> Bool {
        try await write { transaction in
            let inserted = try await transaction.database.raw("""
                INSERT INTO agent_sessions (id, device_id, sealed_keys, expires_ms, nonce, created_ms)
                VALUES (\(bind: Data(session.id)), \(bind: session.deviceID), \(bind: Data(session.sealedKeys)), \(bind: session.expiresMilliseconds), \(bind: nonce), \(bind: now))
                ON CONFLICT (nonce) DO NOTHING RETURNING device_id
                """).all()
            guard !inserted.isEmpty else { return false }
            try await transaction.database.raw("""
                UPDATE devices SET session_id = \(bind: Data(session.id)), session_counter = 0 WHERE id = \(bind: session.deviceID)
                """).run()
            return true
        }
    }

    /// A session opened by this manager or another one (an ended one too, until it is removed).
    public func agentSession(id: [UInt8]) async throws -> AgentSessionRecord? {
        try await read { db in
            guard let row = try await db.raw("""
                SELECT device_id, sealed_keys, expires_ms FROM agent_sessions WHERE id = \(bind: Data(id))
                """).first() else { return nil }
            return AgentSessionRecord(id: id, deviceID: try row.decode(column: "device_id", as: String.self),
                                      sealedKeys: Array(try row.decode(column: "sealed_keys", as: Data.self)),
                                      expiresMilliseconds: try row.decode(column: "expires_ms", as: Int64.self))
        }
    }

    /// Takes a message's counter on its own, for messages whose work is not one write.
    /// - Throws: ``SessionRefusal``.
    public func advanceSession(_ advance: SessionAdvance) async throws {
        try await write { try await $0.advanceSession(advance) }
    }

    /// Forgets sessions that ended before `before`, with their handshake nonces, which must
    /// be kept for the window in which a handshake's time is accepted.
    @discardableResult
    public func removeEndedAgentSessions(before: Int64) async throws -> Int {
        try await write { transaction in
            try await transaction.database.raw("DELETE FROM agent_sessions WHERE expires_ms < \(bind: before) RETURNING device_id").all().count
        }
    }
}

extension Transaction {
    /// Takes a message's counter: above the last one taken, in the device's current session,
    /// the device neither revoked nor wiped.
    /// - Throws: ``SessionRefusal``.
    public func advanceSession(_ advance: SessionAdvance) async throws {
        let taken = try await database.raw("""
            UPDATE devices SET session_counter = \(bind: advance.storedCounter)
            WHERE id = \(bind: advance.deviceID) AND session_id = \(bind: Data(advance.sessionID)) AND session_counter < \(bind: advance.storedCounter)
            AND state NOT IN ('revoked', 'wiped') RETURNING id
            """).all()
        guard taken.isEmpty else { return }
        throw try await refusal(of: advance)
    }

    /// Why a counter was not taken: the session is still the device's (a replay), or not.
    func refusal(of advance: SessionAdvance) async throws -> SessionRefusal {
        let current = try await database.raw("""
            SELECT 1 AS one FROM devices WHERE id = \(bind: advance.deviceID) AND session_id = \(bind: Data(advance.sessionID)) AND state NOT IN ('revoked', 'wiped')
            """).first()
        return current == nil ? .ended : .replayed
    }

    /// Ends a device's session (revoked, wiped, deleted), on every manager of the site.
    public func endAgentSessions(ofDevice deviceID: String) async throws {
        try await database.raw("UPDATE devices SET session_id = NULL WHERE id = \(bind: deviceID)").run()
        try await database.raw("UPDATE agent_sessions SET expires_ms = 0 WHERE device_id = \(bind: deviceID)").run()
    }
}
