import Foundation
import NIOHTTP1
import PorticoGateway
@testable import PorticoManager
import PorticoServer
import PorticoStore
import Testing

/// Every endpoint against every kind of caller: exactly the intended status each time.
@Suite struct APIAuthorizationTests {
    enum Caller: String, CaseIterable {
        case none, expired, revoked, auditor, `operator`, admin

        var role: OperatorRole? {
            switch self {
            case .auditor: .auditor
            case .operator: .operator
            case .admin: .admin
            default: nil
            }
        }
    }

    /// What each endpoint is called with when the caller may use it, and the status it then
    /// answers. Every route must be here (checked below), so a new endpoint needs an entry.
    struct Sample: Sendable {
        var path: @Sendable (Fixture) -> String
        var body: (@Sendable (Fixture) -> String)?
        var status: UInt

        init(path: @escaping @Sendable (Fixture) -> String, body: (@Sendable (Fixture) -> String)? = nil, status: UInt) {
            self.path = path
            self.body = body
            self.status = status
        }
    }

    /// Fresh objects for one call, so that calls that delete or revoke do not disturb others.
    struct Fixture: Sendable {
        var device: String
        var group: String
        var policy: String
        var enrollmentToken: String
        var command: String
        var targetOperator: String
        var apiTokenID: String
        var refreshToken: String
        var loginName: String
        var user: String
    }

