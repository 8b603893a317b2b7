import ArgumentParser
import Foundation
import Logging
import PorticoGateway
import PorticoManager
import PorticoServer
import PorticoStore

struct Database: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db", abstract: "Work with the manager's database.", subcommands: [Migrate.self, Status.self])

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Apply the schema migrations this binary knows to the database.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            try await withStore(options, migrate: false) { store, config in
                let before = try await store.schemaVersion()
                let applied = try await store.migrate()
                writeLine(applied.isEmpty ? "already at schema version \(before)" : "migrated \(config.storeConfiguration.redacted) from schema version \(before) to \(applied.last!)")
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the database, its schema version and what this binary would apply.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            try await withStore(options, migrate: false) { store, config in
                let version = try await store.schemaVersion()
                writeLine("database: \(config.storeConfiguration.redacted)")
                writeLine("schema version: \(version) (this binary: \(Store.latestSchemaVersion))")
                for migration in try await store.appliedMigrations() {
                    writeLine("  applied \(migration.version): \(migration.name)")
                }
                let pending = Store.latestSchemaVersion - version
                writeLine(pending > 0 ? "pending: \(pending) migration\(pending == 1 ? "" : "s") (run portico db migrate, or start serve)" : "pending: none")
            }
        }
    }
}

/// Opens the configured store, runs `body`, and closes the store whatever happens; an error
/// is printed as a sentence and becomes exit status 1.
func withStore<T>(_ options: ConfigOptions, migrate: Bool = true, _ body: (Store, ManagerConfiguration) async throws -> T) async throws -> T {
    let config = try loadOrExit(options)
    let store = try await openOrExit(config, migrate: migrate)
    do {
        let result = try await body(store, config)
        await store.close()
        return result
    } catch let exit as ExitCode {
        await store.close()
        throw exit
    } catch {
        await store.close()
        printError("portico: \(error)")
        throw ExitCode(1)
    }
}

func loadOrExit(_ options: ConfigOptions) throws -> ManagerConfiguration {
    do {
        return try options.load()
    } catch {
        printError("portico: the configuration from \(options.sourceDescription) cannot be used:\n\(error)")
        throw ExitCode(1)
    }
}

func openOrExit(_ config: ManagerConfiguration, migrate: Bool) async throws -> Store {
    var logger = Logger(label: "portico.store")
    logger.logLevel = .warning
    do {
        return try await Store.open(config.storeConfiguration, siteID: config.siteName, logger: logger, migrate: migrate)
    } catch {
        printError("portico: cannot open the database \(config.storeConfiguration.redacted): \(error)")
        throw ExitCode(1)
    }
}
