import ArgumentParser
import Foundation
import NIOSSL
import PorticoGateway
import PorticoManager
import PorticoServer
import PorticoStore

/// `portico peer add|remove|list`: the managers of other sites this one replicates with.
struct Peer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Peer managers in other sites.", subcommands: [Add.self, Remove.self, List.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a peer: its replication URL and its certificate, which every manager of this site then trusts on its replication listener (within seconds) and pins when it calls the peer.")
        @OptionGroup var options: ConfigOptions
        @Option var name: String
        @Option(help: "The peer's replication listener, https://host:8444.") var url: String
        @Option(help: "The peer's server certificate (PEM), as its `portico cert show` describes it.") var certificate: String
        @Option(help: "Which way events and audit entries go with this peer: both, send, receive or none.") var history: String = "both"

        func run() async throws {
            _ = try loadOrExit(options)
            guard let mode = PeerHistory(rawValue: history) else {
                printError("portico: --history must be one of both, send, receive or none, not \(history)")
                throw ExitCode(1)
            }
            let pem: [UInt8]
            let fingerprint: String
            do {
                pem = try FileContents.read(certificate)
                guard let leaf = try NIOSSLCertificate.fromPEMBytes(pem).first else { throw ManagerCommandError("\(certificate) holds no certificate") }
                fingerprint = try leaf.sha256Hex()
            } catch {
                printError("portico: \(certificate) is not a PEM certificate: \(error)")
                throw ExitCode(1)
            }
            try await withStore(options) { store, _ in
                try await ManagerOperations(store: store, agent: nil).addPeer(
                    PeerRecord(name: name, url: url, certificateFingerprint: fingerprint, history: mode, certificatePEM: String(decoding: pem, as: UTF8.self)), by: .commandLine)
            }
            writeLine("added peer \(name) (\(url), SHA-256 \(fingerprint)); the site's running managers trust it within seconds")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a peer; the site's managers stop trusting its certificate within seconds.")
        @OptionGroup var options: ConfigOptions
        @Argument var name: String

        func run() async throws {
            try await withStore(options) { store, _ in
                try await ManagerOperations(store: store, agent: nil).removePeer(name: name, by: .commandLine)
            }
            writeLine("removed peer \(name); the site's running managers stop trusting it within seconds")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the peers.")
        @OptionGroup var options: ConfigOptions

        func run() async throws {
            let (peers, cursors) = try await withStore(options) { store, _ in (try await store.peers(), try await store.replicationCursors()) }
            writeLine("name\turl\tsha256\tsite\thistory\tapplied\tbehind")
            for peer in peers {
                let cursor = peer.siteID.flatMap { cursors[$0] }
                writeLine("\(peer.name)\t\(peer.url)\t\(peer.certificateFingerprint)\t\(peer.siteID ?? "-")\t\(peer.history.rawValue)\t\(cursor.map { String($0.position) } ?? "-")\t\(cursor.map { String($0.behind) } ?? "-")")
            }
        }
    }
}
