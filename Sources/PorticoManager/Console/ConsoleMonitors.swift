import Foundation
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoServer
import PorticoStore

/// Monitors, as SEPM names them: the events agents report and the commands across every
/// device, filtered and paged.
extension ConsoleService {
    /// Events, newest first: by kind, device, group and days.
    func eventsPage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let query = call.query
        func value(_ name: String) -> String? { query[name].map { String($0.trimmingCharacters(in: .whitespaces).prefix(128)) }.flatMap { $0.isEmpty ? nil : $0 } }
        var filter = EventFilter(deviceID: value("device"), kind: value("kind"), groupID: value("group"))
        var problems: [String] = []
        do {
            if let from = try ReportingService.day(value("from"), field: "from") { filter.since = try ReportingService.milliseconds(from) }
            if let to = try ReportingService.day(value("to"), field: "to") { filter.until = try ReportingService.milliseconds(to) + 86_400_000 }
        } catch let problem as APIProblem {
            problems.append(problem.detail)
        }
        // The cursor: the (time, device, event) of the last event shown.
        let before = value("before").flatMap { cursor -> (Int64, String, String)? in
            let parts = cursor.split(separator: "|", maxSplits: 2).map(String.init)
            guard parts.count == 3, let at = Int64(parts[0]) else { return nil }
            return (at, parts[1], parts[2])
        }
        let events = problems.isEmpty ? try await store.events(filter, before: before, limit: 101) : []
        let shown = events.prefix(100)
        let hostnames = try await hostnames(of: Set(shown.map(\.deviceID)))
        let groups = try await store.groups()
        var context: [String: Any] = [
            "filter": ["kind": filter.kind ?? "", "device": filter.deviceID ?? "", "from": value("from") ?? "", "to": value("to") ?? ""],
            "groups": groups.map { ["id": $0.id, "name": $0.name, "selected": $0.id == filter.groupID] },
            "events": shown.map { ["at": ConsolePages.time($0.occurredMilliseconds), "deviceId": $0.deviceID, "hostname": hostnames[$0.deviceID] ?? $0.deviceID,
                                   "kind": $0.kind, "body": $0.body] },
            "tab": ["events": true],
        ]
        if events.count > 100, let last = shown.last {
            var components = URLComponents()
            components.queryItems = ["kind", "device", "group", "from", "to"].compactMap { name in value(name).map { URLQueryItem(name: name, value: $0) } }
                + [URLQueryItem(name: "before", value: "\(last.occurredMilliseconds)|\(last.deviceID)|\(last.eventID)")]
            context["older"] = components.percentEncodedQuery
        }
        return page(problems.isEmpty ? .ok : .unprocessableEntity, title: "Events", template: "events", context, session: call.session, nav: "monitors",
                    error: problems.first)
    }

    /// Commands across every device, newest first, by state, with the count in each state.
    func commandsPage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let state = call.query["state"].flatMap(CommandState.init(rawValue:))
        let before = call.query["before"].flatMap { cursor -> (Int64, String)? in
            let parts = cursor.split(separator: "|", maxSplits: 1).map(String.init)
            guard parts.count == 2, let at = Int64(parts[0]) else { return nil }
            return (at, parts[1])
        }
        let commands = try await store.commands(state: state, before: before, limit: 101)
        let shown = commands.prefix(100)
        let counts = try await store.commandCounts()
        let hostnames = try await hostnames(of: Set(shown.map(\.deviceID)))
        var context: [String: Any] = [
            "states": CommandState.allCases.map { ["value": $0.rawValue, "count": counts[$0] ?? 0, "selected": $0 == state] },
            "commands": shown.map { ["issued": ConsolePages.time($0.issuedMilliseconds), "deviceId": $0.deviceID, "hostname": hostnames[$0.deviceID] ?? $0.deviceID,
                                     "kind": $0.kind.rawValue, "state": $0.state.rawValue, "result": $0.result ?? "", "issuedBy": $0.issuedBy] },
            "tab": ["commands": true],
        ]
        if commands.count > 100, let last = shown.last {
            var components = URLComponents()
            components.queryItems = (state.map { [URLQueryItem(name: "state", value: $0.rawValue)] } ?? []) + [URLQueryItem(name: "before", value: "\(last.issuedMilliseconds)|\(last.id)")]
            context["older"] = components.percentEncodedQuery
        }
        return page(.ok, title: "Commands", template: "commands", context, session: call.session, nav: "monitors")
    }

    /// Host names of devices, for tables that list device ids.
    func hostnames(of ids: Set<String>) async throws -> [String: String] {
        var names: [String: String] = [:]
        for id in ids { if let device = try await store.device(id: id) { names[id] = device.hostname } }
        return names
    }
}
