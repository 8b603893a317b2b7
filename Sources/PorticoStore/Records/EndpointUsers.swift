import Foundation
import SQLKit

/// A user who may sign in on devices (not an operator of the manager).
public struct EndpointUser: Sendable, Equatable {
    public enum Source: String, Sendable, CaseIterable {
        /// Kept by Portico: a scrypt hash of the password.
        case local
        /// An entry of the directory, which checks the password.
        case directory
    }

    public var name: String
    public var source: Source
    public var displayName: String
    /// For a local user, the password's scrypt hash; empty for a directory user.
    public var passwordHash: String
    /// For a directory user, the entry's name (DN).
    public var directoryDN: String
    /// For a directory user, the directory groups it was in when last seen.
    public var directoryGroups: [String]
    public var disabled: Bool
    public var createdMilliseconds: Int64
    public var updatedMilliseconds: Int64
    public var lastSignInMilliseconds: Int64
    public var lastDevice: String

    public init(name: String, source: Source, displayName: String = "", passwordHash: String = "", directoryDN: String = "", directoryGroups: [String] = [],
                disabled: Bool = false, createdMilliseconds: Int64 = Int64(HybridLogicalClock.wallMilliseconds()), updatedMilliseconds: Int64? = nil,
                lastSignInMilliseconds: Int64 = 0, lastDevice: String = "") {
        self.name = name
        self.source = source
        self.displayName = displayName
        self.passwordHash = passwordHash
        self.directoryDN = directoryDN
        self.directoryGroups = directoryGroups
        self.disabled = disabled
        self.createdMilliseconds = createdMilliseconds
        self.updatedMilliseconds = updatedMilliseconds ?? createdMilliseconds
        self.lastSignInMilliseconds = lastSignInMilliseconds
        self.lastDevice = lastDevice
    }
}

/// Who may sign in on the devices of a group.
public struct SignInGrant: Sendable, Equatable {
    /// A group's id, or `*` for every device.
    public var groupID: String
    /// `user:<name>` or `group:<directory group>`.
    public var principal: String
    public var createdBy: String
    public var createdMilliseconds: Int64

    public init(groupID: String, principal: String, createdBy: String, createdMilliseconds: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) {
        self.groupID = groupID
        self.principal = principal
        self.createdBy = createdBy
        self.createdMilliseconds = createdMilliseconds
    }

    public static let everyDevice = "*"
}

/// The directory's sync, as the console shows it.
public struct DirectorySyncState: Sendable, Equatable {
    public var run: String
    /// `idle`, `running`, `done` or `failed`.
    public var state: String
    public var startedMilliseconds: Int64
    public var finishedMilliseconds: Int64
    public var seen: Int
    public var added: Int
    public var removed: Int
    public var error: String
}

extension Transaction {
    public func createEndpointUser(_ user: EndpointUser) async throws {
        try Self.validateEndpointUser(user)
        if try await database.raw("SELECT name FROM endpoint_users WHERE name = \(bind: user.name)").first() != nil {
            throw StoreError.conflict("a user named \(user.name) already exists")
        }
        try await database.raw("""
            INSERT INTO endpoint_users (name, source, display_name, password_hash, directory_dn, directory_groups, disabled, created_ms, updated_ms)
            VALUES (\(bind: user.name), \(bind: user.source.rawValue), \(bind: user.displayName), \(bind: user.passwordHash), \(bind: user.directoryDN),
                    \(bind: user.directoryGroups.joined(separator: "\n")), \(bind: user.disabled ? 1 : 0), \(bind: user.createdMilliseconds), \(bind: user.updatedMilliseconds))
            """).run()
    }

