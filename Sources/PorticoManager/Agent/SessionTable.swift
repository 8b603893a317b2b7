import NIOConcurrencyHelpers
import PorticoProtocol
import PorticoStore

/// Agent conversations. Each session is kept in the database, its keys sealed with the site's
/// secrets key, so that any manager of the site continues it when a load balancer sends the
/// agent elsewhere; this table caches the sessions this manager has seen.
///
/// The database decides whether a message's counter is new: each message takes it in the
/// transaction of what it does (a check-in, in its one statement), so a message replayed to
/// this manager or to another one is refused, and a handshake nonce seen by any manager is
/// refused again. A device has one session at a time: opening one ends the one before, at
/// every manager. The counter cached here only turns away a replay this manager already saw
/// without asking the database.
final class SessionTable: Sendable {
    struct Session: Sendable {
        let deviceID: String
        let keys: SessionKeys
        let expiresMilliseconds: Int64
        var lastCounter: UInt64
    }

    private struct State {
        var sessions: [[UInt8]: Session] = [:]
        var lastSweep: Int64 = 0
    }
    private let state = NIOLockedValueBox(State())
    private let operations: ManagerOperations
    private let store: Store
    private let secrets: SecretsKey
    /// How long an ended session (and its handshake nonce) is kept: the window in which a
    /// handshake's time is accepted.
    private let keepEnded: Int64

    init(store: Store, secrets: SecretsKey, keepEndedMilliseconds: Int64) {
        self.store = store
        self.operations = ManagerOperations(store: store, agent: nil)
        self.secrets = secrets
        self.keepEnded = keepEndedMilliseconds
    }

    /// Records a new session.
    /// - Throws: ``ProtocolError`` `.replayed` when its handshake nonce was seen before.
    func open(_ session: Session, nonce: String, now: Int64) async throws {
        let sealed = try secrets.seal(session.keys.material, name: Self.sealingName(session.keys.sessionID))
        let record = AgentSessionRecord(id: session.keys.sessionID, deviceID: session.deviceID, sealedKeys: sealed.sealed, expiresMilliseconds: session.expiresMilliseconds)
        guard try await operations.openAgentSession(record, nonce: nonce, now: now) else { throw ProtocolError(.replayed, "this handshake was seen before") }
        let sweep = state.withLockedValue { state -> Bool in
            state.sessions[session.keys.sessionID] = session
            guard now - state.lastSweep > 60_000 else { return false }
            state.lastSweep = now
            state.sessions = state.sessions.filter { $0.value.expiresMilliseconds > now }
            return true
        }
        if sweep {
            let before = now - keepEnded
            Task { [operations] in _ = try? await operations.removeEndedAgentSessions(before: before) }
        }
    }

    /// The session a message names, before its envelope is opened: from this manager's
    /// cache, or from the database when another manager opened it.
    /// - Throws: ``ProtocolError`` for an unknown or expired session.
    func session(_ sessionID: [UInt8], now: Int64) async throws -> Session {
        let cached = try state.withLockedValue { state -> Session? in
            guard let session = state.sessions[sessionID] else { return nil }
            guard now < session.expiresMilliseconds else {
                state.sessions[sessionID] = nil
                throw ProtocolError(.sessionExpired, "the session expired; open a new one")
            }
            return session
        }
        if let cached { return cached }
        guard let record = try await store.agentSession(id: sessionID) else { throw ProtocolError(.unknownSession, "no such session") }
        guard now < record.expiresMilliseconds else { throw ProtocolError(.sessionExpired, "the session ended; open a new one") }
        let material: [UInt8]
        do { material = try secrets.open(SealedSecret(sealed: record.sealedKeys, keyID: secrets.id), name: Self.sealingName(sessionID)) } catch {
            throw ProtocolError(.unknownSession, "the session's keys do not open with this manager's secrets key")
        }
        guard let keys = SessionKeys(sessionID: sessionID, material: material) else { throw ProtocolError(.unknownSession, "the session's keys are not well formed") }
        let session = Session(deviceID: record.deviceID, keys: keys, expiresMilliseconds: record.expiresMilliseconds, lastCounter: 0)
        state.withLockedValue { $0.sessions[sessionID] = session }
        return session
    }

    /// Notes a counter the database took, so that its replay to this manager is refused at once.
    func taken(sessionID: [UInt8], counter: UInt64) {
        state.withLockedValue { state in
            guard var session = state.sessions[sessionID], counter > session.lastCounter else { return }
            session.lastCounter = counter
            state.sessions[sessionID] = session
        }
    }

    /// Forgets a session the database no longer has.
    func forget(_ sessionID: [UInt8]) {
        state.withLockedValue { $0.sessions[sessionID] = nil }
    }

    /// Forgets a device's cached sessions (revoked, wiped); the database ends them for every manager.
    func removeSessions(ofDevice deviceID: String) {
        state.withLockedValue { $0.sessions = $0.sessions.filter { $0.value.deviceID != deviceID } }
    }

    /// Sessions this manager has cached.
    var count: Int { state.withLockedValue { $0.sessions.count } }

    /// Session keys are sealed under their session's id, so that sealed keys moved to another
    /// session do not open.
    private static func sealingName(_ sessionID: [UInt8]) -> String {
        "session:" + Base64URL.encode(sessionID)
    }
}

extension SessionRefusal {
    /// How the agent is told.
    var protocolError: ProtocolError {
        switch self {
        case .replayed: ProtocolError(.replayed, "this message's counter was taken already: replayed or reordered")
        case .ended: ProtocolError(.unknownSession, "the session ended (a newer one replaced it, or its device was revoked); open a new one")
        }
    }
}
