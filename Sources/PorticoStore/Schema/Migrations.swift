/// One forward-only step of the schema.
struct Migration: Sendable {
    let version: Int
    let name: String
    let statements: @Sendable (Dialect) -> [String]
}

/// The schema, in order. A database records the highest version applied; a binary refuses
/// a database whose version is higher than the last one here.
enum Migrations {
    static let all: [Migration] = [
        Migration(version: 1, name: "core entities and change log") { d in
            [
                // Sites and peer managers.
                """
                CREATE TABLE sites (
                    id TEXT PRIMARY KEY, name TEXT NOT NULL, created_ms BIGINT NOT NULL,
                    origin_site TEXT NOT NULL, hlc BIGINT NOT NULL)
                """,
                """
                CREATE TABLE peers (
                    name TEXT PRIMARY KEY, url TEXT NOT NULL, certificate_fingerprint TEXT NOT NULL,
                    site_id TEXT, added_ms BIGINT NOT NULL)
                """,
                // Devices: the id is derived from the agent's public signing key.
                """
                CREATE TABLE devices (
                    id TEXT PRIMARY KEY, signing_key \(d.blob) NOT NULL, agreement_key \(d.blob) NOT NULL,
                    hostname TEXT NOT NULL, os TEXT NOT NULL, state TEXT NOT NULL,
                    enrolled_ms BIGINT NOT NULL, last_checkin_ms BIGINT, policy_serial BIGINT NOT NULL DEFAULT 0,
                    status TEXT, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL)
                """,
                "CREATE INDEX devices_hostname ON devices (hostname)",
                """
                CREATE TABLE device_groups (
                    id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
                    origin_site TEXT NOT NULL, hlc BIGINT NOT NULL)
                """,
                "CREATE UNIQUE INDEX device_groups_name ON device_groups (name)",
                """
                CREATE TABLE device_group_members (
                    device_id TEXT NOT NULL, group_id TEXT NOT NULL, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL,
                    PRIMARY KEY (device_id, group_id))
                """,
                // Enrollment tokens: only a hash of the secret is kept.
                """
                CREATE TABLE enrollment_tokens (
                    id TEXT PRIMARY KEY, secret_hash \(d.blob) NOT NULL, group_id TEXT, uses_allowed INTEGER,
                    uses INTEGER NOT NULL DEFAULT 0, expires_ms BIGINT, revoked INTEGER NOT NULL DEFAULT 0,
                    created_by TEXT NOT NULL, created_ms BIGINT NOT NULL, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL)
                """,
                // Policies: named, versioned documents; a site-wide serial moves on every change.
                """
                CREATE TABLE policies (
                    id TEXT PRIMARY KEY, name TEXT NOT NULL, current_version INTEGER NOT NULL DEFAULT 0,
                    published_version INTEGER, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL)
                """,
                "CREATE UNIQUE INDEX policies_name ON policies (name)",
                """
                CREATE TABLE policy_versions (
                    policy_id TEXT NOT NULL, version INTEGER NOT NULL, document TEXT NOT NULL,
                    created_by TEXT NOT NULL, created_ms BIGINT NOT NULL, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL,
                    PRIMARY KEY (policy_id, version))
                """,
                """
                CREATE TABLE policy_assignments (
                    policy_id TEXT NOT NULL, group_id TEXT NOT NULL, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL,
                    PRIMARY KEY (policy_id, group_id))
                """,
                "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
                // Commands queue per device.
                """
                CREATE TABLE commands (
                    id TEXT PRIMARY KEY, device_id TEXT NOT NULL, kind TEXT NOT NULL, arguments TEXT NOT NULL DEFAULT '',
                    state TEXT NOT NULL, result TEXT, issued_by TEXT NOT NULL, issued_ms BIGINT NOT NULL,
                    updated_ms BIGINT NOT NULL, expires_ms BIGINT, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL)
                """,
                "CREATE INDEX commands_device_state ON commands (device_id, state)",
                // Events: append-only, the agent's id makes a retry a no-op.
                """
                CREATE TABLE events (
                    device_id TEXT NOT NULL, event_id TEXT NOT NULL, kind TEXT NOT NULL, occurred_ms BIGINT NOT NULL,
                    received_ms BIGINT NOT NULL, body TEXT NOT NULL, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL,
                    PRIMARY KEY (device_id, event_id))
                """,
                "CREATE INDEX events_kind_time ON events (kind, occurred_ms)",
                // Operators, API tokens, console sessions.
                """
                CREATE TABLE operators (
                    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
                    failed_logins INTEGER NOT NULL DEFAULT 0, locked_until_ms BIGINT, disabled INTEGER NOT NULL DEFAULT 0,
                    created_ms BIGINT NOT NULL, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL)
                """,
                """
                CREATE TABLE api_tokens (
                    id TEXT PRIMARY KEY, secret_hash \(d.blob) NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
                    scopes TEXT NOT NULL DEFAULT '', expires_ms BIGINT, revoked INTEGER NOT NULL DEFAULT 0,
                    created_by TEXT NOT NULL, created_ms BIGINT NOT NULL, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL)
                """,
                """
                CREATE TABLE console_sessions (
                    id_hash \(d.blob) PRIMARY KEY, operator TEXT NOT NULL, csrf_token TEXT NOT NULL,
                    created_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL, source TEXT NOT NULL)
                """,
                // Audit log: who did what, when, from where, with what result.
                """
                CREATE TABLE audit_log (
                    id \(d.serialPrimaryKey), at_ms BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
                    target TEXT NOT NULL, source TEXT NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
                    origin_site TEXT NOT NULL, hlc BIGINT NOT NULL)
                """,
                "CREATE INDEX audit_log_time ON audit_log (at_ms)",
                // Every change to a replicated row, in the same transaction, for peers to stream.
                """
                CREATE TABLE change_log (
                    seq \(d.serialPrimaryKey), entity TEXT NOT NULL, entity_key TEXT NOT NULL, op TEXT NOT NULL,
                    origin_site TEXT NOT NULL, hlc BIGINT NOT NULL)
                """,
                "CREATE INDEX change_log_origin ON change_log (origin_site, hlc)",
            ]
        },
        Migration(version: 2, name: "events by reception time, commands by expiry") { _ in
            [
                "CREATE INDEX events_received ON events (received_ms)",
                "CREATE INDEX commands_expiry ON commands (state, expires_ms)",
            ]
        },
        Migration(version: 3, name: "API sessions; audit, event and command lookups") { d in
            [
                """
                CREATE TABLE auth_sessions (
                    id TEXT PRIMARY KEY, operator TEXT NOT NULL, access_hash \(d.blob) NOT NULL, access_expires_ms BIGINT NOT NULL,
                    refresh_hash \(d.blob) NOT NULL, refresh_expires_ms BIGINT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,
                    created_ms BIGINT NOT NULL, source TEXT NOT NULL)
                """,
                "CREATE INDEX auth_sessions_operator ON auth_sessions (operator)",
                "CREATE INDEX audit_log_actor ON audit_log (actor, id)",
                "CREATE INDEX audit_log_action ON audit_log (action, id)",
                "CREATE INDEX events_time ON events (occurred_ms, device_id, event_id)",
                "CREATE INDEX events_device_time ON events (device_id, occurred_ms)",
                "CREATE INDEX commands_issued ON commands (issued_ms, id)",
                "CREATE INDEX commands_device_issued ON commands (device_id, issued_ms)",
            ]
        },
        Migration(version: 4, name: "certificates each device has pinned") { _ in
            ["ALTER TABLE devices ADD COLUMN pinned TEXT NOT NULL DEFAULT ''"]
        },
        Migration(version: 5, name: "daily fleet snapshots for reports") { _ in
            ["""
             CREATE TABLE fleet_snapshots (
                 day TEXT PRIMARY KEY, at_ms BIGINT NOT NULL, total INTEGER NOT NULL, online INTEGER NOT NULL,
                 stale INTEGER NOT NULL, compliant INTEGER NOT NULL, policy_serial BIGINT NOT NULL)
             """]
        },
        Migration(version: 6, name: "replication: tombstones, cursors, audit keys, per-peer history") { _ in
            [
                // A deleted row's last change, so that an older update arriving later cannot bring it back.
                """
                CREATE TABLE tombstones (
                    entity TEXT NOT NULL, entity_key TEXT NOT NULL, origin_site TEXT NOT NULL, hlc BIGINT NOT NULL,
                    PRIMARY KEY (entity, entity_key))
                """,
                // How far this manager has applied each peer site's change log, and what it last saw there.
                """
                CREATE TABLE replication_cursors (
                    site_id TEXT PRIMARY KEY, position BIGINT NOT NULL, head BIGINT NOT NULL,
                    last_hlc BIGINT NOT NULL DEFAULT 0, updated_ms BIGINT NOT NULL)
                """,
                // Audit entries get a key that is the same on every site.
                "ALTER TABLE audit_log ADD COLUMN entry_key TEXT",
                "CREATE UNIQUE INDEX audit_log_entry_key ON audit_log (entry_key)",
                // Events and audit: both ways, send only, receive only or none, per peer.
                "ALTER TABLE peers ADD COLUMN history TEXT NOT NULL DEFAULT 'both'",
                "CREATE INDEX change_log_entity ON change_log (entity, entity_key)",
                // When a group or policy was created (the clock of its first change), which
                // decides, identically on every site, which of two same-name creations is renamed.
                "ALTER TABLE device_groups ADD COLUMN created_hlc BIGINT NOT NULL DEFAULT 0",
                "UPDATE device_groups SET created_hlc = hlc",
                "ALTER TABLE policies ADD COLUMN created_hlc BIGINT NOT NULL DEFAULT 0",
                "UPDATE policies SET created_hlc = hlc",
            ]
        },
        Migration(version: 7, name: "replication leases: one manager of a site pulls each peer") { _ in
            ["CREATE TABLE replication_leases (site_id TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms BIGINT NOT NULL)"]
        },
        Migration(version: 8, name: "a site of managers on one database: sealed site secrets, agent sessions, peers' certificates") { d in
            [
                // The site's private keys and its identity, sealed with the key every manager
                // of the site is given; `version` moves with each change so that managers
                // notice one by reading a number.
                """
                CREATE TABLE site_secrets (
                    name TEXT PRIMARY KEY, sealed \(d.blob) NOT NULL, key_id TEXT NOT NULL, version BIGINT NOT NULL, updated_ms BIGINT NOT NULL)
                """,
                // Agent sessions any manager of the site continues; the handshake's nonce is
                // unique, so a handshake replayed to another manager is refused.
                """
                CREATE TABLE agent_sessions (
                    id \(d.blob) PRIMARY KEY, device_id TEXT NOT NULL, sealed_keys \(d.blob) NOT NULL, expires_ms BIGINT NOT NULL,
                    nonce TEXT NOT NULL, created_ms BIGINT NOT NULL)
                """,
                // A device's current session and the last message counter taken in it, on the
                // device's row, so that a check-in takes its counter in its one statement.
                "ALTER TABLE devices ADD COLUMN session_id \(d.blob)",
                "ALTER TABLE devices ADD COLUMN session_counter BIGINT NOT NULL DEFAULT 0",
                "CREATE UNIQUE INDEX agent_sessions_nonce ON agent_sessions (nonce)",
                "CREATE INDEX agent_sessions_device ON agent_sessions (device_id)",
                "CREATE INDEX agent_sessions_expiry ON agent_sessions (expires_ms)",
                // A peer's certificate itself, so that every manager of the site trusts it.
                "ALTER TABLE peers ADD COLUMN certificate_pem TEXT",
                // A group's members without a scan of every membership (rollout, group pages).
                "CREATE INDEX device_group_members_group ON device_group_members (group_id, device_id)",
                // Devices by state, in the order pages are read.
                "CREATE INDEX devices_state ON devices (state, id)",
            ] + Self.hostnameSearch(d)
        },
        Migration(version: 9, name: "push: which manager holds a device's wait, and until when") { _ in
            [
                // Written by the wait's own check-in statement (and cleared by a check-in), so
                // that every manager of the site shows which devices are held, and where.
                "ALTER TABLE devices ADD COLUMN push_manager TEXT",
                "ALTER TABLE devices ADD COLUMN push_until_ms BIGINT",
            ]
        },
        Migration(version: 10, name: "notification rules, their deliveries, and scheduled reports") { _ in
            [
                // What to watch for and where to say so. A site's own: not replicated to peers.
                """
                CREATE TABLE notification_rules (
                    id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, event_kind TEXT NOT NULL DEFAULT '',
                    threshold BIGINT NOT NULL DEFAULT 0, window_minutes BIGINT NOT NULL DEFAULT 0, days BIGINT NOT NULL DEFAULT 0,
                    report TEXT NOT NULL DEFAULT '', webhook_url TEXT NOT NULL DEFAULT '', webhook_secret TEXT NOT NULL DEFAULT '',
                    email TEXT NOT NULL DEFAULT '', enabled INTEGER NOT NULL DEFAULT 1, created_by TEXT NOT NULL, created_ms BIGINT NOT NULL,
                    checked_ms BIGINT NOT NULL DEFAULT 0, fired_ms BIGINT NOT NULL DEFAULT 0)
                """,
                // What a rule has already told of (a device, a command, a certificate), so it is told once.
                "CREATE TABLE notification_marks (rule_id TEXT NOT NULL, mark TEXT NOT NULL, at_ms BIGINT NOT NULL, PRIMARY KEY (rule_id, mark))",
                // The outbox: each message to each channel, retried with back-off; claimed by one
                // manager of the site at a time.
                """
                CREATE TABLE notification_deliveries (
                    id TEXT PRIMARY KEY, rule_id TEXT NOT NULL, rule_name TEXT NOT NULL, channel TEXT NOT NULL, target TEXT NOT NULL,
                    subject TEXT NOT NULL, body TEXT NOT NULL, content_type TEXT NOT NULL, state TEXT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0,
                    next_ms BIGINT NOT NULL, claimed_until_ms BIGINT NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
                    created_ms BIGINT NOT NULL, done_ms BIGINT)
                """,
                "CREATE INDEX notification_deliveries_due ON notification_deliveries (state, next_ms)",
                "CREATE INDEX notification_deliveries_created ON notification_deliveries (created_ms)",
            ]
        },
        Migration(version: 11, name: "endpoint users, who may sign in where, sign-in lockouts and codes, directory syncs") { _ in
            [
                // Users who sign in on devices: local (a scrypt hash) or from the directory (its
                // entry's name; the directory checks the password). A site's own, like the
                // operators' sign-in state: not replicated to peers.
                """
                CREATE TABLE endpoint_users (
                    name TEXT PRIMARY KEY, source TEXT NOT NULL, display_name TEXT NOT NULL DEFAULT '', password_hash TEXT NOT NULL DEFAULT '',
                    directory_dn TEXT NOT NULL DEFAULT '', directory_groups TEXT NOT NULL DEFAULT '', disabled INTEGER NOT NULL DEFAULT 0,
                    created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, sync_run TEXT NOT NULL DEFAULT '',
                    last_sign_in_ms BIGINT NOT NULL DEFAULT 0, last_device TEXT NOT NULL DEFAULT '')
                """,
                "CREATE INDEX endpoint_users_sync ON endpoint_users (source, sync_run)",
                // Which users may sign in on the devices of a group (`*`: every device): a user
                // (`user:<name>`) or a directory group (`group:<name>`).
                """
                CREATE TABLE user_sign_in_grants (
                    group_id TEXT NOT NULL, principal TEXT NOT NULL, created_by TEXT NOT NULL, created_ms BIGINT NOT NULL, PRIMARY KEY (group_id, principal))
                """,
                // Failed sign-ins counted per user and per device (`scope`), within a window.
                """
                CREATE TABLE sign_in_failures (
                    scope TEXT NOT NULL, subject TEXT NOT NULL, failures BIGINT NOT NULL, window_start_ms BIGINT NOT NULL,
                    locked_until_ms BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (scope, subject))
                """,
                // One-time sign-in codes an operator gave a user (a hash of each), used once.
                """
                CREATE TABLE user_sign_in_codes (
                    id TEXT PRIMARY KEY, user_name TEXT NOT NULL, code_hash TEXT NOT NULL, expires_ms BIGINT NOT NULL, created_by TEXT NOT NULL,
                    created_ms BIGINT NOT NULL, used_ms BIGINT)
                """,
                "CREATE INDEX user_sign_in_codes_user ON user_sign_in_codes (user_name)",
                // The directory's scheduled sync: one row, claimed by one manager of the site at a time.
                """
                CREATE TABLE directory_syncs (
                    id TEXT PRIMARY KEY, run TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'idle', started_ms BIGINT NOT NULL DEFAULT 0,
                    finished_ms BIGINT NOT NULL DEFAULT 0, claimed_until_ms BIGINT NOT NULL DEFAULT 0, seen BIGINT NOT NULL DEFAULT 0,
                    added BIGINT NOT NULL DEFAULT 0, removed BIGINT NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '')
                """,
            ]
        },
    ]