    /// Changes a user's display name, password hash (local users) or disabled flag; nil
    /// leaves a field as it is. A new password clears the user's lockout.
    @discardableResult
    public func updateEndpointUser(name: String, displayName: String? = nil, passwordHash: String? = nil, disabled: Bool? = nil,
                                   now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> EndpointUser {
        guard var user = try await database.raw("SELECT * FROM endpoint_users WHERE name = \(bind: name)").first().map(EndpointUser.init(row:)) else {
            throw StoreError.notFound("user \(name)")
        }
        if let displayName { user.displayName = displayName }
        if let passwordHash {
            guard user.source == .local else { throw StoreError.invalid("user.password", "is kept by the directory for \(name); change it there or through a reset") }
            user.passwordHash = passwordHash
        }
        if let disabled { user.disabled = disabled }
        user.updatedMilliseconds = now
        try Self.validateEndpointUser(user)
        try await database.raw("""
            UPDATE endpoint_users SET display_name = \(bind: user.displayName), password_hash = \(bind: user.passwordHash), disabled = \(bind: user.disabled ? 1 : 0),
            updated_ms = \(bind: now) WHERE name = \(bind: name)
            """).run()
        if passwordHash != nil { try await clearSignInFailures(scope: "user", subject: name) }
        return user
    }

    /// Removes a user with the grants that name it and its lockout.
    public func deleteEndpointUser(name: String) async throws {
        let removed = try await database.raw("DELETE FROM endpoint_users WHERE name = \(bind: name) RETURNING name").all()
        guard !removed.isEmpty else { throw StoreError.notFound("user \(name)") }
        try await database.raw("DELETE FROM user_sign_in_grants WHERE principal = \(bind: "user:" + name)").run()
        try await clearSignInFailures(scope: "user", subject: name)
    }

    /// Records what the directory says of a user (a sync, or a sign-in): its entry, name and
    /// groups. A local user of the same name is left alone (and `false` returned as for an
    /// existing user). Returns whether the user is new.
    @discardableResult
    public func saveDirectoryUser(name: String, dn: String, displayName: String, groups: [String]?, run: String?,
                                  now: Int64 = Int64(HybridLogicalClock.wallMilliseconds())) async throws -> Bool {
        let user = EndpointUser(name: name, source: .directory, displayName: displayName, directoryDN: dn, directoryGroups: groups ?? [], createdMilliseconds: now)
        try Self.validateEndpointUser(user)
        let existing = try await database.raw("SELECT source, directory_groups FROM endpoint_users WHERE name = \(bind: name)").first()
        guard let existing else {
            try await database.raw("""
                INSERT INTO endpoint_users (name, source, display_name, directory_dn, directory_groups, created_ms, updated_ms, sync_run)
                VALUES (\(bind: name), 'directory', \(bind: displayName), \(bind: dn), \(bind: user.directoryGroups.joined(separator: "\n")), \(bind: now), \(bind: now), \(bind: run ?? ""))
                """).run()
            return true
        }
        guard try existing.decode(column: "source", as: String.self) == EndpointUser.Source.directory.rawValue else { return false }
        let storedGroups = try groups.map { $0.joined(separator: "\n") } ?? existing.decode(column: "directory_groups", as: String.self)
        if let run {
            try await database.raw("""
                UPDATE endpoint_users SET directory_dn = \(bind: dn), display_name = \(bind: displayName), directory_groups = \(bind: storedGroups), updated_ms = \(bind: now),
                sync_run = \(bind: run) WHERE name = \(bind: name)
                """).run()
        } else {
            try await database.raw("""
                UPDATE endpoint_users SET directory_dn = \(bind: dn), display_name = \(bind: displayName), directory_groups = \(bind: storedGroups), updated_ms = \(bind: now)
                WHERE name = \(bind: name)
                """).run()
        }
        return false
    }

    /// Removes the directory users a finished sync run did not see, with their grants.
    /// Returns their names.
    public func removeDirectoryUsers(notSeenIn run: String) async throws -> [String] {
        let gone = try await database.raw("DELETE FROM endpoint_users WHERE source = 'directory' AND sync_run <> \(bind: run) RETURNING name").all()
            .map { try $0.decode(column: "name", as: String.self) }
        for name in gone {
            try await database.raw("DELETE FROM user_sign_in_grants WHERE principal = \(bind: "user:" + name)").run()
        }
        return gone
    }

    public func recordSignIn(user: String, device: String, now: Int64) async throws {
        try await database.raw("UPDATE endpoint_users SET last_sign_in_ms = \(bind: now), last_device = \(bind: device) WHERE name = \(bind: user)").run()
    }

    /// Lets a user (`user:<name>`) or a directory group (`group:<name>`) sign in on the
    /// devices of a group (`*`: every device).
    public func grantSignIn(_ grant: SignInGrant) async throws {
        try Self.validatePrincipal(grant.principal)
        if grant.groupID != SignInGrant.everyDevice, try await database.raw("SELECT id FROM device_groups WHERE id = \(bind: grant.groupID)").first() == nil {
            throw StoreError.notFound("group \(grant.groupID)")
        }
        try await database.raw("""
            INSERT INTO user_sign_in_grants (group_id, principal, created_by, created_ms)
            VALUES (\(bind: grant.groupID), \(bind: grant.principal), \(bind: grant.createdBy), \(bind: grant.createdMilliseconds))
            ON CONFLICT (group_id, principal) DO NOTHING
            """).run()
    }

    public func revokeSignIn(groupID: String, principal: String) async throws {
        let removed = try await database.raw("""
            DELETE FROM user_sign_in_grants WHERE group_id = \(bind: groupID) AND principal = \(bind: principal) RETURNING principal
            """).all()
        guard !removed.isEmpty else { throw StoreError.notFound("sign-in grant of \(principal) on \(groupID)") }
    }

    /// Counts a failed sign-in against `subject` in `scope` (`user`, `device`). Failures older
    /// than `window` milliseconds are forgotten; the one that reaches `limit` locks the
    /// subject for `window`. Returns when it is locked until, if it is.
    @discardableResult
    public func recordSignInFailure(scope: String, subject: String, now: Int64, limit: Int, window: Int64) async throws -> Int64? {
        let row = try await database.raw("SELECT failures, window_start_ms FROM sign_in_failures WHERE scope = \(bind: scope) AND subject = \(bind: subject)").first()
        var failures = 1
        var start = now
        if let row {
            let previous = try row.decode(column: "failures", as: Int.self)
            let previousStart = try row.decode(column: "window_start_ms", as: Int64.self)
            if now - previousStart < window { (failures, start) = (previous + 1, previousStart) }
        }
        let lockedUntil: Int64 = failures >= limit ? now + window : 0
        try await database.raw("""
            INSERT INTO sign_in_failures (scope, subject, failures, window_start_ms, locked_until_ms)
            VALUES (\(bind: scope), \(bind: subject), \(bind: failures), \(bind: start), \(bind: lockedUntil))
            ON CONFLICT (scope, subject) DO UPDATE SET failures = excluded.failures, window_start_ms = excluded.window_start_ms, locked_until_ms = excluded.locked_until_ms
            """).run()
        return lockedUntil > 0 ? lockedUntil : nil
    }

    public func clearSignInFailures(scope: String, subject: String) async throws {
        try await database.raw("DELETE FROM sign_in_failures WHERE scope = \(bind: scope) AND subject = \(bind: subject)").run()
    }

    /// Records a one-time sign-in code (its SHA-256, hex) an operator gave a user. Codes of
    /// the user that have expired are dropped.
    public func createSignInCode(user: String, codeHash: String, expiresMilliseconds: Int64, createdBy: String, now: Int64) async throws {
        try EndpointUser.validate(name: user)
        try await database.raw("DELETE FROM user_sign_in_codes WHERE user_name = \(bind: user) AND (expires_ms <= \(bind: now) OR used_ms IS NOT NULL)").run()
        try await database.raw("""
            INSERT INTO user_sign_in_codes (id, user_name, code_hash, expires_ms, created_by, created_ms)
            VALUES (\(bind: UUID().uuidString.lowercased()), \(bind: user), \(bind: codeHash), \(bind: expiresMilliseconds), \(bind: createdBy), \(bind: now))
            """).run()
    }

    /// Uses a user's code once, if it is one of theirs, unused and not expired. Returns who
    /// gave it, or nil.
    public func useSignInCode(user: String, codeHash: String, now: Int64) async throws -> String? {
        try await database.raw("""
            UPDATE user_sign_in_codes SET used_ms = \(bind: now)
            WHERE user_name = \(bind: user) AND code_hash = \(bind: codeHash) AND used_ms IS NULL AND expires_ms > \(bind: now) RETURNING created_by
            """).first()?.decode(column: "created_by", as: String.self)
    }

    /// Takes the directory's sync for `run` unless another manager holds it until later than
    /// `now`. Returns whether this run has it.
    public func claimDirectorySync(run: String, now: Int64, holdFor: Int64) async throws -> Bool {
        try await database.raw("INSERT INTO directory_syncs (id) VALUES ('users') ON CONFLICT (id) DO NOTHING").run()
        let taken = try await database.raw("""
            UPDATE directory_syncs SET run = \(bind: run), state = 'running', started_ms = \(bind: now), finished_ms = 0, claimed_until_ms = \(bind: now + holdFor),
            seen = 0, added = 0, removed = 0, error = '' WHERE id = 'users' AND (claimed_until_ms <= \(bind: now) OR run = \(bind: run)) RETURNING id
            """).all()
        return !taken.isEmpty
    }

    /// Records a sync's progress (and keeps its claim), or its end.
    public func updateDirectorySync(run: String, seen: Int, added: Int, removed: Int, state: String, error: String, now: Int64, holdFor: Int64) async throws {
        let finished: Int64 = state == "running" ? 0 : now
        let claimed: Int64 = state == "running" ? now + holdFor : 0
        try await database.raw("""
            UPDATE directory_syncs SET seen = \(bind: seen), added = \(bind: added), removed = \(bind: removed), state = \(bind: state), error = \(bind: error),
            finished_ms = \(bind: finished), claimed_until_ms = \(bind: claimed) WHERE id = 'users' AND run = \(bind: run)
            """).run()
    }

    static func validateEndpointUser(_ user: EndpointUser) throws {
        try EndpointUser.validate(name: user.name)
        try Validate.text(user.displayName, field: "user.display_name", maxBytes: 256)
        try Validate.text(user.directoryDN, field: "user.directory_dn", maxBytes: 1024)
        if user.source == .local { guard !user.passwordHash.isEmpty else { throw StoreError.invalid("user.password", "must not be empty") } }
    }

    static func validatePrincipal(_ principal: String) throws {
        try Validate.text(principal, field: "grant.principal", maxBytes: 300)
        guard principal.hasPrefix("user:") || principal.hasPrefix("group:"), principal.split(separator: ":", maxSplits: 1).count == 2 else {
            throw StoreError.invalid("grant.principal", "must be user:<name> or group:<directory group>")
        }
    }
}

extension Store {
    public func endpointUser(named name: String) async throws -> EndpointUser? {
        try await read { db in try await db.raw("SELECT * FROM endpoint_users WHERE name = \(bind: name)").first().map(EndpointUser.init(row:)) }
    }

