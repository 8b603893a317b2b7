import Foundation
import PorticoGateway
import PorticoManager
import PorticoServer
import PorticoTestSupport
import Testing

/// The config file as operators write it: the gateway's keys and the manager's, read in one
/// pass by ``ManagerConfiguration``, every problem with its file, line and column.
@Suite struct ConfigurationTests {
    let loader = ManagerConfigurationLoader()

    private func problems(_ yaml: String, file: String = "/etc/portico/portico.yaml") -> [ConfigurationDiagnostic] {
        do {
            _ = try loader.load(yaml: yaml, file: file)
            return []
        } catch {
            return error.diagnostics
        }
    }

    @Test func embeddedDefaultsGiveEveryRoleItsPort() throws {
        let config = try loader.load(yaml: "", file: "/srv/conf/portico.yaml")
        #expect(config.gateway.enabledListeners.map(\.name) == ManagerConfiguration.roles.map(\.name))
        #expect(config.gateway.listeners[.client]?.port == 8441)
        #expect(config.gateway.listeners[.clientPlain]?.port == 8014)
        #expect(config.gateway.listeners[.clientPlain]?.tls == false)
        #expect(config.gateway.listeners[.replication]?.clientAuth == .require)
        #expect(config.gateway.listeners[.webservices]?.port == 8446)
        #expect(config.gateway.identity.certificate == "/srv/conf/ssl/server.crt")
    }

    @Test func relativePathsResolveAgainstTheConfigFolder() throws {
        let config = try loader.load(yaml: """
            data_dir: ../data
            identity:
              certificate: ssl/a.crt
              private_key: /abs/a.key
            listeners:
              replication:
                trust: ./peers/
            """, file: "/srv/portico/conf/portico.yaml")
        #expect(config.dataDirectory == "/srv/portico/data")
        #expect(config.gateway.identity.certificate == "/srv/portico/conf/ssl/a.crt")
        #expect(config.gateway.identity.privateKey == "/abs/a.key")
        #expect(config.gateway.listeners[.replication]?.trust == "/srv/portico/conf/peers")
    }

    @Test func valuesAreParsedWithUnits() throws {
        let config = try loader.load(yaml: """
            listeners:
              client:
                limits:
                  max_body_bytes: 2MiB
                  max_header_bytes: 8KiB
                  header_timeout: 500ms
                  idle_timeout: 2m
                trusted_proxies: [10.0.0.0/8, "::1"]
            shutdown:
              grace_period: 1h
            """, file: "/c/p.yaml")
        let limits = try #require(config.gateway.listeners[.client]?.limits)
        #expect(limits.maxBodyBytes == 2 << 20)
        #expect(limits.maxHeaderBytes == 8192)
        #expect(limits.headerTimeout == .milliseconds(500))
        #expect(limits.idleTimeout == .minutes(2))
        #expect(config.gateway.shutdownGracePeriod == .hours(1))
        #expect(config.gateway.listeners[.client]?.trustedProxies.map(\.description) == ["10.0.0.0/8", "0:0:0:0:0:0:0:1/128"])
    }

    @Test func agentSettingsAreReadAndChecked() throws {
        let config = try loader.load(yaml: "agents: {session_lifetime: 30m, checkin_interval: 90s}", file: "/c/p.yaml")
        #expect(config.agents.sessionLifetime == .minutes(30))
        #expect(config.agents.checkInInterval == .seconds(90))
        #expect(config.agents.clockSkew == .minutes(5))
        let found = problems("agents:\n  session_lifetime: 10ms\n  checkin_intervall: 5m\n")
        #expect(found.map { $0.location?.line } == [3, 2])
        #expect(found.contains { $0.message.contains("did you mean 'checkin_interval'") })
        #expect(found.contains { $0.message.contains("agents.session_lifetime must be at least 1s") })
    }

