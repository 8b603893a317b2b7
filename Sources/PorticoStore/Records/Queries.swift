import Foundation
import SQLKit

/// Which devices a listing returns.
public struct DeviceFilter: Sendable, Equatable {
    public var state: DeviceState?
    /// A case-insensitive substring of the hostname.
    public var hostname: String?
    public var os: String?
    public var groupID: String?
    /// Only devices whose last check-in is before this time (or that never checked in).
    public var lastCheckInBefore: Int64?
    /// Only devices that checked in at or after this time.
    public var lastCheckInSince: Int64?
    /// Only devices on (true) or behind (false) the site's current policy serial.
    public var policyCurrent: Bool?

    public init(state: DeviceState? = nil, hostname: String? = nil, os: String? = nil, groupID: String? = nil, lastCheckInBefore: Int64? = nil,
                lastCheckInSince: Int64? = nil, policyCurrent: Bool? = nil) {
        self.state = state
        self.hostname = hostname
        self.os = os
        self.groupID = groupID
        self.lastCheckInBefore = lastCheckInBefore
        self.lastCheckInSince = lastCheckInSince
        self.policyCurrent = policyCurrent
    }
}

/// A column the devices table sorts by.
public enum DeviceSort: String, Sendable, CaseIterable {
    case hostname, os, state, lastCheckIn = "last_check_in", enrolled, policySerial = "policy_serial"

    var column: String {
        switch self {
        case .hostname: "LOWER(d.hostname)"
        case .os: "d.os"
        case .state: "d.state"
        case .lastCheckIn: "COALESCE(d.last_checkin_ms, 0)"
        case .enrolled: "d.enrolled_ms"
        case .policySerial: "d.policy_serial"
        }
    }
}

/// Which events a query returns.
public struct EventFilter: Sendable, Equatable {
    public var deviceID: String?
    public var kind: String?
    /// Occurred at or after (milliseconds since 1970).
    public var since: Int64?
    /// Occurred before.
    public var until: Int64?
    /// Only from devices in this group.
    public var groupID: String?

    public init(deviceID: String? = nil, kind: String? = nil, since: Int64? = nil, until: Int64? = nil, groupID: String? = nil) {
        self.deviceID = deviceID
        self.kind = kind
        self.since = since
        self.until = until
        self.groupID = groupID
    }
}

/// Which audit entries a query returns.
public struct AuditFilter: Sendable, Equatable {
    public var actor: String?
    public var action: String?
    public var target: String?
    public var result: String?
    public var since: Int64?
    public var until: Int64?

    public init(actor: String? = nil, action: String? = nil, target: String? = nil, result: String? = nil, since: Int64? = nil, until: Int64? = nil) {
        self.actor = actor
        self.action = action
        self.target = target
        self.result = result
        self.since = since
        self.until = until
    }
}

extension SQLQueryString {
    fileprivate mutating func and<T: Encodable & Sendable>(_ clause: String, _ value: T?) {
        guard let value else { return }
        appendInterpolation(unsafeRaw: " AND \(clause) ")
        appendInterpolation(bind: value)
    }
}

extension Store {
    /// Devices matching `filter`, by id, after the id `after` (keyset paging: a page never
    /// repeats or skips a device because others were added or removed meanwhile).
    public func devices(_ filter: DeviceFilter = DeviceFilter(), after: String? = nil, limit: Int = 100) async throws -> [DeviceRecord] {
        let serial = filter.policyCurrent == nil ? 0 : try await policySerial()
        return try await read { db in
            var query = try await self.deviceQuery("SELECT * FROM devices d WHERE 1 = 1", filter, serial: serial, db: db)
            query.and("d.id >", after)
            query.appendInterpolation(unsafeRaw: " ORDER BY d.id LIMIT ")
            query.appendInterpolation(bind: limit)
            return try await db.raw(query).all().map(DeviceRecord.init(row:))
        }
    }

    /// A page of the devices table: matching `filter`, sorted by a column (then by id),
    /// `offset` rows in.
    public func devices(_ filter: DeviceFilter, sort: DeviceSort, descending: Bool, offset: Int, limit: Int) async throws -> [DeviceRecord] {
        let serial = filter.policyCurrent == nil ? 0 : try await policySerial()
        return try await read { db in
            var query = try await self.deviceQuery("SELECT * FROM devices d WHERE 1 = 1", filter, serial: serial, db: db)
            let direction = descending ? "DESC" : "ASC"
            query.appendInterpolation(unsafeRaw: " ORDER BY \(sort.column) \(direction), d.id \(direction) LIMIT ")
            query.appendInterpolation(bind: limit)
            query.appendInterpolation(unsafeRaw: " OFFSET ")
            query.appendInterpolation(bind: max(0, offset))
            return try await db.raw(query).all().map(DeviceRecord.init(row:))
        }
    }

