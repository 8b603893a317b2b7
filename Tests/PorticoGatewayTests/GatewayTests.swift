import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import PorticoTestSupport
import Testing
import X509

@testable import PorticoGateway
@testable import PorticoServer

@Suite struct ListenerTests {
    @Test func everyRoleAnswersOnItsOwnPortOverHTTP1AndHTTP2() async throws {
        try await TestGateway.with { gw in
            var ports: Set<Int> = []
            try await TestClient.with(trusting: gw.identity.certificate, http2: true) { h2 in
                try await TestClient.with(trusting: gw.identity.certificate, http2: false) { h1 in
                    for role in TestListeners.names where role != .replication && role != .clientPlain {
                        ports.insert(try await gw.port(role))
                        let viaH2 = try await TestClient.get(h2, try await gw.url(role, "/healthz"))
                        #expect(viaH2.status == 200 && viaH2.body == "ok\n", "\(role) over h2")
                        #expect(viaH2.version == .http2, "\(role) negotiated \(viaH2.version)")
                        let viaH1 = try await TestClient.get(h1, try await gw.url(role, "/readyz"))
                        #expect(viaH1.status == 200 && viaH1.body == "ready\n", "\(role) over http/1.1")
                        #expect(viaH1.version == .http1_1)
                        for answer in [viaH2, viaH1] {
                            let date = try #require(answer.headers.first(name: "date"), "\(role) sent no date")
                            #expect(date.hasSuffix(" GMT") && date.count == 29, "not an IMF-fixdate: \(date)")
                        }
                    }
                    let plain = try await TestClient.get(h1, try await gw.url(.clientPlain, "/healthz"))
                    #expect(plain.status == 200)
                    ports.insert(try await gw.port(.clientPlain))
                    ports.insert(try await gw.port(.replication))
                }
            }
            #expect(ports.count == TestListeners.names.count)
        }
    }

