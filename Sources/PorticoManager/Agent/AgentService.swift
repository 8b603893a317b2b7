import Crypto
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore
import Prometheus
import SwiftASN1
import X509

/// The client role: agents enroll, open sessions, check in, fetch policies, report events
/// and command results, all under `/agent/v1/`. Mounted on the `client` and `client_plain`
/// listeners by a route to the service `agent`.
///
/// Everything after enrollment is sealed end to end by session keys, so the plain listener
/// and a TLS-terminating proxy in front carry only ciphertext they cannot alter unseen.
public final class AgentService: HTTPService {
    public struct Configuration: Sendable {
        /// How long a session's keys are good for.
        public var sessionLifetimeMilliseconds: Int64 = 15 * 60_000
        /// How far a handshake's timestamp may be from the manager's clock.
        public var clockSkewMilliseconds: Int64 = 5 * 60_000
        /// The check-in interval handed to agents, before jitter.
        public var checkInIntervalSeconds: Int = 300
        /// Above this many requests in flight, agents are asked to back off.
        public var backOffAbove: Int = 5_000
        /// Operator enrollments: failed attempts in a row before the account locks, and for how long.
        public var lockAfterFailures: Int = 5
        public var lockoutMilliseconds: Int64 = 15 * 60_000
        /// Push: whether agents may hold a `wait`, for how long at most, and how many held
        /// waits a fan-out (policies published to everyone) answers per second.
        public var pushEnabled = true
        public var pushHoldSeconds = 45
        public var pushWakeRate = 5_000
        /// This manager's name in the site, recorded on the devices whose waits it holds.
        public var managerName = ProcessInfo.processInfo.hostName

        public init() {}
    }

    private let store: Store
    private let keys: ManagerKeys
    private let identity: @Sendable () -> ServerIdentity
    private let configuration: Configuration
    private let sessions: SessionTable
    private let logger: Logger
    private let nextCertificate = NIOLockedValueBox<(pem: String, authorities: [String])?>(nil)
    private let inFlight = NIOLockedValueBox(0)
    /// Signed policy bundles by what they hold and which identity signed them. Every device
    /// with the same policies gets the same bundle, so that a publication costs a signature
    /// per set of policies, not one per device that fetches it. Emptied when the serial moves.
    private let bundles = NIOLockedValueBox<(serial: Int64, byKey: [String: PolicyBundle])>((-1, [:]))
    private let authenticator: OperatorAuthenticator
    private let operations: ManagerOperations
    /// The waits this manager holds (push).
    public let push: PushHub
    /// Endpoint users' sign-ins and password changes, when the manager has users.
    private let users: UserSignIns?
    /// What agents did through this manager, for `/metrics`.
    private let counters: (checkIns: Counter?, enrollments: Counter?, events: Counter?)

    /// - Parameters:
    ///   - identity: the manager's current identity (certificate and signing key).
    ///   - secrets: the site's secrets key, which seals session keys in the database.
    ///   - metrics: where `/metrics` reads push's series.
    ///   - users: endpoint users' sign-ins (local users, and the directory's when there is one).
    public init(store: Store, keys: ManagerKeys, secrets: SecretsKey, identity: @escaping @Sendable () -> ServerIdentity, configuration: Configuration = Configuration(),
                users: UserSignIns? = nil, metrics: PrometheusCollectorRegistry? = nil, logger: Logger = Logger(label: "portico.agent")) {
        self.store = store
        self.users = users
        self.sessions = SessionTable(store: store, secrets: secrets, keepEndedMilliseconds: 2 * configuration.clockSkewMilliseconds)
        self.keys = keys
        self.identity = identity
        self.configuration = configuration
        self.logger = logger
        self.operations = ManagerOperations(store: store, agent: nil)
        self.authenticator = OperatorAuthenticator(store: store, policy: .init(lockAfterFailures: configuration.lockAfterFailures, lockoutMilliseconds: configuration.lockoutMilliseconds),
                                                   directory: users?.directory)
        self.push = PushHub(wakes: store.wakes, wakeRate: configuration.pushWakeRate, metrics: metrics)
        self.counters = (metrics?.makeCounter(descriptor: .portico("agent_checkins", unit: "total", help: "Check-ins (and waits) this manager answered")),
                         metrics?.makeCounter(descriptor: .portico("agent_enrollments", unit: "total", help: "Devices enrolled through this manager")),
                         metrics?.makeCounter(descriptor: .portico("agent_events", unit: "total", help: "Events agents reported to this manager, stored")))
        if configuration.pushEnabled {
            // Other managers sharing a PostgreSQL database wake the waits held here too.
            Task { [store] in await store.listenForChanges() }
        }
    }