    /// The schema version this binary writes.
    static var latest: Int { all.last?.version ?? 0 }

    /// An index of every three characters of host names, so that a search for a part of one
    /// does not read every device: SQLite's FTS5 trigram table kept by triggers, PostgreSQL's
    /// `pg_trgm` when the server has it (a search scans the devices otherwise).
    static func hostnameSearch(_ dialect: Dialect) -> [String] {
        switch dialect {
        case .sqlite:
            [
                "CREATE VIRTUAL TABLE devices_hostname_search USING fts5(hostname, content='devices', content_rowid='rowid', tokenize='trigram')",
                "INSERT INTO devices_hostname_search (devices_hostname_search) VALUES ('rebuild')",
                """
                CREATE TRIGGER devices_hostname_search_insert AFTER INSERT ON devices BEGIN
                    INSERT INTO devices_hostname_search (rowid, hostname) VALUES (new.rowid, new.hostname);
                END
                """,
                """
                CREATE TRIGGER devices_hostname_search_delete AFTER DELETE ON devices BEGIN
                    INSERT INTO devices_hostname_search (devices_hostname_search, rowid, hostname) VALUES ('delete', old.rowid, old.hostname);
                END
                """,
                """
                CREATE TRIGGER devices_hostname_search_update AFTER UPDATE OF hostname ON devices BEGIN
                    INSERT INTO devices_hostname_search (devices_hostname_search, rowid, hostname) VALUES ('delete', old.rowid, old.hostname);
                    INSERT INTO devices_hostname_search (rowid, hostname) VALUES (new.rowid, new.hostname);
                END
                """,
            ]
        case .postgres:
            [
                """
                DO $$ BEGIN CREATE EXTENSION IF NOT EXISTS pg_trgm;
                EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'pg_trgm is not available: host name searches read every device'; END $$
                """,
                """
                DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
                    CREATE INDEX devices_hostname_trigrams ON devices USING gin (LOWER(hostname) gin_trgm_ops);
                END IF; END $$
                """,
            ]
        }
    }
}