    @Test func notificationSettingsAreReadAndChecked() throws {
        let dir = try TemporaryDirectory()
        let password = try dir.write("smtp.pass", "s3cret\n")
        chmod(password, 0o600)
        let config = try loader.load(yaml: """
            notifications:
              check_interval: 10s
              smtp: {host: mail.example.test, security: tls, username: portico, password_file: smtp.pass, from: portico@example.test}
            """, file: dir.file("portico.yaml"))
        let smtp = try #require(config.notifications.smtp)
        #expect(config.notifications.checkInterval == .seconds(10))
        #expect(smtp.port == 465 && smtp.security == .tls && smtp.password == "s3cret" && smtp.from == "portico@example.test")
        // A password file others may read, a wrong security and a missing sender: each at its line.
        chmod(password, 0o644)
        let found = problems("""
            notifications:
              attempts: 0
              smtp:
                host: mail.example.test
                security: plain
                password_file: smtp.pass
                username: portico
            """, file: dir.file("portico.yaml"))
        #expect(found.contains { $0.location?.line == 2 && $0.message.contains("notifications.attempts must be between 1 and 50") }, "\(found)")
        #expect(found.contains { $0.location?.line == 4 && $0.message.contains("needs from") }, "\(found)")
        let unreadable = problems("notifications:\n  smtp: {host: h, from: a@b.c, security: plain, password_file: smtp.pass}\n", file: dir.file("portico.yaml"))
        #expect(unreadable.contains { $0.location?.line == 2 && $0.message.contains("security must be starttls, tls or none") }, "\(unreadable)")
        #expect(unreadable.contains { $0.message.contains("may be read by others") }, "\(unreadable)")
    }

    @Test func directorySettingsRequireTLSUnlessTheConfigSaysOtherwise() throws {
        let dir = try TemporaryDirectory()
        let password = try dir.write("bind.pass", "search secret\n")
        chmod(password, 0o600)
        let ca = try dir.write("ca.pem", "-----BEGIN CERTIFICATE-----\n")
        _ = ca
        let config = try loader.load(yaml: """
            directory:
              url: ldap://ldap.example.test:389
              security: starttls
              trust: ca.pem
              bind_dn: uid=portico,ou=people,dc=example,dc=test
              bind_password_file: bind.pass
              base_dn: dc=example,dc=test
            """, file: dir.file("portico.yaml"))
        let directory = try #require(config.directory)
        #expect(directory.security == .starttls && directory.bindPassword == "search secret" && directory.trust == dir.file("ca.pem"))
        #expect(try loader.load(yaml: "directory: {url: ldaps://l.example.test, base_dn: dc=x}", file: dir.file("portico.yaml")).directory?.security == .ldaps)
        let found = problems("""
            directory:
              url: ldaps://l.example.test
              security: none
              base_dn: dc=x
            """, file: dir.file("portico.yaml"))
        #expect(found.count == 1 && found[0].location?.line == 3 && found[0].message.contains("needs an ldap:// url"), "\(found)")
        #expect(problems("directory: {url: http://x, base_dn: dc=x}", file: dir.file("portico.yaml")).first?.message.contains("must start with ldaps:// or ldap://") == true)
        #expect(problems("directory: {url: ldaps://x}", file: dir.file("portico.yaml")).first?.message.contains("needs base_dn") == true)
    }

