import ArgumentParser
import Foundation
import PorticoManager
import PorticoStore

#if canImport(Glibc)
import Glibc
#endif

/// `portico admin create`: the first operators, before there is anyone to log in to the console.
struct Admin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Operator accounts.", subcommands: [Create.self, Unlock.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an operator. The password is read from a prompt, or from standard input when it is not a terminal.")
        @OptionGroup var options: ConfigOptions
        @Option var name: String
        @Option(help: "admin, operator or auditor.") var role: String

        func run() async throws {
            guard let parsedRole = OperatorRole(rawValue: role) else {
                printError("portico: --role must be admin, operator or auditor")
                throw ExitCode(1)
            }
            guard let password = readPassword(prompt: "Password for \(name): "), password.count >= 12 else {
                printError("portico: a password of at least 12 characters is needed")
                throw ExitCode(1)
            }
            try await withStore(options) { store, _ in
                _ = try await ManagerOperations(store: store, agent: nil).createOperator(name: name, role: parsedRole, password: password, by: .commandLine)
                writeLine("created \(parsedRole.rawValue) \(name)")
            }
        }
    }

    struct Unlock: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Lift an operator's lockout after failed logins.")
        @OptionGroup var options: ConfigOptions
        @Argument var name: String

        func run() async throws {
            try await withStore(options) { store, _ in
                try await ManagerOperations(store: store, agent: nil).unlockOperator(name: name, by: .commandLine)
                writeLine("unlocked \(name)")
            }
        }
    }
}

/// A password from the terminal with echo off, or the first line of standard input.
func readPassword(prompt: String) -> String? {
    if isatty(0) != 0 {
        var attributes = termios()
        tcgetattr(0, &attributes)
        let saved = attributes
        attributes.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(0, TCSANOW, &attributes)
        defer {
            var restored = saved
            tcsetattr(0, TCSANOW, &restored)
            writeLine("")
        }
        _ = prompt.withCString { write(2, $0, strlen($0)) }
    }
    return readLine(strippingNewline: true)
}
