import NIOHTTP1
import PorticoGateway
import PorticoServer
import PorticoStore

/// One page or form of the console: method, path pattern, who may use it, and the handler.
typealias ConsoleRoute = ManagerRoute<ConsoleService, ConsoleCall, GatewayResponse>

/// Why a form was not done, to show on its page again.
struct ConsoleRefusal: Error, Sendable {
    var status: HTTPResponseStatus
    var message: String

    static func invalid(_ message: String) -> ConsoleRefusal { ConsoleRefusal(status: .unprocessableEntity, message: message) }
}

/// A request as a console handler sees it: the signed-in session, the form of a POST (its
/// CSRF token already checked), the query and the path's parameters.
struct ConsoleCall: Sendable {
    let request: GatewayRequest
    /// Set for every route but the sign-in page and form.
    let signedIn: ConsoleSession?
    let form: [String: String]
    let query: [String: String]
    let source: String
    /// Set when a form was refused and its page is shown again.
    var refusal: ConsoleRefusal? = nil
    /// The response code for a remote-help challenge, shown on the device's page.
    var remoteHelp: String? = nil
    /// The user that response unlocks on the device, when it unlocks one.
    var remoteHelpUser: String? = nil
    /// A one-time sign-in code just given, shown once on the user's page.
    var signInCode: (code: String, expires: Int64)? = nil

    var session: ConsoleSession { signedIn! }

    func parameter(_ name: String) -> String { request.parameters[name]?.removingPercentEncoding ?? request.parameters[name] ?? "" }

    /// Every value of a form field that may repeat (the devices' checkboxes).
    func values(_ name: String) -> [String] { ConsolePages.formPairs(request.body).filter { $0.0 == name }.map(\.1) }

    /// What was typed into a refused form, to fill it again; never a password or the token.
    var draft: [String: String] {
        guard refusal != nil else { return [:] }
        return form.filter { $0.key != "csrf" && !$0.key.contains("password") }
    }

    /// 200, or the refusal's status when a form's page is shown again.
    var status: HTTPResponseStatus { refusal?.status ?? .ok }
}

