import Logging
import NIOCore
import PostgresKit
import SQLiteKit
import SQLKit

/// One caller's write in a batch. `execute` runs inside the batch's transaction and returns
/// what to do once the batch has committed (resume the caller with its value).
struct WriteJob: Sendable {
    let execute: @Sendable (any SQLDatabase) async throws -> @Sendable () -> Void
    let fail: @Sendable (any Error) -> Void
}

/// Group commit: writes that arrive while a transaction is committing wait and go together
/// in the next one, so many callers share one fsync. A write that throws is undone alone.
actor WriteBatcher {
    private let engine: Store.Engine
    private let dialect: Dialect
    private let logger: Logger
    private var pending: [WriteJob] = []
    private var worker: Task<Void, Never>?
    private var closed = false
    /// Upper bound on the writes in one transaction.
    private let maxBatch = 2048

    init(engine: Store.Engine, dialect: Dialect, logger: Logger) {
        self.engine = engine
        self.dialect = dialect
        self.logger = logger
    }

    func submit(_ job: WriteJob) throws {
        guard !closed else { throw StoreError.unavailable("the store is closed") }
        pending.append(job)
        if worker == nil {
            worker = Task { await self.drain() }
        }
    }

    /// Runs `body` with the writer to itself (no batch in progress), e.g. for migrations.
    func exclusive<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        if let worker { await worker.value }
        return try await body()
    }

    /// Commits what is queued and refuses further writes.
    func finish() async {
        closed = true
        if let worker { await worker.value }
    }

    private func drain() async {
        while !pending.isEmpty {
            let batch = Array(pending.prefix(maxBatch))
            pending.removeFirst(batch.count)
            await commit(batch)
        }
        worker = nil
    }

    /// What became of one job inside the transaction; delivered only after it ends.
    private enum Outcome: Sendable {
        case done(@Sendable () -> Void)
        case failed(any Error)
    }

    /// A job threw while the batch ran without savepoints: the batch is redone with them.
    private struct JobFailed: Error {}

    /// Commits a batch. First optimistically, with no savepoints (most writes succeed, and a
    /// savepoint costs two statements per write); if any write throws, the transaction is
    /// rolled back and the batch runs again with each write in its own savepoint, so that
    /// the failure stays its own. Writes only touch the database, so running one twice
    /// before a commit is harmless.
    private func commit(_ batch: [WriteJob]) async {
        let dialect = self.dialect
        let outcomes: [Outcome]
        do {
            do {
                outcomes = try await withWriter { db in
                    try await Store.inTransaction(db, dialect: dialect) { db -> [Outcome] in
                        var outcomes: [Outcome] = []
                        outcomes.reserveCapacity(batch.count)
                        for job in batch {
                            do { outcomes.append(.done(try await job.execute(db))) } catch { throw JobFailed() }
                        }
                        return outcomes
                    }
                }
            } catch is JobFailed {
                outcomes = try await withWriter { db in
                    try await Store.inTransaction(db, dialect: dialect) { db -> [Outcome] in
                        var outcomes: [Outcome] = []
                        outcomes.reserveCapacity(batch.count)
                        for job in batch {
                            try await db.raw("SAVEPOINT w").run()
                            do {
                                outcomes.append(.done(try await job.execute(db)))
                                try await db.raw("RELEASE SAVEPOINT w").run()
                            } catch {
                                try await db.raw("ROLLBACK TO SAVEPOINT w").run()
                                try await db.raw("RELEASE SAVEPOINT w").run()
                                outcomes.append(.failed(error))
                            }
                        }
                        return outcomes
                    }
                }
            }
        } catch {
            logger.error("a write transaction failed; its writes were not stored", metadata: ["writes": "\(batch.count)", "error": "\(error)"])
            for job in batch { job.fail(error) }
            return
        }
        // Durable now: answer each caller once.
        for (job, outcome) in zip(batch, outcomes) {
            switch outcome {
            case .done(let complete): complete()
            case .failed(let error): job.fail(error)
            }
        }
    }

    private func withWriter<T: Sendable>(_ body: @escaping @Sendable (any SQLDatabase) async throws -> T) async throws -> T {
        switch engine {
        case .sqlite(let writer, _):
            return try await body(writer.sql())
        case .postgres(let client, _):
            return try await Store.withConnection(client) { connection in try await body(connection.sql()) }
        }
    }
}
