/// Checks applied before anything is written: a value that does not fit is refused with a
/// message naming the field, never truncated.
enum Validate {
    /// An identifier: 1 to `maxLength` printable ASCII characters, no spaces.
    static func identifier(_ value: String, field: String, maxLength: Int = 128) throws {
        guard !value.isEmpty else { throw StoreError.invalid(field, "must not be empty") }
        guard value.utf8.count <= maxLength else { throw StoreError.invalid(field, "is \(value.utf8.count) bytes long; the limit is \(maxLength)") }
        guard value.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { throw StoreError.invalid(field, "may hold printable ASCII characters only, without spaces") }
    }

    /// Free text up to `maxBytes` of UTF-8.
    static func text(_ value: String, field: String, maxBytes: Int) throws {
        guard value.utf8.count <= maxBytes else { throw StoreError.invalid(field, "is \(value.utf8.count) bytes long; the limit is \(maxBytes)") }
        guard !value.utf8.contains(0) else { throw StoreError.invalid(field, "must not contain NUL characters") }
    }

    static func nonNegative(_ value: Int64, field: String) throws {
        guard value >= 0 else { throw StoreError.invalid(field, "must not be negative") }
    }
}