    /// How many devices match `filter`.
    public func deviceCount(_ filter: DeviceFilter) async throws -> Int {
        let serial = filter.policyCurrent == nil ? 0 : try await policySerial()
        return try await read { db in
            let query = try await self.deviceQuery("SELECT COUNT(*) AS n FROM devices d WHERE 1 = 1", filter, serial: serial, db: db)
            return try await db.raw(query).first()?.decode(column: "n", as: Int.self) ?? 0
        }
    }

    /// `select` with the conditions of `filter` appended.
    private func deviceQuery(_ select: String, _ filter: DeviceFilter, serial: Int64, db: any SQLDatabase) async throws -> SQLQueryString {
        var query: SQLQueryString = ""
        query.appendInterpolation(unsafeRaw: select)
        query.and("d.state =", filter.state?.rawValue)
        query.and("d.os =", filter.os)
        if let hostname = filter.hostname {
            let pattern = "%" + Self.escapeLike(hostname.lowercased()) + "%"
            // A part found in few host names is looked up in the trigram index; one found
            // in many is met soon enough by reading devices in page order. (PostgreSQL's
            // planner makes that choice itself.)
            if dialect == .sqlite, hostname.utf8.count >= 3, !hostname.contains(where: { $0 == "%" || $0 == "_" || $0 == "\\" }) {
                let probe = try await db.raw("""
                    SELECT COUNT(*) AS n FROM (SELECT rowid FROM devices_hostname_search WHERE hostname LIKE \(bind: pattern) LIMIT \(bind: Self.fewHostnames)) AS found
                    """).first()?.decode(column: "n", as: Int.self) ?? Self.fewHostnames
                if probe < Self.fewHostnames {
                    query.appendInterpolation(unsafeRaw: " AND d.rowid IN (SELECT rowid FROM devices_hostname_search WHERE hostname LIKE ")
                    query.appendInterpolation(bind: pattern)
                    query.appendInterpolation(unsafeRaw: ")")
                }
            }
            query.appendInterpolation(unsafeRaw: " AND LOWER(d.hostname) LIKE ")
            query.appendInterpolation(bind: pattern)
            query.appendInterpolation(unsafeRaw: " ESCAPE '\\'")
        }
        if let group = filter.groupID {
            query.appendInterpolation(unsafeRaw: " AND EXISTS (SELECT 1 FROM device_group_members m WHERE m.device_id = d.id AND m.group_id = ")
            query.appendInterpolation(bind: group)
            query.appendInterpolation(unsafeRaw: ")")
        }
        if let before = filter.lastCheckInBefore {
            query.appendInterpolation(unsafeRaw: " AND (d.last_checkin_ms IS NULL OR d.last_checkin_ms < ")
            query.appendInterpolation(bind: before)
            query.appendInterpolation(unsafeRaw: ")")
        }
        query.and("d.last_checkin_ms >=", filter.lastCheckInSince)
        if let current = filter.policyCurrent {
            query.and(current ? "d.policy_serial =" : "d.policy_serial <>", serial)
        }
        return query
    }

    static let fewHostnames = 2000

    /// Device counts: total, by state, and checked in since `onlineSince`.
    /// The operating systems devices report, for the devices table's filter (the most common first).
    public func deviceSystems(limit: Int = 200) async throws -> [String] {
        try await read { db in
            try await db.raw("SELECT os, COUNT(*) AS n FROM devices GROUP BY os ORDER BY n DESC, os LIMIT \(bind: limit)").all().map { try $0.decode(column: "os", as: String.self) }
        }
    }

    /// The database's size on disk, in bytes.
    public func databaseBytes() async throws -> Int64 {
        let dialect = self.dialect
        return try await read { db in
            if dialect == .postgres {
                return try await db.raw("SELECT pg_database_size(current_database()) AS n").first()?.decode(column: "n", as: Int64.self) ?? 0
            }
            let pages = try await db.raw("PRAGMA page_count").first()?.decode(column: "page_count", as: Int64.self) ?? 0
            let size = try await db.raw("PRAGMA page_size").first()?.decode(column: "page_size", as: Int64.self) ?? 0
            return pages * size
        }
    }

