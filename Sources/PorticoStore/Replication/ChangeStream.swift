import Crypto
import Foundation
import SQLKit

/// One change as peers exchange it: where it sits in the sending site's log, what it
/// changed, where and when it was first made, and the row as it is now (none for a delete):
/// the values of the entity's replicated columns, in the order both sides know (managers of
/// one schema version describe every entity alike).
public struct ReplicatedChange: Sendable, Equatable {
    public var sequence: Int64
    public var entity: String
    public var key: String
    public var op: String
    public var origin: String
    public var hlc: UInt64
    public var row: [ReplicatedValue]?
}

/// A page of a site's change log.
public struct ChangeBatch: Sendable, Equatable {
    /// The site whose log this is.
    public var siteID: String
    /// The last sequence number in the log when the page was read.
    public var head: Int64
    /// Where the next page starts: every change up to here has been looked at (some are
    /// left out: the asker's own, superseded ones, history it does not take).
    public var next: Int64
    public var changes: [ReplicatedChange]

    public init(siteID: String, head: Int64, next: Int64, changes: [ReplicatedChange]) {
        self.siteID = siteID
        self.head = head
        self.next = next
        self.changes = changes
    }
}

/// How far this manager has applied a peer site's log.
public struct ReplicationCursor: Sendable, Equatable {
    public var siteID: String
    public var position: Int64
    /// The peer's last sequence number when it was last asked.
    public var head: Int64
    /// The clock of the newest change applied from it.
    public var lastHLC: UInt64
    public var updatedMilliseconds: Int64

    /// Log entries still to look at.
    public var behind: Int64 { max(0, head - position) }
}

/// What applying a page did.
public struct ApplyOutcome: Sendable, Equatable {
    /// Changes that were newer than this site's rows and are now stored.
    public var applied = 0
    /// Changes this site already had, or older than what it has.
    public var skipped = 0
    /// Same-name creations renamed `Name ~N`.
    public var renamed = 0
}

/// Per entity, how many rows and an order-independent hash of their keys and versions.
public struct EntityDigest: Codable, Sendable, Equatable {
    public var count: Int
    public var hash: String
}

extension Store {
    /// A page of this site's change log after `after`, with each change's current row.
    /// - Parameters:
    ///   - excludingOrigin: the asking site: its own changes are not sent back to it.
    ///   - history: whether events and audit entries are included.
    public func changeBatch(after: Int64, excludingOrigin: String?, history: Bool, limit: Int = 1000) async throws -> ChangeBatch {
        let siteID = self.siteID
        return try await read { db in
            let head = try await db.raw("SELECT MAX(seq) AS head FROM change_log").first()?.decode(column: "head", as: Int64?.self) ?? 0
            guard head > after else { return ChangeBatch(siteID: siteID, head: head, next: max(after, head), changes: []) }
            var query = SQLQueryString("SELECT seq, entity, entity_key, op, origin_site, hlc FROM change_log WHERE seq > \(bind: after) AND seq <= \(bind: head)")
            if let excludingOrigin { query.appendInterpolation(unsafeRaw: " AND origin_site <> "); query.appendInterpolation(bind: excludingOrigin) }
            if !history {
                query.appendInterpolation(unsafeRaw: " AND entity NOT IN (" + ReplicatedEntity.historyNames.map { "'\($0)'" }.joined(separator: ", ") + ")")
            }
            query.appendInterpolation(unsafeRaw: " ORDER BY seq LIMIT "); query.appendInterpolation(bind: limit)
            let entries = try await db.raw(query).all().map(ChangeRecord.init(row:))
            let next = entries.count < limit ? head : entries.last?.sequence ?? head
            var changes: [ReplicatedChange] = []
            changes.reserveCapacity(entries.count)
            let rows = try await Self.currentRows(of: entries.filter { $0.op == .upsert }, in: db)
            let tombstones = try await Self.tombstones(of: entries.filter { $0.op == .delete }, in: db)
            for entry in entries {
                switch entry.op {
                case .upsert:
                    // Superseded entries are left out: the row's later change follows in the log.
                    guard let row = rows[EntityKey(entity: entry.entity, key: entry.key)], row.hlc == entry.hlc else { continue }
                    changes.append(ReplicatedChange(sequence: entry.sequence, entity: entry.entity, key: entry.key, op: entry.op.rawValue,
                                                    origin: row.origin, hlc: entry.hlc, row: row.values))
                case .delete:
                    guard let tombstone = tombstones[EntityKey(entity: entry.entity, key: entry.key)], tombstone.hlc == entry.hlc else { continue }
                    changes.append(ReplicatedChange(sequence: entry.sequence, entity: entry.entity, key: entry.key, op: entry.op.rawValue,
                                                    origin: tombstone.origin, hlc: entry.hlc, row: nil))
                }
            }
            return ChangeBatch(siteID: siteID, head: head, next: next, changes: changes)
        }
    }

