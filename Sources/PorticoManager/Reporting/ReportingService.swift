import Foundation
import Logging
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoServer
import PorticoStore
import ServiceLifecycle

/// The reporting role: reports as HTML pages with charts drawn on the server (inline SVG),
/// and the same data as CSV and JSON at stable URLs for scripts. Operators read them with
/// their console session (the cookie is the host's); scripts with a bearer token (an API
/// token, or an access token from the API's login). Every role may read reports; a scoped
/// token needs `reports.read`.
public final class ReportingService: HTTPService {
    let store: Store
    let api: APIService
    let pages: ConsolePages
    let logger: Logger

    public init(store: Store, api: APIService, logger: Logger = Logger(label: "portico.reporting")) throws {
        self.store = store
        self.api = api
        self.pages = try ConsolePages(store: store, reportsURL: "/reports/compliance")
        self.logger = logger
    }

    public var routes: [ServiceRoute] {
        let index: @Sendable (GatewayRequest) async throws -> GatewayResponse = { [self] request in
            try await reader(request) { session in
                guard let session else { return Self.plain(.notFound, "the index is for the console; reports are at /reports/<name>.csv and .json\n") }
                return pages.page(.ok, title: "Reports", template: "reports",
                                  ["reports": Self.catalog.map { ["name": $0.name, "title": $0.title, "about": $0.about] }], session: session, nav: "reports")
            }
        }
        return [
            ServiceRoute(.GET, "/", index),
            ServiceRoute(.GET, "/reports", index),
            ServiceRoute(.GET, "/reports/{report}") { [self] request in
                try await reader(request) { session in try await report(request, file: request.parameters["report"] ?? "", session: session) }
            },
        ]
    }

    public func refusal(_ refusal: RouteRefusal, for request: GatewayRequest) async -> GatewayResponse {
        switch refusal {
        case .notFound: Self.plain(.notFound, "no report at \(request.path)\n")
        case .methodNotAllowed(let allow): Self.plain(.methodNotAllowed, "reports are read with GET\n", allow: allow)
        case .failed: Self.plain(.internalServerError, "the report failed; the manager's log says why\n")
        }
    }

    /// Runs a report endpoint for a signed-in operator (its console session) or a bearer
    /// token that may read reports; anyone else is sent to sign in, or refused.
    private func reader(_ request: GatewayRequest, _ body: (ConsoleSession?) async throws -> GatewayResponse) async throws -> GatewayResponse {
        let path = String(request.path)
        let session = try await pages.session(of: request, source: request.clientAddress?.ipAddress ?? "-")
        if session == nil {
            if request.headers.first(name: "authorization") == nil {
                return path.hasSuffix(".csv") || path.hasSuffix(".json") ? Self.plain(.unauthorized, "sign in to the console, or send Authorization: Bearer <token>\n")
                    : ConsolePages.redirect("/login")
            }
            do {
                let principal = try await api.authenticate(request)
                guard principal.scopes.isEmpty || principal.scopes.contains("reports.read") else { return Self.plain(.forbidden, "the token's scopes do not include reports.read\n") }
            } catch let problem as APIProblem {
                return APIService.response(problem, instance: path)
            }
        }
        return try await body(session)
    }

    /// One report, `<name>` as a page, `<name>.csv` or `<name>.json`.
    private func report(_ request: GatewayRequest, file: String, session: ConsoleSession?) async throws -> GatewayResponse {
        let query = APIContext.parseQuery(request.uri)
        var name = file
        var format = "html"
        for suffix in ["csv", "json"] where name.hasSuffix("." + suffix) {
            format = suffix
            name = String(name.dropLast(suffix.count + 1))
        }
        guard Self.catalog.contains(where: { $0.name == name }) else { return Self.plain(.notFound, "no report named \(name)\n") }
        let report: Report
        do { report = try await self.report(name, from: query["from"], to: query["to"]) } catch let problem as APIProblem {
            return Self.plain(.unprocessableEntity, problem.detail + "\n")
        }
        switch format {
        case "csv": return Self.csv(report)
        case "json": return try Self.json(report)
        default:
            guard let session else { return Self.plain(.notFound, "the HTML report is for the console; use \(name).csv or \(name).json\n") }
            return pages.page(.ok, title: report.title, template: "report",
                              report.context(csv: "/reports/\(name).csv?\(report.range)", json: "/reports/\(name).json?\(report.range)"), session: session, nav: "reports")
        }
    }