extension ConsoleService {
    /// Every page and form of the console. A form names the page it is on, shown again with
    /// the refusal and what was typed when the form is not done.
    static let pages: [ConsoleRoute] = [
        ConsoleRoute(.GET, "/login", .anyone) { console, call in console.loginPage(error: nil, name: "", status: .ok, request: call.request) },
        ConsoleRoute(.POST, "/login", .anyone) { console, call in try await console.login(call.request, source: call.source) },
        ConsoleRoute(.POST, "/logout", .signedIn) { console, call in try await console.logout(call.session) },
        ConsoleRoute(.GET, "/", .signedIn) { console, call in try await console.dashboard(call.session) },
        // The operator's own account.
        ConsoleRoute(.GET, "/account", .signedIn) { try await $0.accountPage($1) },
        ConsoleRoute(.POST, "/account/password", .signedIn, action: "operator.password", formPage: { try await $0.accountPage($1) }) { try await $0.changeOwnPassword($1) },
        // Devices.
        ConsoleRoute(.GET, "/devices", .signedIn) { try await $0.devicesPage($1) },
        ConsoleRoute(.GET, "/devices.csv", .signedIn) { try await $0.devicesCSV($1) },
        ConsoleRoute(.POST, "/devices/bulk", .permission(.write("commands")), action: "device.bulk", formPage: { try await $0.devicesPage($1) }) { try await $0.bulkAction($1) },
        ConsoleRoute(.GET, "/devices/{id}", .signedIn) { try await $0.devicePage($1) },
        ConsoleRoute(.POST, "/devices/{id}/commands", .permission(.write("commands")), action: "command.issue", formPage: { try await $0.devicePage($1) }) {
            try await $0.issueCommand($1)
        },
        ConsoleRoute(.POST, "/devices/{id}/remote-help", .permission(.write("commands")), action: "command.remote_help", formPage: { try await $0.devicePage($1) }) {
            try await $0.remoteHelp($1)
        },
        ConsoleRoute(.POST, "/devices/{id}/group", .permission(.write("groups")), action: "group.move_device", formPage: { try await $0.devicePage($1) }) {
            try await $0.moveDevice($1)
        },
        // Groups.
        ConsoleRoute(.GET, "/groups", .permission(.read("groups"))) { try await $0.groupsPage($1) },
        ConsoleRoute(.POST, "/groups", .permission(.write("groups")), action: "group.create", formPage: { try await $0.groupsPage($1) }) { try await $0.createGroup($1) },
        ConsoleRoute(.POST, "/groups/{id}", .permission(.write("groups")), action: "group.update", formPage: { try await $0.groupsPage($1) }) { try await $0.renameGroup($1) },
        ConsoleRoute(.POST, "/groups/{id}/delete", .permission(.write("groups")), action: "group.delete", formPage: { try await $0.groupsPage($1) }) { try await $0.deleteGroup($1) },
        // Endpoint users and where they may sign in.
        ConsoleRoute(.GET, "/users", .permission(.read("users"))) { try await $0.usersPage($1) },
        ConsoleRoute(.POST, "/users", .permission(.write("users")), action: "user.create", formPage: { try await $0.usersPage($1) }) { try await $0.createUser($1) },
        ConsoleRoute(.POST, "/users/sync", .permission(.admin("users.sync")), action: "user.sync", formPage: { try await $0.usersPage($1) }) { try await $0.syncUsers($1) },
        ConsoleRoute(.POST, "/sign-in-grants", .permission(.write("users")), action: "user.grant", formPage: { try await $0.usersPage($1) }) { try await $0.grantSignIn($1) },
        ConsoleRoute(.POST, "/sign-in-grants/revoke", .permission(.write("users")), action: "user.revoke", formPage: { try await $0.usersPage($1) }) {
            try await $0.revokeSignIn($1)
        },
        ConsoleRoute(.GET, "/users/{name}", .permission(.read("users"))) { try await $0.userPage($1) },
        ConsoleRoute(.POST, "/users/{name}", .permission(.write("users")), action: "user.update", formPage: { try await $0.userPage($1) }) { try await $0.updateUser($1) },
        ConsoleRoute(.POST, "/users/{name}/password", .permission(.write("users")), action: "user.reset_password", formPage: { try await $0.userPage($1) }) {
            try await $0.resetUserPassword($1)
        },
        ConsoleRoute(.POST, "/users/{name}/unlock", .permission(.write("users")), action: "user.unlock", formPage: { try await $0.userPage($1) }) { try await $0.unlockUser($1) },
        ConsoleRoute(.POST, "/users/{name}/code", .permission(.write("users")), action: "user.sign_in_code", formPage: { try await $0.userPage($1) }) {
            try await $0.issueSignInCode($1)
        },
        ConsoleRoute(.POST, "/users/{name}/delete", .permission(.write("users")), action: "user.delete", formPage: { try await $0.userPage($1) }) { try await $0.deleteUser($1) },
        // Monitors.
        ConsoleRoute(.GET, "/events", .permission(.read("events"))) { try await $0.eventsPage($1) },
        ConsoleRoute(.GET, "/commands", .permission(.read("commands"))) { try await $0.commandsPage($1) },
        ConsoleRoute(.GET, "/notifications", .permission(.read("notifications"))) { try await $0.notificationsPage($1) },
        ConsoleRoute(.POST, "/notifications", .permission(.write("notifications")), action: "notification.create", formPage: { try await $0.notificationsPage($1) }) {
            try await $0.createNotificationRule($1)
        },
        ConsoleRoute(.POST, "/notifications/{id}/delete", .permission(.write("notifications")), action: "notification.delete", formPage: { try await $0.notificationsPage($1) }) {
            try await $0.deleteNotificationRule($1)
        },
        ConsoleRoute(.POST, "/notifications/{id}/enabled", .permission(.write("notifications")), action: "notification.enable", formPage: { try await $0.notificationsPage($1) }) {
            try await $0.enableNotificationRule($1)
        },
        ConsoleRoute(.GET, "/audit", .permission(.auditing("audit.read"))) { console, call in try await console.audit(call.request, session: call.session) },
        // Policies.
        ConsoleRoute(.GET, "/policies", .permission(.read("policies"))) { try await $0.policiesPage($1) },
        ConsoleRoute(.POST, "/policies", .permission(.write("policies")), action: "policy.create", formPage: { try await $0.policiesPage($1) }) { try await $0.createPolicy($1) },
        ConsoleRoute(.GET, "/policies/{id}", .permission(.read("policies"))) { try await $0.policyPage($1) },
        ConsoleRoute(.POST, "/policies/{id}/versions", .permission(.write("policies")), action: "policy.version", formPage: { try await $0.policyPage($1) }) {
            try await $0.addPolicyVersion($1)
        },
        ConsoleRoute(.POST, "/policies/{id}/publish", .permission(.write("policies")), action: "policy.publish", formPage: { try await $0.policyPage($1) }) {
            try await $0.publishPolicy($1)
        },
        ConsoleRoute(.POST, "/policies/{id}/assign", .permission(.write("policies")), action: "policy.assign", formPage: { try await $0.policyPage($1) }) {
            try await $0.assignPolicy($1, assign: true)
        },
        ConsoleRoute(.POST, "/policies/{id}/unassign", .permission(.write("policies")), action: "policy.unassign", formPage: { try await $0.policyPage($1) }) {
            try await $0.assignPolicy($1, assign: false)
        },
        // Enrollment tokens.
        ConsoleRoute(.GET, "/enrollment-tokens", .permission(.read("enrollment_tokens"))) { try await $0.tokensPage($1, created: nil) },
        ConsoleRoute(.POST, "/enrollment-tokens", .permission(.write("enrollment_tokens")), action: "enrollment_token.create",
                     formPage: { try await $0.tokensPage($1, created: nil) }) { try await $0.createEnrollmentToken($1) },
        ConsoleRoute(.POST, "/enrollment-tokens/{id}/revoke", .permission(.write("enrollment_tokens")), action: "enrollment_token.revoke",
                     formPage: { try await $0.tokensPage($1, created: nil) }) { try await $0.revokeEnrollmentToken($1) },
        // Operators and API tokens.
        ConsoleRoute(.GET, "/operators", .permission(.admin("operators.read"))) { try await $0.operatorsPage($1, created: nil) },
        ConsoleRoute(.POST, "/operators", .permission(.admin("operators.write")), action: "operator.create", formPage: { try await $0.operatorsPage($1, created: nil) }) {
            try await $0.createOperator($1)
        },
        ConsoleRoute(.POST, "/operators/{name}/unlock", .permission(.admin("operators.write")), action: "operator.unlock", formPage: { try await $0.operatorsPage($1, created: nil) }) {
            try await $0.unlockOperator($1)
        },
        ConsoleRoute(.POST, "/operators/{name}", .permission(.admin("operators.write")), action: "operator.update", formPage: { try await $0.operatorsPage($1, created: nil) }) {
            try await $0.updateOperator($1)
        },
        ConsoleRoute(.POST, "/operators/{name}/delete", .permission(.admin("operators.write")), action: "operator.delete", formPage: { try await $0.operatorsPage($1, created: nil) }) {
            try await $0.deleteOperator($1)
        },
        ConsoleRoute(.POST, "/api-tokens", .permission(.admin("api_tokens.write")), action: "api_token.create", formPage: { try await $0.operatorsPage($1, created: nil) }) {
            try await $0.createAPIToken($1)
        },
        ConsoleRoute(.POST, "/api-tokens/{id}/revoke", .permission(.admin("api_tokens.write")), action: "api_token.revoke", formPage: { try await $0.operatorsPage($1, created: nil) }) {
            try await $0.revokeAPIToken($1)
        },
        // Peers.
        ConsoleRoute(.GET, "/peers", .permission(.read("peers"))) { try await $0.peersPage($1) },
    ]
}