    struct EntityKey: Hashable {
        let entity: String
        let key: String
    }

    struct Versioned {
        let origin: String
        let hlc: UInt64
        var values: [ReplicatedValue] = []
    }

    /// The current rows behind upsert entries, by entity and key. Single-column keys are
    /// read many at a time.
    private static func currentRows(of entries: [ChangeRecord], in db: any SQLDatabase) async throws -> [EntityKey: Versioned] {
        var found: [EntityKey: Versioned] = [:]
        for (name, group) in Dictionary(grouping: entries, by: \.entity) {
            guard let entity = ReplicatedEntity.byName[name] else { continue }
            let keys = Array(Set(group.map(\.key)))
            let selected = (entity.key + entity.columns).map(\.name).joined(separator: ", ") + ", origin_site, hlc"
            var rows: [any SQLRow] = []
            if entity.key.count == 1 {
                for chunk in stride(from: 0, to: keys.count, by: 500).map({ keys[$0..<min($0 + 500, keys.count)] }) {
                    let list = SQLList(chunk.map { SQLBind($0) as any SQLExpression })
                    rows += try await db.raw("SELECT \(unsafeRaw: selected) FROM \(unsafeRaw: entity.table) WHERE \(unsafeRaw: entity.key[0].name) IN (\(list))").all()
                }
            } else {
                let parsed = keys.compactMap(entity.keyValues)
                for chunk in stride(from: 0, to: parsed.count, by: 100).map({ parsed[$0..<min($0 + 100, parsed.count)] }) {
                    var condition = SQLQueryString("")
                    for (index, values) in chunk.enumerated() {
                        if index > 0 { condition.appendInterpolation(unsafeRaw: " OR ") }
                        condition.appendInterpolation(unsafeRaw: "(")
                        condition.appendInterpolation(entity.keyCondition(values))
                        condition.appendInterpolation(unsafeRaw: ")")
                    }
                    rows += try await db.raw("SELECT \(unsafeRaw: selected) FROM \(unsafeRaw: entity.table) WHERE \(condition)").all()
                }
            }
            for row in rows {
                var versioned = Versioned(origin: try row.decode(column: "origin_site", as: String.self), hlc: UInt64(bitPattern: try row.decode(column: "hlc", as: Int64.self)))
                versioned.values = try entity.columns.map { try ReplicatedValue(row: row, column: $0) }
                found[EntityKey(entity: name, key: try entity.keyString(of: row))] = versioned
            }
        }
        return found
    }

    private static func tombstones(of entries: [ChangeRecord], in db: any SQLDatabase) async throws -> [EntityKey: Versioned] {
        var found: [EntityKey: Versioned] = [:]
        for (entity, group) in Dictionary(grouping: entries, by: \.entity) {
            for (key, version) in try await tombstones(entity: entity, keys: group.map(\.key), in: db) { found[EntityKey(entity: entity, key: key)] = version }
        }
        return found
    }

    /// The tombstones of some keys of one entity, by key.
    static func tombstones(entity: String, keys: [String], in db: any SQLDatabase) async throws -> [String: Versioned] {
        var found: [String: Versioned] = [:]
        for chunk in stride(from: 0, to: keys.count, by: 500).map({ keys[$0..<min($0 + 500, keys.count)] }) {
            let list = SQLList(chunk.map { SQLBind($0) as any SQLExpression })
            for row in try await db.raw("SELECT entity_key, origin_site, hlc FROM tombstones WHERE entity = \(bind: entity) AND entity_key IN (\(list))").all() {
                found[try row.decode(column: "entity_key", as: String.self)] = Versioned(origin: try row.decode(column: "origin_site", as: String.self),
                                                                                          hlc: UInt64(bitPattern: try row.decode(column: "hlc", as: Int64.self)))
            }
        }
        return found
    }

