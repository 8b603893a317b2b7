import SQLKit

/// An event an agent reported, identified by the agent's own id so that a retried upload
/// is stored once.
public struct EventRecord: Sendable, Equatable {
    public var deviceID: String
    public var eventID: String
    public var kind: String
    public var occurredMilliseconds: Int64
    public var body: String

    public init(deviceID: String, eventID: String, kind: String, occurredMilliseconds: Int64, body: String) {
        self.deviceID = deviceID
        self.eventID = eventID
        self.kind = kind
        self.occurredMilliseconds = occurredMilliseconds
        self.body = body
    }

    /// The largest event body stored.
    public static let maxBodyBytes = 64 * 1024

    func validate() throws {
        try Validate.identifier(deviceID, field: "event.device_id")
        try Validate.identifier(eventID, field: "event.id")
        try Validate.identifier(kind, field: "event.kind", maxLength: 64)
        try Validate.nonNegative(occurredMilliseconds, field: "event.occurred_ms")
        try Validate.text(body, field: "event.body", maxBytes: Self.maxBodyBytes)
    }
}

extension Store {
    /// Stores a batch of events; duplicates (same device and event id) are ignored.
    /// Returns the ids that were new. When this returns, the batch is durable.
    /// - Throws: ``StoreError`` naming the first invalid field; nothing of the batch is stored then.
    @discardableResult
    /// - Parameter advancing: the message's place in its session, taken first in the same
    ///   transaction (``SessionRefusal``).
    public func ingestEvents(_ events: [EventRecord], advancing: SessionAdvance? = nil) async throws -> [String] {
        for event in events { try event.validate() }
        if events.isEmpty, let advancing { try await advanceSession(advancing) }
        guard !events.isEmpty else { return [] }
        let received = Int64(HybridLogicalClock.wallMilliseconds())
        return try await write { transaction in
            if let advancing { try await transaction.advanceSession(advancing) }
            var inserted: [String] = []
            var keys: [String] = []
            let hlc = Int64(bitPattern: transaction.timestamp())
            for chunk in stride(from: 0, to: events.count, by: 100).map({ events[$0..<min($0 + 100, events.count)] }) {
                let rows = chunk.map { event in
                    SQLGroupExpression([
                        SQLBind(event.deviceID), SQLBind(event.eventID), SQLBind(event.kind), SQLBind(event.occurredMilliseconds),
                        SQLBind(received), SQLBind(event.body), SQLBind(transaction.siteID), SQLBind(hlc),
                    ] as [any SQLExpression])
                }
                let query = SQLQueryString("""
                    INSERT INTO events (device_id, event_id, kind, occurred_ms, received_ms, body, origin_site, hlc) VALUES \
                    \(SQLList(rows)) ON CONFLICT (device_id, event_id) DO NOTHING RETURNING device_id, event_id
                    """)
                let returned = try await transaction.database.raw(query).all()
                for row in returned {
                    let id = try row.decode(column: "event_id", as: String.self)
                    inserted.append(id)
                    keys.append(try row.decode(column: "device_id", as: String.self) + "/" + id)
                }
            }
            try await transaction.logChanges(entity: "event", keys: keys, hlc: UInt64(bitPattern: hlc), origin: transaction.siteID)
            return inserted
        }
    }

    /// Events of a device, oldest first.
    public func events(device: String, limit: Int = 1000) async throws -> [EventRecord] {
        try await read { db in
            try await db.raw("SELECT device_id, event_id, kind, occurred_ms, body FROM events WHERE device_id = \(bind: device) ORDER BY occurred_ms, event_id LIMIT \(bind: limit)").all().map(EventRecord.init(row:))
        }
    }

    /// How many events are stored (all devices, or one).
    public func eventCount(device: String? = nil) async throws -> Int {
        try await read { db in
            let row: (any SQLRow)?
            if let device {
                row = try await db.raw("SELECT COUNT(*) AS n FROM events WHERE device_id = \(bind: device)").first()
            } else {
                row = try await db.raw("SELECT COUNT(*) AS n FROM events").first()
            }
            return try row?.decode(column: "n", as: Int.self) ?? 0
        }
    }
}

extension EventRecord {
    init(row: any SQLRow) throws {
        self.init(
            deviceID: try row.decode(column: "device_id", as: String.self),
            eventID: try row.decode(column: "event_id", as: String.self),
            kind: try row.decode(column: "kind", as: String.self),
            occurredMilliseconds: try row.decode(column: "occurred_ms", as: Int64.self),
            body: try row.decode(column: "body", as: String.self)
        )
    }
}
