import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

struct OperatorBody: APIRequestBody {
    static let fields: Set<String> = ["name", "role", "password"]
    var name: String
    var role: String
    var password: String

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if name.isEmpty || name.utf8.count > 64 || !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }) {
            problems.append(.init(field: "name", message: "must be 1 to 64 letters, digits, '-', '_', '.' or '@'"))
        }
        if OperatorRole(rawValue: role) == nil { problems.append(.init(field: "role", message: "must be admin, operator or auditor")) }
        problems += OperatorPatch.passwordProblems(password)
        return problems
    }
}

struct OperatorPatch: APIRequestBody {
    static let fields: Set<String> = ["role", "password", "disabled"]
    var role: String?
    var password: String?
    var disabled: Bool?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if let role, OperatorRole(rawValue: role) == nil { problems.append(.init(field: "role", message: "must be admin, operator or auditor")) }
        if let password { problems += Self.passwordProblems(password) }
        return problems
    }

    static func passwordProblems(_ password: String) -> [APIProblem.FieldError] {
        password.count < 12 || password.utf8.count > 1024 ? [.init(field: "password", message: "must be 12 to 1024 characters")] : []
    }
}

/// Operator accounts.
extension APIService {
    func listOperators(_ context: APIContext) async throws -> APIReply {
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        return try .json(Page(items: try await store.operators().map { OperatorView($0, now: now) }, nextCursor: nil))
    }

    func createOperator(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(OperatorBody.self, from: context.request)
        guard let role = OperatorRole(rawValue: body.role) else { throw APIProblem.invalid("role", "must be admin, operator or auditor") }
        let record = try await operations.createOperator(name: body.name, role: role, password: body.password, by: try context.actor)
        return try .json(OperatorView(record), status: .created)
    }

    func showOperator(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        guard let account = try await store.operatorAccount(named: name) else { throw APIProblem.notFound("operator \(name)") }
        return try .json(OperatorView(account))
    }

    /// Role, password or disabled flag. The last admin who can sign in cannot be demoted or
    /// disabled, so the manager never loses its last administrator.
    func updateOperator(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        let body = try APIJSON.decode(OperatorPatch.self, from: context.request)
        let role = body.role.flatMap(OperatorRole.init(rawValue:))
        let account = try await operations.updateOperator(name: name, role: role, password: body.password, disabled: body.disabled, by: try context.actor)
        return try .json(OperatorView(account))
    }

    func deleteOperator(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        try await operations.deleteOperator(name: name, by: try context.actor)
        return .noContent
    }

    func unlockOperator(_ context: APIContext) async throws -> APIReply {
        let name = context.parameter("name")
        try await operations.unlockOperator(name: name, by: try context.actor)
        guard let account = try await store.operatorAccount(named: name) else { throw APIProblem.notFound("operator \(name)") }
        return try .json(OperatorView(account))
    }
}
