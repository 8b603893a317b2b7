import Foundation
import NIOHTTP1
import PorticoStore

/// An RFC 9457 problem: every error the API answers, as `application/problem+json` with a
/// stable `type` per kind (`urn:portico:problem:<kind>`), so scripts can branch on it.
public struct APIProblem: Error, Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        case malformedBody = "malformed-body"
        case validation
        case unsupportedMediaType = "unsupported-media-type"
        case unauthenticated
        case tokenExpired = "token-expired"
        case tokenRevoked = "token-revoked"
        case accountLocked = "account-locked"
        case forbidden
        case notFound = "not-found"
        case methodNotAllowed = "method-not-allowed"
        case conflict
        case rateLimited = "rate-limited"
        case internalError = "internal"
        case unavailable

        public var status: HTTPResponseStatus {
            switch self {
            case .malformedBody: .badRequest
            case .validation: .unprocessableEntity
            case .unsupportedMediaType: .unsupportedMediaType
            case .unauthenticated, .tokenExpired, .tokenRevoked: .unauthorized
            case .accountLocked, .forbidden: .forbidden
            case .notFound: .notFound
            case .methodNotAllowed: .methodNotAllowed
            case .conflict: .conflict
            case .rateLimited: .tooManyRequests
            case .internalError: .internalServerError
            case .unavailable: .serviceUnavailable
            }
        }

        public var title: String {
            switch self {
            case .malformedBody: "The request body is not valid JSON of the expected shape"
            case .validation: "A field of the request is not acceptable"
            case .unsupportedMediaType: "The request body must be application/json"
            case .unauthenticated: "Authentication is required"
            case .tokenExpired: "The token has expired"
            case .tokenRevoked: "The token has been revoked"
            case .accountLocked: "The account is locked"
            case .forbidden: "Not allowed for this role or token"
            case .notFound: "No such resource"
            case .methodNotAllowed: "Method not allowed here"
            case .conflict: "The request conflicts with the current state"
            case .rateLimited: "Too many attempts"
            case .internalError: "The manager failed to answer"
            case .unavailable: "The database is not available; try again later"
            }
        }

        public var type: String { "urn:portico:problem:\(rawValue)" }
    }

    /// One field that failed validation.
    public struct FieldError: Sendable, Equatable, Encodable {
        public var field: String
        public var message: String

        public init(field: String, message: String) {
            self.field = field
            self.message = message
        }
    }

    public var kind: Kind
    public var detail: String
    public var errors: [FieldError]
    /// Seconds, for `Retry-After` on 429 and 503.
    public var retryAfter: Int?
    /// Methods for `Allow` on 405.
    public var allow: [String]

    public init(_ kind: Kind, _ detail: String, errors: [FieldError] = [], retryAfter: Int? = nil, allow: [String] = []) {
        self.kind = kind
        self.detail = detail
        self.errors = errors
        self.retryAfter = retryAfter
        self.allow = allow
    }

    /// A validation problem naming the field.
    public static func invalid(_ field: String, _ message: String) -> APIProblem {
        APIProblem(.validation, "\(field) \(message)", errors: [FieldError(field: field, message: message)])
    }

    public static func notFound(_ what: String) -> APIProblem {
        APIProblem(.notFound, "\(what) does not exist")
    }

    /// The problem a store refusal maps to.
    init(_ error: StoreError) {
        switch error.kind {
        case .notFound: self.init(.notFound, error.message)
        case .conflict: self.init(.conflict, error.message)
        case .invalidValue:
            let field = error.message.split(separator: " ", maxSplits: 1).first.map(String.init) ?? ""
            let field2 = field.split(separator: ".").last.map(String.init) ?? field
            self.init(.validation, error.message, errors: [FieldError(field: field2, message: error.message)])
        case .schemaTooNew: self.init(.internalError, "the database is not available")
        case .unavailable: self.init(.unavailable, "the manager cannot reach its database", retryAfter: 30)
        }
    }

    struct Body: Encodable {
        let type: String
        let title: String
        let status: Int
        let detail: String
        let instance: String
        let errors: [FieldError]?
    }

    func body(instance: String) -> Body {
        Body(type: kind.type, title: kind.title, status: Int(kind.status.code), detail: detail, instance: instance, errors: errors.isEmpty ? nil : errors)
    }
}
