import ArgumentParser
import Crypto
import Foundation
import PorticoGateway
import SwiftASN1
import X509
import _CryptoExtras

/// `portico cert`: the server identity, as an operator looks after it.
struct Cert: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The server certificate.", subcommands: [Show.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Subject, names, key, serial, validity, fingerprint, and which listeners serve it.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let config = try loadOrExit(options)
            var shown: Set<String> = []
            var pairs: [(certificate: String, key: String, roles: [ListenerRole])] = []
            for listener in config.enabledListeners where listener.tls {
                let certificate = listener.certificate ?? config.identity.certificate
                let key = listener.privateKey ?? config.identity.privateKey
                if let index = pairs.firstIndex(where: { $0.certificate == certificate }) { pairs[index].roles.append(listener.role) } else {
                    pairs.append((certificate, key, [listener.role]))
                }
            }
            for pair in pairs where shown.insert(pair.certificate).inserted {
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

        static func describe(_ identity: ServerIdentity, path: String, roles: [ListenerRole]) -> [String] {
            let leaf = identity.leaf
            let formatter = ISO8601DateFormatter()
            var names: [String] = []
            if let sans = try? leaf.extensions.subjectAlternativeNames {
                for name in sans {
                    switch name {
                    case .dnsName(let dns): names.append("DNS:\(dns)")
                    case .ipAddress(let bytes): names.append("IP:\(ipText(Array(bytes.bytes)))")
                    default: names.append("\(name)")
                    }
                }
            }
            let days = Int(leaf.notValidAfter.timeIntervalSinceNow / 86_400)
            return [
                "certificate: \(path)",
                "subject: \(leaf.subject)",
                "issuer: \(leaf.issuer)\(leaf.issuer == leaf.subject ? " (self-signed)" : "")",
                "names: \(names.joined(separator: ", "))",
                "key: \(keyDescription(leaf.publicKey))",
                "serial: \(identity.serialHex)",
                "valid from: \(formatter.string(from: leaf.notValidBefore))",
                "valid until: \(formatter.string(from: leaf.notValidAfter)) (\(days) days left)",
                "sha256 fingerprint: \(identity.fingerprint.map { String(format: "%02X", $0) }.joined(separator: ":"))",
                "served by: \(roles.map(\.rawValue).joined(separator: ", "))",
            ]
        }

        static func keyDescription(_ key: Certificate.PublicKey) -> String {
            if let rsa = _RSA.Signing.PublicKey(key) { return "RSA \(rsa.keySizeInBits) bits" }
            if P256.Signing.PublicKey(key) != nil { return "ECDSA P-256" }
            if P384.Signing.PublicKey(key) != nil { return "ECDSA P-384" }
            if P521.Signing.PublicKey(key) != nil { return "ECDSA P-521" }
            return "Ed25519"
        }

        static func ipText(_ bytes: [UInt8]) -> String {
            if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
            return stride(from: 0, to: bytes.count, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }.joined(separator: ":")
        }
    }
}
