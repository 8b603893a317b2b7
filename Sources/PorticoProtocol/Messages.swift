import Foundation

/// `GET /agent/v1/hello`: the manager's agreement key, signed by its identity key, and the
/// certificate that signed it (which the agent must have pinned).
public struct Hello: Codable, Sendable, Equatable {
    public var protocolVersion: Int
    public var site: String
    /// X25519 public key for sealing enrollment requests, base64url.
    public var agreementKey: String
    /// Manager signature over ``transcript``.
    public var signature: String
    /// The certificate (PEM) whose key made the signature.
    public var certificate: String

    public init(protocolVersion: Int = 1, site: String, agreementKey: String, signature: String, certificate: String) {
        self.protocolVersion = protocolVersion
        self.site = site
        self.agreementKey = agreementKey
        self.signature = signature
        self.certificate = certificate
    }

    public var transcript: [UInt8] { Array("portico-hello-v1|\(site)|\(agreementKey)".utf8) }

    enum CodingKeys: String, CodingKey {
        case protocolVersion = "protocol", site, agreementKey = "agreement_key", signature, certificate
    }
}

/// The plaintext of `POST /agent/v1/enroll`, sealed to the manager's agreement key
/// (context `"portico-enroll-v1"`).
public struct EnrollRequest: Codable, Sendable, Equatable {
    /// `<token id>.<secret>` from `portico token create`, or nil with operator credentials.
    public var token: String?
    public var operatorName: String?
    public var operatorPassword: String?
    /// Raw Ed25519 and X25519 public keys, base64url.
    public var signingKey: String
    public var agreementKey: String
    public var hostname: String
    public var os: String
    public var timestampMilliseconds: Int64
    /// Ed25519 signature by the device's signing key over ``transcript``: proof of the key.
    public var signature: String

    public init(token: String?, operatorName: String? = nil, operatorPassword: String? = nil, signingKey: String, agreementKey: String, hostname: String, os: String, timestampMilliseconds: Int64, signature: String = "") {
        self.token = token
        self.operatorName = operatorName
        self.operatorPassword = operatorPassword
        self.signingKey = signingKey
        self.agreementKey = agreementKey
        self.hostname = hostname
        self.os = os
        self.timestampMilliseconds = timestampMilliseconds
        self.signature = signature
    }

    public var transcript: [UInt8] {
        Array("portico-enroll-v1|\(signingKey)|\(agreementKey)|\(hostname)|\(os)|\(timestampMilliseconds)".utf8)
    }

    enum CodingKeys: String, CodingKey {
        case token, operatorName = "operator_name", operatorPassword = "operator_password", signingKey = "signing_key", agreementKey = "agreement_key"
        case hostname, os, timestampMilliseconds = "timestamp_ms", signature
    }
}

/// The answer to enrollment.
public struct EnrollResponse: Codable, Sendable, Equatable {
    public var deviceID: String
    public var checkInIntervalSeconds: Int
    /// The site policy key, sealed to the device's agreement key (context `"portico-site-key-v1"`).
    public var siteKey: SealedBox
    /// Manager signature over ``transcript``.
    public var signature: String

    public init(deviceID: String, checkInIntervalSeconds: Int, siteKey: SealedBox, signature: String = "") {
        self.deviceID = deviceID
        self.checkInIntervalSeconds = checkInIntervalSeconds
        self.siteKey = siteKey
        self.signature = signature
    }

    public func transcript(signingKey: String) -> [UInt8] {
        Array("portico-enrolled-v1|\(deviceID)|\(signingKey)|\(checkInIntervalSeconds)|\(siteKey.ephemeral)|\(siteKey.nonce)|\(siteKey.ciphertext)".utf8)
    }

    enum CodingKeys: String, CodingKey {
        case deviceID = "device_id", checkInIntervalSeconds = "checkin_interval_s", siteKey = "site_key", signature
    }
}

/// `POST /agent/v1/session`: opens a conversation.
public struct SessionRequest: Codable, Sendable, Equatable {
    public var deviceID: String
    /// The agent's ephemeral X25519 public key, base64url.
    public var ephemeralKey: String
    public var timestampMilliseconds: Int64
    /// 16 random bytes, base64url; a nonce seen before is a replay.
    public var nonce: String
    /// Ed25519 signature by the device key over ``transcript``.
    public var signature: String

    public init(deviceID: String, ephemeralKey: String, timestampMilliseconds: Int64, nonce: String, signature: String = "") {
        self.deviceID = deviceID
        self.ephemeralKey = ephemeralKey
        self.timestampMilliseconds = timestampMilliseconds
        self.nonce = nonce
        self.signature = signature
    }

    public var transcript: [UInt8] { Array("portico-session-v1|\(deviceID)|\(ephemeralKey)|\(timestampMilliseconds)|\(nonce)".utf8) }

    enum CodingKeys: String, CodingKey {
        case deviceID = "device_id", ephemeralKey = "ephemeral_key", timestampMilliseconds = "timestamp_ms", nonce, signature
    }
}