    /// `/statusz` is readiness as JSON, made per request, naming the listener that answered;
    /// 503 while not ready.
    @Test func statusIsReadinessAsJSON() async throws {
        try await TestGateway.with { gw in
            try await TestClient.with(http2: false) { client in
                for role in [ListenerName.clientPlain, .client, .console] {
                    let answer = try await TestClient.get(client, try await gw.url(role, "/statusz"))
                    #expect(answer.status == 200)
                    #expect(answer.headers.first(name: "content-type") == "application/json")
                    #expect(answer.body == #"{"status":"ready","listener":"\#(role.rawValue)"}"#)
                }
            }
        }
        // Not ready (starting, or draining): 503 with the same fields.
        let readiness = ReadinessFlag()
        guard case .immediate(let status) = try #require(BuiltinServices.endpoint(named: "status", metrics: GatewayMetrics(), readiness: readiness)) else {
            Issue.record("status is not answered on the loop")
            return
        }
        let request = GatewayRequest(
            method: .GET, uri: "/statusz", headers: [:], body: ByteBuffer(), host: nil, parameters: [:], listener: .console,
            httpMajorVersion: 1, isTLS: true, peerAddress: nil, clientAddress: nil, peerIsTrustedProxy: false, clientCertificate: nil)
        let notReady = status(request)
        #expect(notReady.status == .serviceUnavailable)
        #expect(String(buffer: notReady.body) == #"{"status":"not ready","listener":"console"}"#)
        readiness.set(true)
        #expect(status(request).status == .ok)
    }

    @Test func metricsAreServedOnWebservicesOnly() async throws {
        try await TestGateway.with { gw in
            try await TestClient.with { client in
                _ = try await TestClient.get(client, try await gw.url(.console, "/healthz"))
                let metrics = try await TestClient.get(client, try await gw.url(.webservices, "/metrics"))
                #expect(metrics.status == 200)
                #expect(metrics.body.contains(#"portico_requests_total{listener="console",code="2xx"} 1"#))
                #expect(metrics.body.contains("portico_certificate_expiry_seconds"))
                #expect(metrics.body.contains("portico_open_connections"))
                #expect(metrics.body.contains("portico_request_duration_seconds_bucket"))
                let elsewhere = try await TestClient.get(client, try await gw.url(.console, "/metrics"))
                #expect(elsewhere.status == 404)
            }
        }
    }

    @Test func tls11IsRefused() async throws {
        try await TestGateway.with(listeners: [.client: ""]) { gw in
            let port = try await gw.port(.client)
            await #expect(throws: (any Error).self) {
                _ = try await TLSProbe.connect(port: port, minimumVersion: .tlsv1, maximumVersion: .tlsv11)
            }
            let modern = try await TLSProbe.connect(port: port)
            #expect(try await modern.get("/healthz").hasPrefix("HTTP/1.1 200 OK"))
            await modern.close()
        }
    }

    @Test func routesReachServicesWithParametersAndMethods() async throws {
        let routes = """
            routes:
              - {listener: client_plain, methods: [POST], path: "/devices/{id}/events", service: echo}
              - {listeners: [client_plain, console], path: "/api/*", service: echo, max_body_bytes: 16}
            """
        try await TestGateway.with(body: routes) { gw in
            try await TestClient.with(http2: false) { client in
                let posted = try await TestClient.get(client, try await gw.url(.clientPlain, "/devices/d-42/events?x=1"), method: .POST, body: "hello")
                #expect(posted.status == 200)
                #expect(posted.body.contains("param.id=d-42"))
                #expect(posted.body.contains("uri=/devices/d-42/events?x=1"))
                #expect(posted.body.contains("body=hello"))
                let wrongMethod = try await TestClient.get(client, try await gw.url(.clientPlain, "/devices/d-42/events"))
                #expect(wrongMethod.status == 405)
                #expect(wrongMethod.headers.first(name: "allow") == "POST")
                let missing = try await TestClient.get(client, try await gw.url(.clientPlain, "/nothing"))
                #expect(missing.status == 404)
                let prefix = try await TestClient.get(client, try await gw.url(.console, "/api/a/b"))
                #expect(prefix.body.contains("uri=/api/a/b"))
                let tooLarge = try await TestClient.get(client, try await gw.url(.clientPlain, "/api/x"), method: .POST, body: String(repeating: "x", count: 17))
                #expect(tooLarge.status == 413)
            }
            // The same limit on HTTP/2.
            try await TestClient.with(http2: true) { client in
                let tooLarge = try await TestClient.get(client, try await gw.url(.console, "/api/x"), method: .POST, body: String(repeating: "x", count: 17))
                #expect(tooLarge.status == 413)
                let fits = try await TestClient.get(client, try await gw.url(.console, "/api/x"), method: .POST, body: "0123456789abcdef")
                #expect(fits.status == 200 && fits.body.contains("body=0123456789abcdef"))
            }
        }
    }

    @Test func oversizedHeadersGet431() async throws {
        try await TestGateway.with(listeners: [.clientPlain: "limits: {max_header_bytes: 1KiB, max_headers: 10}"]) { gw in
            try await TestClient.with(http2: false) { client in
                let big = try await TestClient.get(client, try await gw.url(.clientPlain, "/healthz"), headers: ["x-big": String(repeating: "a", count: 2000)])
                #expect(big.status == 431)
            }
            try await TestClient.with(http2: false) { client in
                var many = HTTPHeaders()
                for i in 0..<20 { many.add(name: "x-h\(i)", value: "v") }
                let manyAnswer = try await TestClient.get(client, try await gw.url(.clientPlain, "/healthz"), headers: many)
                #expect(manyAnswer.status == 431)
                let normal = try await TestClient.get(client, try await gw.url(.clientPlain, "/healthz"))
                #expect(normal.status == 200)
            }
        }
    }
}