    /// The certificate announced, if any.
    public var announcedCertificate: String? { nextCertificate.withLockedValue { $0?.pem } }

    /// Announces the certificate the manager will switch to; agents pin it at their next check-in.
    /// - Parameter authorities: for a CA-signed certificate, its issuers up to the root (PEM).
    public func announceNextCertificate(_ pem: String?, authorities: [String] = []) {
        nextCertificate.withLockedValue { $0 = pem.map { ($0, authorities) } }
        if pem != nil { push.wakeEveryDevice() }
    }

    /// Sessions this manager has cached, for metrics and tests.
    public var openSessions: Int { sessions.count }

    /// Forgets a device's cached sessions (after revoking or wiping it; the database ends
    /// them for every manager of the site).
    public func endSessions(ofDevice deviceID: String) {
        sessions.removeSessions(ofDevice: deviceID)
    }

    public var routes: [ServiceRoute] {
        [
            ServiceRoute(.GET, "/agent/v1/hello") { [self] request in try await answer(request, action: "device.request") { _ in try hello() } },
            ServiceRoute(.POST, "/agent/v1/enroll") { [self] request in
                try await answer(request, action: "device.enroll") { subject in try await enroll(request, subject: &subject) }
            },
            ServiceRoute(.POST, "/agent/v1/session") { [self] request in
                try await answer(request, action: "device.session") { subject in try await openSession(request, subject: &subject) }
            },
            ServiceRoute(.POST, "/agent/v1/message") { [self] request in
                try await answer(request, action: "device.message") { subject in try await message(request, subject: &subject) }
            },
        ]
    }

    public func refusal(_ refusal: RouteRefusal, for request: GatewayRequest) async -> GatewayResponse {
        switch refusal {
        case .notFound:
            return Self.problem(.notFound, ProtocolError(.malformed, "no agent endpoint \(request.method.rawValue) \(request.path)"))
        case .methodNotAllowed(let allow):
            var response = Self.problem(.methodNotAllowed, ProtocolError(.malformed, "\(request.method.rawValue) is not allowed at \(request.path); use \(allow)"))
            response.headers.add(name: "allow", value: allow)
            return response
        case .failed:
            return Self.problem(.internalServerError, ProtocolError(.malformed, "the manager failed to answer"))
        }
    }

    /// Runs an agent endpoint, turning its refusals into protocol errors, logged and audited.
    private func answer(_ request: GatewayRequest, action: String, _ body: (inout String) async throws -> GatewayResponse) async throws -> GatewayResponse {
        inFlight.withLockedValue { $0 += 1 }
        defer { inFlight.withLockedValue { $0 -= 1 } }
        // Who a refusal is charged to in the audit log: the device once it is known (claimed
        // by a handshake, or proven by a session), otherwise the caller's address alone.
        var subject = "agent"
        do {
            return try await body(&subject)
        } catch let refusal as AuditedRefusal {
            logger.notice("agent request refused", metadata: ["path": "\(request.path)", "client": "\(request.clientAddress?.ipAddress ?? "-")", "reason": "\(refusal.error)"])
            return Self.problem(Self.status(for: refusal.error.code), refusal.error)
        } catch let error as ProtocolError {
            await refused(action, subject: subject, request: request, error)
            return Self.problem(Self.status(for: error.code), error)
        } catch let error as StoreError where error.kind == .invalidValue {
            let malformed = ProtocolError(.malformed, error.message)
            await refused(action, subject: subject, request: request, malformed)
            return Self.problem(.badRequest, malformed)
        } catch let error as StoreError where error.kind == .unavailable {
            // The database is down or restarting: the agent is told to come back later,
            // at once, rather than held until it gives up.
            logger.warning("agent request not answered: the database is unavailable", metadata: ["path": "\(request.path)", "error": "\(error)"])
            var response = Self.problem(.serviceUnavailable, ProtocolError(.overloaded, "the manager cannot reach its database; try again later"))
            response.headers.add(name: "retry-after", value: "30")
            return response
        }
    }

