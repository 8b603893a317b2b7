import Foundation
import Logging
import PostgresNIO
import SQLKit
import Testing

@testable import PorticoStore

/// The engines every store test runs on: SQLite always, PostgreSQL when
/// PORTICO_TEST_POSTGRES_URL names a server (CI sets it).
enum Engines {
    static let postgresURL = ProcessInfo.processInfo.environment["PORTICO_TEST_POSTGRES_URL"]

    static var all: [Dialect] {
        postgresURL == nil ? [.sqlite] : [.sqlite, .postgres]
    }

    static var logger: Logger {
        var logger = Logger(label: "portico-store-test")
        logger.logLevel = .critical
        return logger
    }

    /// A fresh, empty database of the engine for one test, removed afterwards.
    static func withDatabase<T>(_ dialect: Dialect, _ body: (StoreConfiguration) async throws -> T) async throws -> T {
        switch dialect {
        case .sqlite:
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("portico-store-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: dir) }
            return try await body(.sqlite(path: dir + "/portico.sqlite"))
        case .postgres:
            let admin = try #require(postgresURL)
            let name = "portico_test_\(UUID().uuidString.prefix(8).lowercased())"
            try await adminQuery(admin, "CREATE DATABASE \(name)")
            do {
                let result = try await body(.postgres(url: replacingDatabase(in: admin, with: name), poolSize: 4))
                try await adminQuery(admin, "DROP DATABASE \(name) WITH (FORCE)")
                return result
            } catch let error as PSQLError {
                try? await adminQuery(admin, "DROP DATABASE \(name) WITH (FORCE)")
                // PSQLError's description hides the server's message; a failing test should show it.
                throw DescribedError(description: String(reflecting: error))
            } catch {
                try? await adminQuery(admin, "DROP DATABASE \(name) WITH (FORCE)")
                throw error
            }
        }
    }

    /// Opens a store on a fresh database for one test.
    static func withStore<T>(_ dialect: Dialect, site: String = "site-a", _ body: (Store) async throws -> T) async throws -> T {
        try await withDatabase(dialect) { configuration in
            let store = try await Store.open(configuration, siteID: site, logger: logger)
            do {
                let result = try await body(store)
                await store.close()
                return result
            } catch {
                await store.close()
                throw error
            }
        }
    }

    static func replacingDatabase(in url: String, with name: String) -> String {
        var components = URLComponents(string: url)!
        components.path = "/" + name
        return components.string!
    }

    private static func adminQuery(_ url: String, _ sql: String) async throws {
        let client = PostgresClient(configuration: try PostgresURL.configuration(url), backgroundLogger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            try await client.query(PostgresQuery(unsafeSQL: sql))
            group.cancelAll()
        }
    }
}

/// An error whose description is the detail another error keeps out of its own.
struct DescribedError: Error, CustomStringConvertible {
    let description: String
}
