import ArgumentParser
import Foundation
import PorticoManager
import Logging

#if canImport(Glibc)
import Glibc
#endif

func printError(_ message: String) {
    var text = message
    if !text.hasSuffix("\n") { text += "\n" }
    _ = text.withCString { write(2, $0, strlen($0)) }
}

enum FileExists {
    static func at(_ path: String) -> Bool { access(path, F_OK) == 0 }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Writes a line to standard output at once, without stdio buffering.
func writeLine(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(1, $0, strlen($0)) }
}

extension ManagerOperations.Actor {
    /// The operating system's user running this command, as the audit log names them.
    static var commandLine: Self { .commandLine(user: NSUserName()) }
}
