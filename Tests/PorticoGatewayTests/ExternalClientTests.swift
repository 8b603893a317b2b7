import Foundation
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

/// Real clients no one here wrote. Each test skips with the reason when its program is
/// missing, unless PORTICO_REQUIRE_TOOLS is set (as CI sets it), where a missing program fails.
@Suite(.timeLimit(.minutes(2))) struct ExternalClientTests {
    static let required = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil
    static func usable(_ tool: String) -> Bool { Tools.has(tool) || required }

    @Test(.enabled(if: usable("curl"), "curl is not installed (apt-get install curl)"))
    func curlOverHTTP2HTTP1AndPlain() async throws {
        try await TestGateway.with { gw in
            let ca = gw.identity.certificatePath
            let h2 = try await Tools.run("curl", ["-sS", "--cacert", ca, "--http2", "-w", "\n%{http_version}", try await gw.url(.console, "/healthz")])
            #expect(h2.status == 0)
            #expect(h2.output == "ok\n\n2", "curl said: \(h2.output)")
            let h1 = try await Tools.run("curl", ["-sS", "--cacert", ca, "--http1.1", "-w", "\n%{http_version}", try await gw.url(.reporting, "/readyz")])
            #expect(h1.output == "ready\n\n1.1", "curl said: \(h1.output)")
            let plain = try await Tools.run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", try await gw.url(.clientPlain, "/healthz")])
            #expect(plain.output == "200")
            // The client offers TLS 1.1 (security level lowered); the server's alert refuses it.
            let tls11 = try await Tools.run("curl", ["-sS", "-k", "--tlsv1.1", "--tls-max", "1.1", "--ciphers", "DEFAULT@SECLEVEL=0", try await gw.url(.client, "/healthz")])
            #expect(tls11.status != 0)
            #expect(tls11.output.contains("alert protocol version"), "curl said: \(tls11.output)")
            let notFound = try await Tools.run("curl", ["-sS", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}", try await gw.url(.console, "/missing")])
            #expect(notFound.output == "404")
        }
    }

    @Test(.enabled(if: usable("openssl"), "openssl is not installed (apt-get install openssl)"))
    func opensslSeesTheIdentityAndItsPolicy() async throws {
        try await TestGateway.with { gw in
            let port = try await gw.port(.client)
            let ok = try await Tools.run("openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-alpn", "h2", "-tls1_2"], input: "")
            #expect(ok.output.contains("ALPN protocol: h2"))
            #expect(ok.output.contains("Protocol  : TLSv1.2") || ok.output.contains("Protocol: TLSv1.2"))
            let old = try await Tools.run("openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], input: "")
            #expect(old.status != 0)
            #expect(old.output.contains("alert protocol version"), "openssl said: \(old.output)")
            #expect(!old.output.contains("BEGIN CERTIFICATE"))
            // The served certificate is the identity on disk.
            let served = try await Tools.run("openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-showcerts"], input: "")
            let pem = try String(contentsOfFile: gw.identity.certificatePath, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(served.output.contains(pem))
            // Replication without a client certificate gets no HTTP answer.
            let replication = try await Tools.run("openssl", ["s_client", "-connect", "127.0.0.1:\(try await gw.port(.replication))", "-quiet"], input: "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(!replication.output.contains("HTTP/1.1 200"))
        }
    }

    @Test(.enabled(if: usable("openssl"), "openssl is not installed (apt-get install openssl)"))
    func aGeneratedIdentityNamesTheLocalAddresses() async throws {
        let dir = try TemporaryDirectory()
        let generated = try IdentityGenerator.generate(keyType: .rsa2048, commonName: "site", names: ["portico.example.com", "10.1.2.3"])
        try IdentityGenerator.write(generated, certificatePath: dir.file("c.crt"), privateKeyPath: dir.file("c.key"))
        let text = try await Tools.run("openssl", ["x509", "-in", dir.file("c.crt"), "-noout", "-text"])
        #expect(text.output.contains("Public-Key: (2048 bit)"))
        #expect(text.output.contains("sha256WithRSAEncryption"))
        for name in ["DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1", "DNS:portico.example.com", "IP Address:10.1.2.3"] {
            #expect(text.output.contains(name), "missing \(name)")
        }
        let key = try await Tools.run("openssl", ["pkey", "-in", dir.file("c.key"), "-noout", "-check"])
        #expect(key.status == 0)
    }

    @Test(.enabled(if: usable("h2load"), "h2load is not installed (apt-get install nghttp2-client)"))
    func h2loadGetsEveryAnswer() async throws {
        try await TestGateway.with { gw in
            let result = try await Tools.run("h2load", ["-n", "2000", "-c", "4", "-m", "10", try await gw.url(.client, "/healthz")])
            #expect(result.status == 0)
            #expect(result.output.contains("2000 succeeded, 0 failed, 0 errored"), "h2load said: \(result.output)")
            #expect(result.output.contains("status codes: 2000 2xx"))
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct CertShowTests {
    @Test(.enabled(if: ExternalClientTests.usable("openssl"), "openssl is not installed (apt-get install openssl)"))
    func certShowAgreesWithOpenSSL() async throws {
        let dir = try TemporaryDirectory()
        let generated = try IdentityGenerator.generate(keyType: .rsa2048, commonName: "show-me", names: ["portico.example.com"])
        try IdentityGenerator.write(generated, certificatePath: dir.file("ssl/server.crt"), privateKeyPath: dir.file("ssl/server.key"))
        let config = try dir.write("portico.yaml", "listeners:\n  replication: {enabled: false}\n")
        let show = try ServerProcess(["cert", "show", "--config", config])
        #expect(await show.wait() == 0, "cert show said: \(show.text)")
        let openssl = try await Tools.run("openssl", ["x509", "-in", dir.file("ssl/server.crt"), "-noout", "-serial", "-fingerprint", "-sha256", "-text"])
        func value(_ prefix: String, in text: String) -> String? {
            text.split(separator: "\n").first { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)).trimmingCharacters(in: .whitespaces) }
        }
        #expect(value("serial:", in: show.text)?.uppercased() == value("serial=", in: openssl.output))
        #expect(value("sha256 fingerprint:", in: show.text) == value("sha256 Fingerprint=", in: openssl.output))
        #expect(show.text.contains("key: RSA 2048 bits") && openssl.output.contains("Public-Key: (2048 bit)"))
        #expect(show.text.contains("DNS:portico.example.com") && openssl.output.contains("DNS:portico.example.com"))
        #expect(show.text.contains("served by: client, console, reporting, webservices"))
    }
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct CertImportTests {
    let portico = ServerProcess.executable(named: "portico") ?? "portico"

    private func setUp() throws -> (TemporaryDirectory, String, String) {
        let dir = try TemporaryDirectory()
        let live = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "live")
        try IdentityGenerator.write(live, certificatePath: dir.file("ssl/server.crt"), privateKeyPath: dir.file("ssl/server.key"))
        let config = try dir.write("portico.yaml", "listeners:\n  replication: {enabled: false}\n")
        return (dir, config, live.certificatePEM)
    }

    @Test func aGoodPEMIdentityReplacesTheLiveOneAndBadOnesChangeNothing() async throws {
        let (dir, config, livePEM) = try setUp()
        let other = try IdentityGenerator.generate(keyType: .rsa2048, commonName: "other")
        let stranger = try IdentityGenerator.generate(keyType: .rsa2048, commonName: "stranger")
        let expired = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "old", days: 1, now: Date(timeIntervalSinceNow: -5 * 86_400))
        try dir.write("other.crt", other.certificatePEM)
        try dir.write("other.key", other.privateKeyPEM)
        try dir.write("stranger.key", stranger.privateKeyPEM)
        try dir.write("expired.crt", expired.certificatePEM)
        try dir.write("expired.key", expired.privateKeyPEM)
        // A "chain" whose second certificate did not issue the first.
        try dir.write("broken-chain.crt", other.certificatePEM + stranger.certificatePEM)

        for (name, cert, key, reason) in [
            ("mismatched key", "other.crt", "stranger.key", "does not belong to the certificate"),
            ("expired", "expired.crt", "expired.key", "expired on"),
            ("broken chain", "broken-chain.crt", "other.key", "the chain does not link"),
        ] {
            let result = try await Tools.run(portico, ["cert", "import", "--config", config, "--certificate", dir.file(cert), "--key", dir.file(key)])
            #expect(result.status == 1, "\(name) was accepted")
            #expect(result.output.contains("refused") && result.output.contains(reason), "\(name): \(result.output)")
            #expect(try String(contentsOfFile: dir.file("ssl/server.crt"), encoding: .utf8) == livePEM, "\(name) changed the live identity")
        }

        let good = try await Tools.run(portico, ["cert", "import", "--config", config, "--certificate", dir.file("other.crt"), "--key", dir.file("other.key")])
        #expect(good.status == 0, "\(good.output)")
        let installed = try ServerIdentity.load(certificatePath: dir.file("ssl/server.crt"), privateKeyPath: dir.file("ssl/server.key"))
        #expect(installed.leaf.subject.description.contains("other"))
        let mode = try FileManager.default.attributesOfItem(atPath: dir.file("ssl/server.key"))[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o600)
    }

    @Test(.enabled(if: ExternalClientTests.usable("openssl"), "openssl is not installed (apt-get install openssl)"))
    func aPKCS12BundleImportsWithItsPasswordFromStandardInput() async throws {
        let (dir, config, _) = try setUp()
        let bundled = try IdentityGenerator.generate(keyType: .rsa2048, commonName: "bundled")
        try dir.write("b.crt", bundled.certificatePEM)
        try dir.write("b.key", bundled.privateKeyPEM)
        let export = try await Tools.run("openssl", ["pkcs12", "-export", "-in", dir.file("b.crt"), "-inkey", dir.file("b.key"), "-out", dir.file("b.p12"), "-passout", "pass:pa55word"])
        #expect(export.status == 0, "\(export.output)")

        let wrong = try await Tools.run(portico, ["cert", "import", "--config", config, "--pkcs12", dir.file("b.p12")], input: "nope\n")
        #expect(wrong.status == 1 && wrong.output.contains("does not open with this password"), "\(wrong.output)")
        let right = try await Tools.run(portico, ["cert", "import", "--config", config, "--pkcs12", dir.file("b.p12"), "--staged"], input: "pa55word\n")
        #expect(right.status == 0, "\(right.output)")
        let staged = try ServerIdentity.load(certificatePath: dir.file("ssl/next/server.crt"), privateKeyPath: dir.file("ssl/next/server.key"))
        #expect(staged.leaf.subject.description.contains("bundled"))
    }

    @Test func rotateStagesReportsProgressAndForcesTheSwitch() async throws {
        let (dir, config, livePEM) = try setUp()
        let none = try await Tools.run(portico, ["cert", "rotate", "--config", config, "--status"])
        #expect(none.status == 0 && none.output.contains("no rotation under way"), "\(none.output)")
        let badShare = try await Tools.run(portico, ["cert", "rotate", "--config", config, "--switch-at", "120"])
        #expect(badShare.status == 1 && badShare.output.contains("--switch-at"), "\(badShare.output)")
        #expect(!FileManager.default.fileExists(atPath: dir.file("ssl/next/server.crt")))

        let started = try await Tools.run(portico, ["cert", "rotate", "--config", config, "--key", "ecdsa-p256", "--switch-at", "80", "--active-window", "2d"])
        #expect(started.status == 0 && started.output.contains("staged a new identity"), "\(started.output)")
        let staged = try ServerIdentity.load(certificatePath: dir.file("ssl/next/server.crt"), privateKeyPath: dir.file("ssl/next/server.key"))
        let status = try await Tools.run(portico, ["cert", "rotate", "--config", config, "--status"])
        #expect(status.status == 0, "\(status.output)")
        #expect(status.output.contains("acknowledged: 0 of 0 active agents (0%)") && status.output.contains("switches at: 80% (active: checked in within 48 h)"), "\(status.output)")
        #expect(status.output.contains(staged.fingerprint.map { String(format: "%02X", $0) }.joined(separator: ":")))
        #expect(try String(contentsOfFile: dir.file("ssl/server.crt"), encoding: .utf8) == livePEM)

        let forced = try await Tools.run(portico, ["cert", "rotate", "--config", config, "--force"])
        #expect(forced.status == 0, "\(forced.output)")
        #expect(try ServerIdentity.load(certificatePath: dir.file("ssl/server.crt"), privateKeyPath: dir.file("ssl/server.key")).fingerprint == staged.fingerprint)
        #expect(try String(contentsOfFile: dir.file("ssl/previous/server.crt"), encoding: .utf8) == livePEM)
        let mode = try FileManager.default.attributesOfItem(atPath: dir.file("ssl/previous/server.key"))[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o600)
        let again = try await Tools.run(portico, ["cert", "rotate", "--config", config, "--force"])
        #expect(again.status == 1 && again.output.contains("no next identity is staged"), "\(again.output)")
    }

    @Test func generateStagesANewIdentityWithoutTouchingTheLiveOne() async throws {
        let (dir, config, livePEM) = try setUp()
        let result = try await Tools.run(portico, ["cert", "generate", "--config", config, "--key", "ecdsa-p256", "--days", "30", "--san", "next.example.com"])
        #expect(result.status == 0, "\(result.output)")
        #expect(try String(contentsOfFile: dir.file("ssl/server.crt"), encoding: .utf8) == livePEM)
        let staged = try ServerIdentity.load(certificatePath: dir.file("ssl/next/server.crt"), privateKeyPath: dir.file("ssl/next/server.key"))
        #expect(staged.notValidAfter.timeIntervalSinceNow < 31 * 86_400)
        #expect("\(try staged.leaf.extensions.subjectAlternativeNames!)".contains("next.example.com"))
    }
}

@Suite(.timeLimit(.minutes(2))) struct CertCSRTests {
    @Test(.enabled(if: ExternalClientTests.usable("openssl"), "openssl is not installed (apt-get install openssl)"))
    func aCSRForTheLiveKeyVerifiesAndAsksForTheNames() async throws {
        let dir = try TemporaryDirectory()
        let live = try IdentityGenerator.generate(keyType: .rsa2048, commonName: "site-a")
        try IdentityGenerator.write(live, certificatePath: dir.file("ssl/server.crt"), privateKeyPath: dir.file("ssl/server.key"))
        let config = try dir.write("portico.yaml", "site: {name: site-a}\n")
        let portico = try #require(ServerProcess.executable(named: "portico"))
        let made = try await Tools.run(portico, ["cert", "csr", "--config", config, "--san", "portico.corp.example", "--san", "10.2.3.4", "--output", dir.file("req.csr")])
        #expect(made.status == 0, "\(made.output)")
        let check = try await Tools.run("openssl", ["req", "-in", dir.file("req.csr"), "-noout", "-verify", "-text"])
        #expect(check.output.contains("verify OK") || check.output.contains("Certificate request self-signature verify OK"), "\(check.output)")
        #expect(check.output.contains("DNS:portico.corp.example") && check.output.contains("IP Address:10.2.3.4"))
        #expect(check.output.contains("CN = site-a") || check.output.contains("CN=site-a"))
        // The request is for the live key.
        let requestKey = try await Tools.run("openssl", ["req", "-in", dir.file("req.csr"), "-noout", "-pubkey"])
        let liveKey = try await Tools.run("openssl", ["pkey", "-in", dir.file("ssl/server.key"), "-pubout"])
        #expect(requestKey.output == liveKey.output)
    }
}
