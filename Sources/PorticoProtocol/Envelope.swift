import Crypto
import Foundation

/// The keys of one conversation, derived from the handshake. Each direction has its own key.
public struct SessionKeys: Sendable {
    public let sessionID: [UInt8]
    let agentToManager: SymmetricKey
    let managerToAgent: SymmetricKey

    /// Derives both keys from the ephemeral agreement and the handshake transcript.
    public static func derive(sharedSecret: SharedSecret, sessionID: [UInt8], transcript: [UInt8]) -> SessionKeys {
        let material = sharedSecret.hkdfDerivedSymmetricKey(using: SHA256.self, salt: sessionID, sharedInfo: Array("portico-session-v1".utf8) + transcript, outputByteCount: 64)
        let bytes = material.withUnsafeBytes { Array($0) }
        return SessionKeys(sessionID: sessionID, agentToManager: SymmetricKey(data: bytes[0..<32]), managerToAgent: SymmetricKey(data: bytes[32..<64]))
    }

    private init(sessionID: [UInt8], agentToManager: SymmetricKey, managerToAgent: SymmetricKey) {
        self.sessionID = sessionID
        self.agentToManager = agentToManager
        self.managerToAgent = managerToAgent
    }

    /// Both keys, 64 bytes, for a manager to keep the session where another one can continue it.
    public var material: [UInt8] {
        agentToManager.withUnsafeBytes { Array($0) } + managerToAgent.withUnsafeBytes { Array($0) }
    }

    /// The keys kept as ``material``; nil when it is not 64 bytes.
    public init?(sessionID: [UInt8], material: [UInt8]) {
        guard material.count == 64 else { return nil }
        self.init(sessionID: sessionID, agentToManager: SymmetricKey(data: material[0..<32]), managerToAgent: SymmetricKey(data: material[32..<64]))
    }
}

/// Which way a message goes; part of the nonce, so the two directions never share one.
public enum Direction: UInt32, Sendable {
    case agentToManager = 1
    case managerToAgent = 2
}

/// A message sealed for a session:
/// `"PTC1"` | session id (16 bytes) | counter (8 bytes, big-endian) | AES-256-GCM ciphertext | tag (16).
/// The nonce is the direction (4 bytes, big-endian) followed by the counter; the header is
/// the additional authenticated data.
public enum Envelope {
    public static let magic: [UInt8] = Array("PTC1".utf8)
    public static let headerLength = 4 + 16 + 8
    /// The largest plaintext a message may carry.
    public static let maxPlaintext = 1 << 20

    public static func seal(_ plaintext: [UInt8], keys: SessionKeys, counter: UInt64, direction: Direction) throws -> [UInt8] {
        var header = magic + keys.sessionID
        withUnsafeBytes(of: counter.bigEndian) { header += $0 }
        let box = try AES.GCM.seal(plaintext, using: key(keys, direction), nonce: nonce(direction, counter), authenticating: header)
        return header + box.ciphertext + box.tag
    }

    /// The session id and counter of an envelope, read before its session's keys are known.
    public static func header(of message: [UInt8]) throws -> (sessionID: [UInt8], counter: UInt64) {
        guard message.count >= headerLength + 16, Array(message.prefix(4)) == magic else {
            throw ProtocolError(.malformed, "not a sealed message")
        }
        let counter = message[20..<28].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return (Array(message[4..<20]), counter)
    }

    public static func open(_ message: [UInt8], keys: SessionKeys, direction: Direction) throws -> (counter: UInt64, plaintext: [UInt8]) {
        let (sessionID, counter) = try header(of: message)
        guard sessionID == keys.sessionID else { throw ProtocolError(.unknownSession, "the message is for another session") }
        let body = message[headerLength...]
        do {
            let box = try AES.GCM.SealedBox(nonce: nonce(direction, counter), ciphertext: body.dropLast(16), tag: body.suffix(16))
            return (counter, Array(try AES.GCM.open(box, using: key(keys, direction), authenticating: message[0..<headerLength])))
        } catch {
            throw ProtocolError(.decryptionFailed, "the message was altered or sealed with another key")
        }
    }

    private static func key(_ keys: SessionKeys, _ direction: Direction) -> SymmetricKey {
        direction == .agentToManager ? keys.agentToManager : keys.managerToAgent
    }

    private static func nonce(_ direction: Direction, _ counter: UInt64) throws -> AES.GCM.Nonce {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: direction.rawValue.bigEndian) { bytes += $0 }
        withUnsafeBytes(of: counter.bigEndian) { bytes += $0 }
        return try AES.GCM.Nonce(data: bytes)
    }
}
