import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import PorticoProtocol

/// An agent's side of the protocol: enrolls, opens sessions, checks in, fetches and verifies
/// policies, reports events and command results. One request at a time per client.
public actor AgentClient {
    public private(set) var state: AgentState
    private var transport: any AgentTransport
    private var session: (keys: SessionKeys, expires: Int64)?
    /// SHA-256 of each pinned certificate, reported at check-in; recomputed when the pins change.
    private var pinnedFingerprints: [String]
    private var counter: UInt64 = 0
    /// The manager URL in use (the first of the state's that answers).
    public let managerURL: String

    public init(state: AgentState, managerURL: String? = nil, http: HTTPClient? = nil) {
        // The client's shutdown ends the HTTP client it was given, as it ends one it made.
        self.init(state: state, managerURL: managerURL, transport: http.map { HTTPClientTransport(client: $0, owned: true) } ?? HTTPClientTransport(pinned: state.pinned))
    }

    public init(state: AgentState, managerURL: String? = nil, transport: any AgentTransport) {
        self.state = state
        self.managerURL = managerURL ?? state.managerURLs.first ?? ""
        self.transport = transport
        self.pinnedFingerprints = Self.fingerprints(of: state.pinned)
    }

    static func fingerprints(of pinned: PinnedCertificates) -> [String] {
        pinned.certificates.map { certificate in
            var serializer = DER.Serializer()
            try? serializer.serialize(certificate)
            return SHA256.hash(data: serializer.serializedBytes).map { String(format: "%02x", $0) }.joined()
        }
    }

    /// An HTTP client that trusts only the pinned manager certificates for TLS.
    public static func makeHTTPClient(pinned: PinnedCertificates) -> HTTPClient {
        HTTPClientTransport.makeHTTPClient(pinned: pinned)
    }

    public func shutdown() async {
        await transport.shutdown()
    }

    // MARK: - Enrollment

    /// Enrolls a new device with a token and returns its state (not yet saved).
    public static func enroll(bootstrap: BootstrapFile, token: String, keys: DeviceKeys = DeviceKeys(), hostname: String, os: String, managerURL: String? = nil, http: HTTPClient? = nil) async throws -> AgentState {
        try await enroll(bootstrap: bootstrap, credential: .token(token), keys: keys, hostname: hostname, os: os, managerURL: managerURL, http: http)
    }

    /// What an agent enrolls with.
    public enum Credential: Sendable {
        case token(String)
        /// An operator's name and password (sealed to the manager like the rest of the request).
        case `operator`(name: String, password: String)
    }

    public static func enroll(bootstrap: BootstrapFile, credential: Credential, keys: DeviceKeys = DeviceKeys(), hostname: String, os: String, managerURL: String? = nil, http: HTTPClient? = nil) async throws -> AgentState {
        let transport = http.map { HTTPClientTransport(client: $0) } ?? HTTPClientTransport(pinned: bootstrap.pinned)
        do {
            let state = try await enroll(transport: transport, bootstrap: bootstrap, credential: credential, keys: keys, hostname: hostname, os: os, managerURL: managerURL)
            await transport.shutdown()
            return state
        } catch {
            await transport.shutdown()
            throw error
        }
    }

    /// Enrolls through `transport`, which stays open.
    public static func enroll(transport client: any AgentTransport, bootstrap: BootstrapFile, credential: Credential, keys: DeviceKeys, hostname: String, os: String, managerURL: String?) async throws -> AgentState {
        let url = managerURL ?? bootstrap.managerURLs.first ?? ""
        let hello: Hello = try await getJSON(client, url + "/agent/v1/hello")
        guard let signer = bootstrap.pinned.pinned(hello.certificate), let signature = Base64URL.decode(hello.signature),
              ManagerSignature.isValid(signature, for: hello.transcript, by: signer)
        else { throw ProtocolError(.notPinned, "the manager's hello is not signed by a pinned certificate") }
        guard let agreementBytes = Base64URL.decode(hello.agreementKey), let managerAgreement = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: agreementBytes) else {
            throw ProtocolError(.malformed, "the manager's agreement key is not well formed")
        }
        var token: String? = nil
        var operatorName: String? = nil
        var operatorPassword: String? = nil
        switch credential {
        case .token(let value): token = value
        case .operator(let name, let password): (operatorName, operatorPassword) = (name, password)
        }
        var request = EnrollRequest(
            token: token, operatorName: operatorName, operatorPassword: operatorPassword, signingKey: Base64URL.encode(keys.signing.publicKey.rawRepresentation), agreementKey: Base64URL.encode(keys.agreement.publicKey.rawRepresentation),
            hostname: hostname, os: os, timestampMilliseconds: nowMilliseconds())
        request.signature = Base64URL.encode(try keys.signing.signature(for: request.transcript))
        let sealed = try SealedBox.seal(Array(try JSONEncoder().encode(request)), to: managerAgreement, context: "portico-enroll-v1")
        let response: EnrollResponse = try await postJSON(client, url + "/agent/v1/enroll", sealed)
        guard let responseSignature = Base64URL.decode(response.signature), bootstrap.pinned.verify(responseSignature, over: response.transcript(signingKey: request.signingKey)) else {
            throw ProtocolError(.badSignature, "the enrollment answer is not signed by a pinned certificate")
        }
        guard response.deviceID == keys.deviceID else { throw ProtocolError(.malformed, "the manager named another device id") }
        let siteKey = try response.siteKey.open(with: keys.agreement, context: "portico-site-key-v1")
        return AgentState(
            deviceID: response.deviceID, signingKey: Base64URL.encode(keys.signing.rawRepresentation), agreementKey: Base64URL.encode(keys.agreement.rawRepresentation),
            siteKey: Base64URL.encode(siteKey), pinned: bootstrap.pinned, managerURLs: managerURL.map { [$0] + bootstrap.managerURLs } ?? bootstrap.managerURLs,
            policySerial: 0, checkInIntervalSeconds: response.checkInIntervalSeconds, managerAgreementKey: hello.agreementKey)
    }

    // MARK: - Sessions

    /// Opens a session: a signed ephemeral key agreement answered by the manager's identity.
    public func openSession() async throws {
        let keys = try state.keys
        let ephemeral = Curve25519.KeyAgreement.PrivateKey()
        var request = SessionRequest(deviceID: state.deviceID, ephemeralKey: Base64URL.encode(ephemeral.publicKey.rawRepresentation),
                                     timestampMilliseconds: Self.nowMilliseconds(), nonce: Base64URL.encode((0..<16).map { _ in UInt8.random(in: 0...255) }))
        request.signature = Base64URL.encode(try keys.signing.signature(for: request.transcript))
        let response: SessionResponse = try await Self.postJSON(transport, managerURL + "/agent/v1/session", request)
        let transcript = response.transcript(request: request)
        guard let signer = state.pinned.pinned(response.certificate), let signature = Base64URL.decode(response.signature),
              ManagerSignature.isValid(signature, for: transcript, by: signer)
        else { throw ProtocolError(.notPinned, "the session answer is not signed by a pinned certificate") }
        guard let managerEphemeralBytes = Base64URL.decode(response.ephemeralKey), let sessionID = Base64URL.decode(response.sessionID), sessionID.count == 16,
              let managerEphemeral = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: managerEphemeralBytes)
        else { throw ProtocolError(.malformed, "the session answer is not well formed") }
        let sessionKeys = SessionKeys.derive(sharedSecret: try ephemeral.sharedSecretFromKeyAgreement(with: managerEphemeral), sessionID: sessionID, transcript: transcript)
        session = (sessionKeys, response.expiresMilliseconds)
        counter = 0
    }

    /// Sends one message in the session (opening or renewing it as needed) and returns the answer.
    public func send(_ message: AgentMessage, timeout: Duration = .seconds(30)) async throws -> ManagerMessage {
        for attempt in 0..<2 {
            if session == nil || Self.nowMilliseconds() >= session!.expires - 5_000 { try await openSession() }
            do {
                return try await sendInSession(message, timeout: timeout)
            } catch let error as ProtocolError where attempt == 0 && (error.code == .sessionExpired || error.code == .unknownSession || error.code == .replayed) {
                // The manager forgot or expired the session, or took this counter already (a
                // message that raced this one): one new handshake, and the message sealed anew.
                session = nil
            }
        }
        throw ProtocolError(.sessionExpired, "the manager refused two sessions in a row")
    }

    /// The envelope of the next message, without sending it (tests replay and alter these).
    public func seal(_ message: AgentMessage) throws -> [UInt8] {
        guard let session else { throw ProtocolError(.unknownSession, "no session is open") }
        counter += 1
        return try Envelope.seal(Array(try JSONEncoder().encode(message)), keys: session.keys, counter: counter, direction: .agentToManager)
    }

    /// Posts a sealed envelope as it is and returns the raw answer.
    public func post(envelope: [UInt8], timeout: Duration = .seconds(30)) async throws -> (status: Int, body: [UInt8]) {
        try await transport.post(managerURL + "/agent/v1/message", body: envelope, contentType: "application/octet-stream", timeout: timeout)
    }

    private func sendInSession(_ message: AgentMessage, timeout: Duration) async throws -> ManagerMessage {
        let envelope = try seal(message)
        let sentCounter = counter
        let (status, body) = try await post(envelope: envelope, timeout: timeout)
        guard status == 200 else { throw Self.problem(status: status, body: body) }
        guard let keys = session?.keys else { throw ProtocolError(.unknownSession, "the session ended") }
        let (replyCounter, plaintext) = try Envelope.open(body, keys: keys, direction: .managerToAgent)
        guard replyCounter == sentCounter else { throw ProtocolError(.replayed, "the answer belongs to another message") }
        let answer: ManagerMessage
        do { answer = try JSONDecoder().decode(ManagerMessage.self, from: Data(plaintext)) } catch { throw ProtocolError(.malformed, "the answer is not a manager message") }
        if case .error(let refusal) = answer { throw refusal }
        return answer
    }

    // MARK: - Conversations

    /// Checks in; pins a next certificate the manager announces.
    public func checkIn(status: String = "ok") async throws -> CheckInReply {
        guard case .checkIn(let reply) = try await send(.checkIn(CheckInRequest(policySerial: state.policySerial, status: status, pinnedFingerprints: pinnedFingerprints))) else {
            throw ProtocolError(.malformed, "the manager did not answer the check-in")
        }
        return await took(reply)
    }

    /// A check-in the manager holds until it has something for this device or `holdSeconds`
    /// (from the manager's ``PushOffer``) have passed; answered like a check-in.
    public func wait(holdSeconds: Int, status: String = "ok") async throws -> CheckInReply {
        let request = CheckInRequest(policySerial: state.policySerial, status: status, pinnedFingerprints: pinnedFingerprints)
        guard case .checkIn(let reply) = try await send(.wait(request), timeout: .seconds(holdSeconds + 15)) else {
            throw ProtocolError(.malformed, "the manager did not answer the wait")
        }
        return await took(reply)
    }

    /// Pins a next certificate a check-in reply announces.
    private func took(_ reply: CheckInReply) async -> CheckInReply {
        if let next = reply.nextCertificate, state.pinned.pinned(next) == nil {
            state.pinned.add(next)
            state.pinned.addAuthorities(reply.nextAuthorities ?? [])
            pinnedFingerprints = Self.fingerprints(of: state.pinned)
            // New connections must trust the announced certificate too.
            transport = await transport.pinning(state.pinned)
        }
        return reply
    }

    /// Fetches the policies, verifies the manager's signature against the pinned certificates,
    /// decrypts them with the site key, and records the serial.
    public func fetchPolicy() async throws -> PolicyBundle.Contents {
        guard case .policy(let bundle) = try await send(.fetchPolicy) else { throw ProtocolError(.malformed, "the manager did not send a policy") }
        let contents = try bundle.open(pinned: state.pinned, siteKey: try state.siteSymmetricKey)
        state.policySerial = contents.serial
        return contents
    }

    /// Reports events; returns the ids the manager stored durably.
    public func report(_ events: [AgentEvent]) async throws -> [String] {
        guard case .eventsAccepted(let ids) = try await send(.events(events)) else { throw ProtocolError(.malformed, "the manager did not acknowledge the events") }
        return ids
    }

    public func reportResult(commandID: String, succeeded: Bool, detail: String) async throws {
        guard case .ok = try await send(.commandResult(CommandResult(commandID: commandID, succeeded: succeeded, detail: detail))) else {
            throw ProtocolError(.malformed, "the manager did not acknowledge the result")
        }
    }

    /// Whether a remote-help response code answers a challenge this device showed.
    public func verifyRemoteHelp(response: String, challenge: String, managerAgreementKey: [UInt8]) throws -> Bool {
        let keys = try state.keys
        let secret = RemoteHelp.deviceSecret(try keys.agreement.sharedSecretFromKeyAgreement(with: try .init(rawRepresentation: managerAgreementKey)), deviceID: state.deviceID)
        return RemoteHelp.verify(response: response, challenge: challenge, secret: secret, now: Self.nowMilliseconds())
    }

    // MARK: - Users

    /// Signs a user in on this device through the manager; the answer is checked (the
    /// manager's signature, this device, this attempt) before it is believed.
    public func signInUser(_ user: String, password: String) async throws -> UserSignInResult {
        try await signIn(UserSignInRequest(user: user, password: password))
    }

    /// Signs a user in with a one-time code an operator gave them (no offline verifier comes back).
    public func signInUser(_ user: String, code: String) async throws -> UserSignInResult {
        try await signIn(UserSignInRequest(user: user, code: code))
    }

    private func signIn(_ request: UserSignInRequest) async throws -> UserSignInResult {
        let user = request.user
        guard case .user(let result) = try await send(.userSignIn(request)) else { throw ProtocolError(.malformed, "the manager did not answer the sign-in") }
        try check(result, user: user, nonce: request.nonce)
        return result
    }

    /// Sets a user's new password through the manager (the directory's, for a directory user).
    public func changeUserPassword(_ user: String, old: String, new: String) async throws -> UserSignInResult {
        let change = UserPasswordChange(user: user, oldPassword: old, newPassword: new)
        guard case .user(let result) = try await send(.userPasswordChange(change)) else { throw ProtocolError(.malformed, "the manager did not answer the password change") }
        try check(result, user: user, nonce: change.nonce)
        return result
    }

    private func check(_ result: UserSignInResult, user: String, nonce: String) throws {
        guard result.deviceID == state.deviceID, result.user == user, result.nonce == nonce else {
            throw ProtocolError(.malformed, "the manager's answer is for another device, user or attempt")
        }
        guard let signature = Base64URL.decode(result.signature), state.pinned.verify(signature, over: result.transcript) else {
            throw ProtocolError(.badSignature, "the user's result is not signed by a pinned certificate")
        }
    }

    /// Whether a remote-help response unlocks `user` on this device for a challenge it showed,
    /// checked with the manager's key kept at enrollment (the manager need not be reachable).
    public static func verifyUserUnlock(state: AgentState, user: String, challenge: String, response: String) throws -> Bool {
        guard let key = state.managerAgreementKey.flatMap(Base64URL.decode) else {
            throw ProtocolError(.malformed, "this agent's state has no manager key (it was enrolled by an older agent): enroll again to use remote help offline")
        }
        let secret = RemoteHelp.deviceSecret(try state.keys.agreement.sharedSecretFromKeyAgreement(with: try .init(rawRepresentation: key)), deviceID: state.deviceID)
        return RemoteHelp.verify(response: response, challenge: challenge, secret: secret, now: nowMilliseconds(), unlockingUser: user)
    }

    // MARK: - HTTP

    static func nowMilliseconds() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    static func postJSON<Request: Encodable, Response: Decodable>(_ client: any AgentTransport, _ url: String, _ value: Request) async throws -> Response {
        let (status, body) = try await client.post(url, body: Array(try JSONEncoder().encode(value)), contentType: "application/json")
        guard status == 200 else { throw problem(status: status, body: body) }
        do { return try JSONDecoder().decode(Response.self, from: Data(body)) } catch { throw ProtocolError(.malformed, "the manager's answer is not the expected JSON") }
    }

    static func getJSON<Response: Decodable>(_ client: any AgentTransport, _ url: String) async throws -> Response {
        let (status, body) = try await client.get(url)
        guard status == 200 else { throw problem(status: status, body: body) }
        do { return try JSONDecoder().decode(Response.self, from: Data(body)) } catch { throw ProtocolError(.malformed, "the manager's answer is not the expected JSON") }
    }

    private struct Problem: Decodable {
        let error: String
        let message: String
    }

    /// The manager's refusal as a ``ProtocolError``.
    static func problem(status: Int, body: [UInt8]) -> any Error {
        if let problem = try? JSONDecoder().decode(Problem.self, from: Data(body)), let code = ProtocolError.Code(rawValue: problem.error) {
            return ProtocolError(code, problem.message)
        }
        return NotTheManagersAnswer(status: status)
    }
}

import SwiftASN1
import X509

/// An answer that is not the agent protocol's: no sealed message and no protocol error, such
/// as a proxy's 502 or 504, or a page of something else at the manager's address. It says
/// nothing about the message itself, which the agent may send again.
public struct NotTheManagersAnswer: Error, CustomStringConvertible {
    public let status: Int
    public var description: String { "the answer was not the manager's (HTTP \(status)): a proxy or something else on the way answered" }
}