/// The manager's half of the handshake.
public struct SessionResponse: Codable, Sendable, Equatable {
    public var sessionID: String
    public var ephemeralKey: String
    public var expiresMilliseconds: Int64
    /// The certificate (PEM) whose key signed; it must be pinned.
    public var certificate: String
    /// Manager signature over ``transcript(request:)``.
    public var signature: String

    public init(sessionID: String, ephemeralKey: String, expiresMilliseconds: Int64, certificate: String, signature: String = "") {
        self.sessionID = sessionID
        self.ephemeralKey = ephemeralKey
        self.expiresMilliseconds = expiresMilliseconds
        self.certificate = certificate
        self.signature = signature
    }

    /// Binds the answer to the request it answers (its nonce and ephemeral key).
    public func transcript(request: SessionRequest) -> [UInt8] {
        Array("portico-session-accept-v1|\(sessionID)|\(request.deviceID)|\(request.ephemeralKey)|\(request.nonce)|\(ephemeralKey)|\(expiresMilliseconds)".utf8)
    }

    enum CodingKeys: String, CodingKey {
        case sessionID = "session_id", ephemeralKey = "ephemeral_key", expiresMilliseconds = "expires_ms", certificate, signature
    }
}

/// What an agent sends inside a session.
public enum AgentMessage: Codable, Sendable, Equatable {
    case checkIn(CheckInRequest)
    case fetchPolicy
    case events([AgentEvent])
    case commandResult(CommandResult)
    /// A check-in the manager may hold until it has something for the device (push): a
    /// command, new policies, a certificate to pin, or its hold time has passed. Answered
    /// with a check-in reply.
    case wait(CheckInRequest)
    /// A user signing in on the device; answered with a ``UserSignInResult``.
    case userSignIn(UserSignInRequest)
    /// A user setting a new password; answered with a ``UserSignInResult``.
    case userPasswordChange(UserPasswordChange)

    enum CodingKeys: String, CodingKey { case type, checkin, events, result, wait, signIn = "sign_in", change }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch try container.decode(String.self, forKey: .type) {
        case "checkin": self = .checkIn(try container.decode(CheckInRequest.self, forKey: .checkin))
        case "policy_fetch": self = .fetchPolicy
        case "events": self = .events(try container.decode([AgentEvent].self, forKey: .events))
        case "command_result": self = .commandResult(try container.decode(CommandResult.self, forKey: .result))
        case "wait": self = .wait(try container.decode(CheckInRequest.self, forKey: .wait))
        case "user_sign_in": self = .userSignIn(try container.decode(UserSignInRequest.self, forKey: .signIn))
        case "user_password_change": self = .userPasswordChange(try container.decode(UserPasswordChange.self, forKey: .change))
        case let other: throw ProtocolError(.malformed, "unknown message type \(other)")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .checkIn(let request): try container.encode("checkin", forKey: .type); try container.encode(request, forKey: .checkin)
        case .fetchPolicy: try container.encode("policy_fetch", forKey: .type)
        case .events(let events): try container.encode("events", forKey: .type); try container.encode(events, forKey: .events)
        case .commandResult(let result): try container.encode("command_result", forKey: .type); try container.encode(result, forKey: .result)
        case .wait(let request): try container.encode("wait", forKey: .type); try container.encode(request, forKey: .wait)
        case .userSignIn(let request): try container.encode("user_sign_in", forKey: .type); try container.encode(request, forKey: .signIn)
        case .userPasswordChange(let change): try container.encode("user_password_change", forKey: .type); try container.encode(change, forKey: .change)
        }
    }
}

public struct CheckInRequest: Codable, Sendable, Equatable {
    /// The policy serial the agent holds.
    public var policySerial: Int64
    /// Free-form status (agent version, health), stored as given.
    public var status: String
    /// SHA-256 fingerprints (hex) of the manager certificates the agent has pinned, so the
    /// manager can tell who has taken in a rotation.
    public var pinnedFingerprints: [String]

    public init(policySerial: Int64, status: String, pinnedFingerprints: [String] = []) {
        self.policySerial = policySerial
        self.status = status
        self.pinnedFingerprints = pinnedFingerprints
    }

    enum CodingKeys: String, CodingKey { case policySerial = "policy_serial", status, pinnedFingerprints = "pinned" }
}

/// An event as an agent reports it; `id` is the agent's own, unique per device.
public struct AgentEvent: Codable, Sendable, Equatable {
    public var id: String
    public var kind: String
    public var occurredMilliseconds: Int64
    public var body: String

    public init(id: String, kind: String, occurredMilliseconds: Int64, body: String) {
        self.id = id
        self.kind = kind
        self.occurredMilliseconds = occurredMilliseconds
        self.body = body
    }

    enum CodingKeys: String, CodingKey { case id, kind, occurredMilliseconds = "occurred_ms", body }
}