    /// Users whose name or display name holds `query` (every user when nil), by name, a page
    /// at a time (after the name `after`, or skipping `offset`); with the count of all that match.
    public func endpointUsers(matching query: String? = nil, source: EndpointUser.Source? = nil, after: String? = nil, limit: Int = 100,
                              offset: Int = 0) async throws -> (users: [EndpointUser], total: Int) {
        try await read { db in
            var filter = SQLQueryString(" WHERE 1 = 1")
            if let query, !query.isEmpty {
                let pattern = "%" + Self.escapeLike(query.lowercased()) + "%"
                filter.appendInterpolation(unsafeRaw: " AND (LOWER(name) LIKE ")
                filter.appendInterpolation(bind: pattern)
                filter.appendInterpolation(unsafeRaw: " ESCAPE '\\' OR LOWER(display_name) LIKE ")
                filter.appendInterpolation(bind: pattern)
                filter.appendInterpolation(unsafeRaw: " ESCAPE '\\')")
            }
            if let source {
                filter.appendInterpolation(unsafeRaw: " AND source = ")
                filter.appendInterpolation(bind: source.rawValue)
            }
            var count = SQLQueryString("SELECT COUNT(*) AS n FROM endpoint_users")
            count.appendInterpolation(filter)
            let total = try await db.raw(count).first()?.decode(column: "n", as: Int.self) ?? 0
            var select = SQLQueryString("SELECT * FROM endpoint_users")
            select.appendInterpolation(filter)
            if let after {
                select.appendInterpolation(unsafeRaw: " AND name > ")
                select.appendInterpolation(bind: after)
            }
            select.appendInterpolation(unsafeRaw: " ORDER BY name LIMIT ")
            select.appendInterpolation(bind: limit)
            select.appendInterpolation(unsafeRaw: " OFFSET ")
            select.appendInterpolation(bind: offset)
            return (try await db.raw(select).all().map(EndpointUser.init(row:)), total)
        }
    }

