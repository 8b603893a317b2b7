import Foundation
import NIOConcurrencyHelpers
@testable import PorticoManager
import PorticoTestSupport
import Testing

/// The directory connection against a real OpenLDAP slapd: TLS only (LDAPS or StartTLS) and
/// verified, binds, the search account, the directory's password policy, and clear errors.
@Suite(.serialized) struct DirectoryTests {
    static func settings(_ slapd: Slapd, security: DirectorySettings.Security = .ldaps) -> DirectorySettings {
        var settings = DirectorySettings(url: security == .ldaps ? slapd.ldapsURL : slapd.ldapURL, baseDN: Slapd.baseDN)
        settings.security = security
        settings.trust = slapd.certificate
        settings.bindDN = Slapd.searchDN
        settings.bindPassword = Slapd.searchPassword
        settings.timeoutSeconds = 5
        return settings
    }

    @Test(.enabled(if: Slapd.usable || Slapd.required, "needs slapd and ldapmodify (apt-get install slapd ldap-utils)"))
    func usersSignInOverLDAPSAndStartTLSAndWrongPasswordsAreRefused() async throws {
        let dir = try TemporaryDirectory()
        let slapd = try await Slapd(in: dir)
        defer { slapd.stop() }
        for security in [DirectorySettings.Security.ldaps, .starttls] {
            let directory = DirectoryClient(Self.settings(slapd, security: security))
            let alice = try await directory.authenticate(user: "alice", password: "alice password 1")
            #expect(alice.dn == "uid=alice,ou=people,\(Slapd.baseDN)")
            #expect(alice.displayName == "Alice Example" && alice.groups == ["laptop-users", "portico-admins"])
            // The second sign-in takes the pooled connection, bound as alice, and binds it back.
            #expect(try await directory.authenticate(user: "bob", password: "bob password 22").groups == ["laptop-users"])
            #expect(try await directory.account(named: "carol")?.groups == [])
            #expect(try await directory.account(named: "mallory") == nil)
            // A paged search hands over a page at a time: four users in pages of two, then none.
            let pages = NIOLockedValueBox<[[String]]>([])
            try await directory.eachUserPage(pageSize: 2) { page in pages.withLockedValue { $0.append(page.map(\.name)) } }
            #expect(pages.withLockedValue { $0 }.map(\.count).prefix(2) == [2, 2])
            #expect(pages.withLockedValue { $0 }.flatMap { $0 }.sorted() == ["alice", "bob", "carol", "portico"])
            let wrong = await #expect(throws: DirectoryError.self) { try await directory.authenticate(user: "alice", password: "not it") }
            #expect(wrong?.kind == .invalidCredentials)
            let nobody = await #expect(throws: DirectoryError.self) { try await directory.authenticate(user: "mallory", password: "whatever 1") }
            #expect(nobody?.kind == .invalidCredentials && nobody?.description.contains("no directory account mallory") == true)
            // A filter in the name is a name, not a filter.
            let injected = await #expect(throws: DirectoryError.self) { try await directory.authenticate(user: "*)(uid=*", password: "alice password 1") }
            #expect(injected?.kind == .invalidCredentials)
            // An empty password is never a sign-in (LDAP would take it as an anonymous bind).
            #expect(await (try? directory.authenticate(user: "alice", password: "")) == nil)
        }
    }

    @Test(.enabled(if: Slapd.usable || Slapd.required, "needs slapd and ldapmodify (apt-get install slapd ldap-utils)"))
    func anUntrustedCertificateAnUnreachableServerAndBadSearchCredentialsAreSaidPlainly() async throws {
        let dir = try TemporaryDirectory()
        let slapd = try await Slapd(in: dir)
        defer { slapd.stop() }
        // Verified against another CA: refused, saying what to configure.
        var untrusted = Self.settings(slapd)
        let other = try TestPKI.make(in: dir, name: "other")
        untrusted.trust = other.certificatePath
        let tls = await #expect(throws: DirectoryError.self) { try await DirectoryClient(untrusted).authenticate(user: "alice", password: "alice password 1") }
        #expect(tls?.kind == .tls && tls?.description.contains("directory.trust") == true, "\(String(describing: tls))")
        // The same for StartTLS.
        var startTLS = Self.settings(slapd, security: .starttls)
        startTLS.trust = other.certificatePath
        let tls2 = await #expect(throws: DirectoryError.self) { try await DirectoryClient(startTLS).authenticate(user: "alice", password: "alice password 1") }
        #expect(tls2?.kind == .tls, "\(String(describing: tls2))")
        // Nothing listening.
        var down = Self.settings(slapd)
        down.url = "ldaps://127.0.0.1:\(LoopbackPort.free())"
        let unreachable = await #expect(throws: DirectoryError.self) { try await DirectoryClient(down).authenticate(user: "alice", password: "alice password 1") }
        #expect(unreachable?.kind == .unreachable, "\(String(describing: unreachable))")
        // The search account's password is wrong: said as such, before any user is looked up.
        var badSearch = Self.settings(slapd)
        badSearch.bindPassword = "not the search password"
        let search = await #expect(throws: DirectoryError.self) { try await DirectoryClient(badSearch).authenticate(user: "alice", password: "alice password 1") }
        #expect(search?.kind == .invalidCredentials && search?.description.contains(Slapd.searchDN) == true, "\(String(describing: search))")
    }

    @Test(.enabled(if: Slapd.usable || Slapd.required, "needs slapd and ldapmodify (apt-get install slapd ldap-utils)"))
    func aPasswordChangeIsRefusedInTheDirectorysWordsOrMade() async throws {
        let dir = try TemporaryDirectory()
        let slapd = try await Slapd(in: dir)
        defer { slapd.stop() }
        let directory = DirectoryClient(Self.settings(slapd, security: .starttls))
        let refused = await #expect(throws: DirectoryError.self) { try await directory.changePassword(user: "bob", old: "bob password 22", new: "short") }
        #expect(refused?.kind == .refused && refused?.description.contains("quality") == true, "\(String(describing: refused))")
        try await directory.changePassword(user: "bob", old: "bob password 22", new: "a much longer one")
        _ = try await directory.authenticate(user: "bob", password: "a much longer one")
        #expect(await (try? directory.authenticate(user: "bob", password: "bob password 22")) == nil)
    }
}
