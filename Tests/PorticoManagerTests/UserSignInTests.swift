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

/// The same against a real OpenLDAP: directory users, directory groups in grants, the
/// directory's password policy, and the directory down.
@Suite(.serialized, .timeLimit(.minutes(3))) struct DirectoryUserSignInTests {
    @Test(.enabled(if: Slapd.usable || Slapd.required, "needs slapd (apt-get install slapd)"))
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
                #expect(alice.outcome == .allowed && alice.displayName == "Alice Example")
                let saved = try #require(try await manager.store.endpointUser(named: "alice"))
                #expect(saved.source == .directory && saved.directoryDN == "uid=alice,ou=people,\(Slapd.baseDN)" && saved.directoryGroups == ["laptop-users", "portico-admins"])
                #expect(try await laptop.signInUser("alice", password: "not alice's").outcome == .badCredentials)
                // carol is in no group a grant names.
                #expect(try await laptop.signInUser("carol", password: "carol password 333").outcome == .notPermitted)

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
