import Foundation
import PorticoAgent
@testable import PorticoManager
import PorticoProtocol
import PorticoStore
import PorticoTestSupport
import Testing

/// Endpoint users signing in on devices inside the device's session: local users and the
/// directory's, grants by group, lockouts, password changes, offline verifiers and remote
/// help's unlock of one user.
@Suite(.timeLimit(.minutes(3))) struct UserSignInTests {
    static let admin = ManagerOperations.Actor(name: "operator:admin", source: "test")

    @Test func aLocalUserSignsInOnlyWhereAGrantLetsItAndIsLockedAfterWrongPasswords() async throws {
        var users = UserSignIns.Configuration.forTests
        users.lockAfterFailures = 3
        try await TestManager.with(users: users) { manager in
            let operations = ManagerOperations(store: manager.store, agent: manager.agent)
            let laptops = try await manager.store.createGroup(name: "Laptops")
            let laptop = try await manager.enrolledAgent(group: laptops.id, hostname: "laptop-1")
            let kiosk = try await manager.enrolledAgent(hostname: "kiosk")
            _ = try await operations.createLocalUser(name: "dave", displayName: "Dave Local", password: "dave password 1", minimumLength: 10, by: Self.admin)
            let tooShort = await #expect(throws: StoreError.self) {
                _ = try await operations.createLocalUser(name: "erin", displayName: "", password: "short", minimumLength: 10, by: Self.admin)
            }
            #expect(tooShort?.message == "user.password must be at least 10 characters long")

            try await withAgent(laptop) { laptop in
                // The password is right, but no grant names dave yet.
                var result = try await laptop.signInUser("dave", password: "dave password 1")
                #expect(result.outcome == .notPermitted && result.offlineVerifier == nil)
                try await operations.grantSignIn(groupID: laptops.id, principal: "user:dave", by: Self.admin)
                result = try await laptop.signInUser("dave", password: "dave password 1")
                #expect(result.outcome == .allowed && result.displayName == "Dave Local")
                let verifier = try #require(result.offlineVerifier)
                #expect(!verifier.contains("dave password 1") && PasswordVerifier.matches("dave password 1", verifier))
                #expect(try #require(result.offlineUntilMilliseconds) > result.issuedMilliseconds + 6 * 86_400_000)
                let state = await laptop.state
                var cache = UserSignInCache()
                cache.record(result)
                #expect(cache.signInOffline(user: "dave", password: "dave password 1", state: state, now: result.issuedMilliseconds + 1000) == .allowed(until: result.offlineUntilMilliseconds!))
                #expect(cache.signInOffline(user: "dave", password: "dave password 1", state: state, now: result.offlineUntilMilliseconds!) == .expired)
                // A result whose verifier was changed on the device no longer checks out.
                var tampered = cache
                tampered.users["dave"]?.result?.offlineVerifier = try PasswordVerifier.make("chosen by a thief", logRounds: 10)
                #expect(tampered.signInOffline(user: "dave", password: "chosen by a thief", state: state, now: result.issuedMilliseconds) == .noVerifier)

                // Wrong passwords: the third locks dave, and then the right one is refused too.
                #expect(try await laptop.signInUser("dave", password: "wrong 1").outcome == .badCredentials)
                #expect(try await laptop.signInUser("dave", password: "wrong 2").outcome == .badCredentials)
                let locking = try await laptop.signInUser("dave", password: "wrong 3")
                #expect(locking.outcome == .locked && locking.lockedUntilMilliseconds != nil)
                #expect(try await laptop.signInUser("dave", password: "dave password 1").outcome == .locked)
                try await operations.unlockUser(name: "dave", by: Self.admin)
                #expect(try await laptop.signInUser("dave", password: "dave password 1").outcome == .allowed)
                // Unknown names read like wrong passwords.
                let nobody = try await laptop.signInUser("mallory", password: "whatever it is")
                #expect(nobody.outcome == .badCredentials && nobody.message == "the name or the password is wrong")
            }
            try await withAgent(kiosk) { kiosk in
                // The kiosk is in no group that lets dave in.
                #expect(try await kiosk.signInUser("dave", password: "dave password 1").outcome == .notPermitted)
                try await operations.grantSignIn(groupID: SignInGrant.everyDevice, principal: "user:dave", by: Self.admin)
                #expect(try await kiosk.signInUser("dave", password: "dave password 1").outcome == .allowed)
            }
            // Every attempt is audited with the user and the device.
            let entries = try await manager.store.auditEntries(actor: "user:dave", action: "user.sign_in", limit: 50)
            #expect(entries.count == 9)
            #expect(entries.filter { $0.result == "ok" }.count == 3)
            #expect(Set(entries.map(\.target)) == [await laptop.state.deviceID, await kiosk.state.deviceID])
            #expect(entries.contains { $0.detail == "not permitted on this device" } && entries.contains { $0.detail.hasPrefix("bad credentials; the user is locked") })
            #expect(try await manager.store.endpointUser(named: "dave")?.lastDevice == (await kiosk.state.deviceID))
        }
    }

    @Test func aLocalUserChangesItsPasswordAndADisabledOneIsRefused() async throws {
        try await TestManager.with { manager in
            let operations = ManagerOperations(store: manager.store, agent: manager.agent)
            _ = try await operations.createLocalUser(name: "dave", displayName: "", password: "dave password 1", minimumLength: 10, by: Self.admin)
            try await operations.grantSignIn(groupID: SignInGrant.everyDevice, principal: "user:dave", by: Self.admin)
            try await withAgent(try await manager.enrolledAgent()) { laptop in
                let short = try await laptop.changeUserPassword("dave", old: "dave password 1", new: "short")
                #expect(short.outcome == .refused && short.message == "the new password must be at least 10 characters long")
                let wrongOld = try await laptop.changeUserPassword("dave", old: "not the password", new: "a new password 2")
                #expect(wrongOld.outcome == .badCredentials)
                let changed = try await laptop.changeUserPassword("dave", old: "dave password 1", new: "a new password 2")
                let newVerifier = try #require(changed.offlineVerifier)
                #expect(changed.outcome == .allowed && PasswordVerifier.matches("a new password 2", newVerifier))
                #expect(try await laptop.signInUser("dave", password: "dave password 1").outcome == .badCredentials)
                #expect(try await laptop.signInUser("dave", password: "a new password 2").outcome == .allowed)
                _ = try await operations.updateUser(name: "dave", displayName: nil, password: nil, disabled: true, minimumLength: 10, by: Self.admin)
                #expect(try await laptop.signInUser("dave", password: "a new password 2").outcome == .disabled)
            }
        }
    }

    @Test func aOneTimeCodeSignsAUserInOnceWithoutAVerifier() async throws {
        try await TestManager.with { manager in
            let operations = ManagerOperations(store: manager.store, agent: manager.agent)
            let users = try #require(manager.api.users)
            _ = try await operations.createLocalUser(name: "dave", displayName: "", password: "dave password 1", minimumLength: 10, by: Self.admin)
            try await operations.grantSignIn(groupID: SignInGrant.everyDevice, principal: "user:dave", by: Self.admin)
            try await withAgent(try await manager.enrolledAgent()) { laptop in
                let issued = try await users.issueCode(user: "dave", lifetime: 60_000, by: Self.admin)
                #expect(issued.code.count == 14 && issued.code.split(separator: "-").count == 3)
                // Typed without dashes, in lower case: the same code.
                let typed = issued.code.replacingOccurrences(of: "-", with: "").lowercased()
                let first = try await laptop.signInUser("dave", code: typed)
                #expect(first.outcome == .allowed && first.offlineVerifier == nil)
                #expect(try await laptop.signInUser("dave", code: issued.code).outcome == .badCredentials)
                // An expired code, and a code for another user, are no good either.
                let old = try await users.issueCode(user: "dave", lifetime: 60_000, by: Self.admin, now: Int64(Date().timeIntervalSince1970 * 1000) - 120_000)
                #expect(try await laptop.signInUser("dave", code: old.code).outcome == .badCredentials)
                _ = try await operations.createLocalUser(name: "erin", displayName: "", password: "erin password 1", minimumLength: 10, by: Self.admin)
                let erins = try await users.issueCode(user: "erin", lifetime: 60_000, by: Self.admin)
                #expect(try await laptop.signInUser("dave", code: erins.code).outcome == .badCredentials)
                // Neither a password nor a code: refused as malformed.
                await #expect(throws: ProtocolError.self) { _ = try await laptop.send(.userSignIn(UserSignInRequest(user: "dave", code: "x", nonce: "n").withoutCode)) }
            }
            let entries = try await manager.store.auditEntries(actor: "user:dave", action: "user.sign_in")
            #expect(entries.filter { $0.result == "ok" }.map(\.detail) == ["signed in with a one-time code from operator:admin"])
            #expect(entries.filter { $0.result == "refused" }.count == 3)
            #expect(try await manager.store.auditEntries(action: "user.sign_in_code").count == 3)
        }
    }

    @Test func remoteHelpUnlocksOneUserLockedOnADeviceOffline() async throws {
        try await TestManager.with { manager in
            let operations = ManagerOperations(store: manager.store, agent: manager.agent)
            _ = try await operations.createLocalUser(name: "dave", displayName: "", password: "dave password 1", minimumLength: 10, by: Self.admin)
            try await operations.grantSignIn(groupID: SignInGrant.everyDevice, principal: "user:dave", by: Self.admin)
            try await withAgent(try await manager.enrolledAgent()) { laptop in
                var cache = UserSignInCache()
                cache.record(try await laptop.signInUser("dave", password: "dave password 1"))
                let state = await laptop.state
                let now = Int64(Date().timeIntervalSince1970 * 1000)
                for attempt in 1...UserSignInCache.lockAfterFailures {
                    let outcome = cache.signInOffline(user: "dave", password: "guess \(attempt)", state: state, now: now)
                    #expect(outcome == (attempt < UserSignInCache.lockAfterFailures ? .wrongPassword(failuresLeft: UserSignInCache.lockAfterFailures - attempt) : .locked))
                }
                #expect(cache.signInOffline(user: "dave", password: "dave password 1", state: state, now: now) == .locked)
                let challenge = cache.unlockChallenge(user: "dave", now: now)
                // The device's own remote-help code, or one for another user, does not unlock dave.
                let deviceCode = try await operations.remoteHelpResponse(deviceID: state.deviceID, challenge: challenge, by: Self.admin)
                let erinCode = try await operations.remoteHelpResponse(deviceID: state.deviceID, challenge: challenge, unlockingUser: "erin", by: Self.admin)
                #expect(try cache.unlock(user: "dave", response: deviceCode, state: state) == false)
                #expect(try cache.unlock(user: "dave", response: erinCode, state: state) == false)
                let code = try await operations.remoteHelpResponse(deviceID: state.deviceID, challenge: challenge, unlockingUser: "dave", by: Self.admin)
                #expect(try cache.unlock(user: "dave", response: code, state: state))
                #expect(cache.signInOffline(user: "dave", password: "dave password 1", state: state, now: now) != .locked)
                // A code is good for its challenge once.
                #expect(try cache.unlock(user: "dave", response: code, state: state) == false)
                let audited = try await manager.store.auditEntries(actor: "operator:admin", action: "user.unlock_offline")
                #expect(audited.count == 2 && audited.allSatisfy { $0.target == state.deviceID } && audited.contains { $0.detail == "user dave" })
            }
        }
    }

    @Test func aReplayedSignInIsRefused() async throws {
        try await TestManager.with { manager in
            let operations = ManagerOperations(store: manager.store, agent: manager.agent)
            _ = try await operations.createLocalUser(name: "dave", displayName: "", password: "dave password 1", minimumLength: 10, by: Self.admin)
            try await withAgent(try await manager.enrolledAgent()) { laptop in
                try await laptop.openSession()
                let envelope = try await laptop.seal(.userSignIn(UserSignInRequest(user: "dave", password: "dave password 1")))
                #expect(try await laptop.post(envelope: envelope).status == 200)
                let replay = try await laptop.post(envelope: envelope)
                #expect(replay.status == 409)
                #expect(String(decoding: replay.body, as: UTF8.self).contains("replayed"))
            }
            #expect(try await manager.store.auditEntries(actor: "user:dave", action: "user.sign_in").count == 1)
        }
    }
}

