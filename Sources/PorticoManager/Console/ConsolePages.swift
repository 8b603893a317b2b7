import Crypto
import Foundation
import Mustache
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

/// A signed-in operator's browser session, shared by the console and reporting listeners
/// (a cookie is the host's, whatever the port).
struct ConsoleSession {
    var record: ConsoleSessionRecord
    var account: OperatorRecord
    var actor: ManagerOperations.Actor
    /// What the API would let this role do.
    var mayAct: Bool { Permission.write("commands").roles.contains(account.role) }
    var mayAudit: Bool { Permission.auditing("audit.read").roles.contains(account.role) }
    func may(_ permission: Permission) -> Bool { permission.roles.contains(account.role) }
}

/// Pages, sessions and forms, for the console and the reports.
struct ConsolePages: Sendable {
    let store: Store
    let templates: MustacheLibrary
    /// Where the reports are (the reporting listener), for the navigation.
    let reportsURL: String?

    init(store: Store, reportsURL: String?) throws {
        self.store = store
        self.reportsURL = reportsURL
        var library = MustacheLibrary()
        for (name, bytes) in ConsoleTemplates.all { try library.register(String(decoding: bytes, as: UTF8.self), named: name) }
        self.templates = library
    }

    func session(of request: GatewayRequest, source: String) async throws -> ConsoleSession? {
        guard let secret = Self.cookies(request.headers)[ConsoleService.sessionCookie], let bytes = Base64URL.decode(secret), bytes.count == 32 else { return nil }
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        guard let record = try await store.consoleSession(idHash: Array(SHA256.hash(data: bytes)), now: now),
              let account = try await store.operatorAccount(named: record.operatorName), !account.disabled else { return nil }
        return ConsoleSession(record: record, account: account, actor: .init(name: "operator:\(account.name)", source: source))
    }

    /// Which menu a page has: the console's, or on the reporting listener the reports' (the
    /// console's pages are on its own port, linked when it is known).
    enum Menu: Sendable {
        case console
        case reports(consoleURL: String?)
    }

    func page(_ status: HTTPResponseStatus, title: String, template: String, _ context: [String: Any], session: ConsoleSession?, nav: String? = nil,
              notice: String? = nil, error: String? = nil, menu: Menu = .console) -> GatewayResponse {
        let content = templates.render(context, withTemplate: template) ?? ""
        var layout: [String: Any] = ["title": title, "content": content]
        // Absent, not nil: a nil in the context would print as "nil".
        if let notice { layout["notice"] = notice }
        if let error { layout["error"] = error }
        if let session {
            var current: [String: Any] = ["name": session.account.name, "role": session.account.role.rawValue, "csrf": session.record.csrfToken,
                                          "nav": [nav ?? "": true], "mayAudit": session.mayAudit,
                                          "mayAdminister": session.may(.admin("operators.read"))]
            switch menu {
            case .console: current["console"] = true
            case .reports(let consoleURL): if let consoleURL { current["consoleURL"] = consoleURL }
            }
            if let reportsURL { current["reports"] = reportsURL }
            layout["operator"] = current
        }
        let html = templates.render(layout, withTemplate: "layout") ?? ""
        return GatewayResponse(status: status, headers: Self.securityHeaders(contentType: "text/html; charset=utf-8"), body: ByteBuffer(string: html))
    }

    static func securityHeaders(contentType: String) -> HTTPHeaders {
        [
            "content-type": contentType,
            "cache-control": "no-store",
            "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "x-frame-options": "DENY",
            // Browsers heed it over HTTPS only, which the console's listener speaks by default.
            "strict-transport-security": "max-age=31536000",
        ]
    }

    /// A time as operators read it: `2026-12-07 16:44:05 UTC`.
    static func time(_ milliseconds: Int64) -> String {
        let date = Date(timeIntervalSince1970: Double(milliseconds) / 1000)
        let text = date.formatted(Date.ISO8601FormatStyle(dateSeparator: .dash, dateTimeSeparator: .space, timeZone: .gmt))
        return text.hasSuffix("Z") ? String(text.dropLast()) + " UTC" : text
    }

    static func time(_ milliseconds: Int64?) -> String? { milliseconds.map { time($0) } }

    /// A path on this host to return to after signing in, or nil for anything else (another
    /// host, a scheme, backslashes): never an open redirect.
    static func localPath(_ text: String?) -> String? {
        guard let text, text.hasPrefix("/"), !text.hasPrefix("//"), text.utf8.count <= 2048,
              !text.contains("\\"), !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return nil }
        return text
    }

    /// The sign-in page, to come back to `next` after.
    static func loginURL(next: String) -> String {
        guard let next = localPath(next), next != "/" else { return "/login" }
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~/")
        return "/login?next=" + (next.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")
    }

    static func redirect(_ location: String) -> GatewayResponse {
        var headers = securityHeaders(contentType: "text/plain; charset=utf-8")
        headers.add(name: "location", value: location)
        return GatewayResponse(status: .seeOther, headers: headers, body: ByteBuffer(string: "See \(location)\n"))
    }

    static func cookies(_ headers: HTTPHeaders) -> [String: String] {
        var cookies: [String: String] = [:]
        for header in headers["cookie"] {
            for pair in header.split(separator: ";") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { continue }
                let name = kv[0].trimmingCharacters(in: .whitespaces)
                if cookies[name] == nil { cookies[name] = kv[1].trimmingCharacters(in: .whitespaces) }
            }
        }
        return cookies
    }

    /// An `application/x-www-form-urlencoded` body (the first value of each field).
    static func form(_ body: ByteBuffer) -> [String: String] {
        APIContext.parseQuery("?" + String(decoding: body.readableBytesView.prefix(256 * 1024), as: UTF8.self))
    }

    /// Every field of a form body in order, repeated ones included.
    static func formPairs(_ body: ByteBuffer) -> [(String, String)] {
        APIContext.parsePairs(Substring(String(decoding: body.readableBytesView.prefix(256 * 1024), as: UTF8.self)))
    }
}
