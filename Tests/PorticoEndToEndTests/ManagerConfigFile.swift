import PorticoGateway
import PorticoManager
import PorticoServer
import PorticoTestSupport

/// The config file of a manager a test starts: the listeners it names on 127.0.0.1 and a free
/// port unless their settings name one (with any more settings of each), every other role
/// off, and its routes.
enum ManagerConfigFile {
    /// - Parameters:
    ///   - file: its name in `dir`; relative paths in it resolve against `dir`.
    ///   - dataDirectory: `data_dir`.
    ///   - more: top-level sections besides (site, secrets, storage), as YAML lines.
    static func write(in dir: TemporaryDirectory, file: String = "portico.yaml", dataDirectory: String = "data", identity: String = "{generate: ecdsa-p256}",
                      listeners: [ListenerName: String], routes: [String] = [], more: String = "") throws -> String {
        var yaml = "data_dir: \(dataDirectory)\nidentity: \(identity)\n"
        if !more.isEmpty { yaml += more.hasSuffix("\n") ? more : more + "\n" }
        yaml += "listeners:\n"
        for role in ManagerConfiguration.roles.map(\.name) {
            if let settings = listeners[role] {
                let port = settings.contains("port:") ? "" : ", port: 0"
                yaml += "  \(role.rawValue): {bind: 127.0.0.1\(port)\(settings.isEmpty ? "" : ", " + settings)}\n"
            } else {
                yaml += "  \(role.rawValue): {enabled: false}\n"
            }
        }
        if !routes.isEmpty { yaml += "routes:\n" + routes.map { "  - \($0)\n" }.joined() }
        return try dir.write(file, yaml)
    }
}
