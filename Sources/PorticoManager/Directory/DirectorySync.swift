import Foundation
import Logging
import NIOConcurrencyHelpers
import PorticoStore
import ServiceLifecycle

/// The directory's scheduled work: the users synced a page at a time (one manager of the
/// site at a time, its progress in the database for the console), and the directory's
/// operators checked, so that an account the directory disabled, removed or took out of every
/// mapped group loses its sessions at the next check.
public final class DirectorySync: Service, Sendable {
    public struct Timing: Sendable {
        /// How often directory operators are checked.
        public var operatorCheck: Duration = .seconds(300)
        /// How long a sync's claim lasts without progress before another manager may take it.
        public var claim: Duration = .seconds(600)

        public init() {}
    }

    let store: Store
    let directory: DirectoryClient
    let timing: Timing
    let logger: Logger

    public init(store: Store, directory: DirectoryClient, timing: Timing = Timing(), logger: Logger = Logger(label: "portico.directory")) {
        self.store = store
        self.directory = directory
        self.timing = timing
        self.logger = logger
    }

    public func run() async throws {
        let settings = directory.settings
        guard settings.syncIntervalSeconds > 0 || !settings.operatorRoles.isEmpty else {
            // Nothing scheduled; the service lives as long as the others (a service that
            // returns early would stop the manager).
            try? await gracefulShutdown()
            return
        }
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                if settings.syncIntervalSeconds > 0 {
                    group.addTask {
                        while !Task.isCancelled {
                            do { _ = try await self.syncUsers() } catch { self.logger.error("the directory's users were not synced", metadata: ["error": "\(error)"]) }
                            try? await Task.sleep(for: .seconds(settings.syncIntervalSeconds))
                        }
                    }
                }
                if !settings.operatorRoles.isEmpty {
                    group.addTask {
                        while !Task.isCancelled {
                            do { _ = try await self.checkOperators() } catch { self.logger.error("the directory's operators were not checked", metadata: ["error": "\(error)"]) }
                            try? await Task.sleep(for: self.timing.operatorCheck)
                        }
                    }
                }
            }
        }
    }

    /// One sync: the users the directory's `user_filter` finds, a page at a time, saved as
    /// they come (no more than a page held); then the directory users it did not see removed.
    /// Returns nil when another manager of the site is syncing.
    @discardableResult
    public func syncUsers(pageSize: Int = 500, now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> DirectorySyncState? {
        let run = UUID().uuidString.lowercased()
        let hold = Int64(timing.claim.components.seconds) * 1000
        guard try await store.write({ try await $0.claimDirectorySync(run: run, now: now, holdFor: hold) }) else { return nil }
        let progress = NIOLockedValueBox((seen: 0, added: 0))
        let store = self.store
        do {
            try await directory.eachUserPage(pageSize: pageSize) { accounts in
                // The page is stored before the next is read: the directory's thread waits.
                let stored = DispatchSemaphore(value: 0)
                let outcome = NIOLockedValueBox<(any Error)?>(nil)
                Task {
                    do {
                        let added = try await store.write { transaction in
                            var added = 0
                            for account in accounts where (try? EndpointUser.validate(name: account.name)) != nil {
                                if try await transaction.saveDirectoryUser(name: account.name, dn: account.dn, displayName: account.displayName, groups: nil, run: run) { added += 1 }
                            }
                            return added
                        }
                        let (seen, total) = progress.withLockedValue { state in
                            state.seen += accounts.count
                            state.added += added
                            return (state.seen, state.added)
                        }
                        let at = Int64(HybridLogicalClock.wallMilliseconds())
                        try await store.write { try await $0.updateDirectorySync(run: run, seen: seen, added: total, removed: 0, state: "running", error: "", now: at, holdFor: hold) }
                    } catch {
                        outcome.withLockedValue { $0 = error }
                    }
                    stored.signal()
                }
                stored.wait()
                if let error = outcome.withLockedValue({ $0 }) { throw error }
            }
        } catch {
            let (seen, added) = progress.withLockedValue { ($0.seen, $0.added) }
            let message = (error as? DirectoryError)?.description ?? "\(error)"
            try await store.write { try await $0.updateDirectorySync(run: run, seen: seen, added: added, removed: 0, state: "failed", error: message, now: Int64(HybridLogicalClock.wallMilliseconds()), holdFor: 0) }
            throw error
        }
        let (seen, added) = progress.withLockedValue { ($0.seen, $0.added) }
        let finished = Int64(HybridLogicalClock.wallMilliseconds())
        let removed: [String] = try await store.write { transaction in
            // A sync that saw nobody removes nobody: more likely a filter gone wrong than an
            // empty directory.
            let gone = seen == 0 ? [] : try await transaction.removeDirectoryUsers(notSeenIn: run)
            try await transaction.updateDirectorySync(run: run, seen: seen, added: added, removed: gone.count, state: "done", error: "", now: finished, holdFor: 0)
            try await transaction.audit(AuditEntry(actor: "directory", action: "user.sync", target: "directory", source: "directory", result: "ok",
                                                   detail: "\(seen) seen, \(added) added, \(gone.count) removed"))
            return gone
        }
        logger.info("the directory's users synced", metadata: ["seen": "\(seen)", "added": "\(added)", "removed": "\(removed.count)"])
        return try await store.directorySync()
    }

    /// Checks every directory operator against the directory: one it no longer finds, finds
    /// disabled (outside `account_filter`) or in no mapped group loses its sessions. Returns
    /// the operators who did.
    @discardableResult
    public func checkOperators() async throws -> [String] {
        let operations = ManagerOperations(store: store, agent: nil)
        var refused: [String] = []
        for account in try await store.operators() where account.fromDirectory {
            // An unreachable directory proves nothing: the check waits for the next round.
            let found = try await directory.account(named: account.name)
            let reason: String? = if let found {
                directory.settings.role(forGroups: found.groups) == nil ? "in no directory group that maps to a role" : nil
            } else {
                "no longer found (or disabled) in the directory"
            }
            if let reason {
                if try await operations.directoryOperatorRefused(name: account.name, reason: reason) { refused.append(account.name) }
            } else if let found, let role = directory.settings.role(forGroups: found.groups), role != account.role {
                _ = try await operations.directoryOperatorSignedIn(name: account.name, role: role)
            }
        }
        return refused
    }
}
