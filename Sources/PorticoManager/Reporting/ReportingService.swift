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
    let console: ConsoleService?
    /// The console listener's port, for the menu on the reporting listener's own pages.
    let consolePort: Int?
    let pages: ConsolePages
    let logger: Logger

    /// - Parameters:
    ///   - console: the manager's console, whose sign-in and sign-out the reporting listener
    ///     also serves (a browser that opens it first signs in there).
    ///   - consolePort: where the console's other pages are, when known.
    public init(store: Store, api: APIService, console: ConsoleService?, consolePort: Int? = nil, logger: Logger = Logger(label: "portico.reporting")) throws {
        self.store = store
        self.api = api
        self.console = console
        self.consolePort = consolePort
        self.pages = try ConsolePages(store: store, reportsURL: "/reports")
        self.logger = logger
    }

    public var routes: [ServiceRoute] {
        let index: @Sendable (GatewayRequest) async throws -> GatewayResponse = { [self] request in
            try await reader(request) { session in
                guard let session else {
                    return APIService.response(APIProblem(.notFound, "the index is for a signed-in browser; reports are at /reports/<name>.csv and .json: "
                                                                     + Self.catalog.map(\.name).joined(separator: ", ")), instance: String(request.path))
                }
                return pages.page(.ok, title: "Reports", template: "reports",
                                  ["reports": Self.catalog.map { ["name": $0.name, "title": $0.title, "about": $0.about] }], session: session, nav: "reports", menu: menu(for: request))
            }
        }
        var routes = [
            ServiceRoute(.GET, "/", index),
            ServiceRoute(.GET, "/reports", index),
            ServiceRoute(.GET, "/reports/{report}") { [self] request in
                try await reader(request) { session in try await report(request, file: request.parameters["report"] ?? "", session: session) }
            },
        ]
        if let console {
            // Signing in and out here too: the session cookie is the host's, whatever the port.
            routes += [
                ServiceRoute(.GET, "/login") { request in console.loginPage(error: nil, name: "", status: .ok, request: request) },
                ServiceRoute(.POST, "/login") { request in try await console.login(request, source: request.clientAddress?.ipAddress ?? "-") },
                ServiceRoute(.POST, "/logout") { [self] request in
                    let source = request.clientAddress?.ipAddress ?? "-"
                    guard let session = try await pages.session(of: request, source: source) else { return ConsolePages.redirect("/login") }
                    guard let token = ConsolePages.form(request.body)["csrf"], ConstantTime.equal(Array(token.utf8), Array(session.record.csrfToken.utf8)) else {
                        await ManagerOperations(store: store, agent: nil).refused(AuditEntry(actor: session.actor.name, action: "console.form", target: "/logout", source: source,
                                                                                             result: "denied", detail: "missing or wrong CSRF token"))
                        return Self.failure(APIProblem(.forbidden, "the form did not carry this session's token; reload the page"), request: request)
                    }
                    return try await console.logout(session)
                },
            ]
        }
        return routes
    }

    public func refusal(_ refusal: RouteRefusal, for request: GatewayRequest) async -> GatewayResponse {
        switch refusal {
        case .notFound: Self.failure(APIProblem.notFound(String(request.path)), request: request)
        case .methodNotAllowed(let allow):
            Self.failure(APIProblem(.methodNotAllowed, "\(request.method.rawValue) is not allowed here; use \(allow)", allow: allow.components(separatedBy: ", ")), request: request)
        case .failed: Self.failure(APIProblem(.internalError, "the report failed; the manager's log says why"), request: request)
        }
    }

    /// The menu of a page: the console's when it is served on the console's listener (under
    /// `/reports/`), else the reports' with a link to the console.
    func menu(for request: GatewayRequest) -> ConsolePages.Menu {
        if request.listener == "console" { return .console }
        guard let consolePort, let host = request.host else { return .reports(consoleURL: nil) }
        let name: Substring = if host.hasPrefix("["), let end = host.firstIndex(of: "]") { host[...end] } else { host.split(separator: ":").first ?? Substring(host) }
        return .reports(consoleURL: "https://\(name):\(consolePort)/")
    }

    /// Runs a report endpoint for a signed-in operator (its console session) or a bearer
    /// token that may read reports; a browser without a session is sent to sign in, anyone
    /// else is answered with a problem document (RFC 9457).
    private func reader(_ request: GatewayRequest, _ body: (ConsoleSession?) async throws -> GatewayResponse) async throws -> GatewayResponse {
        let path = String(request.path)
        let session = try await pages.session(of: request, source: request.clientAddress?.ipAddress ?? "-")
        if session == nil {
            if request.headers.first(name: "authorization") == nil {
                return path.hasSuffix(".csv") || path.hasSuffix(".json")
                    ? APIService.response(APIProblem(.unauthenticated, "sign in to the console, or send Authorization: Bearer <token>"), instance: path)
                    : ConsolePages.redirect(ConsolePages.loginURL(next: request.uri))
            }
            do {
                let principal = try await api.authenticate(request)
                guard principal.scopes.isEmpty || principal.scopes.contains("reports.read") else {
                    return APIService.response(APIProblem(.forbidden, "the token's scopes do not include reports.read"), instance: path)
                }
            } catch let problem as APIProblem {
                return APIService.response(problem, instance: path)
            }
        }
        return try await body(session)
    }

    /// One report, `<name>` as a page, `<name>.csv` or `<name>.json`.
    private func report(_ request: GatewayRequest, file: String, session: ConsoleSession?) async throws -> GatewayResponse {
        let query = APIContext.parseQuery(request.uri)
        let path = String(request.path)
        var name = file
        var format = "html"
        for suffix in ["csv", "json"] where name.hasSuffix("." + suffix) {
            format = suffix
            name = String(name.dropLast(suffix.count + 1))
        }
        guard let entry = Self.catalog.first(where: { $0.name == name }) else {
            return Self.failure(APIProblem(.notFound, "there is no report named \(name); there are " + Self.catalog.map(\.name).joined(separator: ", ")), request: request,
                                session: format == "html" ? session : nil, pages: pages, menu: menu(for: request))
        }
        let report: Report
        do { report = try await Reports(store: store).report(name, from: query["from"], to: query["to"]) } catch let problem as APIProblem {
            guard format == "html", let session else { return APIService.response(problem, instance: path) }
            // The page again, with the range form and what was wrong with it.
            return pages.page(.unprocessableEntity, title: entry.title, template: "report",
                              ["title": entry.title, "ranged": entry.ranged, "from": query["from"] ?? "", "to": query["to"] ?? "", "name": name],
                              session: session, nav: "reports", error: problem.detail, menu: menu(for: request))
        }
        switch format {
        case "csv": return Self.csv(report, name: name)
        case "json": return try Self.json(report, name: name)
        default:
            guard let session else { return APIService.response(APIProblem(.notFound, "the HTML report is for a signed-in browser; use \(name).csv or \(name).json"), instance: path) }
            var context = report.context(csv: "/reports/\(name).csv?\(report.range)", json: "/reports/\(name).json?\(report.range)")
            context["ranged"] = entry.ranged
            context["name"] = name
            context["from"] = report.from
            context["to"] = report.to
            return pages.page(.ok, title: report.title, template: "report", context, session: session, nav: "reports", menu: menu(for: request))
        }
    }

    /// A refusal: a page for a signed-in browser, else a problem document for scripts.
    static func failure(_ problem: APIProblem, request: GatewayRequest, session: ConsoleSession? = nil, pages: ConsolePages? = nil, menu: ConsolePages.Menu = .console) -> GatewayResponse {
        if let session, let pages {
            return pages.page(problem.kind.status, title: "Not found", template: "message", ["heading": "Not found", "text": problem.detail, "back": "/reports"], session: session, menu: menu)
        }
        return APIService.response(problem, instance: String(request.path))
    }

    /// The reports, by the name in their URL.
    static let catalog: [(name: String, title: String, about: String, ranged: Bool)] = [
        ("compliance", "Compliance", "Active devices on the current policies, day by day.", true),
        ("rollout", "Policy rollout", "Each published policy version: devices it targets, and how many have it.", false),
        ("freshness", "Check-in freshness", "Active devices by how long ago they last checked in.", false),
        ("events", "Events", "Events agents reported, by type and day.", true),
        ("commands", "Command outcomes", "Commands issued, by kind and how they ended.", true),
    ]

    /// Columns whose cells are numbers (counts, or percentages with one decimal), given as
    /// numbers in JSON; the rest (days, names, kinds) are text.
    struct Report: Sendable {
        var title: String
        var summary: String
        var columns: [String]
        var numeric: Set<String>
        var rows: [[String]]
        var chart: String
        /// `from` and `to` days of a report over time, else empty.
        var from = ""
        var to = ""

        var range: String { from.isEmpty ? "" : "from=\(from)&to=\(to)" }

        func context(csv: String, json: String) -> [String: Any] {
            // On the page, percentages carry their sign.
            let shown = rows.map { row in zip(columns, row).map { $0.hasSuffix("percent") ? $1 + "%" : $1 } }
            return ["title": title, "summary": summary, "chart": chart, "columns": columns, "rows": shown.map { ["cells": $0] }, "csv": csv, "json": json]
        }
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

    /// A percentage with one decimal, as a number's text ("20.0").
    static func percent(_ part: Int, of whole: Int) -> String {
        whole == 0 ? "0.0" : String(format: "%.1f", Double(part) * 100 / Double(whole))
    }

    /// What a chart's bars measure: shares (0...1, drawn as percentages) or counts.
    enum ChartScale { case share, count }

    /// An accessible bar chart drawn as inline SVG, its axis in percent or in counts.
    static func barChart(_ bars: [(label: String, value: Double)], label: String, scale: ChartScale) -> String {
        let width = 640, height = 200, left = 48, bottom = 30
        let slot = bars.isEmpty ? 0 : Double(width - left - 10) / Double(bars.count)
        // Counts: the axis runs to a round number at or above the largest bar.
        let top: Double = switch scale {
        case .share: 1
        case .count: Self.roundUp(bars.map(\.value).max() ?? 0)
        }
        func tickLabel(_ value: Double) -> String { scale == .share ? "\(Int((value * 100).rounded()))%" : "\(Int(value.rounded()))" }
        func barLabel(_ value: Double) -> String { scale == .share ? String(format: "%.1f%%", value * 100) : "\(Int(value.rounded()))" }
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"\(escape(label))\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\">"
        svg += "<title>\(escape(label))</title>"
        for fraction in [0, 0.5, 1] {
            let y = Double(height - bottom) - fraction * Double(height - bottom - 10)
            svg += "<line x1=\"\(left)\" x2=\"\(width - 10)\" y1=\"\(y)\" y2=\"\(y)\" stroke=\"#e3e6ec\"/><text class=\"tick\" x=\"4\" y=\"\(y + 4)\" font-size=\"11\">\(tickLabel(fraction * top))</text>"
        }
        for (index, bar) in bars.enumerated() {
            let h = max(0, min(1, bar.value / top)) * Double(height - bottom - 10)
            let x = Double(left) + Double(index) * slot + slot * 0.15
            svg += "<rect class=\"bar\" x=\"\(x)\" y=\"\(Double(height - bottom) - h)\" width=\"\(slot * 0.7)\" height=\"\(h)\" fill=\"#3b6fb6\"><title>\(escape(bar.label)): \(barLabel(bar.value))</title></rect>"
            if bars.count <= 10 || index % max(1, bars.count / 6) == 0 {
                svg += "<text x=\"\(x)\" y=\"\(height - 10)\" font-size=\"10\">\(escape(String(bar.label.suffix(5))))</text>"
            }
        }
        return svg + "</svg>"
    }

    /// 1, 2 or 5 times a power of ten, at least `value` (and at least 2, so the middle tick is whole).
    static func roundUp(_ value: Double) -> Double {
        guard value > 2 else { return 2 }
        var step = 1.0
        while true {
            for factor in [1.0, 2.0, 5.0] where factor * step >= value { return factor * step }
            step *= 10
        }
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    // MARK: - Formats

    /// One CSV line (RFC 4180): fields quoted when they need it, and those that would start
    /// a spreadsheet formula defused with a leading `'`.
    static func csvLine(_ fields: [String]) -> String {
        fields.map { text in
            var value = text
            if let first = value.first, "=+-@".contains(first), Double(value) == nil { value = "'" + value }
            return value.contains(where: { ",\"\n\r".contains($0) }) ? "\"" + value.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : value
        }.joined(separator: ",") + "\r\n"
    }

    /// The file name a download is saved as: the report's name and its range, no spaces.
    static func fileName(_ report: Report, name: String, suffix: String) -> String {
        (report.from.isEmpty ? name : "\(name)-\(report.from)-to-\(report.to)") + "." + suffix
    }

    static func csvText(_ report: Report) -> String {
        report.rows.reduce(csvLine(report.columns)) { $0 + csvLine($1) }
    }

    static func csv(_ report: Report, name: String) -> GatewayResponse {
        let text = csvText(report)
        var headers = ConsolePages.securityHeaders(contentType: "text/csv; charset=utf-8")
        headers.add(name: "content-disposition", value: "attachment; filename=\"\(fileName(report, name: name, suffix: "csv"))\"")
        return GatewayResponse(status: .ok, headers: headers, body: ByteBuffer(string: text))
    }

    static func json(_ report: Report, name: String) throws -> GatewayResponse {
        let items = report.rows.map { row in
            Dictionary(uniqueKeysWithValues: zip(report.columns, row).map { column, value -> (String, Any) in
                guard report.numeric.contains(column) else { return (column, value) }
                if let integer = Int(value) { return (column, integer) }
                return (column, Double(value).map { $0 as Any } ?? value)
            })
        }
        var document: [String: Any] = ["report": name, "title": report.title, "columns": report.columns, "items": items]
        if !report.from.isEmpty {
            document["from"] = report.from
            document["to"] = report.to
        }
        let body = try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys])
        var headers = ConsolePages.securityHeaders(contentType: "application/json")
        headers.add(name: "content-disposition", value: "inline; filename=\"\(fileName(report, name: name, suffix: "json"))\"")
        return GatewayResponse(status: .ok, headers: headers, body: ByteBuffer(bytes: body))
    }

}

