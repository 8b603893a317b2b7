import NIOHTTP1
import PorticoGateway
import PorticoServer
import PorticoStore

/// One page or form of the console: method, path pattern, who may use it, and the handler.
typealias ConsoleRoute = ManagerRoute<ConsoleService, ConsoleCall, GatewayResponse>

/// A request as a console handler sees it: the signed-in session, the form of a POST (its
/// CSRF token already checked), the query and the path's parameters.
struct ConsoleCall: Sendable {
    let request: GatewayRequest
    /// Set for every route but the sign-in page and form.
    let signedIn: ConsoleSession?
    let form: [String: String]
    let query: [String: String]
    let source: String

    var session: ConsoleSession { signedIn! }

    func parameter(_ name: String) -> String { request.parameters[name] ?? "" }
}

extension ConsoleService {
    /// Every page and form of the console.
    static let pages: [ConsoleRoute] = [
        ConsoleRoute(.GET, "/login", .anyone) { console, call in console.loginPage(error: nil, name: "", status: .ok, request: call.request) },
        ConsoleRoute(.POST, "/login", .anyone) { console, call in try await console.login(call.request, source: call.source) },
        ConsoleRoute(.POST, "/logout", .signedIn) { console, call in try await console.logout(call.session) },
        ConsoleRoute(.GET, "/", .signedIn) { console, call in try await console.dashboard(call.session) },
        // Devices.
        ConsoleRoute(.GET, "/devices", .signedIn) { console, call in try await console.devices(call.request, session: call.session) },
        ConsoleRoute(.GET, "/devices/{id}", .signedIn) { console, call in
            try await console.device(call.parameter("id"), session: call.session,
                                     notice: call.query["done"].map { "The \($0) command is queued; the device gets it at its next check-in." })
        },
        ConsoleRoute(.POST, "/devices/{id}/commands", .permission(.write("commands"))) { console, call in
            try await console.issueCommand(deviceID: call.parameter("id"), form: call.form, session: call.session)
        },
        ConsoleRoute(.POST, "/devices/{id}/remote-help", .permission(.write("commands"))) { console, call in
            try await console.remoteHelp(deviceID: call.parameter("id"), form: call.form, session: call.session)
        },
        ConsoleRoute(.GET, "/audit", .permission(.auditing("audit.read"))) { console, call in try await console.audit(call.request, session: call.session) },
        // Policies.
        ConsoleRoute(.GET, "/policies", .permission(.read("policies"))) { try await $0.policiesPage($1) },
        ConsoleRoute(.POST, "/policies", .permission(.write("policies"))) { try await $0.createPolicy($1) },
        ConsoleRoute(.GET, "/policies/{id}", .permission(.read("policies"))) { console, call in
            try await console.policyPage(call.parameter("id"), query: call.query, session: call.session)
        },
        ConsoleRoute(.POST, "/policies/{id}/versions", .permission(.write("policies"))) { try await $0.addPolicyVersion($1) },
        ConsoleRoute(.POST, "/policies/{id}/publish", .permission(.write("policies"))) { try await $0.publishPolicy($1) },
        ConsoleRoute(.POST, "/policies/{id}/assign", .permission(.write("policies"))) { try await $0.assignPolicy($1, assign: true) },
        ConsoleRoute(.POST, "/policies/{id}/unassign", .permission(.write("policies"))) { try await $0.assignPolicy($1, assign: false) },
        // Enrollment tokens.
        ConsoleRoute(.GET, "/enrollment-tokens", .permission(.read("enrollment_tokens"))) { console, call in
            try await console.tokensPage(session: call.session, created: nil)
        },
        ConsoleRoute(.POST, "/enrollment-tokens", .permission(.write("enrollment_tokens"))) { try await $0.createEnrollmentToken($1) },
        ConsoleRoute(.POST, "/enrollment-tokens/{id}/revoke", .permission(.write("enrollment_tokens"))) { try await $0.revokeEnrollmentToken($1) },
        // Operators and API tokens.
        ConsoleRoute(.GET, "/operators", .permission(.admin("operators.read"))) { console, call in
            try await console.operatorsPage(session: call.session, created: nil, notice: call.query["done"])
        },
        ConsoleRoute(.POST, "/operators", .permission(.admin("operators.write"))) { try await $0.createOperator($1) },
        ConsoleRoute(.POST, "/operators/{name}/unlock", .permission(.admin("operators.write"))) { try await $0.unlockOperator($1) },
        ConsoleRoute(.POST, "/api-tokens", .permission(.admin("api_tokens.write"))) { try await $0.createAPIToken($1) },
        ConsoleRoute(.POST, "/api-tokens/{id}/revoke", .permission(.admin("api_tokens.write"))) { try await $0.revokeAPIToken($1) },
        // Peers.
        ConsoleRoute(.GET, "/peers", .permission(.read("peers"))) { try await $0.peersPage($1) },
    ]
}
