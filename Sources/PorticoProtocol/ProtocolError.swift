/// Why a protocol step failed. `code` is what goes on the wire; `message` is for logs.
public struct ProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable, Codable {
        case malformed = "malformed"
        case badSignature = "bad_signature"
        case notPinned = "not_pinned"
        case unknownDevice = "unknown_device"
        case deviceRevoked = "device_revoked"
        case enrollmentRefused = "enrollment_refused"
        case staleTimestamp = "stale_timestamp"
        case replayed = "replayed"
        case sessionExpired = "session_expired"
        case unknownSession = "unknown_session"
        case decryptionFailed = "decryption_failed"
        case overloaded = "overloaded"
        case unknownCommand = "unknown_command"
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}
