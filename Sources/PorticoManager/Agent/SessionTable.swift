import NIOConcurrencyHelpers
import PorticoProtocol

/// Open agent conversations and the handshake nonces seen recently.
///
/// A message is accepted only with a counter above the last accepted one in its session,
/// so a replayed or reordered message is refused; a session past its expiry is refused and
/// the agent opens a new one.
final class SessionTable: Sendable {
    struct Session: Sendable {
        let deviceID: String
        let keys: SessionKeys
        let expiresMilliseconds: Int64
        var lastCounter: UInt64
    }

    private struct State {
        var sessions: [[UInt8]: Session] = [:]
        /// Handshake nonces with the time they stop mattering (the timestamp window).
        var nonces: [String: Int64] = [:]
    }
    private let state = NIOLockedValueBox(State())

    func add(_ session: Session) {
        state.withLockedValue { $0.sessions[session.keys.sessionID] = session }
    }

    /// Remembers a handshake nonce until `until`; false when it was seen already.
    func claimNonce(_ nonce: String, until: Int64, now: Int64) -> Bool {
        state.withLockedValue { state in
            if state.nonces.count > 100_000 { state.nonces = state.nonces.filter { $0.value > now } }
            if let existing = state.nonces[nonce], existing > now { return false }
            state.nonces[nonce] = until
            return true
        }
    }

    /// The session a message names, before its envelope is opened.
    /// - Throws: ``ProtocolError`` for an unknown or expired session.
    func session(_ sessionID: [UInt8], now: Int64) throws -> Session {
        try state.withLockedValue { state in
            guard let session = state.sessions[sessionID] else { throw ProtocolError(.unknownSession, "no such session") }
            guard now < session.expiresMilliseconds else {
                state.sessions[sessionID] = nil
                throw ProtocolError(.sessionExpired, "the session expired; open a new one")
            }
            return session
        }
    }

    /// Takes the counter of a message that opened under the session's keys. Only such a
    /// message may move the counter: one that does not authenticate (tampered, or forged by
    /// someone who only saw the session id) leaves it where it was.
    /// - Throws: ``ProtocolError`` for a session gone meanwhile and a counter not above the last.
    func accept(sessionID: [UInt8], counter: UInt64) throws {
        try state.withLockedValue { state in
            guard var session = state.sessions[sessionID] else { throw ProtocolError(.unknownSession, "no such session") }
            guard counter > session.lastCounter else {
                throw ProtocolError(.replayed, "message counter \(counter) is not above \(session.lastCounter): replayed or reordered")
            }
            session.lastCounter = counter
            state.sessions[sessionID] = session
        }
    }

    /// Forgets the sessions of a device (revoked, wiped) and expired ones.
    func removeSessions(ofDevice deviceID: String) {
        state.withLockedValue { $0.sessions = $0.sessions.filter { $0.value.deviceID != deviceID } }
    }

    var count: Int { state.withLockedValue { $0.sessions.count } }
}
