import Foundation
import PorticoGateway
import PorticoServer
import PorticoTestSupport
import Testing

/// Endpoint users through the real executables against a real OpenLDAP: `portico serve` with a
/// `directory` section, `portico-agent user-auth` signing a directory user in, `user-password`
/// changing the password in the directory, and a user locked on the device offline unlocked by
/// remote help (`user-unlock`) with the manager's response from the API; then the directory
/// down, and the device signing the user in with the verifier it was given.
@Suite(.serialized, .timeLimit(.minutes(3))) struct DirectoryProcessTests {
    @Test(.enabled(if: Slapd.usable || Slapd.required, "needs slapd and ldapmodify (apt-get install slapd ldap-utils)"))
    func aDirectoryUserSignsInChangesItsPasswordAndIsUnlockedByRemoteHelp() async throws {
        let dir = try TemporaryDirectory()
        let slapd = try await Slapd(in: dir)
        var stopped = false
        defer { if !stopped { slapd.stop() } }
        let portico = try #require(ServerProcess.executable(named: "portico"))
        let agent = try #require(ServerProcess.executable(named: "portico-agent"))
        _ = try dir.write("directory.password", Slapd.searchPassword + "\n")
        chmod(dir.file("directory.password"), 0o600)
        let config = try ManagerConfigFile.write(in: dir, listeners: [.client: "access_log: false", .webservices: "access_log: false"], routes: [
            "{listener: client, path: /agent/v1/*, service: agent}", "{listener: webservices, path: /api/v1/*, service: api}",
        ], more: """
            directory:
              url: \(slapd.ldapURL)
              security: starttls
              trust: \(slapd.certificate)
              bind_dn: \(Slapd.searchDN)
              bind_password_file: directory.password
              base_dn: \(Slapd.baseDN)
              sync_interval: 0
            endpoint_users: {offline_sign_in: 1d}
            """)
        let check = try await Tools.run(portico, ["config", "check", "--config", config])
        #expect(check.status == 0, "\(check.output)")
        let admin = try await Tools.run(portico, ["admin", "create", "--config", config, "--name", "ops", "--role", "admin"], input: "site operator password\n")
        #expect(admin.status == 0, "\(admin.output)")
        let serve = try ServerProcess(["serve", "--config", config])
        defer { serve.signal(SIGKILL) }
        await serve.waitFor("listening", count: 2)
        let api = "https://127.0.0.1:\(try #require(serve.boundPort(.webservices)))/api/v1"
        let token = try await Tools.run(portico, ["token", "create", "--config", config, "--expires", "1h"])
        let bootstrap = dir.file("bootstrap.json")
        let export = try await Tools.run(portico, ["agent-config", "export", "--config", config, "--url", "https://127.0.0.1:\(try #require(serve.boundPort(.client)))",
                                                   "--output", bootstrap, "--token", token.output.trimmingCharacters(in: .whitespacesAndNewlines)])
        #expect(export.status == 0, "\(export.output)")
        let state = dir.file("agent")
        let enrolled = try await Tools.run(agent, ["enroll", "--bootstrap", bootstrap, "--state", state])
        #expect(enrolled.status == 0, "\(enrolled.output)")
        let deviceID = try #require(enrolled.output.split(separator: " ").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })

        func userAuth(_ password: String, offline: Bool = false) async throws -> Tools.Result {
            try await Tools.run(agent, ["user-auth", "--state", state, "--user", "alice"] + (offline ? ["--offline"] : []), input: password + "\n")
        }

        try await APIClient.with { client in
            let operatorToken = try await client.login(api, "ops")
            // Before any grant, alice's right password still does not let her in here.
            let before = try await userAuth("alice password 1")
            #expect(before.status == 1 && before.output.contains("refused (not_permitted)"), "\(before.output)")
            let grant = try await client.call(.POST, api + "/sign-in-grants", token: operatorToken, json: #"{"group_id":"*","principal":"group:laptop-users"}"#)
            #expect(grant.status == 201, "\(grant.json)")

            let signedIn = try await userAuth("alice password 1")
            #expect(signedIn.status == 0 && signedIn.output.contains("allowed: Alice Example"), "\(signedIn.output)")
            let wrong = try await userAuth("not her password")
            #expect(wrong.status == 1 && wrong.output.contains("refused (bad_credentials)"), "\(wrong.output)")

            // Online password change, under the directory's policy.
            let tooShort = try await Tools.run(agent, ["user-password", "--state", state, "--user", "alice"], input: "alice password 1\nshort\n")
            #expect(tooShort.status == 1 && tooShort.output.contains("refused (refused)") && tooShort.output.contains("quality"), "\(tooShort.output)")
            let changed = try await Tools.run(agent, ["user-password", "--state", state, "--user", "alice"], input: "alice password 1\nalice's new password\n")
            #expect(changed.status == 0 && changed.output.contains("changed"), "\(changed.output)")
            #expect(try await userAuth("alice's new password").status == 0)
            // The device keeps a verifier, never the password.
            let cache = try String(contentsOfFile: state + "/users.json", encoding: .utf8)
            #expect(cache.contains("$scrypt$") && !cache.contains("alice's new password"))
            #expect(try FileManager.default.attributesOfItem(atPath: state + "/users.json")[.posixPermissions] as? Int == 0o600)

            // Offline, five wrong passwords lock alice on this device; remote help unlocks her.
            for attempt in 1...5 {
                let guess = try await userAuth("guess \(attempt)", offline: true)
                #expect(guess.status == 1)
                if attempt == 5 { #expect(guess.output.contains("locked on this device"), "\(guess.output)") }
            }
            #expect(try await userAuth("alice's new password", offline: true).status == 1)
            let challenge = try await Tools.run(agent, ["user-unlock", "--state", state, "--user", "alice"])
            let code = try #require(challenge.output.split(separator: "\n").first { $0.hasPrefix("challenge: ") }.map { String($0.dropFirst("challenge: ".count)) })
            let help = try await client.call(.POST, api + "/devices/\(deviceID)/remote-help", token: operatorToken, json: #"{"challenge":"\#(code)","user":"alice"}"#)
            #expect(help.status == 200 && help.json["user"] as? String == "alice", "\(help.json)")
            let wrongCode = try await Tools.run(agent, ["user-unlock", "--state", state, "--user", "alice", "--response", "00000000"])
            #expect(wrongCode.status == 1)
            let unlocked = try await Tools.run(agent, ["user-unlock", "--state", state, "--user", "alice", "--response", try #require(help.json["response"] as? String)])
            #expect(unlocked.status == 0 && unlocked.output.contains("unlocked"), "\(unlocked.output)")
            let offline = try await userAuth("alice's new password", offline: true)
            #expect(offline.status == 0 && offline.output.contains("allowed offline"), "\(offline.output)")

            // The directory down: the manager says so, and the device falls back to its verifier.
            slapd.stop()
            stopped = true
            let fallback = try await userAuth("alice's new password")
            #expect(fallback.status == 0 && fallback.output.contains("checking offline") && fallback.output.contains("allowed offline"), "\(fallback.output)")

            // The manager carries on without its directory (its pooled connections to it are
            // gone), and local operators still sign in.
            _ = try await client.login(api, "ops")
            let audit = try await client.call(.GET, api + "/audit?actor=user:alice&limit=50", token: operatorToken)
            let actions = (audit.json["items"] as? [[String: Any]] ?? []).compactMap { $0["action"] as? String }
            #expect(actions.filter { $0 == "user.sign_in" }.count == 5 && actions.filter { $0 == "user.password_change" }.count == 2, "\(actions)")
            let unlocks = try await client.call(.GET, api + "/audit?action=user.unlock_offline", token: operatorToken)
            #expect((unlocks.json["items"] as? [[String: Any]])?.first?["actor"] as? String == "operator:ops")
        }
    }
}