    public func deviceCounts(onlineSince: Int64) async throws -> (total: Int, online: Int, byState: [DeviceState: Int]) {
        try await read { db in
            var byState: [DeviceState: Int] = [:]
            var total = 0
            for row in try await db.raw("SELECT state, COUNT(*) AS n FROM devices GROUP BY state").all() {
                let n = try row.decode(column: "n", as: Int.self)
                total += n
                if let state = DeviceState(rawValue: try row.decode(column: "state", as: String.self)) { byState[state, default: 0] += n }
            }
            let online = try await db.raw("SELECT COUNT(*) AS n FROM devices WHERE last_checkin_ms >= \(bind: onlineSince)").first()?.decode(column: "n", as: Int.self) ?? 0
            return (total, online, byState)
        }
    }

    /// Events matching `filter`, newest first; `before` is the (occurred time, device, event id)
    /// of the last event of the previous page.
    public func events(_ filter: EventFilter, before: (Int64, String, String)? = nil, limit: Int = 100) async throws -> [EventRecord] {
        try await read { db in
            var query = SQLQueryString("SELECT device_id, event_id, kind, occurred_ms, body FROM events WHERE 1 = 1")
            query.and("device_id =", filter.deviceID)
            query.and("kind =", filter.kind)
            query.and("occurred_ms >=", filter.since)
            query.and("occurred_ms <", filter.until)
            if let group = filter.groupID {
                query.appendInterpolation(unsafeRaw: " AND EXISTS (SELECT 1 FROM device_group_members m WHERE m.device_id = events.device_id AND m.group_id = ")
                query.appendInterpolation(bind: group)
                query.appendInterpolation(unsafeRaw: ")")
            }
            if let before {
                query.appendInterpolation(unsafeRaw: " AND (occurred_ms < "); query.appendInterpolation(bind: before.0)
                query.appendInterpolation(unsafeRaw: " OR (occurred_ms = "); query.appendInterpolation(bind: before.0)
                query.appendInterpolation(unsafeRaw: " AND (device_id < "); query.appendInterpolation(bind: before.1)
                query.appendInterpolation(unsafeRaw: " OR (device_id = "); query.appendInterpolation(bind: before.1)
                query.appendInterpolation(unsafeRaw: " AND event_id < "); query.appendInterpolation(bind: before.2)
                query.appendInterpolation(unsafeRaw: "))))")
            }
            query.appendInterpolation(unsafeRaw: " ORDER BY occurred_ms DESC, device_id DESC, event_id DESC LIMIT ")
            query.appendInterpolation(bind: limit)
            return try await db.raw(query).all().map(EventRecord.init(row:))
        }
    }

    /// Audit entries matching `filter`, newest first, with ids below `beforeID` when paging.
    public func auditEntries(_ filter: AuditFilter, beforeID: Int64? = nil, limit: Int = 100) async throws -> [AuditEntry] {
        try await read { db in
            var query = SQLQueryString("SELECT * FROM audit_log WHERE 1 = 1")
            query.and("actor =", filter.actor)
            query.and("action =", filter.action)
            query.and("target =", filter.target)
            query.and("result =", filter.result)
            query.and("at_ms >=", filter.since)
            query.and("at_ms <", filter.until)
            query.and("id <", beforeID)
            query.appendInterpolation(unsafeRaw: " ORDER BY id DESC LIMIT ")
            query.appendInterpolation(bind: limit)
            return try await db.raw(query).all().map(AuditEntry.init(row:))
        }
    }

    static func escapeLike(_ text: String) -> String {
        var escaped = ""
        for character in text {
            if character == "%" || character == "_" || character == "\\" { escaped.append("\\") }
            escaped.append(character)
        }
        return escaped
    }
}

/// The fleet at a glance, for the console's dashboard.
public struct FleetSummary: Sendable, Equatable {
    /// Devices not wiped or revoked.
    public var total: Int
    /// Checked in since the online threshold.
    public var online: Int
    /// Not checked in since the stale threshold, or never.
    public var stale: Int
    /// On the site's current policy serial.
    public var compliant: Int
    /// Commands not yet acknowledged, failed or expired.
    public var commandsOpen: Int
    public var policySerial: Int64
}