public struct CommandResult: Codable, Sendable, Equatable {
    public var commandID: String
    public var succeeded: Bool
    public var detail: String

    public init(commandID: String, succeeded: Bool, detail: String) {
        self.commandID = commandID
        self.succeeded = succeeded
        self.detail = detail
    }

    enum CodingKeys: String, CodingKey { case commandID = "command_id", succeeded, detail }
}

/// What the manager answers inside a session.
public enum ManagerMessage: Codable, Sendable, Equatable {
    case checkIn(CheckInReply)
    case policy(PolicyBundle)
    case eventsAccepted([String])
    case ok
    /// A message that opened but that the manager refuses (an unknown command id, a batch over
    /// the limit): sealed like any answer, so the agent knows the manager sent it.
    case error(ProtocolError)
    /// The answer to a user's sign-in or password change.
    case user(UserSignInResult)

    enum CodingKeys: String, CodingKey { case type, checkin, policy, accepted, error, message, user }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch try container.decode(String.self, forKey: .type) {
        case "checkin_reply": self = .checkIn(try container.decode(CheckInReply.self, forKey: .checkin))
        case "policy": self = .policy(try container.decode(PolicyBundle.self, forKey: .policy))
        case "events_ack": self = .eventsAccepted(try container.decode([String].self, forKey: .accepted))
        case "ok": self = .ok
        case "user_result": self = .user(try container.decode(UserSignInResult.self, forKey: .user))
        case "error":
            let code = try container.decode(String.self, forKey: .error)
            let message = try container.decodeIfPresent(String.self, forKey: .message) ?? ""
            // A code this agent does not know yet is still a refusal.
            self = .error(ProtocolError(ProtocolError.Code(rawValue: code) ?? .malformed, message))
        case let other: throw ProtocolError(.malformed, "unknown message type \(other)")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .error(let error):
            try container.encode("error", forKey: .type)
            try container.encode(error.code.rawValue, forKey: .error)
            try container.encode(error.message, forKey: .message)
        case .checkIn(let reply): try container.encode("checkin_reply", forKey: .type); try container.encode(reply, forKey: .checkin)
        case .policy(let bundle): try container.encode("policy", forKey: .type); try container.encode(bundle, forKey: .policy)
        case .eventsAccepted(let ids): try container.encode("events_ack", forKey: .type); try container.encode(ids, forKey: .accepted)
        case .ok: try container.encode("ok", forKey: .type)
        case .user(let result): try container.encode("user_result", forKey: .type); try container.encode(result, forKey: .user)
        }
    }
}

public struct CheckInReply: Codable, Sendable, Equatable {
    /// Whether the site's policies moved since the serial the agent holds.
    public var policyChanged: Bool
    public var policySerial: Int64
    public var commands: [DeviceCommand]
    /// When to check in next, jitter included.
    public var nextCheckInSeconds: Int
    /// The manager is loaded: the agent should stretch its interval.
    public var backOff: Bool
    /// A certificate the manager will switch to (PEM); the agent pins it alongside the old one.
    public var nextCertificate: String?
    /// When that certificate is CA-signed: its issuers up to the root (PEM), for TLS only.
    public var nextAuthorities: [String]?
    /// The manager takes `wait` messages (push): how long it holds one, at most. Absent
    /// when push is off; the agent then only checks in at the interval.
    public var push: PushOffer?

    public init(policyChanged: Bool, policySerial: Int64, commands: [DeviceCommand], nextCheckInSeconds: Int, backOff: Bool = false, nextCertificate: String? = nil,
                nextAuthorities: [String]? = nil, push: PushOffer? = nil) {
        self.policyChanged = policyChanged
        self.policySerial = policySerial
        self.commands = commands
        self.nextCheckInSeconds = nextCheckInSeconds
        self.backOff = backOff
        self.nextCertificate = nextCertificate
        self.nextAuthorities = nextAuthorities
        self.push = push
    }

    enum CodingKeys: String, CodingKey {
        case policyChanged = "policy_changed", policySerial = "policy_serial", commands, nextCheckInSeconds = "next_checkin_s", backOff = "back_off", nextCertificate = "next_certificate"
        case nextAuthorities = "next_authorities", push
    }
}

/// What a manager that takes `wait` messages tells agents in each check-in reply.
public struct PushOffer: Codable, Sendable, Equatable {
    /// The longest the manager holds a wait before answering it with nothing new.
    public var holdSeconds: Int

    public init(holdSeconds: Int) {
        self.holdSeconds = holdSeconds
    }

    enum CodingKeys: String, CodingKey { case holdSeconds = "hold_s" }
}

public struct DeviceCommand: Codable, Sendable, Equatable {
    public var id: String
    /// `lock`, `unlock`, `wipe`, `remote_help`, `password_reset`.
    public var kind: String
    public var arguments: String

    public init(id: String, kind: String, arguments: String) {
        self.id = id
        self.kind = kind
        self.arguments = arguments
    }
}
