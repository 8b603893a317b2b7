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

    func page(_ status: HTTPResponseStatus, title: String, template: String, _ context: [String: Any], session: ConsoleSession?, nav: String? = nil,
              notice: String? = nil, error: String? = nil) -> GatewayResponse {
        let content = templates.render(context, withTemplate: template) ?? ""
        var layout: [String: Any] = ["title": title, "content": content]
        // Absent, not nil: a nil in the context would print as "nil".
        if let notice { layout["notice"] = notice }
        if let error { layout["error"] = error }
        if let session {
            var current: [String: Any] = ["name": session.account.name, "role": session.account.role.rawValue, "csrf": session.record.csrfToken,
                                          "nav": [nav ?? "": true], "mayAudit": session.mayAudit,
                                          "mayAdminister": session.may(.admin("operators.read"))]
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
        ]
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

    /// An `application/x-www-form-urlencoded` body.
    static func form(_ body: ByteBuffer) -> [String: String] {
        APIContext.parseQuery("?" + String(decoding: body.readableBytesView.prefix(64 * 1024), as: UTF8.self))
    }
}