    /// The reports, by the name in their URL.
    static let catalog: [(name: String, title: String, about: String)] = [
        ("compliance", "Compliance", "Active devices on the current policies, day by day."),
        ("rollout", "Policy rollout", "Each published policy version: devices it targets, and how many have it."),
        ("freshness", "Check-in freshness", "Active devices by how long ago they last checked in."),
        ("events", "Events", "Events agents reported, by type and day."),
        ("commands", "Command outcomes", "Commands issued, by kind and how they ended."),
    ]

    func report(_ name: String, from: String?, to: String?) async throws -> Report {
        switch name {
        case "compliance": return try await compliance(from: from, to: to)
        case "rollout": return try await rollout()
        case "freshness": return try await freshness()
        case "events": return try await events(from: from, to: to)
        default: return try await commandOutcomes(from: from, to: to)
        }
    }

    // MARK: - Reports

    /// A report: columns and rows (the CSV and JSON), a summary and a chart (the page).
    struct Report: Sendable {
        var title: String
        var summary: String
        var columns: [String]
        var rows: [[String]]
        var chart: String
        var range: String

        func context(csv: String, json: String) -> [String: Any] {
            ["title": title, "summary": summary, "chart": chart, "columns": columns, "rows": rows.map { ["cells": $0] }, "csv": csv, "json": json]
        }
    }

    /// Devices on the current policy serial, per day, from the daily snapshots (today's taken now).
    func compliance(from: String?, to: String?) async throws -> Report {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let (start, end) = try Self.range(from: from, to: to, now: now)
        try await ManagerOperations(store: store, agent: nil).recordFleetSnapshot(try await FleetHistory.summary(store, now: now), at: now)
        let snapshots = try await store.fleetSnapshots(from: start, to: end)
        let rows = snapshots.map { snapshot -> [String] in
            let s = snapshot.summary
            return [snapshot.day, "\(s.total)", "\(s.compliant)", Self.percent(s.compliant, of: s.total), "\(s.online)", "\(s.stale)", "\(s.policySerial)"]
        }
        let latest = snapshots.last?.summary
        let summary = latest.map { "\($0.compliant) of \($0.total) active devices (\(Self.percent($0.compliant, of: $0.total))) hold policy serial \($0.policySerial)." }
            ?? "No snapshots in this range."
        let chart = Self.barChart(snapshots.map { ($0.day, $0.summary.total == 0 ? 0 : Double($0.summary.compliant) / Double($0.summary.total)) },
                                  label: "Share of active devices on the current policies, per day")
        return Report(title: "Compliance", summary: summary, columns: ["day", "devices", "compliant", "compliant_percent", "online", "stale", "policy_serial"],
                      rows: rows, chart: chart, range: "from=\(start)&to=\(end)")
    }

    func rollout() async throws -> Report {
        let rows = try await store.policyRollout()
        let chart = Self.barChart(rows.map { ("\($0.policy) v\($0.version)", $0.targeted == 0 ? 0 : Double($0.current) / Double($0.targeted)) },
                                  label: "Share of targeted devices holding each published policy version")
        let summary = rows.isEmpty ? "No policy is published." : "\(rows.count) published \(rows.count == 1 ? "policy" : "policies"); \(rows.reduce(0) { $0 + $1.current }) of \(rows.reduce(0) { $0 + $1.targeted }) targeted devices are up to date."
        return Report(title: "Policy rollout", summary: summary, columns: ["policy", "version", "targeted", "current", "current_percent"],
                      rows: rows.map { [$0.policy, "\($0.version)", "\($0.targeted)", "\($0.current)", Self.percent($0.current, of: $0.targeted)] }, chart: chart, range: "")
    }

