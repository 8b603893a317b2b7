import Foundation
import Testing

@testable import PorticoStore

/// Endpoint users, grants, sign-in lockouts and the directory sync's bookkeeping, on every engine.
@Suite struct EndpointUserTests {
    @Test(arguments: Engines.all)
    func grantsByGroupAndDirectoryGroupDecideWhoSignsInWhere(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            let laptops = try await store.createGroup(name: "Laptops")
            let kiosks = try await store.createGroup(name: "Kiosks")
            for (device, group) in [("d-laptop", laptops.id), ("d-kiosk", kiosks.id)] {
                try await store.addDevice(DeviceRecord(id: device, signingKey: [1], agreementKey: [2], hostname: device, os: "linux"))
                try await store.addDevice(device, toGroup: group)
            }
            try await store.addDevice(DeviceRecord(id: "d-loose", signingKey: [3], agreementKey: [4], hostname: "loose", os: "linux"))
            try await store.write { transaction in
                try await transaction.createEndpointUser(EndpointUser(name: "dave", source: .local, displayName: "Dave", passwordHash: "$scrypt$x"))
                try await transaction.grantSignIn(SignInGrant(groupID: laptops.id, principal: "group:laptop-users", createdBy: "t"))
                try await transaction.grantSignIn(SignInGrant(groupID: kiosks.id, principal: "user:dave", createdBy: "t"))
                // Granting twice is no error and no second grant.
                try await transaction.grantSignIn(SignInGrant(groupID: kiosks.id, principal: "user:dave", createdBy: "t"))
            }
            #expect(try await store.maySignIn(user: "alice", groups: ["laptop-users"], device: "d-laptop"))
            #expect(try await !store.maySignIn(user: "alice", groups: ["laptop-users"], device: "d-kiosk"))
            #expect(try await store.maySignIn(user: "dave", groups: [], device: "d-kiosk"))
            #expect(try await !store.maySignIn(user: "dave", groups: [], device: "d-loose"))
            try await store.write { try await $0.grantSignIn(SignInGrant(groupID: SignInGrant.everyDevice, principal: "user:dave", createdBy: "t")) }
            #expect(try await store.maySignIn(user: "dave", groups: [], device: "d-loose"))
            #expect(try await store.signInGrants(groupID: kiosks.id).map(\.principal) == ["user:dave"])
            await #expect(throws: StoreError.self) { try await store.write { try await $0.grantSignIn(SignInGrant(groupID: "no-such-group", principal: "user:dave", createdBy: "t")) } }
            await #expect(throws: StoreError.self) { try await store.write { try await $0.grantSignIn(SignInGrant(groupID: "*", principal: "dave", createdBy: "t")) } }
            // A deleted group takes its grants; a deleted user its own.
            try await store.write { try await $0.deleteGroup(id: laptops.id) }
            #expect(try await !store.maySignIn(user: "alice", groups: ["laptop-users"], device: "d-laptop"))
            try await store.write { try await $0.deleteEndpointUser(name: "dave") }
            #expect(try await store.signInGrants().isEmpty)
            let search = try await store.endpointUsers(matching: "da")
            #expect(search.total == 0 && search.users.isEmpty)
        }
    }

    @Test(arguments: Engines.all)
    func failuresLockWithinTheirWindowAndAReplacedPasswordClearsThem(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            try await store.write { try await $0.createEndpointUser(EndpointUser(name: "dave", source: .local, passwordHash: "$scrypt$x")) }
            let window: Int64 = 60_000
            for (offset, expected) in [(0, nil), (1_000, nil), (2_000, Int64(62_000))] as [(Int64, Int64?)] {
                let locked = try await store.write { try await $0.recordSignInFailure(scope: "user", subject: "dave", now: offset, limit: 3, window: window) }
                #expect(locked == expected)
            }
            #expect(try await store.signInLockedUntil(scope: "user", subject: "dave", now: 10_000) == 62_000)
            #expect(try await store.signInLockedUntil(scope: "user", subject: "dave", now: 62_000) == nil)
            // Failures older than the window are forgotten.
            let later = try await store.write { try await $0.recordSignInFailure(scope: "device", subject: "d-1", now: 0, limit: 2, window: window) }
            let muchLater = try await store.write { try await $0.recordSignInFailure(scope: "device", subject: "d-1", now: 70_000, limit: 2, window: window) }
            #expect(later == nil && muchLater == nil)
            _ = try await store.write { try await $0.recordSignInFailure(scope: "user", subject: "dave", now: 100, limit: 3, window: window) }
            try await store.write { _ = try await $0.updateEndpointUser(name: "dave", passwordHash: "$scrypt$y") }
            #expect(try await store.signInLockedUntil(scope: "user", subject: "dave", now: 200) == nil)
            await #expect(throws: StoreError.self) {
                try await store.write { try await $0.createEndpointUser(EndpointUser(name: " dave", source: .local, passwordHash: "$scrypt$x")) }
            }
        }
    }

    @Test(arguments: Engines.all)
    func aSyncRunKeepsWhatItSawAndRemovesTheRestButNotLocalUsers(_ dialect: Dialect) async throws {
        try await Engines.withStore(dialect) { store in
            #expect(try await store.write { try await $0.claimDirectorySync(run: "r1", now: 0, holdFor: 1_000) })
            // Another manager cannot take it while the claim holds.
            #expect(try await !store.write { try await $0.claimDirectorySync(run: "r2", now: 500, holdFor: 1_000) })
            try await store.write { transaction in
                try await transaction.createEndpointUser(EndpointUser(name: "carol", source: .local, passwordHash: "$scrypt$x"))
                #expect(try await transaction.saveDirectoryUser(name: "alice", dn: "uid=alice", displayName: "Alice", groups: nil, run: "r1"))
                #expect(try await transaction.saveDirectoryUser(name: "bob", dn: "uid=bob", displayName: "Bob", groups: ["laptop-users"], run: "r1"))
                #expect(try await !transaction.saveDirectoryUser(name: "carol", dn: "uid=carol", displayName: "Carol", groups: nil, run: "r1"))
                try await transaction.updateDirectorySync(run: "r1", seen: 3, added: 2, removed: 0, state: "done", error: "", now: 900, holdFor: 0)
            }
            #expect(try await store.directorySync()?.state == "done")
            #expect(try await store.write { try await $0.claimDirectorySync(run: "r2", now: 1_000, holdFor: 1_000) })
            let removed = try await store.write { transaction in
                // A sign-in's save keeps a user's groups when the sync knows none, and its run.
                try await transaction.saveDirectoryUser(name: "bob", dn: "uid=bob", displayName: "Bob B", groups: nil, run: "r2")
                return try await transaction.removeDirectoryUsers(notSeenIn: "r2")
            }
            #expect(removed == ["alice"])
            let users = try await store.endpointUsers().users
            #expect(users.map(\.name) == ["bob", "carol"] && users[0].directoryGroups == ["laptop-users"] && users[0].displayName == "Bob B")
        }
    }
}
