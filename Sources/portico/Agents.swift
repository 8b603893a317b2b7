import ArgumentParser
import Crypto
import Foundation
import PorticoGateway
import PorticoManager
import PorticoProtocol
import PorticoServer
import PorticoStore

/// `portico token`: enrollment tokens for new agents.
struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create, list and revoke enrollment tokens.", subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token; it is printed once and only its hash is stored.")
        @OptionGroup var options: ConfigOptions
        @Option(help: "How many enrollments it allows (default 1: one-time).") var uses: Int = 1
        @Flag(help: "Allow any number of enrollments until it expires or is revoked.") var unlimited = false
        @Option(help: "How long it is valid: 30m, 24h, 7d.") var expires: String = "24h"
        @Option(help: "The group enrolled devices join (by name).") var group: String?

        func run() async throws {
            guard let lifetime = parseLifetime(expires) else {
                printError("portico: --expires must look like 30m, 24h or 7d")
                throw ExitCode(1)
            }
            try await withStore(options) { store, _ in
                var groupID: String? = nil
                if let group {
                    guard let found = try await store.groups().first(where: { $0.name == group }) else {
                        throw ManagerCommandError("no group named \(group)")
                    }
                    groupID = found.id
                }
                let created = try await ManagerOperations(store: store, agent: nil).createEnrollmentToken(
                    groupID: groupID, uses: unlimited ? nil : uses, expiresInSeconds: Int(lifetime / 1000), by: .commandLine)
                writeLine(created.token)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tokens (never their secrets).")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let tokens = try await withStore(options) { store, _ in try await store.enrollmentTokens() }
            writeLine("id\tuses\tallowed\texpires\trevoked\tgroup")
            for token in tokens {
                let expires = token.expiresMilliseconds.map { ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double($0) / 1000)) } ?? "never"
                writeLine("\(token.id)\t\(token.uses)\t\(token.usesAllowed.map(String.init) ?? "unlimited")\t\(expires)\t\(token.revoked)\t\(token.groupID ?? "-")")
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token so that it enrolls no more devices.")
        @OptionGroup var options: ConfigOptions
        @Argument var id: String

        func run() async throws {
            try await withStore(options) { store, _ in
                try await ManagerOperations(store: store, agent: nil).revokeEnrollmentToken(id: id, by: .commandLine)
                writeLine("revoked \(id)")
            }
        }
    }
}

/// `portico agent-config export`: the bootstrap file an installer ships with an agent.
struct AgentConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "agent-config", abstract: "The file agents are installed with.", subcommands: [Export.self])

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write the bootstrap file: manager URLs, the pinned manager certificate, optionally a token.")
        @OptionGroup var options: ConfigOptions
        @Option(name: .customLong("url"), help: "A manager URL agents should use (repeatable). Default: this host's client listeners.") var urls: [String] = []
        @Option(help: "An enrollment token to include.") var token: String?
        @Option(name: .shortAndLong, help: "Where to write it (default: standard output).") var output: String?

        func run() async throws {
            let config = try loadOrExit(options)
            let identity: ServerIdentity
            do {
                identity = try ServerIdentity.load(certificatePath: config.gateway.identity.certificate, privateKeyPath: config.gateway.identity.privateKey)
            } catch {
                printError("portico: \(error) (start serve once to generate the identity)")
                throw ExitCode(1)
            }
            var managerURLs = urls
            if managerURLs.isEmpty {
                let host = ProcessInfo.processInfo.hostName
                if let https = config.gateway.listeners[.client], https.enabled { managerURLs.append("https://\(host):\(https.port)") }
                if let plain = config.gateway.listeners[.clientPlain], plain.enabled { managerURLs.append("http://\(host):\(plain.port)") }
            }
            let bootstrap = BootstrapFile(site: config.siteName, managerURLs: managerURLs, pinned: PinnedCertificates(pem: [identity.certificatePEM], authorities: identity.authorityPEMs), enrollmentToken: token)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            let data = try encoder.encode(bootstrap)
            if let output {
                // It may hold a token: readable by its owner only.
                guard FileManager.default.createFile(atPath: output, contents: data + Data("\n".utf8), attributes: [.posixPermissions: 0o600]) else {
                    printError("portico: cannot write \(output)")
                    throw ExitCode(1)
                }
            } else {
                writeLine(String(decoding: data, as: UTF8.self))
            }
        }
    }
}

struct ManagerCommandError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `30m`, `24h`, `7d` in milliseconds.
func parseLifetime(_ text: String) -> Int64? {
    guard let unit = text.last, let value = Int64(text.dropLast()), value > 0 else { return nil }
    switch unit {
    case "m": return value * 60_000
    case "h": return value * 3_600_000
    case "d": return value * 86_400_000
    default: return nil
    }
}
