import Foundation
import PorticoProtocol
import PorticoStore

/// Commands, devices and what agents send.
extension ManagerOperations {
    /// Queues a command for a device; it is delivered at the device's next check-in.
    public func issueCommand(deviceID: String, kind: CommandKind, arguments: String = "", expiresInSeconds: Int = 7 * 86_400, by actor: Actor) async throws -> CommandRecord {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let command = CommandRecord(deviceID: deviceID, kind: kind, arguments: arguments, issuedBy: actor.name, issuedMilliseconds: now,
                                    expiresMilliseconds: now + Int64(expiresInSeconds) * 1000)
        try await store.write { transaction in
            try await transaction.enqueueCommand(command)
            try await transaction.audit(actor.entry("command.issue", target: deviceID, detail: "\(kind.rawValue) \(command.id)"))
        }
        return command
    }

    /// The response code for a challenge a locked device shows; audited, as it grants access.
    /// With `user`, the code unlocks that user on the device (offline: the device's own
    /// lockout of the user ends), and the audit entry names the user.
    public func remoteHelpResponse(deviceID: String, challenge: String, unlockingUser user: String? = nil, by actor: Actor) async throws -> String {
        guard let agent else { throw StoreError.conflict("remote help needs the agent service, which this manager does not run") }
        guard try await store.device(id: deviceID) != nil else { throw StoreError.notFound("device \(deviceID)") }
        if let user { try EndpointUser.validate(name: user) }
        let response = try await agent.remoteHelpResponse(deviceID: deviceID, challenge: challenge, unlockingUser: user)
        if let user {
            try await store.audit(actor.entry("user.unlock_offline", target: deviceID, detail: "user \(user)"))
        } else {
            try await store.audit(actor.entry("device.remote_help", target: deviceID))
        }
        return response
    }

    /// Revokes a device: it may no longer open sessions, and its open ones end now.
    public func revokeDevice(id: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.setDeviceState(id: id, to: .revoked)
            try await transaction.endAgentSessions(ofDevice: id)
            try await transaction.audit(actor.entry("device.revoke", target: id))
        }
        agent?.endSessions(ofDevice: id)
    }

    /// Forgets a device (its events and the audit log stay); it must enroll again to return.
    public func deleteDevice(id: String, by actor: Actor) async throws {
        try await store.write { transaction in
            try await transaction.deleteDevice(id: id)
            try await transaction.endAgentSessions(ofDevice: id)
            try await transaction.audit(actor.entry("device.delete", target: id))
        }
        agent?.endSessions(ofDevice: id)
    }
}

/// What agents send: enrollments, check-ins, events and command results. Each is durable when
/// it returns; none is an operator's change, so only enrollment is audited.
extension ManagerOperations {
    /// Counts a use of an enrollment token, or throws why it may not be used (audited, charged
    /// to the device that tried).
    public func consumeEnrollmentToken(id: String, secret: [UInt8], deviceID: String, source: String, now: Int64) async throws -> EnrollmentTokenRecord {
        do {
            return try await store.consumeEnrollmentToken(id: id, secret: secret, now: now)
        } catch let refusal as EnrollmentRefusal {
            await refused(AuditEntry(actor: "device:\(deviceID)", action: "device.enroll", target: id, source: source, result: "refused", detail: refusal.rawValue))
            throw refusal
        }
    }

    /// Records a newly enrolled device, in the token's group if it names one.
    public func enrollDevice(_ device: DeviceRecord, group groupID: String?, source: String) async throws {
        try await store.addDevice(device)
        if let groupID { try await store.addDevice(device.id, toGroup: groupID) }
        try? await store.audit(AuditEntry(actor: "device:\(device.id)", action: "device.enroll", target: device.id, source: source, result: "ok", detail: device.hostname))
    }

    /// Records a check-in; returns the policy serial and the commands now delivered, or nil
    /// when the device no longer exists.
    /// The message's counter is taken in the same transaction: a replay changes nothing.
    public func checkIn(_ checkIn: CheckIn, advancing: SessionAdvance) async throws -> (policySerial: Int64, commands: [CommandRecord])? {
        try await store.checkIn(checkIn, advancing: advancing)
    }

    /// Stores a batch of a device's events; ids seen before are kept once.
    public func ingestEvents(_ events: [EventRecord], advancing: SessionAdvance) async throws {
        _ = try await store.ingestEvents(events, advancing: advancing)
    }

    /// Opens an agent session; false when its handshake nonce was seen before.
    public func openAgentSession(_ session: AgentSessionRecord, nonce: String, now: Int64) async throws -> Bool {
        try await store.openAgentSession(session, nonce: nonce, now: now)
    }

    /// Takes a message's counter, for a message whose work is not one write.
    public func advanceSession(_ advance: SessionAdvance) async throws {
        try await store.advanceSession(advance)
    }

    /// Forgets sessions that ended before `before`, with their handshake nonces.
    public func removeEndedAgentSessions(before: Int64) async throws -> Int {
        try await store.removeEndedAgentSessions(before: before)
    }

    /// Closes a command with the device's result and moves the device's state with a lock,
    /// unlock or wipe that succeeded. A result sent again changes nothing: the state moved
    /// with the first one, and may have moved again since (an unlock after a lock).
    /// - Returns: the command when this result closed it.
    public func acknowledgeCommand(id: String, deviceID: String, succeeded: Bool, result: String, now: Int64) async throws -> CommandRecord? {
        guard try await store.acknowledgeCommand(id: id, deviceID: deviceID, succeeded: succeeded, result: result, now: now),
              let command = try await store.command(id: id) else { return nil }
        guard succeeded else { return command }
        switch command.kind {
        case .lock: try await store.setDeviceState(id: deviceID, to: .locked)
        case .unlock: try await store.setDeviceState(id: deviceID, to: .active)
        case .wipe: try await store.setDeviceState(id: deviceID, to: .wiped)
        case .remoteHelp, .passwordReset: break
        }
        return command
    }
}
