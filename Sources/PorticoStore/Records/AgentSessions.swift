import Foundation
import SQLKit

/// An agent session as the database keeps it, so that any manager of the site continues it:
/// its keys sealed by the manager (the store never sees them open), when it ends, and the
/// last message counter accepted in it.
public struct AgentSessionRecord: Sendable, Equatable {
    public var id: [UInt8]
    public var deviceID: String
    public var sealedKeys: [UInt8]
    public var expiresMilliseconds: Int64
    public var lastCounter: Int64

    public init(id: [UInt8], deviceID: String, sealedKeys: [UInt8], expiresMilliseconds: Int64, lastCounter: Int64 = 0) {
        self.id = id
        self.deviceID = deviceID
        self.sealedKeys = sealedKeys
        self.expiresMilliseconds = expiresMilliseconds
        self.lastCounter = lastCounter
    }
}

/// A message's place in its session, taken in the transaction of what the message does: a
/// counter at or below the last accepted one (a replay, to this manager or another) rolls
/// the whole message back.
public struct SessionAdvance: Sendable {
    public var sessionID: [UInt8]
    public var counter: UInt64
    public var nowMilliseconds: Int64

    public init(sessionID: [UInt8], counter: UInt64, nowMilliseconds: Int64) {
        self.sessionID = sessionID
        self.counter = counter
        self.nowMilliseconds = nowMilliseconds
    }
}

/// Why a message's counter was not taken.
public enum SessionRefusal: Error, Sendable, Equatable {
    /// The counter is not above the last one accepted: replayed or reordered.
    case replayed
    /// The session is gone: expired, ended (device revoked, wiped or deleted), or never was.
    case ended
}

extension Store {
    /// Opens a session. A handshake nonce seen before (by any manager of the site, within the
    /// sessions kept) is refused.
    /// - Returns: false when the nonce was seen before.
    public func openAgentSession(_ session: AgentSessionRecord, nonce: String, now: Int64) async throws -> Bool {
        try await write { transaction in
            let inserted = try await transaction.database.raw("""
                INSERT INTO agent_sessions (id, device_id, sealed_keys, expires_ms, last_counter, nonce, created_ms)
                VALUES (\(bind: Data(session.id)), \(bind: session.deviceID), \(bind: Data(session.sealedKeys)), \(bind: session.expiresMilliseconds), 0, \(bind: nonce), \(bind: now))
                ON CONFLICT (nonce) DO NOTHING RETURNING device_id
                """).all()
            return !inserted.isEmpty
        }
    }

    /// A session opened by this manager or another one (an ended one too, until it is removed).
    public func agentSession(id: [UInt8]) async throws -> AgentSessionRecord? {
        try await read { db in
            guard let row = try await db.raw("""
                SELECT device_id, sealed_keys, expires_ms, last_counter FROM agent_sessions WHERE id = \(bind: Data(id))
                """).first() else { return nil }
            return AgentSessionRecord(id: id, deviceID: try row.decode(column: "device_id", as: String.self), sealedKeys: Array(try row.decode(column: "sealed_keys", as: Data.self)),
                                      expiresMilliseconds: try row.decode(column: "expires_ms", as: Int64.self), lastCounter: try row.decode(column: "last_counter", as: Int64.self))
        }
    }

    /// Takes a message's counter on its own, for messages whose work is not one write.
    /// - Throws: ``SessionRefusal``.
    public func advanceSession(_ advance: SessionAdvance) async throws {
        try await write { try await $0.advanceSession(advance) }
    }

    /// Forgets sessions that ended more than `keptFor` ago. Their nonces go with them, so
    /// `keptFor` must cover the window in which a handshake's time is accepted.
    @discardableResult
    public func removeEndedAgentSessions(before: Int64) async throws -> Int {
        try await write { transaction in
            try await transaction.database.raw("DELETE FROM agent_sessions WHERE expires_ms < \(bind: before) RETURNING device_id").all().count
        }
    }

    /// Sessions kept, for metrics and tests.
    public func agentSessionCount(now: Int64) async throws -> Int {
        try await read { db in
            try await db.raw("SELECT COUNT(*) AS n FROM agent_sessions WHERE expires_ms > \(bind: now)").first()?.decode(column: "n", as: Int.self) ?? 0
        }
    }
}

extension Transaction {
    /// Takes a message's counter: it must be above the last one accepted, the session open,
    /// and its device neither revoked nor wiped.
    /// - Throws: ``SessionRefusal``.
    public func advanceSession(_ advance: SessionAdvance) async throws {
        guard advance.counter <= UInt64(Int64.max) else { throw SessionRefusal.replayed }
        let counter = Int64(advance.counter)
        let taken = try await database.raw("""
            UPDATE agent_sessions SET last_counter = \(bind: counter)
            WHERE id = \(bind: Data(advance.sessionID)) AND last_counter < \(bind: counter) AND expires_ms > \(bind: advance.nowMilliseconds)
            AND device_id IN (SELECT id FROM devices WHERE state NOT IN ('revoked', 'wiped'))
            RETURNING device_id
            """).all()
        guard taken.isEmpty else { return }
        // Why not: the session is there with a counter as high (a replay), or it is gone.
        let exists = try await database.raw("""
            SELECT 1 AS one FROM agent_sessions WHERE id = \(bind: Data(advance.sessionID)) AND expires_ms > \(bind: advance.nowMilliseconds)
            AND device_id IN (SELECT id FROM devices WHERE state NOT IN ('revoked', 'wiped'))
            """).first()
        throw exists == nil ? SessionRefusal.ended : SessionRefusal.replayed
    }

    /// Ends a device's sessions (revoked, wiped, deleted), on every manager of the site.
    public func endAgentSessions(ofDevice deviceID: String) async throws {
        try await database.raw("UPDATE agent_sessions SET expires_ms = 0 WHERE device_id = \(bind: deviceID)").run()
    }
}