extension UserSignInRequest {
    /// The request with its code taken away (and no password): a malformed sign-in.
    var withoutCode: UserSignInRequest {
        var request = self
        request.code = nil
        return request
    }
}

/// The same against a real OpenLDAP: directory users, directory groups in grants, the
/// directory's password policy, and the directory down.
@Suite(.serialized, .timeLimit(.minutes(3))) struct DirectoryUserSignInTests {
    @Test(.enabled(if: Slapd.usable || Slapd.required, "needs slapd and ldapmodify (apt-get install slapd ldap-utils)"))
    func directoryUsersSignInByGroupChangeTheirPasswordsAndFallBackOfflineWhenItIsDown() async throws {
        let dir = try TemporaryDirectory()
        let slapd = try await Slapd(in: dir)
        var stopped = false
        defer { if !stopped { slapd.stop() } }
        try await TestManager.with(directoryServer: DirectoryTests.settings(slapd, security: .starttls)) { manager in
            let operations = ManagerOperations(store: manager.store, agent: manager.agent)
            let laptops = try await manager.store.createGroup(name: "Laptops")
            try await operations.grantSignIn(groupID: laptops.id, principal: "group:laptop-users", by: UserSignInTests.admin)
            try await withAgent(try await manager.enrolledAgent(group: laptops.id)) { laptop in
                let alice = try await laptop.signInUser("alice", password: "alice password 1")
                #expect(alice.outcome == .allowed && alice.displayName == "Alice Example" && alice.groups == ["laptop-users", "portico-admins"])
                let saved = try #require(try await manager.store.endpointUser(named: "alice"))
                #expect(saved.source == .directory && saved.directoryDN == "uid=alice,ou=people,\(Slapd.baseDN)" && saved.directoryGroups == ["laptop-users", "portico-admins"])
                #expect(try await laptop.signInUser("alice", password: "not alice's").outcome == .badCredentials)
                // carol is in no group a grant names.
                #expect(try await laptop.signInUser("carol", password: "carol password 333").outcome == .notPermitted)
                // Five wrong passwords lock a directory user here too (before the directory's own
                // lockout, which the manager's keeps guesses from reaching).
                for attempt in 1...5 {
                    let outcome = try await laptop.signInUser("carol", password: "guess \(attempt)").outcome
                    #expect(outcome == (attempt < 5 ? .badCredentials : .locked))
                }
                #expect(try await laptop.signInUser("carol", password: "carol password 333").outcome == .locked)

                // The directory's policy (at least 10 characters) refuses, in its own words.
                let refused = try await laptop.changeUserPassword("bob", old: "bob password 22", new: "short")
                #expect(refused.outcome == .refused && refused.message.contains("Password fails quality checking policy"))
                let changed = try await laptop.changeUserPassword("bob", old: "bob password 22", new: "bob's new password")
                #expect(changed.outcome == .allowed)
                #expect(try await laptop.signInUser("bob", password: "bob's new password").outcome == .allowed)
                #expect(try await laptop.signInUser("bob", password: "bob password 22").outcome == .badCredentials)

                // The directory goes down: the manager says so, and the device signs alice in
                // with the verifier of her last sign-in.
                var cache = UserSignInCache()
                cache.record(alice)
                slapd.stop()
                stopped = true
                let down = try await laptop.signInUser("alice", password: "alice password 1")
                #expect(down.outcome == .unavailable)
                cache.record(down)
                let state = await laptop.state
                #expect(cache.signInOffline(user: "alice", password: "alice password 1", state: state, now: down.issuedMilliseconds) == .allowed(until: alice.offlineUntilMilliseconds!))
                #expect(cache.signInOffline(user: "alice", password: "alice password 2", state: state, now: down.issuedMilliseconds) == .wrongPassword(failuresLeft: 4))
            }
            let unavailable = try await manager.store.auditEntries(actor: "user:alice", action: "user.sign_in").filter { $0.detail.hasPrefix("directory unavailable") }
            #expect(unavailable.count == 1)
            let changes = try await manager.store.auditEntries(actor: "user:bob", action: "user.password_change")
            #expect(changes.map(\.result).sorted() == ["ok", "refused"])
        }
    }
}