    /// Applies a page from a peer site in one transaction, with the cursor moved in the
    /// same transaction: a page applied twice changes nothing the second time.
    public func apply(_ batch: ChangeBatch, history: Bool = true) async throws -> ApplyOutcome {
        guard batch.siteID != siteID else { throw StoreError.invalid("changes.site_id", "is this manager's own site") }
        for change in batch.changes { try Self.check(change) }
        return try await write { transaction in
            var outcome = ApplyOutcome()
            var movesSerial = false
            let relevant = batch.changes.filter { change in
                change.origin != transaction.siteID && ReplicatedEntity.byName[change.entity].map { !$0.history || history } == true
            }
            let newest = relevant.map(\.hlc).max() ?? 0
            transaction.clock.observe(newest)
            // Runs of one entity and operation go together: upserts as a few multi-row statements.
            var start = 0
            while start < relevant.count {
                let entity = ReplicatedEntity.byName[relevant[start].entity]!
                let op = relevant[start].op
                var end = start + 1
                while end < relevant.count, end - start < 200, relevant[end].entity == entity.name, relevant[end].op == op { end += 1 }
                let run = Array(relevant[start..<end])
                start = end
                var results: [ApplyResult] = []
                if op == ChangeOperation.delete.rawValue {
                    for change in run { results.append(try await transaction.applyDelete(change, of: entity)) }
                } else {
                    results = try await transaction.applyUpserts(run, of: entity)
                }
                if entity.name == "command" {
                    try await transaction.wakeDevices(ofQueuedCommands: zip(run, results).filter { $0.1 != .skipped }.map(\.0), of: entity)
                }
                for result in results {
                    switch result {
                    case .skipped: outcome.skipped += 1
                    case .applied: outcome.applied += 1
                    case .renamed: outcome.applied += 1; outcome.renamed += 1
                    }
                    if result != .skipped && entity.movesPolicySerial { movesSerial = true }
                }
            }
            if movesSerial { try await Store.bumpPolicySerial(transaction) }
            try await transaction.database.raw("""
                INSERT INTO replication_cursors (site_id, position, head, last_hlc, updated_ms)
                VALUES (\(bind: batch.siteID), \(bind: batch.next), \(bind: batch.head), \(bind: Int64(bitPattern: newest)), \(bind: Int64(HybridLogicalClock.wallMilliseconds())))
                ON CONFLICT (site_id) DO UPDATE SET
                    position = CASE WHEN excluded.position > replication_cursors.position THEN excluded.position ELSE replication_cursors.position END,
                    head = excluded.head, updated_ms = excluded.updated_ms,
                    last_hlc = CASE WHEN excluded.last_hlc > replication_cursors.last_hlc THEN excluded.last_hlc ELSE replication_cursors.last_hlc END
                """).run()
            return outcome
        }
    }

    /// Refuses a change that does not have its entity's shape, before anything is written.
    private static func check(_ change: ReplicatedChange) throws {
        guard let entity = ReplicatedEntity.byName[change.entity] else {
            throw StoreError.invalid("change.entity", "\(change.entity) is not something this manager replicates")
        }
        guard entity.keyValues(change.key) != nil else { throw StoreError.invalid("change.key", "\(change.key) is not a key of \(change.entity)") }
        guard !change.origin.isEmpty, change.origin.utf8.count <= 128 else { throw StoreError.invalid("change.origin", "must be 1 to 128 bytes") }
        switch change.op {
        case ChangeOperation.delete.rawValue:
            guard !entity.history else { throw StoreError.invalid("change.op", "\(change.entity) is never deleted") }
        case ChangeOperation.upsert.rawValue:
            guard let row = change.row, row.count == entity.columns.count else {
                throw StoreError.invalid("change.row", "does not have the \(entity.columns.count) columns of \(change.entity) \(change.key)")
            }
            for (column, value) in zip(entity.columns, row) {
                guard value.fits(column) else {
                    throw StoreError.invalid("change.row.\(column.name)", "does not fit \(change.entity) \(change.key)")
                }
            }
        default:
            throw StoreError.invalid("change.op", "must be upsert or delete, not \(change.op)")
        }
    }

