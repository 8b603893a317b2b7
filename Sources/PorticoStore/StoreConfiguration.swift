/// Which database the manager keeps its state in.
public enum StoreConfiguration: Sendable, Equatable {
    /// The embedded default: one SQLite file (WAL, synchronous commits).
    case sqlite(path: String)
    /// A PostgreSQL database that several managers of one site may share, e.g.
    /// `postgres://portico:secret@127.0.0.1:5432/portico`.
    case postgres(url: String, poolSize: Int = 8)

    /// A description that never includes a password, for logs and messages.
    public var redacted: String {
        switch self {
        case .sqlite(let path):
            return "sqlite:\(path)"
        case .postgres(let url, _):
            guard let at = url.lastIndex(of: "@"), let scheme = url.range(of: "://") else { return "postgres" }
            let credentials = url[scheme.upperBound..<at]
            let user = credentials.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
            return "postgres://\(user)@\(url[url.index(after: at)...])"
        }
    }
}