    /// A refusal whose audit entry was written where it was decided (token and operator
    /// checks, which record more than the code).
    private struct AuditedRefusal: Error {
        let error: ProtocolError
    }

    /// Logs and audits a refused agent request with its reason.
    private func refused(_ action: String, subject: String, request: GatewayRequest, _ error: ProtocolError) async {
        let source = request.clientAddress?.ipAddress ?? "-"
        logger.notice("agent request refused", metadata: ["path": "\(request.path)", "client": "\(source)", "reason": "\(error)"])
        await operations.refused(AuditEntry(actor: subject, action: action, target: subject, source: source, result: "refused", detail: error.description))
    }

    // MARK: - Endpoints

    private func hello() throws -> GatewayResponse {
        let current = identity()
        var hello = Hello(site: store.siteID, agreementKey: Base64URL.encode(keys.agreement.publicKey.rawRepresentation), signature: "", certificate: current.certificatePEM)
        hello.signature = Base64URL.encode(try ManagerSignature.sign(hello.transcript, with: current.signingKey))
        return try Self.json(hello)
    }

    private func enroll(_ request: GatewayRequest, subject: inout String) async throws -> GatewayResponse {
        let sealed: SealedBox = try Self.decode(request.body)
        let plaintext = try sealed.open(with: keys.agreement, context: "portico-enroll-v1")
        let enrollment: EnrollRequest
        do { enrollment = try JSONDecoder().decode(EnrollRequest.self, from: Data(plaintext)) } catch { throw ProtocolError(.malformed, "the enrollment request is not valid JSON") }
        guard let signingKeyBytes = Base64URL.decode(enrollment.signingKey), let agreementKeyBytes = Base64URL.decode(enrollment.agreementKey),
              let signingKey = try? Curve25519.Signing.PublicKey(rawRepresentation: signingKeyBytes),
              let agreementKey = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: agreementKeyBytes),
              let signature = Base64URL.decode(enrollment.signature)
        else { throw ProtocolError(.malformed, "the enrollment request's keys or signature are not well formed") }
        guard signingKey.isValidSignature(signature, for: enrollment.transcript) else { throw ProtocolError(.badSignature, "the enrollment request is not signed by its signing key") }
        let deviceID = DeviceID.derive(fromSigningKey: signingKeyBytes)
        subject = "device:" + deviceID
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        guard abs(now - enrollment.timestampMilliseconds) <= configuration.clockSkewMilliseconds else { throw ProtocolError(.staleTimestamp, "the enrollment request's time is too far from the manager's") }