    /// This site's replication cursors, by peer site.
    public func replicationCursors() async throws -> [String: ReplicationCursor] {
        try await read { db in
            var cursors: [String: ReplicationCursor] = [:]
            for row in try await db.raw("SELECT site_id, position, head, last_hlc, updated_ms FROM replication_cursors").all() {
                let cursor = ReplicationCursor(siteID: try row.decode(column: "site_id", as: String.self), position: try row.decode(column: "position", as: Int64.self),
                                               head: try row.decode(column: "head", as: Int64.self), lastHLC: UInt64(bitPattern: try row.decode(column: "last_hlc", as: Int64.self)),
                                               updatedMilliseconds: try row.decode(column: "updated_ms", as: Int64.self))
                cursors[cursor.siteID] = cursor
            }
            return cursors
        }
    }

    /// Takes or renews the right to pull a peer site's log, for managers of one site sharing
    /// a database: one pulls, the others stand by and take over when its lease runs out.
    /// - Returns: whether `holder` has it, and who does.
    public func holdReplicationLease(site: String, holder: String, forMilliseconds duration: Int64) async throws -> (held: Bool, holder: String) {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        return try await write { transaction in
            let taken = try await transaction.database.raw("""
                INSERT INTO replication_leases (site_id, holder, until_ms) VALUES (\(bind: site), \(bind: holder), \(bind: now + duration))
                ON CONFLICT (site_id) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                WHERE replication_leases.holder = excluded.holder OR replication_leases.until_ms < \(bind: now)
                RETURNING holder
                """).all()
            if !taken.isEmpty { return (true, holder) }
            let current = try await transaction.database.raw("SELECT holder FROM replication_leases WHERE site_id = \(bind: site)").first()
            return (false, try current?.decode(column: "holder", as: String.self) ?? "")
        }
    }

    /// Gives the lease up (a manager stopping), so that another takes over at once.
    public func releaseReplicationLease(site: String, holder: String) async throws {
        try await write { transaction in
            try await transaction.database.raw("DELETE FROM replication_leases WHERE site_id = \(bind: site) AND holder = \(bind: holder)").run()
        }
    }

    /// The last sequence number of this site's change log.
    public func changeLogHead() async throws -> Int64 {
        try await read { db in try await db.raw("SELECT MAX(seq) AS head FROM change_log").first()?.decode(column: "head", as: Int64?.self) ?? 0 }
    }

    /// Per replicated entity (not history), the row count and an order-independent hash of
    /// every row's key, version and origin: two sites that agree have equal digests.
    public func replicationDigest() async throws -> [String: EntityDigest] {
        try await read { db in
            var digests: [String: EntityDigest] = [:]
            for entity in ReplicatedEntity.all where !entity.history {
                var accumulator = [UInt8](repeating: 0, count: 32)
                var count = 0
                let selected = entity.key.map(\.name).joined(separator: ", ")
                for row in try await db.raw("SELECT \(unsafeRaw: selected), origin_site, hlc FROM \(unsafeRaw: entity.table)").all() {
                    var line = entity.name
                    for column in entity.key {
                        switch try ReplicatedValue(row: row, column: column) {
                        case .integer(let number): line += "|" + String(number)
                        case .text(let text): line += "|" + text
                        case .null: line += "|"
                        }
                    }
                    line += "|" + String(try row.decode(column: "hlc", as: Int64.self)) + "|" + (try row.decode(column: "origin_site", as: String.self))
                    for (index, byte) in SHA256.hash(data: Array(line.utf8)).enumerated() { accumulator[index] ^= byte }
                    count += 1
                }
                digests[entity.name] = EntityDigest(count: count, hash: accumulator.map { String(format: "%02x", $0) }.joined())
            }
            return digests
        }
    }
}

enum ApplyResult: Equatable { case skipped, applied, renamed }

