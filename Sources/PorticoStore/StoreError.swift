/// Why the store refused something, in words an operator or API caller can act on.
public struct StoreError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Kind: String, Sendable {
        case schemaTooNew, invalidValue, notFound, conflict, unavailable
    }
    public let kind: Kind
    public let message: String

    public var description: String { message }

    static func schemaTooNew(database: Int, binary: Int) -> StoreError {
        StoreError(kind: .schemaTooNew, message: "the database has schema version \(database), newer than this binary's \(binary); upgrade portico before using this database")
    }

    /// A value that does not fit: named field, what is wrong.
    public static func invalid(_ field: String, _ problem: String) -> StoreError {
        StoreError(kind: .invalidValue, message: "\(field) \(problem)")
    }

    /// A change that cannot be made in the current state.
    public static func conflict(_ message: String) -> StoreError {
        StoreError(kind: .conflict, message: message)
    }

    public static func notFound(_ what: String) -> StoreError {
        StoreError(kind: .notFound, message: "\(what) does not exist")
    }

    public static func unavailable(_ what: String) -> StoreError {
        StoreError(kind: .unavailable, message: what)
    }
}