    func freshness() async throws -> Report {
        let buckets = try await store.checkInFreshness(now: Int64(HybridLogicalClock.wallMilliseconds()))
        let total = buckets.reduce(0) { $0 + $1.devices }
        let chart = Self.barChart(buckets.map { ($0.bucket, total == 0 ? 0 : Double($0.devices) / Double(total)) }, label: "Active devices by time since their last check-in")
        return Report(title: "Check-in freshness", summary: "\(total) active devices.", columns: ["last_check_in", "devices", "percent"],
                      rows: buckets.map { [$0.bucket, "\($0.devices)", Self.percent($0.devices, of: total)] }, chart: chart, range: "")
    }

    func events(from: String?, to: String?) async throws -> Report {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let (start, end) = try Self.range(from: from, to: to, now: now)
        let rows = try await store.eventCountsByDay(since: try Self.milliseconds(start), until: try Self.milliseconds(end) + 86_400_000)
        var perDay: [(String, Int)] = []
        for row in rows {
            if perDay.last?.0 == row.day { perDay[perDay.count - 1].1 += row.events } else { perDay.append((row.day, row.events)) }
        }
        let most = max(1, perDay.map(\.1).max() ?? 1)
        let chart = Self.barChart(perDay.map { ($0.0, Double($0.1) / Double(most)) }, label: "Events per day, relative to the busiest day (\(most))")
        return Report(title: "Events", summary: "\(rows.reduce(0) { $0 + $1.events }) events from \(start) to \(end).", columns: ["day", "kind", "events"],
                      rows: rows.map { [$0.day, $0.kind, "\($0.events)"] }, chart: chart, range: "from=\(start)&to=\(end)")
    }

    func commandOutcomes(from: String?, to: String?) async throws -> Report {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let (start, end) = try Self.range(from: from, to: to, now: now)
        let rows = try await store.commandOutcomes(since: try Self.milliseconds(start), until: try Self.milliseconds(end) + 86_400_000)
        var byKind: [(String, Int, Int)] = []
        for row in rows {
            let done = row.state == "acknowledged" ? row.commands : 0
            if let index = byKind.firstIndex(where: { $0.0 == row.kind }) { byKind[index].1 += row.commands; byKind[index].2 += done } else { byKind.append((row.kind, row.commands, done)) }
        }
        let chart = Self.barChart(byKind.map { ($0.0, $0.1 == 0 ? 0 : Double($0.2) / Double($0.1)) }, label: "Share of commands acknowledged, by kind")
        return Report(title: "Command outcomes", summary: "\(rows.reduce(0) { $0 + $1.commands }) commands issued from \(start) to \(end).", columns: ["kind", "state", "commands"],
                      rows: rows.map { [$0.kind, $0.state, "\($0.commands)"] }, chart: chart, range: "from=\(start)&to=\(end)")
    }

    /// `from` and `to` days, the last 30 days by default.
    static func range(from: String?, to: String?, now: Int64) throws -> (String, String) {
        let end = try day(to, field: "to") ?? Store.day(of: now)
        let start = try day(from, field: "from") ?? Store.day(of: now - 29 * 86_400_000)
        guard start <= end else { throw APIProblem.invalid("from", "must not be after to") }
        return (start, end)
    }

    static func milliseconds(_ day: String) throws -> Int64 {
        guard let date = try? Date.ISO8601FormatStyle().parse(day + "T00:00:00Z") else { throw APIProblem.invalid("from", "must be a day such as 2026-01-31") }
        return Int64(date.timeIntervalSince1970 * 1000)
    }

