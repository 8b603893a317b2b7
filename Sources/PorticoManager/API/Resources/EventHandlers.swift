import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

/// Events agents reported, and the audit log.
extension APIService {
    func listEvents(_ context: APIContext) async throws -> APIReply {
        let (limit, cursor) = try context.paging(parts: 3)
        var before: (Int64, String, String)?
        if let cursor {
            guard let occurred = Int64(cursor[0]) else { throw APIProblem.invalid("cursor", "is not one this API gave out") }
            before = (occurred, cursor[1], cursor[2])
        }
        let filter = EventFilter(deviceID: try context.string("device_id"), kind: try context.string("kind"), since: try context.time("since"), until: try context.time("until"))
        let events = try await store.events(filter, before: before, limit: limit + 1)
        let page = Array(events.prefix(limit))
        return try .json(Page(items: page.map(EventView.init), nextCursor: events.count > limit ? page.last.map { Cursor.encode(["\($0.occurredMilliseconds)", $0.deviceID, $0.eventID]) } : nil))
    }

    func listAudit(_ context: APIContext) async throws -> APIReply {
        let (limit, cursor) = try context.paging(parts: 1)
        var before: Int64?
        if let cursor {
            guard let id = Int64(cursor[0]) else { throw APIProblem.invalid("cursor", "is not one this API gave out") }
            before = id
        }
        let filter = AuditFilter(actor: try context.string("actor"), action: try context.string("action"), target: try context.string("target"),
                                 result: try context.string("result"), since: try context.time("since"), until: try context.time("until"))
        let entries = try await store.auditEntries(filter, beforeID: before, limit: limit + 1)
        let page = Array(entries.prefix(limit))
        return try .json(Page(items: page.map(AuditView.init), nextCursor: entries.count > limit ? page.last.map { Cursor.encode(["\($0.id ?? 0)"]) } : nil))
    }
}