extension DirectoryUserSignInTests {
    @Test(.enabled(if: Slapd.usable || Slapd.required, "needs slapd and ldapmodify (apt-get install slapd ldap-utils)"))
    func anOperatorSetsADirectoryUsersNewPasswordUnderTheDirectorysPolicy() async throws {
        let dir = try TemporaryDirectory()
        let slapd = try await Slapd(in: dir)
        defer { slapd.stop() }
        try await TestManager.with(directoryServer: DirectoryTests.settings(slapd)) { manager in
            try await manager.makeOperator("helpdesk", role: .operator)
            try await ManagerOperations(store: manager.store, agent: nil).grantSignIn(groupID: SignInGrant.everyDevice, principal: "group:laptop-users", by: UserSignInTests.admin)
            try await withAgent(try await manager.enrolledAgent()) { laptop in
                // bob is known once he has signed in (or a sync has run).
                #expect(try await laptop.signInUser("bob", password: "bob password 22").outcome == .allowed)
                try await APICaller.with(manager) { api in
                    let token = try await manager.session(for: "helpdesk").access
                    let refused = try await api.call(.PATCH, "/users/bob", token: token, json: #"{"password":"short"}"#)
                    #expect(refused.status == 422 && refused.text.contains("was refused by the directory"), "\(refused.text)")
                    let reset = try await api.call(.PATCH, "/users/bob", token: token, json: #"{"password":"set by the help desk"}"#)
                    #expect(reset.status == 200 && reset.json["source"] as? String == "directory")
                }
                #expect(try await laptop.signInUser("bob", password: "set by the help desk").outcome == .allowed)
                #expect(try await laptop.signInUser("bob", password: "bob password 22").outcome == .badCredentials)
            }
            let audited = try await manager.store.auditEntries(actor: "operator:helpdesk", action: "user.reset_password")
            #expect(audited.map(\.result) == ["ok", "refused"])
        }
    }
}

/// Operators from the directory, and the directory's users synced, against a real OpenLDAP.
@Suite(.serialized, .timeLimit(.minutes(3))) struct DirectoryOperatorTests {
    static func settings(_ slapd: Slapd) -> DirectorySettings {
        var settings = DirectoryTests.settings(slapd)
        settings.operatorRoles = [.init(group: "portico-admins", role: .admin), .init(group: "laptop-users", role: .auditor)]
        // slapd's password policy locks an account with pwdAccountLockedTime.
        settings.accountFilter = "(!(pwdAccountLockedTime=*))"
        return settings
    }

    static func login(_ api: APICaller, _ name: String, _ password: String) async throws -> APIAnswer {
        let body = try JSONSerialization.data(withJSONObject: ["name": name, "password": password])
        return try await api.call(.POST, "/auth/login", json: String(decoding: body, as: UTF8.self))
    }

    @Test(.enabled(if: Slapd.usable || Slapd.required, "needs slapd and ldapmodify (apt-get install slapd ldap-utils)"))
    func directoryAccountsSignInWithTheRoleOfTheirGroupsAndLoseTheirSessionsWhenDisabled() async throws {
        let dir = try TemporaryDirectory()
        let slapd = try await Slapd(in: dir)
        var stopped = false
        defer { if !stopped { slapd.stop() } }
        try await TestManager.with(directoryServer: Self.settings(slapd)) { manager in
            try await manager.makeOperator("local-admin", role: .admin)
            let sync = DirectorySync(store: manager.store, directory: DirectoryClient(Self.settings(slapd)))
            try await APICaller.with(manager) { api in
                let alice = try await Self.login(api, "alice", "alice password 1")
                #expect(alice.status == 200)
                let aliceToken = try #require(alice.json["access_token"] as? String)
                #expect(try await api.call(.GET, "/auth/whoami", token: aliceToken).json["role"] as? String == "admin")
                let account = try #require(try await manager.store.operatorAccount(named: "alice"))
                #expect(account.fromDirectory && account.role == .admin)
                // bob's only group maps to auditor; carol's to nothing.
                let bob = try await Self.login(api, "bob", "bob password 22")
                #expect(try await api.call(.GET, "/auth/whoami", token: try #require(bob.json["access_token"] as? String)).json["role"] as? String == "auditor")
                #expect(try await Self.login(api, "carol", "carol password 333").status == 401)
                #expect(try await Self.login(api, "alice", "not alice's").status == 401)
                let refusals = try await manager.store.auditEntries(action: "auth.login").filter { $0.result == "failed" }.map(\.detail)
                #expect(refusals.contains { $0.contains("in no group that maps to a role") } && refusals.contains { $0.contains("bad credentials") })

                // A directory operator's password is the directory's, not the manager's.
                let admin = try await manager.session(for: "local-admin").access
                let patch = try await api.call(.PATCH, "/operators/alice", token: admin, json: #"{"password":"a local password now"}"#)
                #expect(patch.status == 409)

                // The directory locks bob: the next check ends his sessions.
                #expect(try await sync.checkOperators() == [])
                try await slapd.change("""
                    dn: uid=bob,ou=people,\(Slapd.baseDN)
                    changetype: modify
                    add: pwdAccountLockedTime
                    pwdAccountLockedTime: 000001010000Z

                    """)
                #expect(try await sync.checkOperators() == ["bob"])
                #expect(try await api.call(.GET, "/auth/whoami", token: try #require(bob.json["access_token"] as? String)).status == 401)
                #expect(try await manager.store.operatorAccount(named: "bob") == nil)
                #expect(try await api.call(.GET, "/auth/whoami", token: aliceToken).status == 200)

                // The directory down: local operators still sign in, directory ones cannot.
                slapd.stop()
                stopped = true
                #expect(try await Self.login(api, "local-admin", "correct horse battery").status == 200)
                #expect(try await Self.login(api, "alice", "alice password 1").status == 401)
                #expect(try await manager.store.auditEntries(action: "auth.login").contains { $0.detail.contains("directory unavailable") })
                // An unreachable directory proves nothing against alice.
                await #expect(throws: DirectoryError.self) { try await sync.checkOperators() }
                #expect(try await api.call(.GET, "/auth/whoami", token: aliceToken).status == 200)
            }
        }
    }

    @Test(.enabled(if: Slapd.usable || Slapd.required, "needs slapd and ldapmodify (apt-get install slapd ldap-utils)"))
    func aPagedSyncAddsAndRemovesTheDirectorysUsers() async throws {
        let dir = try TemporaryDirectory()
        let slapd = try await Slapd(in: dir)
        defer { slapd.stop() }
        try await TestManager.with { manager in
            let sync = DirectorySync(store: manager.store, directory: DirectoryClient(DirectoryTests.settings(slapd)))
            // A local user of a directory user's name stays local.
            try await manager.store.write { try await $0.createEndpointUser(EndpointUser(name: "carol", source: .local, passwordHash: "$scrypt$x")) }
            // Pages of two: the search account, alice, bob and carol take two pages.
            let first = try #require(try await sync.syncUsers(pageSize: 2))
            #expect(first.state == "done" && first.seen == 4 && first.added == 3 && first.removed == 0)
            #expect(try await manager.store.endpointUsers(source: .directory).users.map(\.name) == ["alice", "bob", "portico"])
            #expect(try await manager.store.endpointUser(named: "carol")?.source == .local)
            #expect(try await manager.store.endpointUser(named: "alice")?.displayName == "Alice Example")

            try await slapd.change("""
                dn: uid=dan,ou=people,\(Slapd.baseDN)
                changetype: add
                objectClass: inetOrgPerson
                uid: dan
                cn: Dan Example
                sn: Example
                displayName: Dan the New

                dn: uid=bob,ou=people,\(Slapd.baseDN)
                changetype: delete

                """)
            let second = try #require(try await sync.syncUsers(pageSize: 2))
            #expect(second.seen == 4 && second.added == 1 && second.removed == 1)
            #expect(try await manager.store.endpointUsers(source: .directory).users.map(\.name) == ["alice", "dan", "portico"])
            #expect(try await manager.store.endpointUser(named: "dan")?.displayName == "Dan the New")
            #expect(try await manager.store.auditEntries(action: "user.sync").map(\.detail) == ["4 seen, 1 added, 1 removed", "4 seen, 3 added, 0 removed"])
        }
    }
}

/// The users page of the console: local users made, grants given, a locked user unlocked, a
/// password set, remote help for one user; auditors read only.
@Suite(.timeLimit(.minutes(3))) struct ConsoleUsersTests {
    @Test func anAdminManagesUsersAndGrantsInTheConsole() async throws {
        var users = UserSignIns.Configuration.forTests
        users.lockAfterFailures = 2
        try await TestManager.with(users: users) { manager in
            try await manager.makeOperator("ada", role: .admin)
            try await manager.makeOperator("audrey", role: .auditor)
            try await ConsoleBrowser.with(manager) { browser in
                let signedIn = try await browser.signIn("ada")
                #expect(signedIn.status == 303)
                let empty = try await browser.get("/users")
                #expect(empty.status == 200 && empty.html.contains("No users.") && empty.html.contains("no user may sign in on any device"))
                let csrf = try #require(empty.csrf)
                let short = try await browser.post("/users", [("csrf", csrf), ("name", "dave"), ("display_name", "Dave"), ("password", "short"), ("repeat_password", "short")])
                #expect(short.status == 422 && short.html.contains("at least 10 characters") && short.html.contains("value=\"dave\""))
                let created = try await browser.post("/users", [("csrf", csrf), ("name", "dave"), ("display_name", "Dave"), ("password", "dave password 1"),
                                                                 ("repeat_password", "dave password 1")])
                #expect(created.status == 303 && created.location == "/users/dave?done=created")
                let granted = try await browser.post("/sign-in-grants", [("csrf", csrf), ("group_id", "*"), ("kind", "user"), ("name", "dave")])
                #expect(granted.status == 303)
                let listed = try await browser.get("/users?q=DAV")
                #expect(listed.html.contains("href=\"/users/dave\"") && listed.html.contains("Every device") && listed.html.contains("User dave"))
                #expect(try await browser.get("/users?q=zz").html.contains("No users match."))

                try await withAgent(try await manager.enrolledAgent(hostname: "laptop-9")) { laptop in
                    let deviceID = await laptop.state.deviceID
                    #expect(try await laptop.signInUser("dave", password: "dave password 1").outcome == .allowed)
                    _ = try await laptop.signInUser("dave", password: "wrong 1")
                    #expect(try await laptop.signInUser("dave", password: "wrong 2").outcome == .locked)
                    let locked = try await browser.get("/users/dave")
                    #expect(ConsoleWorkTests.text(of: "user-state", in: locked.html)?.hasPrefix("locked until") == true)
                    #expect(locked.html.contains(deviceID) && locked.html.contains("bad credentials"))
                    #expect(try await browser.post("/users/dave/unlock", [("csrf", csrf)]).location == "/users/dave?done=unlocked")
                    #expect(ConsoleWorkTests.text(of: "user-state", in: try await browser.get("/users/dave").html) == "active")

                    let reset = try await browser.post("/users/dave/password", [("csrf", csrf), ("password", "set by ada 123"), ("repeat_password", "set by ada 123")])
                    #expect(reset.location == "/users/dave?done=password")
                    #expect(try await laptop.signInUser("dave", password: "set by ada 123").outcome == .allowed)

                    let help = try await browser.post("/devices/\(deviceID)/remote-help", [("csrf", csrf), ("challenge", "12345678-100"), ("user", "dave")])
                    #expect(help.status == 200 && help.html.contains("it unlocks dave on this device"))
                    let code = try #require(ConsoleWorkTests.text(of: "remote-help-response", in: help.html))
                    let expected = try await manager.agent.remoteHelpResponse(deviceID: deviceID, challenge: "12345678-100", unlockingUser: "dave")
                    #expect(code == expected)
                }
                let disabled = try await browser.post("/users/dave", [("csrf", csrf), ("display_name", "Dave D."), ("state", "disabled")])
                #expect(disabled.location == "/users/dave?done=saved")
                #expect(try await manager.store.endpointUser(named: "dave")?.disabled == true)
            }
            try await ConsoleBrowser.with(manager) { auditor in
                _ = try await auditor.signIn("audrey")
                let page = try await auditor.get("/users")
                #expect(page.status == 200 && page.html.contains("href=\"/users/dave\"") && !page.html.contains("id=\"create-user\""))
                let refused = try await auditor.post("/users", [("csrf", try #require(page.csrf)), ("name", "eve"), ("password", "eve password 12"), ("repeat_password", "eve password 12")])
                #expect(refused.status == 403)
            }
        }
    }
}