    /// The grants of a group (`*` for every device), or all of them.
    public func signInGrants(groupID: String? = nil) async throws -> [SignInGrant] {
        try await read { db in
            let rows = if let groupID {
                try await db.raw("SELECT * FROM user_sign_in_grants WHERE group_id = \(bind: groupID) ORDER BY principal").all()
            } else {
                try await db.raw("SELECT * FROM user_sign_in_grants ORDER BY group_id, principal").all()
            }
            return try rows.map {
                SignInGrant(groupID: try $0.decode(column: "group_id", as: String.self), principal: try $0.decode(column: "principal", as: String.self),
                            createdBy: try $0.decode(column: "created_by", as: String.self), createdMilliseconds: try $0.decode(column: "created_ms", as: Int64.self))
            }
        }
    }

    /// Whether `user`, in the directory groups `groups`, may sign in on `device`: a grant on
    /// one of the device's groups, or on every device, names the user or one of its groups.
    public func maySignIn(user: String, groups: [String], device: String) async throws -> Bool {
        let principals: [any Encodable & Sendable] = ["user:" + user] + groups.map { "group:" + $0 }
        return try await read { db in
            try await db.raw("""
                SELECT 1 AS ok FROM user_sign_in_grants WHERE principal IN (\(binds: principals))
                AND (group_id = '*' OR group_id IN (SELECT group_id FROM device_group_members WHERE device_id = \(bind: device))) LIMIT 1
                """).first() != nil
        }
    }