@Suite struct MutualTLSTests {
    @Test func replicationRefusesMissingAndUntrustedCertificatesAndAcceptsATrustedOne() async throws {
        let dir = try TemporaryDirectory()
        let peer = try TestPKI.make(in: dir, name: "peer", commonName: "peer-site-b")
        let stranger = try TestPKI.make(in: dir, name: "stranger", commonName: "stranger")
        let routes = "routes:\n  - {listener: replication, path: /whoami, service: whoami}"
        try await TestGateway.with(listeners: [.replication: "trust: \(peer.certificatePath)"], body: routes) { gw in
            let port = try await gw.port(.replication)
            for (name, identity) in [("no certificate", nil), ("an untrusted certificate", stranger)] as [(String, TestPKI.Pair?)] {
                var refused = false
                do {
                    let probe = try await TLSProbe.connect(port: port, clientIdentity: identity)
                    // With TLS 1.3 the server judges the client certificate after the client
                    // has finished; the refusal arrives as an alert on the first read.
                    _ = try await probe.get("/whoami", keepAlive: false)
                    await probe.close()
                } catch {
                    refused = true
                }
                #expect(refused, "replication accepted \(name)")
            }
            let trusted = try await TLSProbe.connect(port: port, clientIdentity: peer)
            let answer = try await trusted.get("/whoami")
            #expect(answer.hasPrefix("HTTP/1.1 200"))
            #expect(answer.contains("cert=O=Portico,CN=peer-site-b"))
            await trusted.close()
            // The same peer over HTTP/2.
            try await TestClient.with(clientIdentity: peer) { client in
                let h2 = try await TestClient.get(client, "https://127.0.0.1:\(port)/whoami")
                #expect(h2.body.contains("cert=O=Portico,CN=peer-site-b") && h2.body.contains("http=2"))
            }
        }
    }

    @Test func replicationAlsoAcceptsAFolderOfPeerCertificates() async throws {
        let dir = try TemporaryDirectory()
        let peer = try TestPKI.make(in: dir, name: "peers/site-b", commonName: "site-b")
        _ = try TestPKI.make(in: dir, name: "peers/site-c", commonName: "site-c")
        try await TestGateway.with(listeners: [.replication: "trust: \(dir.file("peers"))"]) { gw in
            let probe = try await TLSProbe.connect(port: try await gw.port(.replication), clientIdentity: peer)
            #expect(try await probe.get("/healthz").hasPrefix("HTTP/1.1 200"))
            await probe.close()
        }
    }
}