extension Transaction {
    /// A command queued at a peer site reaches its device's held wait as one queued here does.
    fileprivate func wakeDevices(ofQueuedCommands changes: [ReplicatedChange], of entity: ReplicatedEntity) async throws {
        guard let deviceIndex = entity.columnIndex("device_id"), let stateIndex = entity.columnIndex("state") else { return }
        for change in changes where change.row?[stateIndex].text == CommandState.pending.rawValue {
            if let device = change.row?[deviceIndex].text { try await wake(device: device) }
        }
    }

    /// Stores a peer's row if it is newer (by clock, then site) than this site's row and
    /// than any tombstone of it; logs it, with its origin, for the peers after this one.
    fileprivate func applyUpsert(_ change: ReplicatedChange, of entity: ReplicatedEntity) async throws -> ApplyResult {
        guard let keyValues = entity.keyValues(change.key), var row = change.row else { return .skipped }
        var origin = change.origin
        var hlc = change.hlc
        var result = ApplyResult.applied
        if entity.uniqueName, let nameIndex = entity.columnIndex("name"), let name = row[nameIndex].text {
            // Would it apply at all?
            if let mine = try await database.raw("SELECT origin_site, hlc FROM \(unsafeRaw: entity.table) WHERE \(entity.keyCondition(keyValues))").first() {
                let version = (UInt64(bitPattern: try mine.decode(column: "hlc", as: Int64.self)), try mine.decode(column: "origin_site", as: String.self))
                if !Self.newer((hlc, origin), than: version) { return .skipped }
            }
            if let other = try await database.raw("""
                SELECT \(unsafeRaw: entity.key[0].name) AS id, created_hlc FROM \(unsafeRaw: entity.table) WHERE name = \(bind: name) AND \(unsafeRaw: entity.key[0].name) <> \(bind: change.key)
                """).first() {
                // Same name, another object: the later creation (clock, then id) becomes `Name ~N`, the same choice on every site.
                let otherID = try other.decode(column: "id", as: String.self)
                let otherCreated = try other.decode(column: "created_hlc", as: Int64.self)
                let incomingCreated: Int64 = if let index = entity.columnIndex("created_hlc"), case .integer(let created) = row[index] { created } else { 0 }
                let renamed = try await freeName(after: name, in: entity)
                if (incomingCreated, change.key) > (otherCreated, otherID) {
                    row[nameIndex] = .text(renamed)
                    hlc = timestamp()
                    origin = siteID
                } else {
                    let renameHLC = timestamp()
                    try await database.raw("""
                        UPDATE \(unsafeRaw: entity.table) SET name = \(bind: renamed), origin_site = \(bind: siteID), hlc = \(bind: Int64(bitPattern: renameHLC))
                        WHERE \(unsafeRaw: entity.key[0].name) = \(bind: otherID)
                        """).run()
                    try await logChange(entity: entity.name, key: otherID, op: .upsert, hlc: renameHLC, origin: siteID)
                }
                result = .renamed
            }
        }
        let written = try await database.raw(upsertStatement(entity, keyValues: keyValues, row: row, origin: origin, hlc: hlc, key: change.key)).all()
        guard !written.isEmpty else { return .skipped }
        try await logChange(entity: entity.name, key: change.key, op: .upsert, hlc: hlc, origin: origin)
        return result
    }

