/// A page of changes as JSON, written and read by hand:
///
///     {"site_id":"…","head":N,"next":N,"changes":[
///       {"seq":N,"entity":"…","key":"…","op":"upsert","origin":"…","hlc":N,"row":[value, …]}, …]}
///
/// where each value is null, an integer or a string (blobs in base64), in the entity's column
/// order, and `row` is absent for a delete. Foundation's JSONEncoder and JSONDecoder were the
/// largest cost on each side of a catch-up (bench/README.md has the figures).
extension ChangeBatch {
    /// The page as JSON bytes.
    public func json() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64 + changes.count * 160)
        out += Array(#"{"site_id":"#.utf8)
        JSONWriter.string(siteID, into: &out)
        out += Array(#","head":"#.utf8)
        JSONWriter.integer(head, into: &out)
        out += Array(#","next":"#.utf8)
        JSONWriter.integer(next, into: &out)
        out += Array(#","changes":["#.utf8)
        for (index, change) in changes.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            out += Array(#"{"seq":"#.utf8)
            JSONWriter.integer(change.sequence, into: &out)
            out += Array(#","entity":"#.utf8)
            JSONWriter.string(change.entity, into: &out)
            out += Array(#","key":"#.utf8)
            JSONWriter.string(change.key, into: &out)
            out += Array(#","op":"#.utf8)
            JSONWriter.string(change.op, into: &out)
            out += Array(#","origin":"#.utf8)
            JSONWriter.string(change.origin, into: &out)
            out += Array(#","hlc":"#.utf8)
            JSONWriter.integer(Int64(bitPattern: change.hlc), into: &out)
            if let row = change.row {
                out += Array(#","row":["#.utf8)
                for (column, value) in row.enumerated() {
                    if column > 0 { out.append(UInt8(ascii: ",")) }
                    switch value {
                    case .null: out += Array("null".utf8)
                    case .integer(let number): JSONWriter.integer(number, into: &out)
                    case .text(let text): JSONWriter.string(text, into: &out)
                    }
                }
                out.append(UInt8(ascii: "]"))
            }
            out.append(UInt8(ascii: "}"))
        }
        out += Array("]}".utf8)
        return out
    }

    /// Reads a page from JSON bytes.
    /// - Throws: ``StoreError`` naming what is wrong, for input that is not such a page.
    public init(json bytes: [UInt8]) throws {
        let value: JSONValue
        do {
            value = try bytes.withUnsafeBufferPointer { buffer in
                var parser = JSONParser(bytes: buffer)
                let value = try parser.value(depth: 0)
                try parser.end()
                return value
            }
        } catch let error as JSONSyntaxError {
            throw StoreError.invalid("changes", "is not valid JSON: \(error.problem) at byte \(error.offset)")
        }
        guard case .object(let page) = value else { throw StoreError.invalid("changes", "must be a JSON object") }
        let siteID = try page.text("site_id", in: "changes")
        let head = try page.integer("head", in: "changes")
        let next = try page.integer("next", in: "changes")
        guard case .array(let items)? = page["changes"] else { throw StoreError.invalid("changes.changes", "must be an array") }
        var changes: [ReplicatedChange] = []
        changes.reserveCapacity(items.count)
        for item in items {
            guard case .object(let change) = item else { throw StoreError.invalid("changes.changes[]", "must be objects") }
            var row: [ReplicatedValue]?
            switch change["row"] {
            case nil, .null?: row = nil
            case .array(let values)?:
                row = try values.map { value in
                    switch value {
                    case .null: .null
                    case .integer(let number): .integer(number)
                    case .string(let text): .text(text)
                    default: throw StoreError.invalid("change.row", "values must be null, integers or strings")
                    }
                }
            default: throw StoreError.invalid("change.row", "must be an array")
            }
            changes.append(ReplicatedChange(
                sequence: try change.integer("seq", in: "change"), entity: try change.text("entity", in: "change"), key: try change.text("key", in: "change"),
                op: try change.text("op", in: "change"), origin: try change.text("origin", in: "change"),
                hlc: UInt64(bitPattern: try change.integer("hlc", in: "change")), row: row))
        }
        self.init(siteID: siteID, head: head, next: next, changes: changes)
    }
}

/// A parsed JSON value. A page's numbers are integers; other numbers (only where the parser
/// is told to take them) are kept as their text.
enum JSONValue: Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(String)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)
}

/// An object's members in order; looked up by scanning (pages' objects have a few keys).
struct JSONObject: Equatable {
    var members: [(String, JSONValue)] = []

    subscript(key: String) -> JSONValue? { members.first { $0.0 == key }?.1 }

    static func == (a: JSONObject, b: JSONObject) -> Bool {
        a.members.count == b.members.count && zip(a.members, b.members).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    }

    func text(_ key: String, in context: String) throws -> String {
        guard case .string(let text)? = self[key] else { throw StoreError.invalid("\(context).\(key)", "must be a string") }
        return text
    }

    func integer(_ key: String, in context: String) throws -> Int64 {
        guard case .integer(let number)? = self[key] else { throw StoreError.invalid("\(context).\(key)", "must be an integer") }
        return number
    }
}

enum JSONWriter {
    static func integer(_ value: Int64, into out: inout [UInt8]) {
        out += Array(String(value).utf8)
    }

    /// A JSON string: quotes, backslashes and control characters escaped, the rest as UTF-8.
    static func string(_ value: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case UInt8(ascii: "\n"): out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case UInt8(ascii: "\r"): out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case UInt8(ascii: "\t"): out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// Where and why text is not JSON.
package struct JSONSyntaxError: Error, Sendable, Equatable {
    package var problem: String
    /// Bytes from the start.
    package var offset: Int
    /// 1-based, counted in lines and in characters of the line.
    package var line: Int
    package var column: Int

    /// "line 2, column 7: ..." for people.
    package var description: String { "line \(line), column \(column): \(problem)" }
}

/// RFC 8259 syntax, strictly: no trailing commas, comments, single quotes or bare words,
/// which Foundation's reader lets through.
package enum JSONSyntax {
    /// Checks `bytes` as one JSON text; nil when it is one.
    package static func check(_ bytes: some Collection<UInt8>, maxDepth: Int = 64) -> JSONSyntaxError? {
        Array(bytes).withUnsafeBufferPointer { buffer in
            var parser = JSONParser(bytes: buffer, anyNumber: true, maxDepth: maxDepth)
            do {
                _ = try parser.value(depth: 0)
                try parser.end()
                return nil
            } catch let error as JSONSyntaxError {
                return error
            } catch {
                return JSONSyntaxError(problem: "\(error)", offset: 0, line: 1, column: 1)
            }
        }
    }
}

/// A strict JSON parser over bytes (RFC 8259), with a depth limit. Numbers are integers
/// unless `anyNumber` (then others are checked and kept as text).
struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0
    let anyNumber: Bool
    let maxDepth: Int

    init(bytes: UnsafeBufferPointer<UInt8>, anyNumber: Bool = false, maxDepth: Int = 32) {
        self.bytes = bytes
        self.anyNumber = anyNumber
        self.maxDepth = maxDepth
    }

    private func fail(_ problem: String) -> JSONSyntaxError {
        var line = 1
        var lineStart = 0
        for position in 0..<min(index, bytes.count) where bytes[position] == 0x0A {
            line += 1
            lineStart = position + 1
        }
        let column = String(decoding: UnsafeBufferPointer(rebasing: bytes[lineStart..<min(index, bytes.count)]), as: UTF8.self).count + 1
        return JSONSyntaxError(problem: problem, offset: index, line: line, column: column)
    }

    mutating func skipSpace() {
        while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09 { index += 1 }
    }

    mutating func end() throws {
        skipSpace()
        guard index == bytes.count else { throw fail("more after the end of the value") }
    }

    mutating func value(depth: Int) throws -> JSONValue {
        guard depth < maxDepth else { throw fail("nested more than \(maxDepth) deep") }
        skipSpace()
        guard index < bytes.count else { throw fail("the text ends too early") }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            index += 1
            var object = JSONObject()
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") { index += 1; return .object(object) }
            while true {
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw fail("expected a member name in double quotes") }
                let key = try string()
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                index += 1
                object.members.append((key, try value(depth: depth + 1)))
                skipSpace()
                guard index < bytes.count else { throw fail("the text ends too early") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    skipSpace()
                    if index < bytes.count, bytes[index] == UInt8(ascii: "}") { throw fail("a comma before '}' (JSON allows no trailing comma)") }
                    continue
                }
                if bytes[index] == UInt8(ascii: "}") { index += 1; return .object(object) }
                throw fail("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            index += 1
            var array: [JSONValue] = []
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1; return .array(array) }
            while true {
                array.append(try value(depth: depth + 1))
                skipSpace()
                guard index < bytes.count else { throw fail("the text ends too early") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    skipSpace()
                    if index < bytes.count, bytes[index] == UInt8(ascii: "]") { throw fail("a comma before ']' (JSON allows no trailing comma)") }
                    continue
                }
                if bytes[index] == UInt8(ascii: "]") { index += 1; return .array(array) }
                throw fail("expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            if anyNumber { return try number() }
            return .integer(try integer())
        default:
            throw fail("unexpected character '\(Character(Unicode.Scalar(bytes[index])))'; a value is a string in double quotes, a number, true, false, null, an object or an array")
        }
    }

    private mutating func literal(_ word: String) throws {
        let expected = Array(word.utf8)
        guard index + expected.count <= bytes.count else { throw fail("the text ends too early") }
        for (offset, byte) in expected.enumerated() where bytes[index + offset] != byte { throw fail("unexpected character") }
        index += expected.count
    }

    /// Any number (RFC 8259 section 6): an integer when it fits, else its text.
    private mutating func number() throws -> JSONValue {
        let start = index
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        func digits() -> Int {
            let from = index
            while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") { index += 1 }
            return index - from
        }
        let integerStart = index
        let integerDigits = digits()
        guard integerDigits > 0 else { throw fail("expected digits") }
        guard integerDigits == 1 || bytes[integerStart] != UInt8(ascii: "0") else { throw fail("a number with a leading zero") }
        var plain = true
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            plain = false
            guard digits() > 0 else { throw fail("expected digits after '.'") }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            plain = false
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard digits() > 0 else { throw fail("expected digits in the exponent") }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        if plain, let value = Int64(text) { return .integer(value) }
        return .number(text)
    }

    private mutating func integer() throws -> Int64 {
        let negative = bytes[index] == UInt8(ascii: "-")
        if negative { index += 1 }
        let start = index
        var magnitude: UInt64 = 0
        while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
            let (times, overflow1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(UInt64(bytes[index] - UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { throw fail("number out of range") }
            magnitude = sum
            index += 1
        }
        guard index > start else { throw fail("expected digits") }
        guard index - start == 1 || bytes[start] != UInt8(ascii: "0") else { throw fail("leading zero") }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") || bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            throw fail("only integers are expected")
        }
        if negative {
            guard magnitude <= UInt64(Int64.max) + 1 else { throw fail("number out of range") }
            return magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude)
        }
        guard magnitude <= UInt64(Int64.max) else { throw fail("number out of range") }
        return Int64(magnitude)
    }

    private mutating func string() throws -> String {
        index += 1  // the opening quote
        let start = index
        // Fast path: no escapes.
        while index < bytes.count, bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: "\\") {
            guard bytes[index] >= 0x20 else { throw fail("control character in a string") }
            index += 1
        }
        guard index < bytes.count else { throw fail("unterminated string") }
        var decoded = Array(UnsafeBufferPointer(rebasing: bytes[start..<index]))
        while bytes[index] != UInt8(ascii: "\"") {
            // An escape.
            index += 1
            guard index < bytes.count else { throw fail("unterminated string") }
            switch bytes[index] {
            case UInt8(ascii: "\""): decoded.append(UInt8(ascii: "\""))
            case UInt8(ascii: "\\"): decoded.append(UInt8(ascii: "\\"))
            case UInt8(ascii: "/"): decoded.append(UInt8(ascii: "/"))
            case UInt8(ascii: "b"): decoded.append(0x08)
            case UInt8(ascii: "f"): decoded.append(0x0C)
            case UInt8(ascii: "n"): decoded.append(0x0A)
            case UInt8(ascii: "r"): decoded.append(0x0D)
            case UInt8(ascii: "t"): decoded.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800..<0xDC00).contains(scalar) {
                    guard index + 2 < bytes.count, bytes[index + 1] == UInt8(ascii: "\\"), bytes[index + 2] == UInt8(ascii: "u") else { throw fail("lone surrogate") }
                    index += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw fail("lone surrogate") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let unicode = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                decoded += Array(String(Character(unicode)).utf8)
            default: throw fail("invalid escape")
            }
            index += 1
            while index < bytes.count, bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: "\\") {
                guard bytes[index] >= 0x20 else { throw fail("control character in a string") }
                decoded.append(bytes[index])
                index += 1
            }
            guard index < bytes.count else { throw fail("unterminated string") }
        }
        index += 1  // the closing quote
        guard let text = String(validating: decoded, as: UTF8.self) else { throw fail("a string that is not UTF-8") }
        return text
    }

    /// Four hex digits after `\u`; leaves `index` on the last.
    private mutating func hex4() throws -> UInt32 {
        guard index + 4 < bytes.count else { throw fail("unterminated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            index += 1
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw fail("invalid \\u escape")
            }
            value = value << 4 | UInt32(digit)
        }
        return value
    }
}