    /// The example of docs/operations.md's "Directory" section is a config the manager takes.
    @Test func theDirectoryExampleOfTheOperationsGuideLoads() throws {
        let guide = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/operations.md")
        let text = try String(contentsOf: guide, encoding: .utf8)
        let section = try #require(text.range(of: "## Directory\n").map { text[$0.upperBound...] })
        let start = try #require(section.range(of: "```yaml\n"))
        let end = try #require(section[start.upperBound...].range(of: "```"))
        let yaml = String(section[start.upperBound..<end.lowerBound])
        let dir = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: dir.file("ssl"), withIntermediateDirectories: true)
        chmod(try dir.write("ssl/directory.pass", "search secret\n"), 0o600)
        _ = try dir.write("ssl/directory-ca.pem", "-----BEGIN CERTIFICATE-----\n")
        let config = try loader.load(yaml: yaml, file: dir.file("portico.yaml"))
        let directory = try #require(config.directory)
        #expect(directory.operatorRoles == [.init(group: "portico-admins", role: .admin), .init(group: "helpdesk", role: .operator), .init(group: "security-audit", role: .auditor)])
        #expect(directory.accountFilter == "(!(pwdAccountLockedTime=*))" && directory.syncIntervalSeconds == 3600 && directory.userAttribute == "uid")
        #expect(config.endpointUsers.offlineSeconds == 7 * 86_400 && config.endpointUsers.deviceLockAfterFailures == 20 && config.endpointUsers.lockoutMilliseconds == 900_000)
        // Active Directory's names unless the file gives others; and what is wrong, said where.
        let ad = try loader.load(yaml: "directory: {url: ldaps://dc.example.test, base_dn: dc=x, active_directory: true, user_attribute: userPrincipalName}",
                                 file: dir.file("portico.yaml")).directory
        #expect(ad?.userAttribute == "userPrincipalName" && ad?.accountFilter.contains("userAccountControl") == true && ad?.groupFilter == "(&(objectClass=group)(member={dn}))")
        let wrong = problems("""
            directory:
              url: ldaps://l.example.test
              base_dn: dc=x
              operator_roles: {portico-admins: root}
              user_filter: objectClass=person
            endpoint_users: {offline_sign_in: 400d, lock_after_failures: 0}
            """, file: dir.file("portico.yaml"))
        #expect(wrong.compactMap(\.location?.line).sorted() == [4, 5, 6, 6], "\(wrong)")
        #expect(wrong.contains { $0.location?.line == 4 && $0.message == "directory.operator_roles.portico-admins must be admin, operator or auditor" })
    }

    @Test func aMetricsTokenFileMustBePrivateAndLongEnough() throws {
        let dir = try TemporaryDirectory()
        let short = try dir.write("short.token", "abc\n")
        chmod(short, 0o600)
        let open = try dir.write("open.token", String(repeating: "x", count: 32))
        chmod(open, 0o644)
        let found = problems("metrics:\n  bearer_token_file: short.token\n", file: dir.file("portico.yaml"))
        #expect(found.count == 1 && found[0].location?.line == 2 && found[0].message.contains("at least 16 characters"), "\(found)")
        #expect(problems("metrics: {bearer_token_file: open.token}", file: dir.file("portico.yaml")).first?.message.contains("may be read by others") == true)
        let good = try dir.write("good.token", String(repeating: "y", count: 32))
        chmod(good, 0o600)
        #expect(try loader.load(yaml: "metrics: {bearer_token_file: good.token}", file: dir.file("portico.yaml")).gateway.metricsTokenHash?.count == 32)
    }

    @Test func unknownKeyIsReportedAtItsLineWithASuggestion() {
        let found = problems("""
            site:
              name: a
            listeners:
              client:
                prot: 9000
            """)
        #expect(found.count == 1)
        #expect(found.first?.location?.line == 5)
        #expect(found.first?.location?.column == 5)
        #expect(found.first?.message.contains("unknown key 'prot'") == true)
        #expect(found.first?.message.contains("did you mean 'port'") == true)
        #expect(found.first?.description.hasPrefix("/etc/portico/portico.yaml:5:5: ") == true)
    }

    /// Found by fuzzing the loader: a port taken from a listener the file leaves out (so
    /// on its default port) was reported with no place in the file.
    @Test func aPortClashWithADefaultPortIsReportedWhereTheFileSetsThePort() {
        let found = problems("""
            site:
              name: a
            listeners:
              client:
                port: 8445
            """)
        #expect(found.count == 1)
        #expect(found.first?.description.hasPrefix("/etc/portico/portico.yaml:5:") == true, "\(found)")
        #expect(found.first?.message.contains("uses port 8445 (its default), which listener client already uses") == true, "\(found)")
    }

    /// Found by fuzzing the loader: a duration or size too large to count overflowed and
    /// stopped `portico config check` instead of being reported.
    @Test func aDurationOrSizeTooLargeToCountIsAnErrorNotACrash() {
        let found = problems("""
            listeners:
              console:
                limits: {body_timeout: 300000000000000s, idle_timeout: 99999999999999999, header_timeout: 9999999999999h, max_body_bytes: 999999999999999999g}
            """)
        #expect(found.count == 4, "\(found)")
        #expect(found.allSatisfy { $0.location?.line == 3 }, "\(found)")
        #expect(found.filter { $0.message.contains("must be a duration") }.count == 3, "\(found)")
    }

    @Test func wrongTypeIsReportedAtTheValue() {
        let found = problems("""
            listeners:
              console:
                port: eighty
                tls: maybe
            """)
        #expect(found.map { $0.location?.line } == [3, 4])
        #expect(found[0].message.contains("must be a whole number"))
        #expect(found[1].message.contains("must be true or false"))
    }

    @Test func duplicatePortsAreReportedOnTheSecondListener() {
        let found = problems("""
            listeners:
              console:
                port: 9000
              reporting:
                port: 9000
            """)
        #expect(found.count == 1)
        #expect(found.first?.location?.line == 5)
        #expect(found.first?.message.contains("port 9000") == true)
        #expect(found.first?.message.contains("console") == true)
    }

    @Test func routesNamingUnknownListenersUpstreamsOrServicesAreReported() {
        let found = problems("""
            upstreams:
              api:
                targets: [http://127.0.0.1:9000]
            routes:
              - listener: consle
                path: /a
                service: health
              - listener: console
                path: /b
                upstream: nowhere
              - listener: console
                path: /c
                service: teleport
            """)
        #expect(found.count == 3)
        let byLine = Dictionary(uniqueKeysWithValues: found.compactMap { d in d.location.map { ($0.line, d.message) } })
        #expect(byLine[5]?.contains("listener 'consle'") == true)
        #expect(byLine[8]?.contains("upstream 'nowhere'") == true)
        #expect(byLine[13]?.contains("service 'teleport'") == true)
    }

    @Test func upstreamKeepaliveSettingsAreReadAndChecked() throws {
        let config = try loader.load(yaml: """
            upstreams:
              api:
                targets: [http://127.0.0.1:9000]
                keepalive: {idle_connections: 8, idle_timeout: 30s}
            """, file: "/etc/portico/portico.yaml")
        let upstream = try #require(config.gateway.upstreams["api"])
        #expect(upstream.keepaliveConnections == 8)
        #expect(upstream.keepaliveTimeout == .seconds(30))

        let found = problems("""
            upstreams:
              api:
                targets: [http://127.0.0.1:9000]
                keepalive:
                  idle_connections: -1
                  idle_timeout: 0s
                  linger: 1s
            """)
        let byLine = Dictionary(uniqueKeysWithValues: found.compactMap { d in d.location.map { ($0.line, d.message) } })
        #expect(found.count == 3, "\(found)")
        #expect(byLine[5]?.contains("idle_connections must not be negative") == true)
        #expect(byLine[6]?.contains("idle_timeout must be longer than 0s") == true)
        #expect(byLine[7]?.contains("linger") == true)
    }

    @Test func everyProblemIsReportedNotJustTheFirst() {
        let found = problems("""
            colour: blue
            listeners:
              client:
                port: 70000
              webservices:
                client_auth: sometimes
            upstreams:
              api:
                targets: [ftp://x]
            routes:
              - listener: client
                path: no-slash
                service: health
            """)
        #expect(found.count == 5)
        #expect(found.compactMap { $0.location?.line }.sorted() == [1, 4, 6, 9, 12])
    }

    @Test func invalidYAMLSyntaxNamesTheLine() {
        let found = problems("listeners:\n  client:\n    port: [8441\n")
        #expect(found.count == 1)
        #expect(found.first?.location != nil)
        #expect(found.first?.message.contains("not valid YAML") == true)
    }

    @Test func duplicateKeysAreReported() {
        let found = problems("listeners:\n  client:\n    port: 1\n    port: 2\n")
        #expect(found.count == 1)
        #expect(found.first?.message.contains("'port' appears twice") == true)
    }

    @Test func duplicateRoutesAreReportedByTheCheck() throws {
        let config = try loader.load(yaml: """
            listeners:
              client_plain: {port: 0}
              client: {enabled: false}
              replication: {enabled: false}
              console: {enabled: false}
              reporting: {enabled: false}
              webservices: {enabled: false}
            routes:
              - {listener: client_plain, path: /x, service: health}
              - {listener: client_plain, path: /x, service: ready}
            """, file: "/tmp/p.yaml")
        #expect(throws: ConfigurationError.self) { try ConfigurationCheck.prepare(config.gateway, generateMissing: false) }
        do {
            _ = try ConfigurationCheck.prepare(config.gateway, generateMissing: false)
        } catch {
            #expect(error.diagnostics.first?.location?.line == 10)
            #expect(error.diagnostics.first?.message.contains("repeats /x") == true)
        }
    }

    /// `engine` (a choice of server core in earlier releases) is refused at its key with
    /// what to do about it.
    @Test func aListenersEngineIsRefusedWithWhy() throws {
        let found = problems("""
            listeners:
              client: {http2: true}
              client_plain: {proxy_protocol: true, trusted_proxies: [10.0.0.0/8]}
              console: {engine: nio}
            """)
        #expect(found.map { $0.location?.line } == [4])
        #expect(found.first?.message == "listeners.console.engine is no longer a setting: every listener is served by the one server engine; remove the line")
    }

    @Test func unreadableAndMismatchedCertificateFilesAreReportedAtTheirKeys() throws {
        let dir = try TemporaryDirectory()
        let a = try TestPKI.make(in: dir, name: "a")
        let b = try TestPKI.make(in: dir, name: "b")
        try dir.write("garbage.pem", "not a certificate\n")
        let yaml = """
            identity:
              certificate: a.crt
              private_key: b.key
            listeners:
              console:
                certificate: missing.crt
                private_key: a.key
              replication:
                trust: garbage.pem
            """
        _ = (a, b)
        let config = try loader.load(yaml: yaml, file: dir.file("portico.yaml"))
        do {
            _ = try ConfigurationCheck.prepare(config.gateway, generateMissing: false)
            Issue.record("a mismatched key and unreadable files were accepted")
        } catch {
            let byLine = Dictionary(error.diagnostics.compactMap { d in d.location.map { ($0.line, d.message) } }, uniquingKeysWith: { $0 + "; " + $1 })
            #expect(byLine[3]?.contains("does not belong to the certificate") == true)
            #expect(byLine[6]?.contains("No such file") == true)
            #expect(byLine[9]?.contains("does not hold PEM certificates") == true)
        }
    }

    @Test func anUpstreamsTrustFileIsCheckedAtItsKey() throws {
        let dir = try TemporaryDirectory()
        _ = try TestPKI.make(in: dir, name: "server")
        try dir.write("garbage.pem", "not a certificate\n")
        let yaml = """
            identity: {certificate: server.crt, private_key: server.key}
            upstreams:
              good: {targets: ["https://127.0.0.1:9443"], trust: server.crt}
              bad:
                targets: ["https://127.0.0.1:9444"]
                trust: garbage.pem
              gone: {targets: ["https://127.0.0.1:9445"], trust: missing.pem}
            """
        let config = try loader.load(yaml: yaml, file: dir.file("portico.yaml"))
        #expect(config.gateway.upstreams["good"]?.trust == dir.file("server.crt"))
        do {
            _ = try ConfigurationCheck.prepare(config.gateway, generateMissing: false)
            Issue.record("unreadable upstream trust files were accepted")
        } catch {
            let byLine = Dictionary(error.diagnostics.compactMap { d in d.location.map { ($0.line, d.message) } }, uniquingKeysWith: { $0 + "; " + $1 })
            #expect(byLine.count == 2)
            #expect(byLine[6]?.contains("upstreams.bad.trust") == true && byLine[6]?.contains("does not hold PEM certificates") == true)
            #expect(byLine[7]?.contains("upstreams.gone.trust") == true && byLine[7]?.contains("No such file") == true)
        }
    }

    @Test func checkNotesAMissingIdentityWithoutWritingIt() throws {
        let dir = try TemporaryDirectory()
        let config = try loader.load(yaml: "", file: dir.file("portico.yaml"))
        let prepared = try ConfigurationCheck.prepare(config.gateway, generateMissing: false)
        #expect(prepared.notes.contains { $0.contains("serve will generate") })
        #expect(!FileManager.default.fileExists(atPath: dir.file("ssl/server.crt")))
    }

    @Test func serveGeneratesTheIdentityWithAPrivateKeyFile() throws {
        let dir = try TemporaryDirectory()
        let config = try loader.load(yaml: "identity: {generate: ecdsa-p256, names: [portico.example.com]}", file: dir.file("portico.yaml"))
        let prepared = try ConfigurationCheck.prepare(config.gateway, generateMissing: true)
        let attributes = try FileManager.default.attributesOfItem(atPath: dir.file("ssl/server.key"))
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let identity = try #require(prepared.identity(of: .client)).current
        let sans = try #require(try identity.leaf.extensions.subjectAlternativeNames)
        let text = sans.map { "\($0)" }.joined(separator: " ")
        #expect(text.contains("localhost"))
        #expect(text.contains("portico.example.com"))
        #expect(identity.leaf.signatureAlgorithm == .ecdsaWithSHA256)
    }

    @Test func generationNeverMakesMissingFilesAnError() throws {
        let dir = try TemporaryDirectory()
        let config = try loader.load(yaml: "identity: {generate: never}", file: dir.file("portico.yaml"))
        #expect(throws: ConfigurationError.self) { try ConfigurationCheck.prepare(config.gateway, generateMissing: true) }
    }
}

