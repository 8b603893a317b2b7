import Crypto
import Foundation
import NIOConcurrencyHelpers
import PorticoGateway
import PorticoServer
import PorticoStore

/// Keeps the site's identity in the database, so that every manager of a site serves the same
/// one and no file is shared between them. The identity is the live pair, the staged pair and
/// the rotation plan: what `identity.certificate`, `identity.private_key` and `next/` hold.
/// The database has it sealed with the secrets key; each manager keeps its own copy in those
/// files (keys mode 0600), which its listeners load.
///
/// At each exchange, a change on either side wins over the side that did not change since
/// the last exchange: an identity imported, staged or switched on one manager reaches the
/// database, and from there the other managers' files, which they then reload. A manager
/// that has never exchanged takes the site's identity; a site without one takes the
/// manager's. When both changed, the manager's own change wins, and it says so.
public final class IdentitySync: Sendable {
    /// The identity's files, as text.
    struct Snapshot: Codable, Equatable {
        var certificate: String
        var key: String
        var stagedCertificate: String?
        var stagedKey: String?
        var plan: String?

        var digest: String {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            let data = (try? encoder.encode(self)) ?? Data()
            return SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
        }
    }

    public enum Outcome: Sendable, Equatable {
        /// The files and the site agree.
        case unchanged
        /// The site's identity was written to this manager's files: reload them.
        case adopted
        /// This manager's files became the site's identity.
        case published
    }

    static let secretName = "identity"

    let vault: SiteVault
    let configuration: GatewayConfiguration
    /// Where the last exchange is remembered across restarts: the version and the digest
    /// (no secret) both sides had then.
    let markerPath: String
    private let last = NIOLockedValueBox<(version: Int64, digest: String)?>(nil)

    public init(vault: SiteVault, configuration: GatewayConfiguration, dataDirectory: String) {
        self.vault = vault
        self.configuration = configuration
        self.markerPath = dataDirectory + "/identity.synced"
        if let text = try? String(contentsOfFile: markerPath, encoding: .utf8) {
            let parts = text.split(whereSeparator: \.isWhitespace)
            if parts.count == 2, let version = Int64(parts[0]) { last.withLockedValue { $0 = (version, String(parts[1])) } }
        }
    }

    /// Compares this manager's identity files with the site's and brings the older side up to date.
    @discardableResult
    public func exchange() async throws -> Outcome {
        let local = Self.read(configuration)
        let remembered = last.withLockedValue { $0 }
        let version = try await vault.store.secretVersions()[Self.secretName]
        if let version, let remembered, remembered.version == version, remembered.digest == local?.digest { return .unchanged }
        guard version != nil, let stored = try await vault.read(Self.secretName) else {
            guard let local else { return .unchanged }
            let operations = ManagerOperations(store: vault.store, agent: nil)
            if try await operations.createSiteSecret(Self.secretName, try seal(local)) {
                remember(1, local.digest)
                return .published
            }
            // Another manager stored the site's first: take it.
            return try await exchange()
        }
        let site: Snapshot
        do { site = try JSONDecoder().decode(Snapshot.self, from: Data(stored.bytes)) } catch { throw ManagerError("the site's identity in the database is not well formed") }
        if let local, local.digest == site.digest {
            remember(stored.version, local.digest)
            return .unchanged
        }
        if let local, let remembered, local.digest != remembered.digest {
            let detail = remembered.version == stored.version ? "changed on this manager" : "changed on this manager and on another since version \(remembered.version); this manager's change wins"
            let version = try await ManagerOperations(store: vault.store, agent: nil).replaceSiteSecret(Self.secretName, try seal(local), detail: detail)
            remember(version, local.digest)
            return .published
        }
        try Self.write(site, configuration)
        remember(stored.version, site.digest)
        return .adopted
    }

    private func seal(_ snapshot: Snapshot) throws -> SealedSecret {
        try vault.key.seal(Array(try JSONEncoder().encode(snapshot)), name: Self.secretName)
    }

    private func remember(_ version: Int64, _ digest: String) {
        last.withLockedValue { $0 = (version, digest) }
        try? SecureFile.write(Array("\(version) \(digest)\n".utf8), to: markerPath, mode: 0o600)
    }

    /// The identity files, or nil when the live pair is not there.
    static func read(_ configuration: GatewayConfiguration) -> Snapshot? {
        func text(_ path: String) -> String? { FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) } }
        guard let certificate = text(configuration.identity.certificate), let key = text(configuration.identity.privateKey) else { return nil }
        let staged = StagedIdentity.paths(configuration)
        return Snapshot(certificate: certificate, key: key, stagedCertificate: text(staged.certificate), stagedKey: text(staged.key),
                        plan: text(StagedIdentity.planPath(configuration)))
    }

    /// Writes the site's identity into this manager's files, the staged pair and plan first so
    /// that a rotation under way is never seen without them.
    static func write(_ snapshot: Snapshot, _ configuration: GatewayConfiguration) throws {
        let staged = StagedIdentity.paths(configuration)
        let plan = StagedIdentity.planPath(configuration)
        for (path, content, mode) in [(staged.key, snapshot.stagedKey, mode_t(0o600)), (staged.certificate, snapshot.stagedCertificate, 0o644), (plan, snapshot.plan, 0o600)] {
            if let content {
                try SecureFile.write(Array(content.utf8), to: path, mode: mode)
            } else if FileManager.default.fileExists(atPath: path) {
                try FileManager.default.removeItem(atPath: path)
            }
        }
        try SecureFile.write(Array(snapshot.key.utf8), to: configuration.identity.privateKey, mode: 0o600)
        try SecureFile.write(Array(snapshot.certificate.utf8), to: configuration.identity.certificate, mode: 0o644)
    }
}