extension Store {
    public func fleetSummary(onlineSince: Int64, staleBefore: Int64) async throws -> FleetSummary {
        let serial = try await policySerial()
        return try await read { db in
            let row = try await db.raw("""
                SELECT COUNT(*) AS total,
                       COALESCE(SUM(CASE WHEN last_checkin_ms >= \(bind: onlineSince) THEN 1 ELSE 0 END), 0) AS online,
                       COALESCE(SUM(CASE WHEN last_checkin_ms IS NULL OR last_checkin_ms < \(bind: staleBefore) THEN 1 ELSE 0 END), 0) AS stale,
                       COALESCE(SUM(CASE WHEN policy_serial = \(bind: serial) THEN 1 ELSE 0 END), 0) AS compliant
                FROM devices WHERE state IN ('active', 'locked')
                """).first()
            let open = try await db.raw("SELECT COUNT(*) AS n FROM commands WHERE state IN ('pending', 'delivered')").first()?.decode(column: "n", as: Int.self) ?? 0
            return FleetSummary(total: try row?.decode(column: "total", as: Int.self) ?? 0, online: try row?.decode(column: "online", as: Int.self) ?? 0,
                                stale: try row?.decode(column: "stale", as: Int.self) ?? 0, compliant: try row?.decode(column: "compliant", as: Int.self) ?? 0,
                                commandsOpen: open, policySerial: serial)
        }
    }
}

/// The fleet as it stood on one day (the last snapshot taken that day, UTC).
public struct FleetSnapshot: Sendable, Equatable {
    /// `YYYY-MM-DD`.
    public var day: String
    public var atMilliseconds: Int64
    public var summary: FleetSummary
}

extension Store {
    /// Records today's snapshot (replacing an earlier one of the same day).
    public func recordFleetSnapshot(_ summary: FleetSummary, at milliseconds: Int64) async throws {
        let day = Self.day(of: milliseconds)
        try await write { transaction in
            try await transaction.database.raw("""
                INSERT INTO fleet_snapshots (day, at_ms, total, online, stale, compliant, policy_serial)
                VALUES (\(bind: day), \(bind: milliseconds), \(bind: summary.total), \(bind: summary.online), \(bind: summary.stale), \(bind: summary.compliant), \(bind: summary.policySerial))
                ON CONFLICT (day) DO UPDATE SET at_ms = excluded.at_ms, total = excluded.total, online = excluded.online, stale = excluded.stale,
                    compliant = excluded.compliant, policy_serial = excluded.policy_serial
                """).run()
        }
    }

    /// Snapshots from `from` to `to` (days, inclusive), oldest first.
    public func fleetSnapshots(from: String, to: String) async throws -> [FleetSnapshot] {
        try await read { db in
            try await db.raw("SELECT * FROM fleet_snapshots WHERE day >= \(bind: from) AND day <= \(bind: to) ORDER BY day").all().map { row in
                FleetSnapshot(day: try row.decode(column: "day", as: String.self), atMilliseconds: try row.decode(column: "at_ms", as: Int64.self),
                              summary: FleetSummary(total: try row.decode(column: "total", as: Int.self), online: try row.decode(column: "online", as: Int.self),
                                                    stale: try row.decode(column: "stale", as: Int.self), compliant: try row.decode(column: "compliant", as: Int.self),
                                                    commandsOpen: 0, policySerial: try row.decode(column: "policy_serial", as: Int64.self)))
            }
        }
    }

    /// Active devices by the policy serial they hold.
    public func devicesByPolicySerial() async throws -> [(serial: Int64, devices: Int)] {
        try await read { db in
            try await db.raw("SELECT policy_serial, COUNT(*) AS n FROM devices WHERE state IN ('active', 'locked') GROUP BY policy_serial ORDER BY policy_serial DESC").all().map {
                (try $0.decode(column: "policy_serial", as: Int64.self), try $0.decode(column: "n", as: Int.self))
            }
        }
    }