    /// Applies upserts of one entity together: the tombstones of their keys read at once,
    /// then one multi-row `INSERT … ON CONFLICT DO UPDATE … WHERE newer` for the changes
    /// that cannot collide by name, and the log entries of those written in one more
    /// statement. The rest (a name another object has, a key twice) go one at a time.
    fileprivate func applyUpserts(_ run: [ReplicatedChange], of entity: ReplicatedEntity) async throws -> [ApplyResult] {
        var results: [ApplyResult] = []
        let tombstones = entity.history ? [:] : try await Store.tombstones(entity: entity.name, keys: run.map(\.key), in: database)
        let nameIndex = entity.uniqueName ? entity.columnIndex("name") : nil
        var holders: [String: String] = [:]
        if let nameIndex {
            let names = Array(Set(run.compactMap { $0.row?[nameIndex].text }))
            if !names.isEmpty {
                let list = SQLList(names.map { SQLBind($0) as any SQLExpression })
                for row in try await database.raw("SELECT \(unsafeRaw: entity.key[0].name) AS id, name FROM \(unsafeRaw: entity.table) WHERE name IN (\(list))").all() {
                    holders[try row.decode(column: "name", as: String.self)] = try row.decode(column: "id", as: String.self)
                }
            }
        }
        var together: [ReplicatedChange] = []
        var alone: [ReplicatedChange] = []
        var keys: Set<String> = []
        var names: Set<String> = []
        for change in run {
            if let tombstone = tombstones[change.key], !Self.newer((change.hlc, change.origin), than: (tombstone.hlc, tombstone.origin)) {
                results.append(.skipped)
                continue
            }
            if !keys.insert(change.key).inserted {
                alone.append(change)
                continue
            }
            if let nameIndex, let name = change.row?[nameIndex].text {
                if let holder = holders[name], holder != change.key { alone.append(change); continue }
                if !names.insert(name).inserted { alone.append(change); continue }
            }
            together.append(change)
        }
        if !together.isEmpty {
            let written = try await database.raw(multiRowUpsert(together, of: entity)).all()
            let writtenKeys = Set(try written.map { try entity.keyString(of: $0) })
            let logged = together.filter { writtenKeys.contains($0.key) }
            try await logChanges(logged.map { ChangeRecord(sequence: 0, entity: entity.name, key: $0.key, op: .upsert, originSite: $0.origin, hlc: $0.hlc) })
            results += together.map { writtenKeys.contains($0.key) ? .applied : .skipped }
        }
        for change in alone { results.append(try await applyUpsert(change, of: entity)) }
        return results
    }

    private func multiRowUpsert(_ changes: [ReplicatedChange], of entity: ReplicatedEntity) -> SQLQueryString {
        let columns = entity.key + entity.columns
        let rows = changes.map { change -> any SQLExpression in
            var values: [any SQLExpression] = []
            for (column, value) in zip(entity.key, entity.keyValues(change.key) ?? []) { values.append(value.bind(as: column)) }
            for (column, value) in zip(entity.columns, change.row ?? []) { values.append(value.bind(as: column)) }
            values.append(SQLBind(change.origin))
            values.append(SQLBind(Int64(bitPattern: change.hlc)))
            return SQLGroupExpression(values)
        }
        var query = SQLQueryString("INSERT INTO \(unsafeRaw: entity.table) (\(unsafeRaw: columns.map(\.name).joined(separator: ", ")), origin_site, hlc) VALUES \(SQLList(rows)) ")
        query.appendInterpolation(unsafeRaw: conflictClause(entity))
        query.appendInterpolation(unsafeRaw: " RETURNING " + entity.key.map(\.name).joined(separator: ", "))
        return query
    }

    /// What a replicated row does when its key exists: history is never changed; everything
    /// else takes the newer version (clock, then site).
    private func conflictClause(_ entity: ReplicatedEntity) -> String {
        let target = "ON CONFLICT (\(entity.key.map(\.name).joined(separator: ", "))) "
        if entity.history { return target + "DO NOTHING" }
        let table = entity.table
        let assignments = (entity.columns.map(\.name) + ["origin_site", "hlc"]).map { "\($0) = excluded.\($0)" }.joined(separator: ", ")
        return target + "DO UPDATE SET \(assignments) WHERE excluded.hlc > \(table).hlc OR (excluded.hlc = \(table).hlc AND excluded.origin_site > \(table).origin_site)"
    }