@Suite struct CertificateReloadTests {
    @Test func newConnectionsSeeARotatedCertificateWhileOpenOnesKeepWorking() async throws {
        try await TestGateway.with(listeners: [.console: ""]) { gw in
            let port = try await gw.port(.console)
            let before = try await TLSProbe.connect(port: port)
            #expect(try await before.get("/healthz").hasPrefix("HTTP/1.1 200"))
            let oldSerial = try Certificate(derEncoded: try #require(before.peerCertificate).toDERBytes()).serialNumber
            #expect(oldSerial == (try Certificate(derEncoded: gw.identity.certificate.toDERBytes())).serialNumber)

            // Rotate the files in place and ask the gateway to look (as the poll or SIGHUP does).
            let next = try IdentityGenerator.generate(keyType: .rsa2048, commonName: "rotated")
            try IdentityGenerator.write(next, certificatePath: gw.identity.certificatePath, privateKeyPath: gw.identity.keyPath)
            await gw.gateway.reloadIdentities()

            let after = try await TLSProbe.connect(port: port)
            let rotated = try ServerIdentity.load(certificatePath: gw.identity.certificatePath, privateKeyPath: gw.identity.keyPath)
            let newSerial = try Certificate(derEncoded: try #require(after.peerCertificate).toDERBytes()).serialNumber
            #expect(newSerial == rotated.leaf.serialNumber)
            #expect(newSerial != oldSerial)
            // The connection opened before the rotation is still served.
            #expect(try await before.get("/healthz").hasPrefix("HTTP/1.1 200"))
            await before.close()
            await after.close()
        }
    }

    @Test func aKeyThatDoesNotMatchKeepsTheLastGoodPair() async throws {
        try await TestGateway.with(listeners: [.console: ""]) { gw in
            let port = try await gw.port(.console)
            let other = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "other")
            try other.privateKeyPEM.write(toFile: gw.identity.keyPath, atomically: true, encoding: .utf8)
            await gw.gateway.reloadIdentities()
            let probe = try await TLSProbe.connect(port: port)
            let served = try #require(probe.peerCertificate).toDERBytes()
            #expect(served == (try gw.identity.certificate.toDERBytes()))
            #expect(try await probe.get("/healthz").hasPrefix("HTTP/1.1 200"))
            await probe.close()
            try await TestClient.with { client in
                let metrics = try await TestClient.get(client, try await gw.url(.webservices, "/metrics"))
                #expect(metrics.body.contains(#"portico_certificate_reload_failing{certificate="\#(gw.identity.certificatePath)"} 1"#))
                #expect(metrics.body.contains(#"portico_certificate_reloads_total{certificate="\#(gw.identity.certificatePath)",result="failed"} 1"#))
            }
        }
    }
}

@Suite struct ReloadTests {
    @Test func reloadSwapsRoutesAndKeepsUnchangedListenersConnections() async throws {
        try await TestGateway.with { gw in
            let consolePort = try await gw.port(.console)
            let open = try await TLSProbe.connect(port: consolePort)
            #expect(try await open.get("/healthz").hasPrefix("HTTP/1.1 200"))
            #expect(try await open.get("/echo").hasPrefix("HTTP/1.1 404"))

            var yaml = try String(contentsOfFile: gw.dir.file("portico.yaml"), encoding: .utf8)
            yaml += "\nroutes:\n  - {listener: console, path: /echo, service: echo}\n"
            try gw.dir.write("portico.yaml", yaml)
            let problems = await gw.gateway.reload()
            #expect(problems == nil)

            // Same connection, new route table.
            let answer = try await open.get("/echo")
            #expect(answer.hasPrefix("HTTP/1.1 200"))
            #expect(answer.contains("uri=/echo"))
            #expect(try await gw.port(.console) == consolePort)
            await open.close()
        }
    }

    @Test func aBrokenConfigIsRejectedWholeAndTheOldOneKeepsServing() async throws {
        try await TestGateway.with(body: "routes:\n  - {listener: client_plain, path: /echo, service: echo}") { gw in
            let good = try String(contentsOfFile: gw.dir.file("portico.yaml"), encoding: .utf8)
            try gw.dir.write("portico.yaml", good.replacingOccurrences(of: "path: /echo", with: "path: /echo2") + "\nbogus_key: 1\n")
            let problems = try #require(await gw.gateway.reload())
            #expect(problems.diagnostics.contains { $0.message.contains("bogus_key") })
            try await TestClient.with(http2: false) { client in
                #expect(try await TestClient.get(client, try await gw.url(.clientPlain, "/echo")).status == 200)
                #expect(try await TestClient.get(client, try await gw.url(.clientPlain, "/echo2")).status == 404)
                let metrics = try await TestClient.get(client, try await gw.url(.webservices, "/metrics"))
                #expect(metrics.body.contains(#"portico_config_reloads_total{result="failed"} 1"#))
            }
        }
    }

