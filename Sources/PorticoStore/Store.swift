import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresKit
import PostgresNIO
import SQLiteKit
import SQLiteNIO
import SQLKit

/// The manager's persistent state, on SQLite or PostgreSQL through one query layer.
///
/// Reads run on a pool; writes go through ``write(_:)``, which commits many callers'
/// writes in one transaction (each isolated by a savepoint) and returns to each caller
/// only after that transaction is durable.
public final class Store: Sendable {
    public let dialect: Dialect
    /// The site this manager belongs to; it is the origin of every local change.
    public let siteID: String
    public let clock: HybridLogicalClock
    /// Moves whenever a committed write has added to the change log (peers waiting for
    /// changes are answered at once).
    public let changeFeed = ChangeFeed()
    /// Devices to wake after writes commit (``WakeFeed``), this manager's and, on
    /// PostgreSQL, the other managers'.
    public let wakes = WakeFeed()
    /// Names this store's notifications, so that it skips its own when they come back.
    let instance = (0..<8).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.joined()
    let engine: Engine
    private let batcher: WriteBatcher
    private let listening = NIOLockedValueBox(Listening())

    /// The connection that listens for other managers' changes (PostgreSQL), started by the
    /// first wait for changes: managers without peers never hold it.
    private struct Listening {
        var task: Task<Void, Never>?
        var ready = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let logger: Logger

    enum Engine: Sendable {
        /// One connection for the writer, one for readers (WAL lets them run side by side).
        case sqlite(writer: SQLiteConnection, reader: SQLiteConnection)
        case postgres(PostgresClient, runner: Task<Void, Never>)
    }

    /// Opens the database and brings its schema up to date.
    /// - Throws: ``StoreError`` when the database was written by a newer schema.
    public static func open(_ configuration: StoreConfiguration, siteID: String, logger: Logger = Logger(label: "portico.store"), migrate: Bool = true) async throws -> Store {
        try await open(configuration, siteID: siteID, logger: logger, migrateUpTo: migrate ? Migrations.latest : nil)
    }

    /// Opens, migrating up to `migrateUpTo` (nil: not at all). Tests use it to make a
    /// database of an earlier version.
    static func open(_ configuration: StoreConfiguration, siteID: String, logger: Logger, migrateUpTo: Int?) async throws -> Store {
        let engine: Engine
        let dialect: Dialect
        switch configuration {
        case .sqlite(let path):
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            let writer = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
            let reader = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
            for connection in [writer, reader] {
                // WAL: readers never block the writer. FULL: a commit is on disk when it returns.
                _ = try await connection.query("PRAGMA journal_mode=WAL")
                _ = try await connection.query("PRAGMA synchronous=FULL")
                _ = try await connection.query("PRAGMA busy_timeout=10000")
                _ = try await connection.query("PRAGMA foreign_keys=ON")
            }
            // Reads map the file rather than copying each page through a system call: a
            // report over a million devices reads every device row.
            _ = try await reader.query("PRAGMA mmap_size=2147483648")
            engine = .sqlite(writer: writer, reader: reader)
            dialect = .sqlite
        case .postgres(let url, let poolSize):
            var postgres = try PostgresURL.configuration(url)
            postgres.options.maximumConnections = poolSize
            let client = PostgresClient(configuration: postgres, backgroundLogger: logger)
            // Started at once, so that the first query never finds the client not running yet.
            let runner = Task.immediate { await client.run() }
            engine = .postgres(client, runner: runner)
            dialect = .postgres
        }
        let store = Store(engine: engine, dialect: dialect, siteID: siteID, logger: logger)
        do {
            let version = try await store.schemaVersion()
            if version > Migrations.latest { throw StoreError.schemaTooNew(database: version, binary: Migrations.latest) }
            if let target = migrateUpTo { _ = try await store.migrate(upTo: target) }
            try await store.optimize()
        } catch {
            await store.close()
            throw error
        }
        return store
    }

    private init(engine: Engine, dialect: Dialect, siteID: String, logger: Logger) {
        self.engine = engine
        self.dialect = dialect
        self.siteID = siteID
        self.clock = HybridLogicalClock()
        self.logger = logger
        self.batcher = WriteBatcher(engine: engine, dialect: dialect, logger: logger)
    }

