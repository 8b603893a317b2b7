import ArgumentParser
import Crypto
import Foundation
import PorticoGateway
import PorticoManager
import PorticoProtocol
import PorticoServer
import SwiftASN1
import X509
import _CryptoExtras

/// `portico cert`: the server identity, as an operator looks after it.
struct Cert: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The server certificate.", subcommands: [Show.self, Generate.self, CSR.self, Import.self, Rotate.self])

    /// Where a staged identity waits: beside the live one, in `next/`.
    static func stagedPaths(_ config: GatewayConfiguration) -> (certificate: String, key: String) { StagedIdentity.paths(config) }

    struct Generate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a new self-signed identity and stage it (not live until rotated or --live).")
        @OptionGroup var options: ConfigOptions
        @Option(help: "rsa-2048, rsa-3072 or ecdsa-p256.") var key: String = "rsa-2048"
        @Option(help: "Validity in days.") var days: Int = 825
        @Option(name: .customLong("san"), help: "An extra DNS name or IP address (repeatable).") var names: [String] = []
        @Flag(help: "Replace the live identity at once (listeners pick it up; open connections keep theirs).") var live = false

        func run() async throws {
            guard let keyType = KeyType(rawValue: key) else {
                printError("portico: --key must be rsa-2048, rsa-3072 or ecdsa-p256")
                throw ExitCode(1)
            }
            guard (1...3650).contains(days) else {
                printError("portico: --days must be between 1 and 3650")
                throw ExitCode(1)
            }
            let config = try loadOrExit(options).gateway
            let generated = try IdentityGenerator.generate(keyType: keyType, commonName: config.identity.commonName, names: config.identity.names + names, days: days)
            let target = live ? (config.identity.certificate, config.identity.privateKey) : stagedPaths(config)
            do {
                try IdentityGenerator.write(generated, certificatePath: target.0, privateKeyPath: target.1)
            } catch {
                printError("portico: \(error)")
                throw ExitCode(1)
            }
            writeLine(live ? "replaced the live identity at \(target.0)" : "staged a new identity at \(target.0)")
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Rotate the identity without stranding agents: stage the next one (or adopt a staged one), announce it at check-ins, switch once enough agents pinned it.",
            discussion: """
                The running manager announces a staged identity to every agent that checks in; agents pin it beside the \
                current one. When --switch-at of the active agents (checked in within --active-window) have pinned it, the \
                listeners switch by themselves. --status shows the progress; --force switches now (running listeners \
                pick the new pair up within seconds).
                """)
        @OptionGroup var options: ConfigOptions
        @Option(help: "rsa-2048, rsa-3072 or ecdsa-p256, for a newly generated identity.") var key: String = "rsa-2048"
        @Option(help: "Validity in days, for a newly generated identity.") var days: Int = 825
        @Option(name: .customLong("san"), help: "An extra DNS name or IP address (repeatable).") var names: [String] = []
        @Option(help: "Percent of active agents that must have pinned the next identity before the switch.") var switchAt: Double = 95
        @Option(help: "Agents that checked in within this long count as active (30m, 12h, 7d).") var activeWindow: String = "7d"
        @Flag(help: "Show the progress of the rotation under way.") var status = false
        @Flag(help: "Switch to the staged identity now, whatever the progress.") var force = false

        func run() async throws {
            let config = try loadOrExit(options).gateway
            if status { return try await showStatus(config) }
            if force {
                guard StagedIdentity.load(config) != nil else {
                    printError("portico: no next identity is staged; run portico cert rotate first")
                    throw ExitCode(1)
                }
                do { try StagedIdentity.promote(config) } catch {
                    printError("portico: \(error)")
                    throw ExitCode(1)
                }
                writeLine("switched: \(config.identity.certificate) is the staged identity now (the old one is in \(Paths.directory(of: config.identity.certificate))/previous/)")
                writeLine("a running manager serves it within seconds")
                return
            }
            guard (1...100).contains(switchAt) else {
                printError("portico: --switch-at must be a percent from 1 to 100")
                throw ExitCode(1)
            }
            guard let window = parseLifetime(activeWindow), window >= 3_600_000 else {
                printError("portico: --active-window must be a duration of an hour or more, such as 12h or 7d")
                throw ExitCode(1)
            }
            guard let keyType = KeyType(rawValue: key) else {
                printError("portico: --key must be rsa-2048, rsa-3072 or ecdsa-p256")
                throw ExitCode(1)
            }
            let paths = StagedIdentity.paths(config)
            do {
                if StagedIdentity.load(config) == nil {
                    let generated = try IdentityGenerator.generate(keyType: keyType, commonName: config.identity.commonName, names: config.identity.names + names, days: days)
                    try IdentityGenerator.write(generated, certificatePath: paths.certificate, privateKeyPath: paths.key)
                    writeLine("staged a new identity at \(paths.certificate)")
                } else {
                    writeLine("rotating to the identity already staged at \(paths.certificate)")
                }
                try StagedIdentity.writePlan(StagedIdentity.Plan(switchAt: switchAt / 100, activeWindowSeconds: Int(window / 1000)), config)
            } catch {
                printError("portico: \(error)")
                throw ExitCode(1)
            }
            writeLine("agents pin it at their next check-in; the listeners switch when \(Self.percent(switchAt / 100)) of active agents have (portico cert rotate --status)")
        }

        func showStatus(_ config: GatewayConfiguration) async throws {
            guard let staged = StagedIdentity.load(config) else {
                writeLine("no rotation under way: nothing is staged at \(StagedIdentity.paths(config).certificate)")
                return
            }
            let plan = StagedIdentity.plan(config)
            let since = Int64(Date().timeIntervalSince1970 * 1000) - Int64(plan.activeWindowSeconds) * 1000
            let progress = try await withStore(options) { store, _ in try await store.pinProgress(fingerprint: staged.fingerprintHex, activeSince: since) }
            let share = progress.active == 0 ? 0 : Double(progress.acknowledged) / Double(progress.active)
            writeLine("next identity: \(IdentitySummary(staged, listeners: []).fingerprint)")
            writeLine("acknowledged: \(progress.acknowledged) of \(progress.active) active agents (\(Self.percent(share)))")
            writeLine("switches at: \(Self.percent(plan.switchAt)) (active: checked in within \(plan.activeWindowSeconds / 3600) h)")
        }

        static func percent(_ share: Double) -> String {
            let value = (share * 1000).rounded() / 10
            return value == value.rounded() ? "\(Int(value))%" : "\(value)%"
        }
    }

    struct CSR: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "csr", abstract: "A certificate signing request for the live (or staged) key, to have a corporate CA sign; import the result with cert import.")
        @OptionGroup var options: ConfigOptions
        @Flag(help: "Use the staged key instead of the live one.") var staged = false
        @Option(name: .customLong("san"), help: "A DNS name or IP address to request (repeatable; default: the current certificate's names).") var names: [String] = []
        @Option(name: .shortAndLong, help: "Where to write it (default: standard output).") var output: String?

        func run() async throws {
            let config = try loadOrExit(options).gateway
            let paths = staged ? stagedPaths(config) : (config.identity.certificate, config.identity.privateKey)
            do {
                let identity = try ServerIdentity.load(certificatePath: paths.0, privateKeyPath: paths.1)
                let pem = try IdentityRequests.signingRequest(for: identity, names: names)
                if let output {
                    try SecureFile.write(Array(pem.utf8), to: output, mode: 0o644)
                } else {
                    writeLine(pem.trimmingCharacters(in: .newlines))
                }
            } catch {
                printError("portico: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Install an identity from PEM files or a PKCS#12 bundle (password from a prompt or standard input). Checked first; changes nothing when it is refused.")
        @OptionGroup var options: ConfigOptions
        @Option(help: "PEM certificate (leaf first; a chain may follow in the same file).") var certificate: String?
        @Option(help: "PEM chain of intermediates, if not in the certificate file.") var chain: String?
        @Option(help: "PEM private key (default: the live or staged key, for a certificate signed from portico cert csr).") var key: String?
        @Option(help: "A PKCS#12 bundle instead of PEM files.") var pkcs12: String?
        @Flag(help: "Stage it instead of replacing the live identity.") var staged = false

        func run() async throws {
            let config = try loadOrExit(options).gateway
            let certificatePEM: [UInt8]
            let keyPEM: [UInt8]
            do {
                if let pkcs12 {
                    let password = readPassword(prompt: "PKCS#12 password: ") ?? ""
                    (certificatePEM, keyPEM) = try IdentityImport.fromPKCS12(path: pkcs12, password: password)
                } else if let certificate {
                    var chainBytes = try FileContents.read(certificate)
                    if let chain { chainBytes += Array("\n".utf8) + (try FileContents.read(chain)) }
                    // Without --key: the certificate a CA signed from this manager's request
                    // goes with the live or staged key.
                    guard let keyBytes = try key.map({ try FileContents.read($0) }) ?? IdentityRequests.matchingKey(for: chainBytes, configuration: config) else {
                        throw ManagerCommandError("give --key: the certificate belongs to neither the live nor the staged key")
                    }
                    (certificatePEM, keyPEM) = (chainBytes, keyBytes)
                } else {
                    throw ManagerCommandError("give --certificate (and --key unless it was signed from portico cert csr), or --pkcs12")
                }
                try IdentityImport.check(certificatePEM: certificatePEM, keyPEM: keyPEM)
            } catch {
                printError("portico: refused: \(error)")
                throw ExitCode(1)
            }
            let target = staged ? stagedPaths(config) : (config.identity.certificate, config.identity.privateKey)
            do {
                _ = try IdentityRequests.install(certificatePEM: certificatePEM, keyPEM: keyPEM, staged: staged, configuration: config)
            } catch {
                printError("portico: \(error)")
                throw ExitCode(1)
            }
            writeLine(staged ? "staged the imported identity at \(target.0)" : "installed the imported identity at \(target.0); listeners pick it up at the next check or SIGHUP")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Subject, names, key, serial, validity, fingerprint, and which listeners serve it.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let config = try loadOrExit(options).gateway
            var pairs: [(certificate: String, key: String, roles: [ListenerName])] = []
            for listener in config.enabledListeners where listener.tls {
                let certificate = listener.certificate ?? config.identity.certificate
                let key = listener.privateKey ?? config.identity.privateKey
                if let index = pairs.firstIndex(where: { $0.certificate == certificate }) { pairs[index].roles.append(listener.name) } else {
                    pairs.append((certificate, key, [listener.name]))
                }
            }
            let staged = stagedPaths(config)
            if FileManager.default.fileExists(atPath: staged.certificate) {
                pairs.append((staged.certificate, staged.key, []))
            }
            for pair in pairs {
                let identity: ServerIdentity
                do {
                    identity = try ServerIdentity.load(certificatePath: pair.certificate, privateKeyPath: pair.key)
                } catch {
                    printError("portico: \(error)")
                    throw ExitCode(1)
                }
                for line in Self.describe(identity, path: pair.certificate, roles: pair.roles) { writeLine(line) }
                writeLine("")
            }
        }

        static func describe(_ identity: ServerIdentity, path: String, roles: [ListenerName]) -> [String] {
            let summary = IdentitySummary(identity, listeners: roles)
            let formatter = ISO8601DateFormatter()
            return [
                "certificate: \(path)",
                "subject: \(summary.subject)",
                "issuer: \(summary.issuer)\(summary.selfSigned ? " (self-signed)" : "")",
                "names: \(summary.names.joined(separator: ", "))",
                "key: \(summary.key)",
                "serial: \(summary.serialHex)",
                "valid from: \(formatter.string(from: summary.notBefore))",
                "valid until: \(formatter.string(from: summary.notAfter)) (\(Int(summary.notAfter.timeIntervalSinceNow / 86_400)) days left)",
                "sha256 fingerprint: \(summary.fingerprint)",
                roles.isEmpty ? "served by: none (staged as the next identity)" : "served by: \(roles.map(\.rawValue).joined(separator: ", "))",
            ]
        }
    }
}