    @Test func aChangedPortIsBoundAnewAndTheOldListenerDrained() async throws {
        // The kept connection sends nothing until the end: a head timeout longer than a reload
        // on a loaded machine takes.
        try await TestGateway.with(listeners: [.console: "limits: {header_timeout: 5m}"]) { gw in
            let oldPort = try await gw.port(.reporting)
            let other = try await gw.port(.console)
            let keep = try await TLSProbe.connect(port: other)
            let yaml = try String(contentsOfFile: gw.dir.file("portico.yaml"), encoding: .utf8)
            // Ask for another free port by turning TLS off on reporting: a socket-level change.
            try gw.dir.write("portico.yaml", yaml.replacingOccurrences(of: "  reporting:\n    bind: 127.0.0.1\n    port: 0\n", with: "  reporting:\n    bind: 127.0.0.1\n    port: 0\n    tls: false\n"))
            #expect(await gw.gateway.reload() == nil)
            let newPort = try await gw.port(.reporting)
            #expect(newPort != oldPort)
            try await TestClient.with(http2: false) { client in
                let answer = try await TestClient.get(client, "http://127.0.0.1:\(newPort)/healthz")
                #expect(answer.status == 200)
            }
            // The untouched console listener kept its connection.
            #expect(try await keep.get("/healthz").hasPrefix("HTTP/1.1 200"))
            await keep.close()
        }
    }
}

@Suite struct AcceptTests {
    /// 24 clients connected to `port`, each answered one health request and left open.
    static func servedClients(port: Int) async throws -> [RawTCP] {
        var clients: [RawTCP] = []
        for _ in 0..<24 {
            let client = try await RawTCP.connect(port: port)
            try await client.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(await client.received(containing: "\r\n\r\nok").contains("HTTP/1.1 200 OK"))
            clients.append(client)
        }
        return clients
    }

    /// Every loop of the server core accepts on a socket of its own, all bound to the
    /// listener's port, and serves what it accepted: a connection is never handed to another
    /// loop (a task and a wake-up of the other thread per connection, and each TLS handshake
    /// waiting on it). The port is free again once the gateway stops.
    @Test func eachCoreLoopAcceptsOnTheListenersPort() async throws {
        let port = try await TestGateway.with(listeners: [.clientPlain: ""]) { gw in
            let port = try await gw.port(.clientPlain)
            let clients = try await Self.servedClients(port: port)
            let listener = try #require(await gw.gateway.listener(of: .clientPlain))
            let sockets = await listener.acceptingSockets
            let loops = try TestGateway.serverLoops().loops
            #expect(sockets.count == loops.count)
            #expect(Set(sockets.map { ObjectIdentifier($0.loop) }) == Set(loops.map { ObjectIdentifier($0) }))
            #expect(Set(sockets.compactMap { $0.localAddress?.port }) == [port])
            #expect(await gw.gateway.connectionCount(of: .clientPlain) == clients.count)
            for client in clients { try? await client.channel.close() }
            return port
        }
        try PortCheck.ensureFree(host: "127.0.0.1", port: port)
    }

    /// The loops' sockets share the port by `SO_REUSEPORT`, which would let a second Portico
    /// share it too: a listener first checks the port without the option, which fails on a port
    /// a running listener holds.
    @Test func aPortARunningListenerHoldsIsRefusedToTheNext() async throws {
        let port = try await TestGateway.with { gw in
            let port = try await gw.port(.console)
            #expect(throws: IOError.self) { try PortCheck.ensureFree(host: "127.0.0.1", port: port) }
            do {
                try PortCheck.ensureFree(host: "127.0.0.1", port: port)
            } catch let error as IOError {
                #expect(error.errnoCode == EADDRINUSE)
                #expect("\(ListenerError.bind(role: .console, address: "127.0.0.1:\(port)", port: port, error: error))".hasSuffix("address already in use: another process listens on port \(port)"))
            }
            return port
        }
        // Once it has stopped, every loop's socket is closed and the port is free again.
        try PortCheck.ensureFree(host: "127.0.0.1", port: port)
    }
}

@Suite struct DrainTests {
    @Test func stoppingLetsARequestInFlightFinish() async throws {
        let gate = Gate()
        let routes = "routes:\n  - {listener: client_plain, path: /slow, service: slow}"
        try await TestGateway.with(listeners: [.clientPlain: ""], body: routes, services: TestServices.registry(gate: gate)) { gw in
            let url = try await gw.url(.clientPlain, "/slow")
            let consolePort = try await gw.port(.console)
            try await TestClient.with(http2: false) { client in
                async let answer = TestClient.get(client, url)
                await gate.waitForArrival()
                await gw.gateway.beginDrain()
                // No new connections once draining has begun; the request in flight goes on.
                #expect(await TestClient.canConnect(port: consolePort) == false)
                let stopping = Task { await gw.gateway.stop() }
                gate.open()
                let result = try await answer
                await stopping.value
                #expect(result.status == 200)
                #expect(result.body == "finished")
                #expect(result.headers.first(name: "connection") == "close")
            }
        }
    }
}

@Suite struct IdentityScopeTests {
    @Test func aListenerMayServeItsOwnCertificate() async throws {
        let dir = try TemporaryDirectory()
        let own = try TestPKI.make(in: dir, name: "console-own", commonName: "console.example.com")
        try await TestGateway.with(listeners: [.console: "certificate: \(own.certificatePath)\nprivate_key: \(own.keyPath)"]) { gw in
            let console = try await TLSProbe.connect(port: try await gw.port(.console))
            #expect(try console.peerCertificate?.toDERBytes() == own.certificate.toDERBytes())
            let shared = try await TLSProbe.connect(port: try await gw.port(.reporting))
            #expect(try shared.peerCertificate?.toDERBytes() == gw.identity.certificate.toDERBytes())
            await console.close()
            await shared.close()
        }
    }