    /// Returns once a change has committed after `generation` of ``changeFeed`` (by this
    /// manager, or on PostgreSQL by any manager sharing the database), or after `timeout`.
    public func waitForChanges(past generation: UInt64, timeout: Duration) async {
        await listenForChanges()
        await changeFeed.wait(past: generation, timeout: timeout)
    }

    /// On PostgreSQL, other managers sharing the database commit changes too: one pooled
    /// connection listens for their notifications, moves the change feed and passes on the
    /// devices they wake (``wakes``), so that peers' long polls and agents' held waits are
    /// answered at once whichever manager made the change. Returns once the
    /// listener is in place (or has failed: then polls wait for their timeout).
    public func listenForChanges() async {
        guard case .postgres(let client, _) = engine else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = listening.withLockedValue { state -> Bool in
                if state.ready { return true }
                state.waiters.append(continuation)
                if state.task == nil { state.task = Task { await self.listen(client) } }
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    private func listen(_ client: PostgresClient) async {
        let feed = changeFeed
        let wakes = self.wakes
        let instance = self.instance
        while !Task.isCancelled {
            do {
                try await client.withConnection { connection in
                    let wakeNotifications = try await connection.listen("portico_wake")
                    try await connection.listen(on: "portico_changes") { notifications in
                        self.listenerReady()
                        try await withThrowingTaskGroup(of: Void.self) { group in
                            group.addTask { for try await _ in notifications { feed.signal() } }
                            group.addTask {
                                for try await notification in wakeNotifications {
                                    if let target = WakeFeed.target(ofPayload: notification.payload, skipping: instance) { wakes.deliver([target]) }
                                }
                            }
                            try await group.next()
                            group.cancelAll()
                        }
                    }
                }
            } catch is CancellationError {
                break
            } catch {
                listenerReady()  // waiters go on; their polls wait for the timeout meanwhile
                if Task.isCancelled { break }
                logger.warning("listening for other managers' changes failed; retrying", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
            }
        }
        listenerReady()
    }

    private func listenerReady() {
        let waiters = listening.withLockedValue { state in
            state.ready = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Brings the query planner's statistics up to date where they are missing or stale:
    /// SQLite's `PRAGMA optimize`, at open and then hourly, as SQLite advises for long-lived
    /// connections (PostgreSQL's autovacuum keeps its own). Without them SQLite plans joins
    /// by rule, which over a large fleet can start from the wrong table.
    public func optimize() async throws {
        guard case .sqlite = engine else { return }
        try await withSingleSession { db in try await db.raw("PRAGMA optimize=0x10002").run() }
    }

    /// Closes connections after writes already submitted have committed.
    public func close() async {
        if let task = listening.withLockedValue({ $0.task }) {
            task.cancel()
            await task.value
        }
        await batcher.finish()
        switch engine {
        case .sqlite(let writer, let reader):
            try? await writer.close()
            try? await reader.close()
        case .postgres(_, let runner):
            runner.cancel()
            await runner.value
        }
    }

    /// Runs queries that read.
    public func read<T: Sendable>(_ body: @escaping @Sendable (any SQLDatabase) async throws -> T) async throws -> T {
        switch engine {
        case .sqlite(_, let reader):
            return try await body(reader.sql())
        case .postgres(let client, _):
            return try await Self.withConnection(client) { connection in try await body(connection.sql()) }
        }
    }

    /// How long a caller waits for a PostgreSQL connection before it is told the database is
    /// unavailable. While the server is down or restarting, the pool keeps trying to connect
    /// and would hold every request until it succeeds; agents and the API get an answer
    /// instead, and try again later.
    static let connectionWait: Duration = .seconds(5)

    /// Runs `body` on a pooled connection, or throws ``StoreError`` `.unavailable` when none
    /// could be had within ``connectionWait``. Once `body` runs, it takes as long as it takes.
    static func withConnection<T: Sendable>(_ client: PostgresClient, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let leased = NIOLockedValueBox(false)
        return try await withThrowingTaskGroup(of: LeaseRace<T>.self) { group in
            group.addTask {
                .body(try await client.withConnection { connection in
                    leased.withLockedValue { $0 = true }
                    return try await body(connection)
                })
            }
            group.addTask {
                try? await Task.sleep(for: connectionWait)
                return .waited
            }
            while let finished = try await group.next() {
                switch finished {
                case .body(let value):
                    group.cancelAll()
                    return value
                case .waited:
                    guard leased.withLockedValue({ $0 }) || Task.isCancelled else {
                        group.cancelAll()
                        throw StoreError.unavailable("the database did not give a connection within \(connectionWait): it is down, restarting or overloaded")
                    }
                }
            }
            throw CancellationError()
        }
    }

    /// Runs `body` inside a group-committed transaction and returns once it is durable.
    /// A throwing `body` rolls back its own changes only; other callers in the batch commit.
    public func write<T: Sendable>(_ body: @escaping @Sendable (Transaction) async throws -> T) async throws -> T {
        let completion = WriteCompletion<T>()
        let job = WriteJob(
            execute: { [siteID, clock, dialect, changeFeed, wakes, instance] database in
                let effects = TransactionEffects()
                let value = try await body(Transaction(database: database, dialect: dialect, siteID: siteID, clock: clock, effects: effects, instance: instance))
                return {
                    if effects.loggedChange { changeFeed.signal() }
                    wakes.deliver(effects.woken)
                    completion.finish(.success(value))
                }
            },
            fail: { completion.finish(.failure($0)) }
        )
        try await batcher.submit(job)
        return try await completion.value
    }

    /// The schema version this binary writes.
    public static var latestSchemaVersion: Int { Migrations.latest }

    /// The highest schema version applied, 0 for an empty database.
    public func schemaVersion() async throws -> Int {
        try await withSingleSession { db in
            try await Self.ensureSchemaTable(db)
            let row = try await db.raw("SELECT MAX(version) AS version FROM portico_schema").first()
            return try row?.decode(column: "version", as: Int?.self) ?? 0
        }
    }

    /// Schema versions applied, with their names and when.
    public func appliedMigrations() async throws -> [(version: Int, name: String, appliedMilliseconds: Int64)] {
        try await read { db in
            try await db.raw("SELECT version, name, applied_ms FROM portico_schema ORDER BY version").all().map {
                (try $0.decode(column: "version", as: Int.self), try $0.decode(column: "name", as: String.self), try $0.decode(column: "applied_ms", as: Int64.self))
            }
        }
    }

    /// Applies every migration newer than the database, each in its own transaction.
    @discardableResult
    public func migrate() async throws -> [Int] {
        try await migrate(upTo: Migrations.latest)
    }

    func migrate(upTo target: Int) async throws -> [Int] {
        let dialect = self.dialect
        return try await withSingleSession { db in
            var applied: [Int] = []
            for migration in Migrations.all where migration.version <= target {
                let done = try await Self.inTransaction(db, dialect: dialect) { db -> Bool in
                    if dialect == .postgres {
                        // Several managers sharing a database start together: one migrates at a time.
                        try await db.raw("SELECT pg_advisory_xact_lock(7365402)").run()
                    }
                    let current = try await db.raw("SELECT MAX(version) AS version FROM portico_schema").first()?.decode(column: "version", as: Int?.self) ?? 0
                    if current > Migrations.latest { throw StoreError.schemaTooNew(database: current, binary: Migrations.latest) }
                    guard migration.version > current else { return false }
                    for statement in migration.statements(dialect) {
                        try await db.raw(SQLQueryString(statement)).run()
                    }
                    try await db.raw("INSERT INTO portico_schema (version, name, applied_ms) VALUES (\(bind: migration.version), \(bind: migration.name), \(bind: Int64(HybridLogicalClock.wallMilliseconds())))").run()
                    return true
                }
                if done { applied.append(migration.version) }
            }
            return applied
        }
    }

    /// Runs `body` on one connection that no one else uses meanwhile (the writer, on SQLite).
    private func withSingleSession<T: Sendable>(_ body: @escaping @Sendable (any SQLDatabase) async throws -> T) async throws -> T {
        switch engine {
        case .sqlite(let writer, _):
            return try await batcher.exclusive { try await body(writer.sql()) }
        case .postgres(let client, _):
            return try await Self.withConnection(client) { connection in try await body(connection.sql()) }
        }
    }

    static func ensureSchemaTable(_ db: any SQLDatabase) async throws {
        try await db.raw("CREATE TABLE IF NOT EXISTS portico_schema (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)").run()
    }

    /// BEGIN ... COMMIT around `body`, ROLLBACK when it throws.
    static func inTransaction<T: Sendable>(_ db: any SQLDatabase, dialect: Dialect, _ body: @Sendable (any SQLDatabase) async throws -> T) async throws -> T {
        try await db.raw(dialect == .sqlite ? "BEGIN IMMEDIATE" : "BEGIN").run()
        do {
            let value = try await body(db)
            try await db.raw("COMMIT").run()
            return value
        } catch {
            try? await db.raw("ROLLBACK").run()
            throw error
        }
    }
}

/// Which of a connection's lease and its deadline finished first.
enum LeaseRace<T: Sendable>: Sendable {
    case body(T)
    case waited
}

/// What a write sees: the database inside the batch's transaction, and what a replicated
/// change needs (origin site, clock).
public struct Transaction: Sendable {
    public let database: any SQLDatabase
    public let dialect: Dialect
    public let siteID: String
    let clock: HybridLogicalClock
    let effects: TransactionEffects
    let instance: String

    /// Wakes a device's held wait once this transaction commits, on every manager.
    public func wake(device id: String) async throws {
        try await notifyWake(.device(id))
    }

    /// Wakes every held wait once this transaction commits, on every manager (each wakes its
    /// own at its configured rate).
    public func wakeEveryDevice() async throws {
        try await notifyWake(.everyDevice)
    }

    private func notifyWake(_ target: WakeFeed.Target) async throws {
        guard effects.wake(target) else { return }
        if dialect == .postgres {
            try await database.raw("SELECT pg_notify('portico_wake', \(bind: WakeFeed.payload(target, from: instance)))").run()
        }
    }

    /// A hybrid-logical-clock timestamp for a change made now.
    public func timestamp() -> UInt64 { clock.now() }

    /// Appends to the change log, in this transaction, so that peers can stream the change.
    /// A local change also stamps the row with this site and `hlc` (the version peers
    /// compare), and a local delete leaves a tombstone so that an older update arriving
    /// later from a peer cannot bring the row back.
    public func logChange(entity: String, key: String, op: ChangeOperation, hlc: UInt64, origin: String? = nil) async throws {
        try await orderChangeLog()
        if origin == nil, let described = ReplicatedEntity.byName[entity], !described.history, let values = described.keyValues(key) {
            switch op {
            case .upsert:
                try await database.raw("""
                    UPDATE \(unsafeRaw: described.table) SET origin_site = \(bind: siteID), hlc = \(bind: Int64(bitPattern: hlc)) WHERE \(described.keyCondition(values))
                    """).run()
            case .delete:
                try await recordTombstone(entity: entity, key: key, origin: siteID, hlc: hlc)
            }
        }
        try await database.raw("""
            INSERT INTO change_log (entity, entity_key, op, origin_site, hlc)
            VALUES (\(bind: entity), \(bind: key), \(bind: op.rawValue), \(bind: origin ?? siteID), \(bind: Int64(bitPattern: hlc)))
            """).run()
        effects.changeLogged()
    }

    /// Appends many upserts of one entity with one origin and clock (events of a batch).
    func logChanges(entity: String, keys: [String], hlc: UInt64, origin: String) async throws {
        try await logChanges(keys.map { ChangeRecord(sequence: 0, entity: entity, key: $0, op: .upsert, originSite: origin, hlc: hlc) })
    }

    /// Appends changes whose rows are already written and stamped (applied from a peer, or
    /// new history), many per statement.
    func logChanges(_ changes: [ChangeRecord]) async throws {
        guard !changes.isEmpty else { return }
        try await orderChangeLog()
        for chunk in stride(from: 0, to: changes.count, by: 200).map({ changes[$0..<min($0 + 200, changes.count)] }) {
            let rows = chunk.map { change in
                SQLGroupExpression([SQLBind(change.entity), SQLBind(change.key), SQLBind(change.op.rawValue), SQLBind(change.originSite),
                                    SQLBind(Int64(bitPattern: change.hlc))] as [any SQLExpression])
            }
            try await database.raw("INSERT INTO change_log (entity, entity_key, op, origin_site, hlc) VALUES \(SQLList(rows))").run()
        }
        effects.changeLogged()
    }

    /// Writes (or moves forward) a deleted row's tombstone; true when it changed.
    @discardableResult
    func recordTombstone(entity: String, key: String, origin: String, hlc: UInt64) async throws -> Bool {
        let written = try await database.raw("""
            INSERT INTO tombstones (entity, entity_key, origin_site, hlc) VALUES (\(bind: entity), \(bind: key), \(bind: origin), \(bind: Int64(bitPattern: hlc)))
            ON CONFLICT (entity, entity_key) DO UPDATE SET origin_site = excluded.origin_site, hlc = excluded.hlc
            WHERE excluded.hlc > tombstones.hlc OR (excluded.hlc = tombstones.hlc AND excluded.origin_site > tombstones.origin_site)
            RETURNING hlc
            """).all()
        return !written.isEmpty
    }

    /// The change log's sequence must follow commit order, or a peer reading past a
    /// sequence number could miss a row that commits later with a smaller one. SQLite has one
    /// writer; on PostgreSQL, managers sharing the database take turns appending.
    private func orderChangeLog() async throws {
        if dialect == .postgres {
            // The notification is delivered at commit, to every manager sharing the database.
            try await database.raw("SELECT pg_advisory_xact_lock(7365403), pg_notify('portico_changes', '')").run()
        }
    }
}

/// What a write did that matters once it has committed.
final class TransactionEffects: Sendable {
    private let logged = NIOLockedValueBox(false)
    private let wakes = NIOLockedValueBox<[WakeFeed.Target]>([])
    func changeLogged() { logged.withLockedValue { $0 = true } }
    var loggedChange: Bool { logged.withLockedValue { $0 } }
    /// Records a device to wake; false when it was recorded already.
    func wake(_ target: WakeFeed.Target) -> Bool {
        wakes.withLockedValue { list in
            if list.contains(target) { return false }
            list.append(target)
            return true
        }
    }
    var woken: [WakeFeed.Target] { wakes.withLockedValue { $0 } }
}

/// What happened to a row.
public enum ChangeOperation: String, Sendable {
    case upsert
    case delete
}

/// Reads `postgres://user:password@host:port/database?sslmode=disable|require`.
enum PostgresURL {
    static func configuration(_ text: String) throws -> PostgresClient.Configuration {
        guard let url = URLComponents(string: text), url.scheme == "postgres" || url.scheme == "postgresql",
              let host = url.host, !host.isEmpty, let user = url.user
        else {
            throw StoreError.invalid("storage.postgres.url", "must look like postgres://user:password@host:5432/database")
        }
        let database = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : nil
        let sslMode = url.queryItems?.first { $0.name == "sslmode" }?.value ?? "disable"
        let tls: PostgresClient.Configuration.TLS
        switch sslMode {
        case "disable": tls = .disable
        case "prefer": tls = .prefer(.makeClientConfiguration())
        case "require": tls = .require(.makeClientConfiguration())
        default: throw StoreError.invalid("storage.postgres.url", "sslmode must be disable, prefer or require, not \(sslMode)")
        }
        return PostgresClient.Configuration(host: host, port: url.port ?? 5432, username: user, password: url.password, database: database?.isEmpty == false ? database : nil, tls: tls)
    }
}

/// A write's outcome, handed from the batch's commit to its caller. The caller resumes straight
/// from the commit, on its own executor (a promise completed on an event loop of NIO's took one
/// more thread on the way back).
final class WriteCompletion<T: Sendable>: Sendable {
    private enum State {
        case pending
        case waiting(CheckedContinuation<T, any Error>)
        case done(Result<T, any Error>)
    }
    private let state = NIOLockedValueBox(State.pending)

    func finish(_ result: Result<T, any Error>) {
        let waiter: CheckedContinuation<T, any Error>? = state.withLockedValue { state in
            switch state {
            case .pending:
                state = .done(result)
                return nil
            case .waiting(let continuation):
                state = .done(result)
                return continuation
            case .done:
                return nil
            }
        }
        waiter?.resume(with: result)
    }

    var value: T {
        get async throws {
            try await withCheckedThrowingContinuation { continuation in
                let ready: Result<T, any Error>? = state.withLockedValue { state in
                    if case .done(let result) = state { return result }
                    state = .waiting(continuation)
                    return nil
                }
                if let ready { continuation.resume(with: ready) }
            }
        }
    }
}
