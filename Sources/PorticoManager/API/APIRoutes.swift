import NIOHTTP1
import PorticoStore

extension APIService {
    /// Every endpoint under `/api/v1`. The OpenAPI document lists exactly these (a test checks).
    static let routes: [APIRoute] = [
        // Document and authentication.
        APIRoute(.GET, "/openapi.yaml", .anyone) { api, _ in api.openAPIDocument() },
        APIRoute(.POST, "/auth/login", .anyone, action: "auth.login") { try await $0.login($1) },
        APIRoute(.POST, "/auth/refresh", .anyone, action: "auth.refresh") { try await $0.refresh($1) },
        APIRoute(.POST, "/auth/logout", .signedIn, action: "auth.logout") { try await $0.logout($1) },
        APIRoute(.GET, "/auth/whoami", .signedIn) { try await $0.whoami($1) },
        // Devices.
        APIRoute(.GET, "/devices", .permission(.read("devices"))) { try await $0.listDevices($1) },
        APIRoute(.GET, "/devices/{id}", .permission(.read("devices"))) { try await $0.showDevice($1) },
        APIRoute(.DELETE, "/devices/{id}", .permission(.write("devices")), action: "device.delete") { try await $0.deleteDevice($1) },
        APIRoute(.POST, "/devices/{id}/revoke", .permission(.write("devices")), action: "device.revoke") { try await $0.revokeDevice($1) },
        APIRoute(.POST, "/devices/{id}/remote-help", .permission(.write("commands")), action: "device.remote_help") { try await $0.remoteHelp($1) },
        // Groups.
        APIRoute(.GET, "/groups", .permission(.read("groups"))) { try await $0.listGroups($1) },
        APIRoute(.POST, "/groups", .permission(.write("groups")), action: "group.create") { try await $0.createGroup($1) },
        APIRoute(.GET, "/groups/{id}", .permission(.read("groups"))) { try await $0.showGroup($1) },
        APIRoute(.PATCH, "/groups/{id}", .permission(.write("groups")), action: "group.update") { try await $0.updateGroup($1) },
        APIRoute(.DELETE, "/groups/{id}", .permission(.write("groups")), action: "group.delete") { try await $0.deleteGroup($1) },
        APIRoute(.PUT, "/groups/{id}/devices/{device_id}", .permission(.write("groups")), action: "group.add_device") { try await $0.addGroupMember($1) },
        APIRoute(.DELETE, "/groups/{id}/devices/{device_id}", .permission(.write("groups")), action: "group.remove_device") { try await $0.removeGroupMember($1) },
        // Endpoint users and where they may sign in.
        APIRoute(.GET, "/users", .permission(.read("users"))) { try await $0.listUsers($1) },
        APIRoute(.POST, "/users", .permission(.write("users")), action: "user.create") { try await $0.createUser($1) },
        APIRoute(.GET, "/users/{name}", .permission(.read("users"))) { try await $0.showUser($1) },
        APIRoute(.PATCH, "/users/{name}", .permission(.write("users")), action: "user.update") { try await $0.updateUser($1) },
        APIRoute(.DELETE, "/users/{name}", .permission(.write("users")), action: "user.delete") { try await $0.deleteUser($1) },
        APIRoute(.POST, "/users/{name}/unlock", .permission(.write("users")), action: "user.unlock") { try await $0.unlockUser($1) },
        APIRoute(.POST, "/users/{name}/sign-in-codes", .permission(.write("users")), action: "user.sign_in_code") { try await $0.issueSignInCode($1) },
        APIRoute(.GET, "/sign-in-grants", .permission(.read("users"))) { try await $0.listSignInGrants($1) },
        APIRoute(.POST, "/sign-in-grants", .permission(.write("users")), action: "user.grant") { try await $0.grantSignIn($1) },
        APIRoute(.POST, "/sign-in-grants/revoke", .permission(.write("users")), action: "user.revoke") { try await $0.revokeSignInGrant($1) },
        // Policies.
        APIRoute(.GET, "/policies", .permission(.read("policies"))) { try await $0.listPolicies($1) },
        APIRoute(.POST, "/policies", .permission(.write("policies")), action: "policy.create") { try await $0.createPolicy($1) },
        APIRoute(.GET, "/policies/{id}", .permission(.read("policies"))) { try await $0.showPolicy($1) },
        APIRoute(.GET, "/policies/{id}/versions", .permission(.read("policies"))) { try await $0.policyHistory($1) },
        APIRoute(.POST, "/policies/{id}/versions", .permission(.write("policies")), action: "policy.add_version") { try await $0.addPolicyVersion($1) },
        APIRoute(.GET, "/policies/{id}/versions/{version}", .permission(.read("policies"))) { try await $0.showPolicyVersion($1) },
        APIRoute(.POST, "/policies/{id}/publish", .permission(.write("policies")), action: "policy.publish") { try await $0.publishPolicy($1) },
        APIRoute(.PUT, "/policies/{id}/groups/{group_id}", .permission(.write("policies")), action: "policy.assign") { try await $0.assignPolicy($1) },
        APIRoute(.DELETE, "/policies/{id}/groups/{group_id}", .permission(.write("policies")), action: "policy.unassign") { try await $0.unassignPolicy($1) },
        // Enrollment tokens.
        APIRoute(.GET, "/enrollment-tokens", .permission(.read("enrollment_tokens"))) { try await $0.listEnrollmentTokens($1) },
        APIRoute(.POST, "/enrollment-tokens", .permission(.write("enrollment_tokens")), action: "enrollment_token.create") { try await $0.createEnrollmentToken($1) },
        APIRoute(.GET, "/enrollment-tokens/{id}", .permission(.read("enrollment_tokens"))) { try await $0.showEnrollmentToken($1) },
        APIRoute(.POST, "/enrollment-tokens/{id}/revoke", .permission(.write("enrollment_tokens")), action: "enrollment_token.revoke") { try await $0.revokeEnrollmentToken($1) },
        // Commands.
        APIRoute(.GET, "/commands", .permission(.read("commands"))) { try await $0.listCommands($1) },
        APIRoute(.POST, "/commands", .permission(.write("commands")), action: "command.issue") { try await $0.issueCommand($1) },
        APIRoute(.GET, "/commands/{id}", .permission(.read("commands"))) { try await $0.showCommand($1) },
        // Events and audit.
        APIRoute(.GET, "/events", .permission(.read("events"))) { try await $0.listEvents($1) },
        APIRoute(.GET, "/audit", .permission(.auditing("audit.read"))) { try await $0.listAudit($1) },
        // Operators and API tokens: admins only.
        APIRoute(.GET, "/operators", .permission(.admin("operators.read"))) { try await $0.listOperators($1) },
        APIRoute(.POST, "/operators", .permission(.admin("operators.write")), action: "operator.create") { try await $0.createOperator($1) },
        APIRoute(.GET, "/operators/{name}", .permission(.admin("operators.read"))) { try await $0.showOperator($1) },
        APIRoute(.PATCH, "/operators/{name}", .permission(.admin("operators.write")), action: "operator.update") { try await $0.updateOperator($1) },
        APIRoute(.DELETE, "/operators/{name}", .permission(.admin("operators.write")), action: "operator.delete") { try await $0.deleteOperator($1) },
        APIRoute(.POST, "/operators/{name}/unlock", .permission(.admin("operators.write")), action: "operator.unlock") { try await $0.unlockOperator($1) },
        APIRoute(.GET, "/api-tokens", .permission(.admin("api_tokens.read"))) { try await $0.listAPITokens($1) },
        APIRoute(.POST, "/api-tokens", .permission(.admin("api_tokens.write")), action: "api_token.create") { try await $0.createAPIToken($1) },
        APIRoute(.GET, "/api-tokens/{id}", .permission(.admin("api_tokens.read"))) { try await $0.showAPIToken($1) },
        APIRoute(.POST, "/api-tokens/{id}/revoke", .permission(.admin("api_tokens.write")), action: "api_token.revoke") { try await $0.revokeAPIToken($1) },
        // Peers and the server identity.
        APIRoute(.GET, "/peers", .permission(.read("peers"))) { try await $0.listPeers($1) },
        APIRoute(.GET, "/identity", .permission(.read("identity"))) { try await $0.showIdentity($1) },
        APIRoute(.POST, "/identity/rotate", .permission(.admin("identity.write")), action: "identity.rotate") { try await $0.rotateIdentity($1) },
        APIRoute(.POST, "/identity/csr", .permission(.admin("identity.write")), action: "identity.csr") { try await $0.identityCSR($1) },
        APIRoute(.POST, "/identity/import", .permission(.admin("identity.write")), action: "identity.import") { try await $0.importIdentity($1) },
        APIRoute(.POST, "/identity/switch", .permission(.admin("identity.write")), action: "identity.switch") { try await $0.switchIdentity($1) },
    ]

    /// Every scope a token may be limited to: one per endpoint, and `reports.read` for the
    /// reporting listener's CSV and JSON.
    static var scopes: Set<String> { Set(scopeRoles.keys) }

    /// Each scope and the roles that may use it (a token's scope is of use only to those).
    static let scopeRoles: [String: Set<OperatorRole>] = {
        var roles: [String: Set<OperatorRole>] = ["reports.read": Set(OperatorRole.allCases)]
        for route in routes { if case .permission(let permission) = route.access { roles[permission.scope, default: []].formUnion(permission.roles) } }
        return roles
    }()
}
