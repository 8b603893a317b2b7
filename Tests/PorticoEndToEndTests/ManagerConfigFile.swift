import PorticoGateway
import PorticoManager
import PorticoTestSupport

/// The config file of a manager a test starts: the listeners it names on 127.0.0.1 and a free
/// port (with any more settings of each), every other role off, and its routes.
enum ManagerConfigFile {
    static func write(in dir: TemporaryDirectory, identity: String = "{generate: ecdsa-p256}", listeners: [ListenerName: String],
                      routes: [String] = []) throws -> String {
        var yaml = "data_dir: data\nidentity: \(identity)\nlisteners:\n"
        for role in ManagerConfiguration.roles.map(\.name) {
            if let more = listeners[role] {
                yaml += "  \(role.rawValue): {bind: 127.0.0.1, port: 0\(more.isEmpty ? "" : ", " + more)}\n"
            } else {
                yaml += "  \(role.rawValue): {enabled: false}\n"
            }
        }
        if !routes.isEmpty { yaml += "routes:\n" + routes.map { "  - \($0)\n" }.joined() }
        return try dir.write("portico.yaml", yaml)
    }
}