/// The reports' data, from the store: for the pages, the downloads and scheduled delivery.
struct Reports: Sendable {
    let store: Store

    func report(_ name: String, from: String?, to: String?) async throws -> ReportingService.Report {
        switch name {
        case "compliance": return try await compliance(from: from, to: to)
        case "rollout": return try await rollout()
        case "freshness": return try await freshness()
        case "events": return try await events(from: from, to: to)
        default: return try await commandOutcomes(from: from, to: to)
        }
    }


    /// A report: columns and rows (the CSV and JSON), a summary and a chart (the page).
    /// Devices on the current policy serial, per day, from the daily snapshots (today's taken now).
    func compliance(from: String?, to: String?) async throws -> ReportingService.Report {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let (start, end) = try ReportingService.range(from: from, to: to, now: now)
        try await ManagerOperations(store: store, agent: nil).recordFleetSnapshot(try await FleetHistory.summary(store, now: now), at: now)
        let snapshots = try await store.fleetSnapshots(from: start, to: end)
        let rows = snapshots.map { snapshot -> [String] in
            let s = snapshot.summary
            return [snapshot.day, "\(s.total)", "\(s.compliant)", ReportingService.percent(s.compliant, of: s.total), "\(s.online)", "\(s.stale)", "\(s.policySerial)"]
        }
        let latest = snapshots.last?.summary
        let summary = latest.map { "\($0.compliant) of \($0.total) active devices (\(ReportingService.percent($0.compliant, of: $0.total))%) hold policy serial \($0.policySerial)." }
            ?? "No snapshots in this range."
        let chart = ReportingService.barChart(snapshots.map { ($0.day, $0.summary.total == 0 ? 0 : Double($0.summary.compliant) / Double($0.summary.total)) },
                                  label: "Share of active devices on the current policies, per day", scale: .share)
        return ReportingService.Report(title: "Compliance", summary: summary, columns: ["day", "devices", "compliant", "compliant_percent", "online", "stale", "policy_serial"],
                      numeric: ["devices", "compliant", "compliant_percent", "online", "stale", "policy_serial"], rows: rows, chart: chart, from: start, to: end)
    }