    /// `YYYY-MM-DD` (UTC) of a time.
    public static func day(of milliseconds: Int64) -> String {
        var seconds = time_t(milliseconds / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02d", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday))
    }
}

/// Report queries: counts grouped the way the reports show them.
extension Store {
    /// Active devices by how long ago they last checked in: under an hour, a day, a week,
    /// longer, never.
    public func checkInFreshness(now: Int64) async throws -> [(bucket: String, devices: Int)] {
        try await read { db in
            let row = try await db.raw("""
                SELECT COALESCE(SUM(CASE WHEN last_checkin_ms >= \(bind: now - 3_600_000) THEN 1 ELSE 0 END), 0) AS hour,
                       COALESCE(SUM(CASE WHEN last_checkin_ms < \(bind: now - 3_600_000) AND last_checkin_ms >= \(bind: now - 86_400_000) THEN 1 ELSE 0 END), 0) AS day,
                       COALESCE(SUM(CASE WHEN last_checkin_ms < \(bind: now - 86_400_000) AND last_checkin_ms >= \(bind: now - 7 * 86_400_000) THEN 1 ELSE 0 END), 0) AS week,
                       COALESCE(SUM(CASE WHEN last_checkin_ms < \(bind: now - 7 * 86_400_000) THEN 1 ELSE 0 END), 0) AS older,
                       COALESCE(SUM(CASE WHEN last_checkin_ms IS NULL THEN 1 ELSE 0 END), 0) AS never
                FROM devices WHERE state IN ('active', 'locked')
                """).first()
            return try [("under an hour", "hour"), ("under a day", "day"), ("under a week", "week"), ("a week or more", "older"), ("never", "never")].map {
                ($0.0, try row?.decode(column: $0.1, as: Int.self) ?? 0)
            }
        }
    }

    /// Events per UTC day and kind, received in `[since, until)`.
    public func eventCountsByDay(since: Int64, until: Int64) async throws -> [(day: String, kind: String, events: Int)] {
        let rows = try await read { db in
            try await db.raw("""
                SELECT occurred_ms / 86400000 AS day_number, kind, COUNT(*) AS n FROM events
                WHERE occurred_ms >= \(bind: since) AND occurred_ms < \(bind: until) GROUP BY occurred_ms / 86400000, kind ORDER BY day_number, kind
                """).all().map { (try $0.decode(column: "day_number", as: Int64.self), try $0.decode(column: "kind", as: String.self), try $0.decode(column: "n", as: Int.self)) }
        }
        return rows.map { (Self.day(of: $0.0 * 86_400_000), $0.1, $0.2) }
    }

    /// Commands issued in `[since, until)`, by kind and state.
    public func commandOutcomes(since: Int64, until: Int64) async throws -> [(kind: String, state: String, commands: Int)] {
        try await read { db in
            try await db.raw("""
                SELECT kind, state, COUNT(*) AS n FROM commands WHERE issued_ms >= \(bind: since) AND issued_ms < \(bind: until)
                GROUP BY kind, state ORDER BY kind, state
                """).all().map { (try $0.decode(column: "kind", as: String.self), try $0.decode(column: "state", as: String.self), try $0.decode(column: "n", as: Int.self)) }
        }
    }

    /// Each published policy: the active devices its groups hold, and how many of them are
    /// on the site's current policy serial (so have its published version).
    public func policyRollout() async throws -> [(policy: String, version: Int, targeted: Int, current: Int)] {
        let serial = try await policySerial()
        return try await read { db in
            let policies = try await db.raw("SELECT id, name, published_version FROM policies WHERE published_version IS NOT NULL ORDER BY name").all()
            // Each device once per policy: a device in two groups the policy is assigned to is
            // counted at the first of them only. Cheaper than a DISTINCT over every pair.
            var counts: [String: (targeted: Int, current: Int)] = [:]
            for row in try await db.raw("""
                SELECT a.policy_id, COUNT(*) AS targeted, SUM(CASE WHEN d.policy_serial = \(bind: serial) THEN 1 ELSE 0 END) AS current
                FROM device_group_members m
                JOIN policy_assignments a ON a.group_id = m.group_id
                JOIN devices d ON d.id = m.device_id AND d.state IN ('active', 'locked')
                WHERE NOT EXISTS (SELECT 1 FROM device_group_members m2 JOIN policy_assignments a2 ON a2.group_id = m2.group_id
                                  WHERE m2.device_id = m.device_id AND m2.group_id < m.group_id AND a2.policy_id = a.policy_id)
                GROUP BY a.policy_id
                """).all() {
                counts[try row.decode(column: "policy_id", as: String.self)] = (try row.decode(column: "targeted", as: Int.self), try row.decode(column: "current", as: Int?.self) ?? 0)
            }
            return try policies.map { row in
                let count = counts[try row.decode(column: "id", as: String.self)] ?? (0, 0)
                return (try row.decode(column: "name", as: String.self), try row.decode(column: "published_version", as: Int.self), count.targeted, count.current)
            }
        }
    }
}