@Suite struct CIDRTests {
    @Test func matchesAddressesInsideTheNetwork() throws {
        let net = try #require(CIDR("10.1.0.0/16"))
        #expect(net.contains(try .init(ipAddress: "10.1.200.3", port: 0)))
        #expect(!net.contains(try .init(ipAddress: "10.2.0.1", port: 0)))
        #expect(net.contains(try .init(ipAddress: "::ffff:10.1.0.9", port: 0)))
        let v6 = try #require(CIDR("fd00::/8"))
        #expect(v6.contains(try .init(ipAddress: "fd12::1", port: 0)))
        #expect(!v6.contains(try .init(ipAddress: "10.1.0.1", port: 0)))
        #expect(CIDR("10.0.0.0/33") == nil)
        #expect(CIDR("example.com") == nil)
    }

    @Test func peersNeedANameAnHTTPSURLAndACertificateEachProblemOnItsLine() throws {
        let loader = ManagerConfigurationLoader()
        var found: [ConfigurationDiagnostic] = []
        do { _ = try loader.load(yaml: """
            peers:
              - {name: site-b, url: "https://b.example:8444", certificate: b.crt}
              - {name: site-b, url: "https://c.example:8444", certificate: c.crt}
              - {name: site-d, url: "http://d.example:8444", certificate: d.crt}
              - {name: site-e, url: "https://e.example:8444"}
              - {name: site-f, url: "https://f.example:8444", certificate: f.crt, history: sometimes}
            """, file: "/etc/portico/portico.yaml") } catch { found = error.diagnostics }
        #expect(found.map { $0.location?.line } == [3, 4, 5, 6], "\(found)")
        #expect(found[0].message.contains("'site-b' is used by another peer"))
        #expect(found[1].message.contains("must be an https:// URL"))
        #expect(found[2].message.contains("needs the peer's certificate"))
        #expect(found[3].message.contains("history 'sometimes' must be one of both, send, receive, none"), "\(found[3].message)")
        let config = try loader.load(yaml: """
            peers:
              - {name: site-b, url: "https://b.example:8444/", certificate: peers/b.crt}
              - {name: site-c, url: "https://c.example:8444", certificate: peers/c.crt, history: send}
            """, file: "/srv/conf/portico.yaml")
        #expect(config.peers == [PeerConfiguration(name: "site-b", url: "https://b.example:8444", certificate: "/srv/conf/peers/b.crt"),
                                 PeerConfiguration(name: "site-c", url: "https://c.example:8444", certificate: "/srv/conf/peers/c.crt", history: "send")])
        // The replication listener trusts them, each named by its key for messages, and the
        // manager's copy of the peers' certificates the database holds, once there is one.
        #expect(config.gateway.listeners[.replication]?.extraTrust == [TrustedFile(file: "/srv/conf/peers/b.crt", key: "peers[0].certificate"),
                                                                       TrustedFile(file: "/srv/conf/peers/c.crt", key: "peers[1].certificate"),
                                                                       TrustedFile(file: "/srv/conf/data/peers", key: "data_dir", optional: true)])
    }

    /// A peer's certificate that cannot be read is reported where the file names it, by the
    /// check that builds the replication listener's trust.
    @Test func anUnreadablePeerCertificateIsReportedAtItsKey() throws {
        let dir = try TemporaryDirectory()
        _ = try TestPKI.make(in: dir, name: "server")
        try dir.write("peers/b.crt", "not a certificate")
        let config = try ManagerConfigurationLoader().load(yaml: """
            site: {name: north}
            identity: {certificate: server.crt, private_key: server.key}
            peers:
              - {name: site-b, url: "https://b.example:8444", certificate: peers/b.crt}
            """, file: dir.file("portico.yaml"))
        #expect(config.gateway.identity.commonName == "north")
        do {
            _ = try ConfigurationCheck.prepare(config.gateway, generateMissing: false)
            Issue.record("an unreadable peer certificate was accepted")
        } catch {
            #expect(error.diagnostics.map { $0.location?.line } == [4], "\(error.diagnostics)")
            #expect(error.diagnostics.first?.message.hasPrefix("peers[0].certificate: ") == true, "\(error.diagnostics)")
        }
    }
}

/// Loads a whole config file as `portico` does.
struct ManagerConfigurationLoader {
    func load(yaml: String, file: String) throws(ConfigurationError) -> ManagerConfiguration {
        try ManagerConfiguration.load(yaml: yaml, file: file)
    }
}
