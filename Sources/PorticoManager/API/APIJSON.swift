import Foundation
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoServer
import PorticoStore

/// A JSON request body: its fields are known, so that unknown ones are refused rather than
/// silently ignored, and it checks its own values, naming each field it refuses.
protocol APIRequestBody: Decodable, Sendable {
    /// Every field the body may have, as written in JSON.
    static var fields: Set<String> { get }
    /// Problems with the values, each naming its field.
    func validate() -> [APIProblem.FieldError]
}

extension APIRequestBody {
    func validate() -> [APIProblem.FieldError] { [] }
}

/// JSON in and out of the API: snake_case names, RFC 3339 times, bodies checked field by field.
enum APIJSON {
    static let maxBodyBytes = 1 << 20

    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    /// Decodes a request body of type `T`: it must be `application/json`, one JSON object,
    /// with only `T`'s fields, each of the right type, and pass `T`'s own checks.
    static func decode<T: APIRequestBody>(_ type: T.Type, from request: GatewayRequest) throws -> T {
        if let contentType = request.headers.first(name: "content-type") {
            let media = contentType.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
            guard media == "application/json" || media.hasSuffix("+json") else {
                throw APIProblem(.unsupportedMediaType, "the body is \(media); send application/json")
            }
        } else if request.body.readableBytes > 0 {
            throw APIProblem(.unsupportedMediaType, "the body has no Content-Type; send application/json")
        }
        let data = Data(request.body.readableBytesView)
        guard !data.isEmpty else { throw APIProblem(.malformedBody, "the request needs a JSON object body") }
        // Strictly first: Foundation's reader takes trailing commas, and says nothing of where.
        if let error = JSONSyntax.check(request.body.readableBytesView) {
            throw APIProblem(.malformedBody, "the body is not valid JSON: \(error.description)")
        }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data, options: [])
        } catch {
            throw APIProblem(.malformedBody, "the body is not valid JSON")
        }
        guard let dictionary = object as? [String: Any] else { throw APIProblem(.malformedBody, "the body must be a JSON object") }
        let unknown = dictionary.keys.filter { !T.fields.contains($0) }.sorted()
        if !unknown.isEmpty {
            throw APIProblem(.validation, "unknown field\(unknown.count == 1 ? "" : "s"): \(unknown.joined(separator: ", "))",
                             errors: unknown.map { .init(field: $0, message: "is not a field of this request") })
        }
        let nulls = dictionary.filter { $0.value is NSNull }.keys.sorted()
        if !nulls.isEmpty {
            throw APIProblem(.validation, "null is not a value here; leave out \(nulls.joined(separator: ", ")) instead",
                             errors: nulls.map { .init(field: $0, message: "must not be null; leave the field out to keep the default") })
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let value: T
        do {
            value = try decoder.decode(T.self, from: data)
        } catch let error as DecodingError {
            throw problem(for: error)
        }
        let problems = value.validate()
        if !problems.isEmpty {
            throw APIProblem(.validation, problems.map { "\($0.field) \($0.message)" }.joined(separator: "; "), errors: problems)
        }
        return value
    }

    private static func problem(for error: DecodingError) -> APIProblem {
        func name(_ path: [any CodingKey], _ last: (any CodingKey)? = nil) -> String {
            let keys = (path + (last.map { [$0] } ?? [])).map { key in key.intValue.map { "[\($0)]" } ?? snake(key.stringValue) }
            return keys.joined(separator: ".").replacingOccurrences(of: ".[", with: "[")
        }
        switch error {
        case .keyNotFound(let key, let context):
            return .invalid(name(context.codingPath, key), "is required")
        case .typeMismatch(let type, let context):
            return .invalid(name(context.codingPath), "must be \(describe(type))")
        case .valueNotFound(let type, let context):
            return .invalid(name(context.codingPath), "must be \(describe(type)), not null")
        case .dataCorrupted(let context):
            return .invalid(name(context.codingPath), context.debugDescription.isEmpty ? "has an unacceptable value" : context.debugDescription)
        @unknown default:
            return APIProblem(.malformedBody, "the body does not have the expected shape")
        }
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type, is Int64.Type: "an integer"
        case is Bool.Type: "true or false"
        case is [String].Type: "an array of strings"
        default: "of another type (\(type))"
        }
    }

    /// `camelCase` to `snake_case`, for field names in messages.
    static func snake(_ name: String) -> String {
        var out = ""
        for character in name {
            if character.isUppercase { out.append("_"); out.append(contentsOf: character.lowercased()) } else { out.append(character) }
        }
        return out
    }

    /// Milliseconds since 1970 as RFC 3339 UTC with milliseconds.
    static func time(_ milliseconds: Int64) -> String {
        Date(timeIntervalSince1970: Double(milliseconds) / 1000).formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    static func time(_ milliseconds: Int64?) -> String? { milliseconds.map { time($0) } }

    /// Parses an RFC 3339 time, with or without fractional seconds.
    static func parseTime(_ text: String) -> Int64? {
        if let date = try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text) { return Int64((date.timeIntervalSince1970 * 1000).rounded()) }
        if let date = try? Date.ISO8601FormatStyle().parse(text) { return Int64((date.timeIntervalSince1970 * 1000).rounded()) }
        return nil
    }
}

/// What a handler answers: a status and an encodable body (or none).
struct APIReply: Sendable {
    var status: HTTPResponseStatus
    var body: ByteBuffer?
    var headers: HTTPHeaders = [:]

    static func json<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) throws -> APIReply {
        APIReply(status: status, body: ByteBuffer(bytes: try APIJSON.encoder().encode(value)), headers: ["content-type": "application/json"])
    }

    static let noContent = APIReply(status: .noContent, body: nil)
}

/// A page of a listing; `next_cursor` is there when more follow.
struct Page<Item: Encodable & Sendable>: Encodable, Sendable {
    var items: [Item]
    var nextCursor: String?
}

/// Opaque keyset cursors: the sort key of the last item, base64url-encoded.
enum Cursor {
    static func encode(_ parts: [String]) -> String {
        Data(parts.joined(separator: "\n").utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    static func decode(_ text: String, parts count: Int) throws -> [String] {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64.append("=") }
        guard text.count <= 1024, let data = Data(base64Encoded: base64), let string = String(data: data, encoding: .utf8) else {
            throw APIProblem(.validation, "cursor is not one this API gave out", errors: [.init(field: "cursor", message: "is not one this API gave out")])
        }
        let parts = string.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == count else { throw APIProblem(.validation, "cursor is not one this API gave out", errors: [.init(field: "cursor", message: "is not one this API gave out")]) }
        return parts
    }
}