    @Test func anExpiredReplacementKeepsTheLastGoodPair() async throws {
        try await TestGateway.with { gw in
            let expired = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "old", days: 1, now: Date(timeIntervalSinceNow: -10 * 86_400))
            try IdentityGenerator.write(expired, certificatePath: gw.identity.certificatePath, privateKeyPath: gw.identity.keyPath)
            await gw.gateway.reloadIdentities()
            let probe = try await TLSProbe.connect(port: try await gw.port(.client))
            #expect(try probe.peerCertificate?.toDERBytes() == gw.identity.certificate.toDERBytes())
            await probe.close()
        }
    }
}

@Suite struct HTTP2DrainTests {
    @Test func aStreamInFlightFinishesAfterGoAway() async throws {
        let gate = Gate()
        let routes = "routes:\n  - {listener: console, path: /slow, service: slow}"
        try await TestGateway.with(body: routes, services: TestServices.registry(gate: gate)) { gw in
            let url = try await gw.url(.console, "/slow")
            try await TestClient.with(http2: true) { client in
                async let answer = TestClient.get(client, url)
                await gate.waitForArrival()
                await gw.gateway.beginDrain()
                let stopping = Task { await gw.gateway.stop() }
                gate.open()
                let result = try await answer
                await stopping.value
                #expect(result.status == 200)
                #expect(result.version == .http2)
                #expect(result.body == "finished")
                #expect(await gw.gateway.connectionCount(of: .console) == 0)
            }
        }
    }
}

@Suite struct MemoryTrimTests {
    /// The symbol is looked up at run time (glibc's header is not in the Glibc module): a
    /// failed lookup would silently stop the trimming.
    @Test func mallocTrimIsFoundOnGlibc() throws {
        #if canImport(Glibc)
        #expect(MemoryTrim.isAvailable)
        // Many small blocks freed between live ones: the shape the trim is for. It must not
        // disturb the live blocks.
        var live: [UnsafeMutableRawPointer] = []
        var freed: [UnsafeMutableRawPointer] = []
        for index in 0..<20_000 {
            let block = malloc(512)!
            memset(block, Int32(index & 0x7F), 512)
            if index % 2 == 0 { live.append(block) } else { freed.append(block) }
        }
        freed.forEach { free($0) }
        MemoryTrim.trimNow(logger: Logger(label: "test"))
        for (offset, block) in live.enumerated() {
            let byte = block.load(fromByteOffset: 511, as: UInt8.self)
            #expect(byte == UInt8((offset * 2) & 0x7F))
            if byte != UInt8((offset * 2) & 0x7F) { break }
        }
        live.forEach { free($0) }
        #endif
    }
}