    /// Deletes this site's row if the peer's delete is newer, and keeps the tombstone.
    fileprivate func applyDelete(_ change: ReplicatedChange, of entity: ReplicatedEntity) async throws -> ApplyResult {
        guard let keyValues = entity.keyValues(change.key) else { return .skipped }
        let stamp = Int64(bitPattern: change.hlc)
        guard try await recordTombstone(entity: entity.name, key: change.key, origin: change.origin, hlc: change.hlc) else { return .skipped }
        let removed = try await database.raw("""
            DELETE FROM \(unsafeRaw: entity.table) WHERE \(entity.keyCondition(keyValues))
            AND (hlc < \(bind: stamp) OR (hlc = \(bind: stamp) AND origin_site <= \(bind: change.origin))) RETURNING hlc
            """).all()
        if !removed.isEmpty, case .text(let id) = keyValues[0] {
            // What deleting one of these locally also removes.
            switch entity.name {
            case "group":
                try await database.raw("DELETE FROM device_group_members WHERE group_id = \(bind: id)").run()
                try await database.raw("DELETE FROM policy_assignments WHERE group_id = \(bind: id)").run()
            case "device":
                try await database.raw("DELETE FROM device_group_members WHERE device_id = \(bind: id)").run()
            default: break
            }
        }
        try await logChange(entity: entity.name, key: change.key, op: .delete, hlc: change.hlc, origin: change.origin)
        return .applied
    }

    /// `INSERT … SELECT … WHERE no newer tombstone ON CONFLICT … DO UPDATE … WHERE newer RETURNING`:
    /// one statement that writes the row only when it is the latest version this site knows.
    private func upsertStatement(_ entity: ReplicatedEntity, keyValues: [ReplicatedValue], row: [ReplicatedValue], origin: String, hlc: UInt64, key: String) -> SQLQueryString {
        let columns = entity.key + entity.columns
        let stamp = Int64(bitPattern: hlc)
        var query = SQLQueryString("INSERT INTO \(unsafeRaw: entity.table) (\(unsafeRaw: columns.map(\.name).joined(separator: ", ")), origin_site, hlc) SELECT ")
        for (column, value) in zip(entity.key, keyValues) {
            query.appendInterpolation(unsafeRaw: "CAST(")
            query.appendInterpolation(value.bind(as: column))
            query.appendInterpolation(unsafeRaw: " AS \(column.sqlType(dialect))), ")
        }
        for (column, value) in zip(entity.columns, row) {
            query.appendInterpolation(unsafeRaw: "CAST(")
            query.appendInterpolation(value.bind(as: column))
            query.appendInterpolation(unsafeRaw: " AS \(column.sqlType(dialect))), ")
        }
        query.appendInterpolation(unsafeRaw: "CAST(")
        query.appendInterpolation(bind: origin)
        query.appendInterpolation(unsafeRaw: " AS TEXT), CAST(")
        query.appendInterpolation(bind: stamp)
        query.appendInterpolation(unsafeRaw: " AS BIGINT) WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE entity = ")
        query.appendInterpolation(bind: entity.name)
        query.appendInterpolation(unsafeRaw: " AND entity_key = ")
        query.appendInterpolation(bind: key)
        query.appendInterpolation(unsafeRaw: " AND (hlc > ")
        query.appendInterpolation(bind: stamp)
        query.appendInterpolation(unsafeRaw: " OR (hlc = ")
        query.appendInterpolation(bind: stamp)
        query.appendInterpolation(unsafeRaw: " AND origin_site >= ")
        query.appendInterpolation(bind: origin)
        query.appendInterpolation(unsafeRaw: "))) " + conflictClause(entity) + " RETURNING hlc")
        return query
    }

    /// `Name ~1`, `Name ~2`, … : the first that no row of the entity has.
    private func freeName(after name: String, in entity: ReplicatedEntity) async throws -> String {
        var number = 1
        while true {
            let candidate = "\(name) ~\(number)"
            if try await database.raw("SELECT 1 AS taken FROM \(unsafeRaw: entity.table) WHERE name = \(bind: candidate)").first() == nil { return candidate }
            number += 1
        }
    }

    /// Whether version `a` (clock, site) is later than `b`.
    static func newer(_ a: (UInt64, String), than b: (UInt64, String)) -> Bool {
        a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
    }
}

extension ChangeRecord {
    init(row: any SQLRow) throws {
        self.init(
            sequence: try row.decode(column: "seq", as: Int64.self),
            entity: try row.decode(column: "entity", as: String.self),
            key: try row.decode(column: "entity_key", as: String.self),
            op: ChangeOperation(rawValue: try row.decode(column: "op", as: String.self)) ?? .upsert,
            originSite: try row.decode(column: "origin_site", as: String.self),
            hlc: UInt64(bitPattern: try row.decode(column: "hlc", as: Int64.self))
        )
    }
}
