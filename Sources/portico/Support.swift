import ArgumentParser
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