        if let existing = try await store.device(id: deviceID) {
            // The same key enrolling again (a lost answer, a retry): answer again, if it may.
            guard existing.state != .revoked && existing.state != .wiped else { throw ProtocolError(.deviceRevoked, "this device was revoked") }
        } else {
            var groupID: String? = nil
            if let token = enrollment.token {
                let parts = token.split(separator: ".", maxSplits: 1)
                guard parts.count == 2, let secret = Base64URL.decode(String(parts[1])) else { throw ProtocolError(.enrollmentRefused, "the enrollment token is not well formed") }
                do {
                    groupID = try await operations.consumeEnrollmentToken(id: String(parts[0]), secret: secret, deviceID: deviceID, source: request.clientAddress?.ipAddress ?? "-", now: now).groupID
                } catch let refusal as EnrollmentRefusal {
                    // Only a holder of the right secret learns why; anyone else cannot tell an
                    // unknown token from a wrong secret. The audit log has the reason either way.
                    switch refusal {
                    case .unknown, .wrongSecret: throw AuditedRefusal(error: ProtocolError(.enrollmentRefused, "the enrollment token was not accepted"))
                    case .expired: throw AuditedRefusal(error: ProtocolError(.enrollmentRefused, "the enrollment token has expired"))
                    case .revoked: throw AuditedRefusal(error: ProtocolError(.enrollmentRefused, "the enrollment token was revoked"))
                    case .usedUp: throw AuditedRefusal(error: ProtocolError(.enrollmentRefused, "the enrollment token has been used as often as it allows"))
                    }
                }
            } else if let name = enrollment.operatorName, let password = enrollment.operatorPassword {
                try await checkOperator(name: name, password: password, deviceID: deviceID, source: request.clientAddress?.ipAddress ?? "-", now: now)
            } else {
                throw ProtocolError(.enrollmentRefused, "enrollment needs a token or operator credentials")
            }
            let device = DeviceRecord(id: deviceID, signingKey: signingKeyBytes, agreementKey: agreementKeyBytes, hostname: enrollment.hostname, os: enrollment.os)
            try await operations.enrollDevice(device, group: groupID, source: request.clientAddress?.ipAddress ?? "-")
            logger.info("device enrolled", metadata: ["device": "\(deviceID)", "hostname": "\(enrollment.hostname)"])
            counters.enrollments?.increment()
        }
        let siteKeyBytes = keys.siteKey.withUnsafeBytes { Array($0) }
        var response = EnrollResponse(
            deviceID: deviceID, checkInIntervalSeconds: configuration.checkInIntervalSeconds,
            siteKey: try SealedBox.seal(siteKeyBytes, to: agreementKey, context: "portico-site-key-v1"))
        response.signature = Base64URL.encode(try ManagerSignature.sign(response.transcript(signingKey: enrollment.signingKey), with: identity().signingKey))
        return try Self.json(response)
    }

    /// Operators who may enroll devices: admins and operators, not locked out or disabled.
    /// Failures count towards the account's lockout and are audited.
    private func checkOperator(name: String, password: String, deviceID: String, source: String, now: Int64) async throws {
        let outcome = try await authenticator.authenticate(name: name, password: password, now: now)
        var refusal = outcome.auditReason
        if case .accepted(let account) = outcome {
            guard account.role == .auditor else { return }
            refusal = "role auditor may not enroll devices"
        }
        await operations.refused(AuditEntry(actor: "operator:\(name)", action: "device.enroll", target: deviceID, source: source, result: "refused", detail: refusal))
        if case .locked = outcome { throw AuditedRefusal(error: ProtocolError(.enrollmentRefused, "the operator account is locked")) }
        throw AuditedRefusal(error: ProtocolError(.enrollmentRefused, "the operator credentials were not accepted"))
    }

    private func openSession(_ request: GatewayRequest, subject: inout String) async throws -> GatewayResponse {
        let handshake: SessionRequest = try Self.decode(request.body)
        // Claimed until the signature verifies; the audit entry names it either way.
        if Self.isPlausibleDeviceID(handshake.deviceID) { subject = "device:" + handshake.deviceID }
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        guard abs(now - handshake.timestampMilliseconds) <= configuration.clockSkewMilliseconds else { throw ProtocolError(.staleTimestamp, "the handshake's time is too far from the manager's") }
        guard let device = try await store.device(id: handshake.deviceID) else { throw ProtocolError(.unknownDevice, "no such device") }
        guard device.state != .revoked && device.state != .wiped else { throw ProtocolError(.deviceRevoked, "this device was revoked") }
        guard let signingKey = try? Curve25519.Signing.PublicKey(rawRepresentation: device.signingKey),
              let signature = Base64URL.decode(handshake.signature), signingKey.isValidSignature(signature, for: handshake.transcript)
        else { throw ProtocolError(.badSignature, "the handshake is not signed by the device's key") }
        guard let ephemeralBytes = Base64URL.decode(handshake.ephemeralKey), let agentEphemeral = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: ephemeralBytes),
              let nonce = Base64URL.decode(handshake.nonce), nonce.count == 16
        else { throw ProtocolError(.malformed, "the handshake's ephemeral key or nonce is not well formed") }
        let ephemeral = Curve25519.KeyAgreement.PrivateKey()
        let sessionID = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let current = identity()
        var response = SessionResponse(sessionID: Base64URL.encode(sessionID), ephemeralKey: Base64URL.encode(ephemeral.publicKey.rawRepresentation),
                                       expiresMilliseconds: now + configuration.sessionLifetimeMilliseconds, certificate: current.certificatePEM)
        let transcript = response.transcript(request: handshake)
        response.signature = Base64URL.encode(try ManagerSignature.sign(transcript, with: current.signingKey))
        let keys = SessionKeys.derive(sharedSecret: try ephemeral.sharedSecretFromKeyAgreement(with: agentEphemeral), sessionID: sessionID, transcript: transcript)
        try await sessions.open(.init(deviceID: device.id, keys: keys, expiresMilliseconds: response.expiresMilliseconds, lastCounter: 0), nonce: handshake.nonce, now: now)
        return try Self.json(response)
    }

    private func message(_ request: GatewayRequest, subject: inout String) async throws -> GatewayResponse {
        let bytes = Array(request.body.readableBytesView)
        let (sessionID, counter) = try Envelope.header(of: bytes)
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let session = try await sessions.session(sessionID, now: now)
        subject = "device:" + session.deviceID
        // A counter this manager saw taken is refused without opening the message. Any other
        // is taken by the database, in the transaction of what the message does, once the
        // message authenticates under the session's keys: one that does not (tampered, or
        // forged by someone who only saw the session id) leaves it where it was, and one
        // another manager took already is refused there.
        guard counter > session.lastCounter else {
            throw ProtocolError(.replayed, "message counter \(counter) is not above \(session.lastCounter): replayed or reordered")
        }
        let (_, plaintext) = try Envelope.open(bytes, keys: session.keys, direction: .agentToManager)
        let advance = SessionAdvance(deviceID: session.deviceID, sessionID: sessionID, counter: counter)
        var taken = false
        var held: HeldWait?
        let reply: ManagerMessage
        do {
            // From here the message is the device's own: what is wrong with it is answered
            // sealed, once its counter is taken (a reply is never sealed twice with one counter).
            do {
                let message: AgentMessage
                do { message = try JSONDecoder().decode(AgentMessage.self, from: Data(plaintext)) } catch { throw ProtocolError(.malformed, "the message is not a known agent message") }
                reply = try await handle(message, deviceID: session.deviceID, source: request.clientAddress?.ipAddress ?? "-", now: now, advance: advance, taken: &taken, held: &held)
            } catch let error as ProtocolError {
                await refused("device.message", subject: subject, request: request, error)
                if !taken { try await operations.advanceSession(advance) }
                reply = .error(error)
            } catch let error as StoreError where error.kind == .invalidValue {
                let malformed = ProtocolError(.malformed, error.message)
                await refused("device.message", subject: subject, request: request, malformed)
                if !taken { try await operations.advanceSession(advance) }
                reply = .error(malformed)
            }
        } catch let refusal as SessionRefusal {
            if refusal == .ended { sessions.forget(sessionID) }
            throw refusal.protocolError
        }
        sessions.taken(sessionID: sessionID, counter: counter)
        if let held {
            return .later { [self] promise in
                push.hold(held.ticket) { [self] outcome in
                    promise.answer { [self] in
                        try await answer(request, action: "device.message") { subject in
                            subject = "device:" + session.deviceID
                            return try Self.sealed(try await heldReply(held, outcome: outcome), keys: session.keys, counter: counter)
                        }
                    }
                }
            }
        }
        return try Self.sealed(reply, keys: session.keys, counter: counter)
    }

    /// A reply sealed under the session's keys with the message's counter.
    private static func sealed(_ reply: ManagerMessage, keys: SessionKeys, counter: UInt64) throws -> GatewayResponse {
        let sealed = try Envelope.seal(Array(try JSONEncoder().encode(reply)), keys: keys, counter: counter, direction: .managerToAgent)
        return GatewayResponse(status: .ok, headers: ["content-type": "application/octet-stream"], body: ByteBuffer(bytes: sealed))
    }

    /// A wait the hub holds (``PushHub/hold(_:then:)``): what its reply is made of once it
    /// ends. While held, the request is answered later and no task waits for it.
    private struct HeldWait: Sendable {
        let ticket: PushHub.Ticket
        let deviceID: String
        let checkIn: CheckInRequest
        let serial: Int64
    }

    /// The reply to a held wait once the hub ended it.
    private func heldReply(_ held: HeldWait, outcome: PushHub.Outcome) async throws -> ManagerMessage {
        switch outcome {
        case .woken:
            // What woke it, read now: its commands (marked delivered) and the serial.
            let woken = try await store.takeCommands(forDevice: held.deviceID)
            let current = try await store.policySerial()
            return .checkIn(checkInReply(to: held.checkIn, serial: current, commands: woken))
        case .timedOut, .replaced:
            return .checkIn(checkInReply(to: held.checkIn, serial: held.serial, commands: []))
        case .stopping:
            // Shutting down: no offer to wait again, so that the agent checks in at the
            // interval (or reaches another manager) instead of waiting here again at once.
            return .checkIn(checkInReply(to: held.checkIn, serial: held.serial, commands: [], offerPush: false))
        }
    }

    /// Device ids are `d-` and 32 hex digits; anything else is not worth naming in the audit log.
    static func isPlausibleDeviceID(_ id: String) -> Bool {
        id.utf8.count == 34 && id.hasPrefix("d-") && id.utf8.dropFirst(2).allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// Does what a message asks. The message's counter is taken in the same transaction when
    /// its work is one write, before the work otherwise; `taken` says when it was.
    /// A wait with nothing to say yet is left to the hub: `held` says what its reply will
    /// be made of, and the reply returned is not sent.
    private func handle(_ message: AgentMessage, deviceID: String, source: String, now: Int64, advance: SessionAdvance, taken: inout Bool, held: inout HeldWait?) async throws -> ManagerMessage {
        switch message {
        case .userSignIn(let request):
            try await operations.advanceSession(advance)
            taken = true
            return .user(try signed(try await userSignIns().signIn(request, device: deviceID, source: source, now: now)))
        case .userPasswordChange(let change):
            try await operations.advanceSession(advance)
            taken = true
            return .user(try signed(try await userSignIns().changePassword(change, device: deviceID, source: source, now: now)))
        case .checkIn(let checkIn):
            let outcome = try await operations.checkIn(
                CheckIn(deviceID: deviceID, atMilliseconds: now, policySerial: checkIn.policySerial, status: checkIn.status, pinned: checkIn.pinnedFingerprints), advancing: advance)
            taken = true
            guard let (serial, commands) = outcome else { throw ProtocolError(.unknownDevice, "the device no longer exists") }
            counters.checkIns?.increment()
            return .checkIn(checkInReply(to: checkIn, serial: serial, commands: commands))
        case .wait(let checkIn):
            guard configuration.pushEnabled else { throw ProtocolError(.malformed, "this manager does not hold waits (push is off); check in at the interval") }
            // Registered first: a command queued while the check-in below runs wakes it.
            let ticket = push.register(device: deviceID, hold: .seconds(configuration.pushHoldSeconds))
            let outcome: (Int64, [CommandRecord])?
            do {
                let heldBy = (manager: configuration.managerName, untilMilliseconds: now + Int64(configuration.pushHoldSeconds) * 1000)
                outcome = try await operations.checkIn(
                    CheckIn(deviceID: deviceID, atMilliseconds: now, policySerial: checkIn.policySerial, status: checkIn.status, pinned: checkIn.pinnedFingerprints, heldBy: heldBy),
                    advancing: advance)
            } catch {
                push.cancel(ticket)
                throw error
            }
            taken = true
            guard let (serial, commands) = outcome else {
                push.cancel(ticket)
                throw ProtocolError(.unknownDevice, "the device no longer exists")
            }
            counters.checkIns?.increment()
            if !commands.isEmpty || serial != checkIn.policySerial || hasCertificateToPin(checkIn) {
                push.cancel(ticket)
                return .checkIn(checkInReply(to: checkIn, serial: serial, commands: commands))
            }
            // Held from here, with no task waiting; not work in progress either (the manager
            // is not loaded by agents that are only waiting, and their count would otherwise
            // stop push at `backOffAbove`): its reply is made when the hub ends it.
            held = HeldWait(ticket: ticket, deviceID: deviceID, checkIn: checkIn, serial: serial)
            return .checkIn(checkInReply(to: checkIn, serial: serial, commands: []))
        case .fetchPolicy:
            try await operations.advanceSession(advance)
            taken = true
            let serial = try await store.policySerial()
            let policies = try await store.publishedPolicies(forDevice: deviceID)
            let current = identity()
            let key = current.fingerprintHex + "|" + policies.map { "\($0.policyID)@\($0.version)" }.joined(separator: ",")
            if let cached = bundles.withLockedValue({ $0.serial == serial ? $0.byKey[key] : nil }) { return .policy(cached) }
            let contents = PolicyBundle.Contents(serial: serial, policies: policies.map { .init(id: $0.policyID, name: $0.policyName, version: $0.version, document: $0.document) })
            let bundle = try PolicyBundle.make(contents, siteKey: keys.siteKey) { try ManagerSignature.sign($0, with: current.signingKey) }
            bundles.withLockedValue { state in
                if state.serial != serial { state = (serial, [:]) }
                if state.byKey.count < 4096 { state.byKey[key] = bundle }
            }
            return .policy(bundle)
        case .events(let events):
            guard events.count <= 1000 else { throw ProtocolError(.malformed, "at most 1000 events in one batch") }
            try await operations.ingestEvents(events.map { EventRecord(deviceID: deviceID, eventID: $0.id, kind: $0.kind, occurredMilliseconds: $0.occurredMilliseconds, body: $0.body) },
                                              advancing: advance)
            taken = true
            counters.events?.increment(by: Int64(events.count))
            // Durable now, new or seen before: every id is acknowledged.
            return .eventsAccepted(events.map(\.id))
        case .commandResult(let result):
            try await operations.advanceSession(advance)
            taken = true
            let closed: CommandRecord?
            do {
                closed = try await operations.acknowledgeCommand(id: result.commandID, deviceID: deviceID, succeeded: result.succeeded, result: result.detail, now: now)
            } catch let error as StoreError where error.kind == .notFound {
                throw ProtocolError(.unknownCommand, "this device has no command \(result.commandID)")
            }
            if result.succeeded, closed?.kind == .wipe { sessions.removeSessions(ofDevice: deviceID) }
            return .ok
        }
    }

    private func userSignIns() throws -> UserSignIns {
        guard let users else { throw ProtocolError(.malformed, "this manager does not sign users in") }
        return users
    }

    /// A user's result, signed by the manager's identity: the device keeps it, and believes
    /// the offline verifier in it only while the signature checks out against its pins.
    private func signed(_ result: UserSignInResult) throws -> UserSignInResult {
        var signed = result
        signed.signature = Base64URL.encode(try ManagerSignature.sign(result.transcript, with: identity().signingKey))
        return signed
    }

    /// The answer to a check-in or a wait: the serial, the commands, when to check in next,
    /// and what the agent should pin and whether it may wait.
    private func checkInReply(to checkIn: CheckInRequest, serial: Int64, commands: [CommandRecord], offerPush: Bool = true) -> CheckInReply {
        let loaded = inFlight.withLockedValue { $0 } > configuration.backOffAbove
        let next = nextCertificate.withLockedValue { $0 }
        let base = configuration.checkInIntervalSeconds * (loaded ? 2 : 1)
        let jitter = max(1, base / 10)
        return CheckInReply(
            policyChanged: serial != checkIn.policySerial, policySerial: serial,
            commands: commands.map { DeviceCommand(id: $0.id, kind: $0.kind.rawValue, arguments: $0.arguments) },
            nextCheckInSeconds: base + Int.random(in: -jitter...jitter), backOff: loaded,
            nextCertificate: next?.pem, nextAuthorities: next.flatMap { $0.authorities.isEmpty ? nil : $0.authorities },
            push: configuration.pushEnabled && offerPush && !loaded ? PushOffer(holdSeconds: configuration.pushHoldSeconds) : nil)
    }

    /// Whether the manager announces a certificate the agent has not pinned yet.
    private func hasCertificateToPin(_ checkIn: CheckInRequest) -> Bool {
        guard let pem = nextCertificate.withLockedValue({ $0?.pem }) else { return false }
        guard let document = try? PEMDocument(pemString: pem) else { return true }
        let fingerprint = SHA256.hash(data: document.derBytes).map { String(format: "%02x", $0) }.joined()
        return !checkIn.pinnedFingerprints.contains(fingerprint)
    }

    /// The remote-help response code for a challenge a device shows.
    public func remoteHelpResponse(deviceID: String, challenge: String, unlockingUser user: String? = nil) async throws -> String {
        guard let device = try await store.device(id: deviceID) else { throw StoreError.notFound("device \(deviceID)") }
        let agreement = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: device.agreementKey)
        let secret = RemoteHelp.deviceSecret(try keys.agreement.sharedSecretFromKeyAgreement(with: agreement), deviceID: deviceID)
        return RemoteHelp.response(to: challenge, secret: secret, unlockingUser: user)
    }

    // MARK: - Encoding

    private static func decode<T: Decodable>(_ body: ByteBuffer) throws -> T {
        do { return try JSONDecoder().decode(T.self, from: Data(body.readableBytesView)) } catch { throw ProtocolError(.malformed, "the request body is not the expected JSON") }
    }

    private static func json<T: Encodable>(_ value: T) throws -> GatewayResponse {
        GatewayResponse(status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(bytes: try JSONEncoder().encode(value)))
    }

    private struct Problem: Encodable {
        let error: String
        let message: String
    }

    static func problem(_ status: HTTPResponseStatus, _ error: ProtocolError) -> GatewayResponse {
        let body = (try? JSONEncoder().encode(Problem(error: error.code.rawValue, message: error.message))) ?? Data()
        return GatewayResponse(status: status, headers: ["content-type": "application/json"], body: ByteBuffer(bytes: body))
    }

    static func status(for code: ProtocolError.Code) -> HTTPResponseStatus {
        switch code {
        case .malformed, .decryptionFailed: .badRequest
        case .badSignature, .notPinned, .enrollmentRefused: .forbidden
        case .unknownDevice, .unknownSession, .sessionExpired, .staleTimestamp: .unauthorized
        case .deviceRevoked: .forbidden
        case .replayed: .conflict
        case .overloaded: .tooManyRequests
        case .unknownCommand: .notFound
        }
    }
}