    /// When `subject` (in `scope`) is locked until, if it is locked at `now`.
    public func signInLockedUntil(scope: String, subject: String, now: Int64) async throws -> Int64? {
        try await read { db in
            let until = try await db.raw("SELECT locked_until_ms FROM sign_in_failures WHERE scope = \(bind: scope) AND subject = \(bind: subject)").first()?
                .decode(column: "locked_until_ms", as: Int64.self)
            return until.flatMap { $0 > now ? $0 : nil }
        }
    }

    public func directorySync() async throws -> DirectorySyncState? {
        try await read { db in
            guard let row = try await db.raw("SELECT * FROM directory_syncs WHERE id = 'users'").first() else { return nil }
            return DirectorySyncState(
                run: try row.decode(column: "run", as: String.self), state: try row.decode(column: "state", as: String.self),
                startedMilliseconds: try row.decode(column: "started_ms", as: Int64.self), finishedMilliseconds: try row.decode(column: "finished_ms", as: Int64.self),
                seen: try row.decode(column: "seen", as: Int.self), added: try row.decode(column: "added", as: Int.self), removed: try row.decode(column: "removed", as: Int.self),
                error: try row.decode(column: "error", as: String.self))
        }
    }
}

extension EndpointUser {
    /// A user name: 1 to 256 bytes, no control characters or `/` (names are path segments of
    /// the API), no spaces at either end.
    public static func validate(name: String) throws {
        try Validate.text(name, field: "user.name", maxBytes: 256)
        guard !name.isEmpty, name.trimmingCharacters(in: .whitespacesAndNewlines) == name,
              !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F || $0 == "/" })
        else { throw StoreError.invalid("user.name", "must not be empty, start or end with spaces, or hold control characters or '/'") }
    }

    init(row: any SQLRow) throws {
        let source = try row.decode(column: "source", as: String.self)
        guard let parsed = Source(rawValue: source) else { throw StoreError.invalid("user.source", "is unknown: \(source)") }
        let groups = try row.decode(column: "directory_groups", as: String.self)
        self.init(name: try row.decode(column: "name", as: String.self), source: parsed, displayName: try row.decode(column: "display_name", as: String.self),
                  passwordHash: try row.decode(column: "password_hash", as: String.self), directoryDN: try row.decode(column: "directory_dn", as: String.self),
                  directoryGroups: groups.isEmpty ? [] : groups.split(separator: "\n").map(String.init), disabled: try row.decode(column: "disabled", as: Int.self) != 0,
                  createdMilliseconds: try row.decode(column: "created_ms", as: Int64.self), updatedMilliseconds: try row.decode(column: "updated_ms", as: Int64.self),
                  lastSignInMilliseconds: try row.decode(column: "last_sign_in_ms", as: Int64.self), lastDevice: try row.decode(column: "last_device", as: String.self))
    }
}