    func rollout() async throws -> ReportingService.Report {
        let rows = try await store.policyRollout()
        let chart = ReportingService.barChart(rows.map { ("\($0.policy) v\($0.version)", $0.targeted == 0 ? 0 : Double($0.current) / Double($0.targeted)) },
                                  label: "Share of targeted devices holding each published policy version", scale: .share)
        let summary = rows.isEmpty ? "No policy is published." : "\(rows.count) published \(rows.count == 1 ? "policy" : "policies"); \(rows.reduce(0) { $0 + $1.current }) of \(rows.reduce(0) { $0 + $1.targeted }) targeted devices are up to date."
        return ReportingService.Report(title: "Policy rollout", summary: summary, columns: ["policy", "version", "targeted", "current", "current_percent"],
                      numeric: ["version", "targeted", "current", "current_percent"],
                      rows: rows.map { [$0.policy, "\($0.version)", "\($0.targeted)", "\($0.current)", ReportingService.percent($0.current, of: $0.targeted)] }, chart: chart)
    }

    func freshness() async throws -> ReportingService.Report {
        let buckets = try await store.checkInFreshness(now: Int64(HybridLogicalClock.wallMilliseconds()))
        let total = buckets.reduce(0) { $0 + $1.devices }
        let chart = ReportingService.barChart(buckets.map { ($0.bucket, Double($0.devices)) }, label: "Active devices by time since their last check-in", scale: .count)
        return ReportingService.Report(title: "Check-in freshness", summary: "\(total) active devices.", columns: ["last_check_in", "devices", "percent"], numeric: ["devices", "percent"],
                      rows: buckets.map { [$0.bucket, "\($0.devices)", ReportingService.percent($0.devices, of: total)] }, chart: chart)
    }