    static func day(_ text: String?, field: String) throws -> String? {
        guard let text, !text.isEmpty else { return nil }
        let parts = text.split(separator: "-")
        guard text.count == 10, parts.count == 3, let year = Int(parts[0]), let month = Int(parts[1]), let day = Int(parts[2]),
              (1970...9999).contains(year), (1...12).contains(month), (1...31).contains(day) else {
            throw APIProblem.invalid(field, "must be a day such as 2026-01-31")
        }
        return text
    }

    static func percent(_ part: Int, of whole: Int) -> String {
        whole == 0 ? "0%" : String(format: "%.1f%%", Double(part) * 100 / Double(whole))
    }

    /// An accessible bar chart of shares (0...1), drawn as inline SVG.
    static func barChart(_ bars: [(label: String, share: Double)], label: String) -> String {
        let width = 640, height = 200, left = 40, bottom = 30
        let slot = bars.isEmpty ? 0 : Double(width - left - 10) / Double(bars.count)
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"\(escape(label))\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\">"
        svg += "<title>\(escape(label))</title>"
        for tick in [0, 50, 100] {
            let y = Double(height - bottom) - Double(tick) / 100 * Double(height - bottom - 10)
            svg += "<line x1=\"\(left)\" x2=\"\(width - 10)\" y1=\"\(y)\" y2=\"\(y)\" stroke=\"#e3e6ec\"/><text x=\"4\" y=\"\(y + 4)\" font-size=\"11\">\(tick)%</text>"
        }
        for (index, bar) in bars.enumerated() {
            let h = max(0, min(1, bar.share)) * Double(height - bottom - 10)
            let x = Double(left) + Double(index) * slot + slot * 0.15
            svg += "<rect class=\"bar\" x=\"\(x)\" y=\"\(Double(height - bottom) - h)\" width=\"\(slot * 0.7)\" height=\"\(h)\" fill=\"#3b6fb6\"><title>\(escape(bar.label)): \(String(format: "%.1f", bar.share * 100))%</title></rect>"
            if bars.count <= 10 || index % max(1, bars.count / 6) == 0 {
                svg += "<text x=\"\(x)\" y=\"\(height - 10)\" font-size=\"10\">\(escape(String(bar.label.suffix(5))))</text>"
            }
        }
        return svg + "</svg>"
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    // MARK: - Formats

    static func csv(_ report: Report) -> GatewayResponse {
        func field(_ text: String) -> String {
            // Quote when needed, and defuse spreadsheet formulas.
            var value = text
            if let first = value.first, "=+-@".contains(first), Double(value) == nil { value = "'" + value }
            return value.contains(where: { ",\"\n\r".contains($0) }) ? "\"" + value.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : value
        }
        var text = report.columns.map(field).joined(separator: ",") + "\r\n"
        for row in report.rows { text += row.map(field).joined(separator: ",") + "\r\n" }
        var headers = ConsolePages.securityHeaders(contentType: "text/csv; charset=utf-8")
        headers.add(name: "content-disposition", value: "attachment; filename=\"\(report.title.lowercased()).csv\"")
        return GatewayResponse(status: .ok, headers: headers, body: ByteBuffer(string: text))
    }

    static func json(_ report: Report) throws -> GatewayResponse {
        // Counts are numbers; days, names and percentages stay text.
        let items = report.rows.map { row in
            Dictionary(uniqueKeysWithValues: zip(report.columns, row).map { column, value -> (String, Any) in (column, Int(value).map { $0 as Any } ?? value) })
        }
        let body = try JSONSerialization.data(withJSONObject: ["report": report.title.lowercased(), "columns": report.columns, "items": items], options: [.sortedKeys])
        return GatewayResponse(status: .ok, headers: ConsolePages.securityHeaders(contentType: "application/json"), body: ByteBuffer(bytes: body))
    }

    static func plain(_ status: HTTPResponseStatus, _ text: String, allow: String? = nil) -> GatewayResponse {
        var headers = ConsolePages.securityHeaders(contentType: "text/plain; charset=utf-8")
        if let allow { headers.add(name: "allow", value: allow) }
        return GatewayResponse(status: status, headers: headers, body: ByteBuffer(string: text))
    }
}
