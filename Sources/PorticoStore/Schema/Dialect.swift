/// The few places where the two engines' SQL differs.
public enum Dialect: String, Sendable {
    case sqlite
    case postgres

    /// An auto-incrementing 64-bit primary key column.
    var serialPrimaryKey: String {
        switch self {
        case .sqlite: "INTEGER PRIMARY KEY AUTOINCREMENT"
        case .postgres: "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        }
    }

    /// Binary data.
    var blob: String {
        switch self {
        case .sqlite: "BLOB"
        case .postgres: "BYTEA"
        }
    }
}