    func events(from: String?, to: String?) async throws -> ReportingService.Report {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let (start, end) = try ReportingService.range(from: from, to: to, now: now)
        let rows = try await store.eventCountsByDay(since: try ReportingService.milliseconds(start), until: try ReportingService.milliseconds(end) + 86_400_000)
        var perDay: [(String, Int)] = []
        for row in rows {
            if perDay.last?.0 == row.day { perDay[perDay.count - 1].1 += row.events } else { perDay.append((row.day, row.events)) }
        }
        let chart = ReportingService.barChart(perDay.map { ($0.0, Double($0.1)) }, label: "Events per day", scale: .count)
        return ReportingService.Report(title: "Events", summary: "\(rows.reduce(0) { $0 + $1.events }) events from \(start) to \(end).", columns: ["day", "kind", "events"], numeric: ["events"],
                      rows: rows.map { [$0.day, $0.kind, "\($0.events)"] }, chart: chart, from: start, to: end)
    }

    func commandOutcomes(from: String?, to: String?) async throws -> ReportingService.Report {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        let (start, end) = try ReportingService.range(from: from, to: to, now: now)
        let rows = try await store.commandOutcomes(since: try ReportingService.milliseconds(start), until: try ReportingService.milliseconds(end) + 86_400_000)
        var byKind: [(String, Int, Int)] = []
        for row in rows {
            let done = row.state == "acknowledged" ? row.commands : 0
            if let index = byKind.firstIndex(where: { $0.0 == row.kind }) { byKind[index].1 += row.commands; byKind[index].2 += done } else { byKind.append((row.kind, row.commands, done)) }
        }
        let chart = ReportingService.barChart(byKind.map { ($0.0, Double($0.1)) }, label: "Commands issued, by kind", scale: .count)
        let acknowledged = byKind.reduce(0) { $0 + $1.2 }
        return ReportingService.Report(title: "Command outcomes", summary: "\(rows.reduce(0) { $0 + $1.commands }) commands issued from \(start) to \(end); \(acknowledged) acknowledged.",
                      columns: ["kind", "state", "commands"], numeric: ["commands"], rows: rows.map { [$0.kind, $0.state, "\($0.commands)"] }, chart: chart, from: start, to: end)
    }

}
