import Foundation
import PorticoTestSupport
import Synchronization
import Testing

@testable import PorticoGateway
@testable import PorticoServer

/// TLS sessions resume, by ticket and by session id, on TLS 1.2 and 1.3, across a reloaded
/// configuration and a rotated identity; tickets are sealed under keys that rotate.
@Suite(.timeLimit(.minutes(2))) struct SessionResumptionTests {
    static let required = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil
    static func usable(_ tool: String) -> Bool { Tools.has(tool) || required }

    /// One `openssl s_client` connection that sends a request and reads the answer to the
    /// end (so that TLS 1.3 tickets, sent after the handshake, are read), saving its session
    /// to `save` and offering the one in `resume`. Returns whether the session was resumed.
    static func connect(port: Int, version: String, save: String, resume: String? = nil, extra: [String] = []) async throws -> Bool {
        var arguments = ["s_client", "-connect", "127.0.0.1:\(port)", version, "-ign_eof", "-sess_out", save] + extra
        if let resume { arguments += ["-sess_in", resume] }
        let result = try await Tools.run("openssl", arguments, input: "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        #expect(result.output.contains("HTTP/1.1 200 OK"), "openssl said: \(result.output)")
        let reused = result.output.contains("Reused, TLSv1.")
        #expect(reused || result.output.contains("New, TLSv1."), "openssl said: \(result.output)")
        return reused
    }

    @Test(.enabled(if: usable("openssl"), "openssl is not installed (apt-get install openssl)"),
          arguments: [("-tls1_2", [] as [String]), ("-tls1_3", []), ("-tls1_2", ["-no_ticket"])])
    func aSessionResumesAcrossReloads(version: String, extra: [String]) async throws {
        let dir = try TemporaryDirectory()
        try await TestGateway.with(listeners: [.console: ""]) { gw in
            let port = try await gw.port(.console)
            let session = dir.file("session.pem")
            #expect(try await Self.connect(port: port, version: version, save: session, extra: extra) == false)
            let first = try Data(contentsOf: URL(fileURLWithPath: session))
            #expect(try await Self.connect(port: port, version: version, save: session, resume: session, extra: extra))
            // TLS 1.3 gives a resumed client a new ticket (its client uses a ticket once).
            if version == "-tls1_3" { #expect(try Data(contentsOf: URL(fileURLWithPath: session)) != first) }
            #expect(try await Self.connect(port: port, version: version, save: session, resume: session, extra: extra))

            // A reloaded configuration keeps the listener's ticket keys; a session kept by id
            // is in the cache of the TLS context the reload replaced.
            let byTicket = extra.isEmpty
            #expect(await gw.gateway.reload() == nil)
            #expect(try await Self.connect(port: port, version: version, save: session, resume: session, extra: extra) == byTicket)
            if !byTicket { #expect(try await Self.connect(port: port, version: version, save: session, resume: session, extra: extra)) }

            // So does a rotated identity; the session was made with the previous certificate
            // and resumes with it, as it would on any server.
            let next = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "rotated")
            try IdentityGenerator.write(next, certificatePath: gw.identity.certificatePath, privateKeyPath: gw.identity.keyPath)
            await gw.gateway.reloadIdentities()
            #expect(try await Self.connect(port: port, version: version, save: session, resume: session, extra: extra) == byTicket)
            // A client with no session gets a full handshake.
            #expect(try await Self.connect(port: port, version: version, save: dir.file("other.pem"), extra: extra) == false)
            // What the metrics counted: by ticket two full handshakes and four resumed; by
            // session id the reload and the new identity cost one full handshake each.
            try await TestClient.with { client in
                let metrics = try await TestClient.get(client, try await gw.url(.webservices, "/metrics")).body
                let (full, resumed) = byTicket ? (2, 4) : (4, 3)
                #expect(metrics.contains(#"portico_tls_handshakes_total{listener="console",resumed="false"} \#(full)"#))
                #expect(metrics.contains(#"portico_tls_handshakes_total{listener="console",resumed="true"} \#(resumed)"#))
            }
        }
    }

    /// Sessions of one listener do not resume on another (each has its own ticket keys and
    /// session id context).
    @Test(.enabled(if: usable("openssl"), "openssl is not installed (apt-get install openssl)"))
    func aSessionDoesNotResumeOnAnotherListener() async throws {
        let dir = try TemporaryDirectory()
        try await TestGateway.with(listeners: [.console: "", .reporting: ""]) { gw in
            let session = dir.file("session.pem")
            _ = try await Self.connect(port: try await gw.port(.console), version: "-tls1_3", save: session)
            #expect(try await Self.connect(port: try await gw.port(.reporting), version: "-tls1_3", save: dir.file("next.pem"), resume: session) == false)
        }
    }
}

/// The ring of ticket keys, on a clock the test moves.
@Suite struct TicketKeysTests {
    final class Clock: Sendable {
        let start = ContinuousClock.Instant.now
        let offset = Mutex(Duration.zero)
        var now: ContinuousClock.Instant { start + offset.withLock { $0 } }
        func advance(_ by: Duration) { offset.withLock { $0 += by } }
    }

    @Test func keysRotateAndOldOnesAreAcceptedForTheRingsSpan() {
        let clock = Clock()
        let keys = TicketKeys(rotation: .seconds(3600), kept: 3, now: { clock.now })
        let first = keys.current()
        #expect(keys.current().name == first.name)
        func lookUp(_ key: TicketKeys.Key) -> (key: TicketKeys.Key, isNewest: Bool)? {
            key.name.withUnsafeBytes { keys.key(named: $0) }
        }
        #expect(lookUp(first)?.isNewest == true)

        // An hour on, a new key seals; the first still opens, and asks for a new ticket.
        clock.advance(.seconds(3600))
        #expect(lookUp(first)?.isNewest == false)
        let second = keys.current()
        #expect(second.name != first.name)
        #expect(lookUp(second)?.isNewest == true)
        #expect(lookUp(first)?.isNewest == false)

        // Three hours after it was made, the first key opens nothing, rotation or not.
        clock.advance(.seconds(2 * 3600 - 1))
        #expect(lookUp(first) != nil)
        clock.advance(.seconds(1))
        #expect(lookUp(first) == nil)
        #expect(lookUp(second) != nil)

        // A ring of three keeps three.
        _ = keys.current()
        clock.advance(.seconds(3600))
        let fourth = keys.current()
        #expect(lookUp(second) == nil)
        #expect(lookUp(fourth)?.isNewest == true)
        let unknown = [UInt8](repeating: 7, count: TicketKeys.nameLength)
        #expect(unknown.withUnsafeBytes { keys.key(named: $0) } == nil)
    }
}