    static let samples: [String: Sample] = [
        "GET /openapi.yaml": Sample(path: { _ in "/openapi.yaml" }, status: 200),
        "POST /auth/login": Sample(path: { _ in "/auth/login" }, body: { "{\"name\":\"\($0.loginName)\",\"password\":\"correct horse battery\"}" }, status: 200),
        "POST /auth/refresh": Sample(path: { _ in "/auth/refresh" }, body: { "{\"refresh_token\":\"\($0.refreshToken)\"}" }, status: 200),
        "POST /auth/logout": Sample(path: { _ in "/auth/logout" }, status: 204),
        "GET /auth/whoami": Sample(path: { _ in "/auth/whoami" }, status: 200),
        "GET /devices": Sample(path: { _ in "/devices?limit=5" }, status: 200),
        "GET /devices/{id}": Sample(path: { "/devices/\($0.device)" }, status: 200),
        "DELETE /devices/{id}": Sample(path: { "/devices/\($0.device)" }, status: 204),
        "POST /devices/{id}/revoke": Sample(path: { "/devices/\($0.device)/revoke" }, status: 200),
        "POST /devices/{id}/remote-help": Sample(path: { "/devices/\($0.device)/remote-help" }, body: { _ in "{\"challenge\":\"12345678\"}" }, status: 200),
        "GET /groups": Sample(path: { _ in "/groups" }, status: 200),
        "POST /groups": Sample(path: { _ in "/groups" }, body: { _ in "{\"name\":\"g-\(UUID().uuidString)\",\"description\":\"d\"}" }, status: 201),
        "GET /groups/{id}": Sample(path: { "/groups/\($0.group)" }, status: 200),
        "PATCH /groups/{id}": Sample(path: { "/groups/\($0.group)" }, body: { _ in "{\"description\":\"new\"}" }, status: 200),
        "DELETE /groups/{id}": Sample(path: { "/groups/\($0.group)" }, status: 204),
        "PUT /groups/{id}/devices/{device_id}": Sample(path: { "/groups/\($0.group)/devices/\($0.device)" }, status: 204),
        "DELETE /groups/{id}/devices/{device_id}": Sample(path: { "/groups/\($0.group)/devices/\($0.device)" }, status: 204),
        "GET /users": Sample(path: { _ in "/users?limit=5" }, status: 200),
        "POST /users": Sample(path: { _ in "/users" }, body: { _ in "{\"name\":\"new-\(UUID().uuidString.prefix(8))\",\"password\":\"a long enough password\"}" }, status: 201),
        "GET /users/{name}": Sample(path: { "/users/\($0.user)" }, status: 200),
        "PATCH /users/{name}": Sample(path: { "/users/\($0.user)" }, body: { _ in "{\"display_name\":\"New Name\",\"disabled\":false}" }, status: 200),
        "DELETE /users/{name}": Sample(path: { "/users/\($0.user)" }, status: 204),
        "POST /users/{name}/unlock": Sample(path: { "/users/\($0.user)/unlock" }, status: 200),
        "POST /users/{name}/sign-in-codes": Sample(path: { "/users/\($0.user)/sign-in-codes" }, body: { _ in #"{"expires_in_seconds":600}"# }, status: 201),
        "GET /sign-in-grants": Sample(path: { "/sign-in-grants?group_id=\($0.group)" }, status: 200),
        "POST /sign-in-grants": Sample(path: { _ in "/sign-in-grants" }, body: { "{\"group_id\":\"\($0.group)\",\"principal\":\"group:laptop-users\"}" }, status: 201),
        "POST /sign-in-grants/revoke": Sample(path: { _ in "/sign-in-grants/revoke" }, body: { "{\"group_id\":\"\($0.group)\",\"principal\":\"user:\($0.user)\"}" }, status: 204),
        "GET /policies": Sample(path: { _ in "/policies" }, status: 200),
        "POST /policies": Sample(path: { _ in "/policies" }, body: { _ in "{\"name\":\"p-\(UUID().uuidString)\",\"document\":{\"firewall\":true}}" }, status: 201),
        "GET /policies/{id}": Sample(path: { "/policies/\($0.policy)" }, status: 200),
        "GET /policies/{id}/versions": Sample(path: { "/policies/\($0.policy)/versions" }, status: 200),
        "POST /policies/{id}/versions": Sample(path: { "/policies/\($0.policy)/versions" }, body: { _ in "{\"document\":{\"firewall\":false}}" }, status: 201),
        "GET /policies/{id}/versions/{version}": Sample(path: { "/policies/\($0.policy)/versions/1" }, status: 200),
        "POST /policies/{id}/publish": Sample(path: { "/policies/\($0.policy)/publish" }, body: { _ in "{\"version\":1}" }, status: 200),
        "PUT /policies/{id}/groups/{group_id}": Sample(path: { "/policies/\($0.policy)/groups/\($0.group)" }, status: 204),
        "DELETE /policies/{id}/groups/{group_id}": Sample(path: { "/policies/\($0.policy)/groups/\($0.group)" }, status: 204),
        "GET /enrollment-tokens": Sample(path: { _ in "/enrollment-tokens" }, status: 200),
        "POST /enrollment-tokens": Sample(path: { _ in "/enrollment-tokens" }, body: { "{\"group_id\":\"\($0.group)\",\"uses\":10,\"expires_in_seconds\":3600}" }, status: 201),
        "GET /enrollment-tokens/{id}": Sample(path: { "/enrollment-tokens/\($0.enrollmentToken)" }, status: 200),
        "POST /enrollment-tokens/{id}/revoke": Sample(path: { "/enrollment-tokens/\($0.enrollmentToken)/revoke" }, status: 200),
        "GET /commands": Sample(path: { "/commands?device_id=\($0.device)" }, status: 200),
        "POST /commands": Sample(path: { _ in "/commands" }, body: { "{\"device_id\":\"\($0.device)\",\"kind\":\"lock\"}" }, status: 201),
        "GET /commands/{id}": Sample(path: { "/commands/\($0.command)" }, status: 200),
        "GET /events": Sample(path: { "/events?device_id=\($0.device)" }, status: 200),
        "GET /audit": Sample(path: { _ in "/audit?limit=3" }, status: 200),
        "GET /operators": Sample(path: { _ in "/operators" }, status: 200),
        "POST /operators": Sample(path: { _ in "/operators" }, body: { _ in "{\"name\":\"new-\(UUID().uuidString.prefix(8))\",\"role\":\"auditor\",\"password\":\"a long enough password\"}" }, status: 201),
        "GET /operators/{name}": Sample(path: { "/operators/\($0.targetOperator)" }, status: 200),
        "PATCH /operators/{name}": Sample(path: { "/operators/\($0.targetOperator)" }, body: { _ in "{\"role\":\"operator\",\"disabled\":false}" }, status: 200),
        "DELETE /operators/{name}": Sample(path: { "/operators/\($0.targetOperator)" }, status: 204),
        "POST /operators/{name}/unlock": Sample(path: { "/operators/\($0.targetOperator)/unlock" }, status: 200),
        "GET /api-tokens": Sample(path: { _ in "/api-tokens" }, status: 200),
        "POST /api-tokens": Sample(path: { _ in "/api-tokens" }, body: { _ in "{\"name\":\"ci\",\"role\":\"auditor\",\"scopes\":[\"devices.read\"],\"expires_in_seconds\":3600}" }, status: 201),
        "GET /api-tokens/{id}": Sample(path: { "/api-tokens/\($0.apiTokenID)" }, status: 200),
        "POST /api-tokens/{id}/revoke": Sample(path: { "/api-tokens/\($0.apiTokenID)/revoke" }, status: 200),
        "GET /peers": Sample(path: { _ in "/peers" }, status: 200),
        "GET /identity": Sample(path: { _ in "/identity" }, status: 200),
        // Routes run in order: the admin's rotate stages the identity that the admin's switch makes live.
        "POST /identity/rotate": Sample(path: { _ in "/identity/rotate" }, body: { _ in #"{"key":"ecdsa-p256","days":30,"switch_at":1}"# }, status: 201),
        "POST /identity/csr": Sample(path: { _ in "/identity/csr" }, body: { _ in #"{"names":["portico.corp.example"]}"# }, status: 200),
        "POST /identity/import": Sample(path: { _ in "/identity/import" }, body: { _ in
            let generated = try! IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "imported", days: 30)
            let body = try! JSONSerialization.data(withJSONObject: ["certificate": generated.certificatePEM, "key": generated.privateKeyPEM])
            return String(decoding: body, as: UTF8.self)
        }, status: 200),
        "POST /identity/switch": Sample(path: { _ in "/identity/switch" }, status: 200),
    ]

    static func key(_ route: APIRoute) -> String { "\(route.method.rawValue) \(route.pattern)" }

    @Test func everyRouteHasASample() {
        #expect(Set(Self.samples.keys) == Set(APIService.routes.map(Self.key)))
    }

    @Test func everyEndpointAnswersEachKindOfCallerAsIntended() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("fixture-login", role: .auditor)
            let targetHash = try await PasswordHasher.hash("correct horse battery")
            var counter = 0
            func fixture() async throws -> Fixture {
                counter += 1
                let device = try await manager.makeDevice(hostname: "m\(counter)")
                let group = try await manager.store.createGroup(name: "group \(counter)").id
                let policy = try await manager.store.createPolicy(name: "policy \(counter)", document: "{}", by: "test").id
                try await manager.store.addDevice(device, toGroup: group)
                try await manager.store.assignPolicy(policyID: policy, toGroup: group)
                let token = "t-fixture-\(counter)"
                try await manager.store.createEnrollmentToken(EnrollmentTokenRecord(id: token, secretHash: Array(repeating: 1, count: 32), expiresMilliseconds: nil, createdBy: "test"))
                let command = CommandRecord(deviceID: device, kind: .lock, issuedBy: "test")
                try await manager.store.enqueueCommand(command)
                let target = "target-\(counter)"
                try await manager.store.createOperator(OperatorRecord(name: target, passwordHash: targetHash, role: .auditor))
                let apiTokenID = BearerSecret.newID()
                try await manager.store.createAPIToken(APITokenRecord(id: apiTokenID, secretHash: Array(repeating: 2, count: 32), name: "f", role: .auditor, expiresMilliseconds: nil, createdBy: "test"))
                let refresh = try await manager.session(for: "fixture-login").refresh
                let user = "user-\(counter)"
                try await manager.store.write { transaction in
                    try await transaction.createEndpointUser(EndpointUser(name: user, source: .local, passwordHash: targetHash))
                    try await transaction.grantSignIn(SignInGrant(groupID: group, principal: "user:" + user, createdBy: "test"))
                }
                return Fixture(device: device, group: group, policy: policy, enrollmentToken: token, command: command.id, targetOperator: target,
                               apiTokenID: apiTokenID, refreshToken: refresh, loginName: "fixture-login", user: user)
            }
            for role in OperatorRole.allCases { try await manager.store.createOperator(OperatorRecord(name: "caller-\(role.rawValue)", passwordHash: targetHash, role: role)) }
            func token(for caller: Caller) async throws -> String? {
                switch caller {
                case .none: nil
                case .expired: try await manager.apiToken(role: .admin, expiresIn: -1_000)
                case .revoked: try await manager.apiToken(role: .admin, revoked: true)
                default: try await manager.session(for: "caller-\(caller.role!.rawValue)").access
                }
            }

            var mismatches: [String] = []
            // A switch changes the certificate mid-run; this client trusts whichever is served.
            try await APICaller.with(manager, trustAny: true) { api in
                for route in APIService.routes {
                    let sample = try #require(Self.samples[Self.key(route)])
                    for caller in Caller.allCases {
                        let expected: UInt
                        switch route.access {
                        case .anyone: expected = sample.status
                        case .signedIn: expected = caller.role == nil ? 401 : sample.status
                        case .permission(let permission):
                            if let role = caller.role { expected = permission.roles.contains(role) ? sample.status : 403 } else { expected = 401 }
                        }
                        let f = try await fixture()
                        let answer = try await api.call(route.method, sample.path(f), token: try await token(for: caller), json: sample.body?(f))
                        if answer.status != expected {
                            mismatches.append("\(Self.key(route)) as \(caller): \(answer.status), expected \(expected): \(answer.text.prefix(200))")
                        }
                        if answer.status >= 400 {
                            #expect(answer.problemType?.hasPrefix("urn:portico:problem:") == true, "\(Self.key(route)) as \(caller) answered \(answer.status) without problem+json")
                        }
                        if answer.status == 401 { #expect(answer.headers.first(name: "www-authenticate")?.hasPrefix("Bearer") == true) }
                    }
                }
            }
            #expect(mismatches.isEmpty, "\(mismatches.joined(separator: "\n"))")
        }
    }

    @Test func expiredRevokedAndForeignTokensSayWhich() async throws {
        try await TestManager.with { manager in
            try await manager.makeOperator("ada", role: .admin)
            try await APICaller.with(manager) { api in
                let expired = try await api.call(.GET, "/devices", token: try await manager.apiToken(role: .admin, expiresIn: -1))
                #expect(expired.problemType == "urn:portico:problem:token-expired")
                let revoked = try await api.call(.GET, "/devices", token: try await manager.apiToken(role: .admin, revoked: true))
                #expect(revoked.problemType == "urn:portico:problem:token-revoked")
                let staleSession = try await manager.session(for: "ada", accessLifetime: -1).access
                #expect(try await api.call(.GET, "/devices", token: staleSession).problemType == "urn:portico:problem:token-expired")
                // A token of the right shape with a wrong secret, and one of no known shape.
                let real = try await manager.apiToken(role: .admin)
                let forged = String(real.dropLast(4)) + (real.hasSuffix("AAAA") ? "BBBB" : "AAAA")
                #expect(try await api.call(.GET, "/devices", token: forged).problemType == "urn:portico:problem:unauthenticated")
                #expect(try await api.call(.GET, "/devices", token: "hello").problemType == "urn:portico:problem:unauthenticated")
                #expect(try await api.call(.GET, "/devices", token: real).status == 200)
            }
        }
    }

    @Test func aScopedTokenReachesOnlyItsScopes() async throws {
        try await TestManager.with { manager in
            try await APICaller.with(manager) { api in
                let token = try await manager.apiToken(role: .operator, scopes: ["devices.read"])
                #expect(try await api.call(.GET, "/devices", token: token).status == 200)
                let refused = try await api.call(.GET, "/policies", token: token)
                #expect(refused.status == 403)
                #expect((refused.json["detail"] as? String)?.contains("policies.read") == true)
                // Scopes narrow a role; they never widen it.
                let widened = try await manager.apiToken(role: .auditor, scopes: ["devices.write"])
                #expect(try await api.call(.POST, "/devices/x/revoke", token: widened).status == 403)
            }
        }
    }
}
