import Foundation
import Logging
import PorticoStore
import ServiceLifecycle

/// Takes a snapshot of the fleet every hour, so that reports can show it day by day, and
/// keeps the database's query statistics up to date.
public final class FleetHistory: Service, Sendable {
    let store: Store
    let logger: Logger

    public init(store: Store, logger: Logger = Logger(label: "portico.reporting")) {
        self.store = store
        self.logger = logger
    }

    static func summary(_ store: Store, now: Int64) async throws -> FleetSummary {
        try await store.fleetSummary(onlineSince: now - 3_600_000, staleBefore: now - 7 * 86_400_000)
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                let now = Int64(HybridLogicalClock.wallMilliseconds())
                do { try await ManagerOperations(store: self.store, agent: nil).recordFleetSnapshot(try await Self.summary(self.store, now: now), at: now) } catch {
                    self.logger.error("fleet snapshot not recorded", metadata: ["error": "\(error)"])
                }
                do { try await self.store.optimize() } catch {
                    self.logger.warning("query statistics not updated", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: .seconds(3600))
            }
        }
    }
}
