import NIOHTTP1

/// Who may call a route of the API or the console.
enum RouteAccess: Sendable {
    /// Anyone: sign-in, and the API's document.
    case anyone
    /// Any signed-in operator or token.
    case signedIn
    /// A caller whose role grants the permission (and whose token, when scoped, lists it).
    case permission(Permission)
}

/// One route of the API's or the console's table: method, path pattern, who may call it,
/// the audit action of a change, and the handler. The service wraps each in a
/// ``PorticoGateway/ServiceRoute`` that authenticates, authorizes and answers its refusals.
struct ManagerRoute<Service: Sendable, Call: Sendable, Reply: Sendable>: Sendable {
    typealias Access = RouteAccess

    let method: HTTPMethod
    let pattern: String
    let access: Access
    let action: String
    let handler: @Sendable (Service, Call) async throws -> Reply
    /// For a form: the page it is on, shown again with the refusal and what was typed.
    let formPage: (@Sendable (Service, Call) async throws -> Reply)?

    init(_ method: HTTPMethod, _ pattern: String, _ access: Access, action: String = "", formPage: (@Sendable (Service, Call) async throws -> Reply)? = nil,
         _ handler: @escaping @Sendable (Service, Call) async throws -> Reply) {
        self.method = method
        self.pattern = pattern
        self.access = access
        self.action = action
        self.formPage = formPage
        self.handler = handler
    }

    /// The scope a caller needs, when a permission guards it.
    var scope: String? {
        if case .permission(let permission) = access { return permission.scope }
        return nil
    }
}
