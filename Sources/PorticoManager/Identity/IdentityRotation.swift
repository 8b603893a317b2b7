import Foundation
import Logging
import NIOConcurrencyHelpers
import PorticoGateway
import PorticoServer
import PorticoStore
import ServiceLifecycle

/// Rotates the server identity without stranding agents. While a next identity is staged
/// (`portico cert rotate`, or `POST /api/v1/identity/rotate`), every check-in announces it
/// and agents pin it beside the current one, reporting their pins at each check-in. Once
/// the plan's share of active agents has pinned it, or when an operator forces it, the staged
/// pair becomes the live one and the listeners serve it; agents accept it because they
/// pinned it, and keep the old one pinned too.
public final class IdentityRotation: Service, Sendable {
    public struct Status: Sendable {
        public var staged: IdentitySummary
        public var fingerprintHex: String
        public var plan: StagedIdentity.Plan
        /// Active agents that have pinned the staged certificate, and all active agents.
        public var acknowledged: Int
        public var active: Int

        public var share: Double { active == 0 ? 0 : Double(acknowledged) / Double(active) }
        /// Whether the plan's share is reached (an empty fleet never switches by itself).
        public var isReady: Bool { active > 0 && share >= plan.switchAt }
    }

    let configuration: GatewayConfiguration
    let identities: [ReloadableIdentity]
    let agent: AgentService
    let store: Store
    let logger: Logger
    let interval: Duration
    /// Keeps the identity the same on every manager of the site, through the database.
    let sync: IdentitySync?
    /// The staged identity last announced, by fingerprint, to parse the files only when they change.
    private let announced = NIOLockedValueBox<(fingerprint: [UInt8], pem: String)?>(nil)

    /// - Parameter identities: the live identities the listeners serve, reloaded after a switch.
    /// - Parameter sync: the site's identity in the database, exchanged at every step.
    public init(configuration: GatewayConfiguration, identities: [ReloadableIdentity], agent: AgentService, store: Store, sync: IdentitySync? = nil, interval: Duration = .seconds(5),
                logger: Logger = Logger(label: "portico.identity")) {
        self.sync = sync
        self.configuration = configuration
        self.identities = identities
        self.agent = agent
        self.store = store
        self.interval = interval
        self.logger = logger
    }

    /// Checks the staged identity every `interval` until shutdown.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do { _ = try await self.tick() } catch { self.logger.error("identity rotation check failed", metadata: ["error": "\(error)"]) }
                try? await Task.sleep(for: self.interval)
            }
        }
    }

    /// One step: exchange the identity with the site's (another manager's rotation or import
    /// arrives, this one's leaves), pick up live files changed outside (a forced switch from
    /// the CLI), announce the staged identity, and switch when the plan's share is reached.
    /// Returns the status.
    @discardableResult
    public func tick(now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> Status? {
        try await exchange()
        for identity in identities {
            // The gateway's own check would find these unchanged afterwards: say it here.
            if case .reloaded = identity.reload() {
                logger.notice("server certificate reloaded", metadata: ["certificate": "\(identity.certificatePath)", "serial": "\(identity.current.serialHex)"])
            }
        }
        guard let status = try await status(now: now) else {
            if announced.withLockedValue({ $0 }) != nil {
                announced.withLockedValue { $0 = nil }
                agent.announceNextCertificate(nil)
            }
            return nil
        }
        if status.isReady {
            logger.notice("switching to the staged identity", metadata: [
                "fingerprint": "\(status.fingerprintHex)", "acknowledged": "\(status.acknowledged)", "active": "\(status.active)"])
            try switchNow()
            try await exchange()
            return status
        }
        return status
    }

    /// Exchanges the identity with the site's now: after a change on this manager, so that
    /// the others have it within their next step.
    public func exchange() async throws {
        guard let sync else { return }
        if try await sync.exchange() == .adopted {
            logger.notice("took the site's identity from the database")
            reloadLive()
        }
    }

    /// Where the rotation stands, or nil when nothing is staged. Announces the staged identity.
    public func status(now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> Status? {
        guard let staged = StagedIdentity.load(configuration) else { return nil }
        if announced.withLockedValue({ $0?.fingerprint }) != staged.fingerprint {
            announced.withLockedValue { $0 = (staged.fingerprint, staged.certificatePEM) }
            agent.announceNextCertificate(staged.certificatePEM, authorities: staged.authorityPEMs)
            logger.notice("announcing the staged identity to agents", metadata: ["fingerprint": "\(staged.fingerprintHex)"])
        }
        let plan = StagedIdentity.plan(configuration)
        let progress = try await store.pinProgress(fingerprint: staged.fingerprintHex, activeSince: now - Int64(plan.activeWindowSeconds) * 1000)
        return Status(staged: IdentitySummary(staged, listeners: []), fingerprintHex: staged.fingerprintHex, plan: plan,
                      acknowledged: progress.acknowledged, active: progress.active)
    }

    /// Stages a new self-signed identity and starts announcing it.
    /// - Throws: ``RotationError`` when one is staged already.
    public func stage(keyType: KeyType, days: Int, names: [String], plan: StagedIdentity.Plan) async throws -> Status {
        if StagedIdentity.load(configuration) != nil { throw RotationError("a next identity is staged already; switch to it or remove \(StagedIdentity.paths(configuration).certificate)") }
        let generated = try await Task.detached {
            try IdentityGenerator.generate(keyType: keyType, commonName: self.configuration.identity.commonName, names: self.configuration.identity.names + names, days: days)
        }.value
        let paths = StagedIdentity.paths(configuration)
        try IdentityGenerator.write(generated, certificatePath: paths.certificate, privateKeyPath: paths.key)
        try StagedIdentity.writePlan(plan, configuration)
        try await exchange()
        guard let status = try await status() else { throw RotationError("the staged identity does not load") }
        return status
    }

    /// Loads the live files again at once (after an import replaced them).
    public func reloadLive() {
        for identity in identities { identity.reload(force: true) }
    }

    /// Makes the staged identity live now, whatever the share.
    public func switchNow() throws {
        guard StagedIdentity.load(configuration) != nil else { throw RotationError("no next identity is staged") }
        try StagedIdentity.promote(configuration)
        for identity in identities {
            if case .failed(let reason) = identity.reload(force: true) {
                logger.error("the switched identity did not load; serving the last good one", metadata: ["reason": "\(reason)"])
            }
        }
        announced.withLockedValue { $0 = nil }
        agent.announceNextCertificate(nil)
        logger.notice("the staged identity is live", metadata: ["fingerprint": "\(identities.first?.current.fingerprintHex ?? "-")"])
    }
}

public struct RotationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
