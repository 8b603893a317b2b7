import Foundation
import NIOCore
import NIOPosix
import PorticoAgent
import PorticoManager
import PorticoProtocol
import PorticoTestSupport
import Testing

/// nginx from Debian terminating TLS in front of the plain client listener: the agent
/// protocol needs nothing from the proxy and gives it nothing it could read or alter.
@Suite(.timeLimit(.minutes(2))) struct ReverseProxyTests {
    static let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let required = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil

    @Test(.enabled(if: nginx != nil || required, "nginx is not installed (apt-get install nginx)"))
    func anAgentWorksThroughNginxTerminatingTLS() async throws {
        let nginx = try #require(Self.nginx, "nginx is not installed")
        try await TestManager.with { manager in
            let dir = manager.directory + "/nginx"
            try FileManager.default.createDirectory(atPath: dir + "/tmp", withIntermediateDirectories: true)
            try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: dir + "/tmp")
            let port = try TestPorts.unused()
            let plainPort = try #require(URLComponents(string: manager.plainURL)?.port)
            let conf = """
                worker_processes 1;
                pid \(dir)/nginx.pid;
                error_log \(dir)/error.log warn;
                events { worker_connections 64; }
                http {
                  access_log off;
                  client_body_temp_path \(dir)/tmp; proxy_temp_path \(dir)/tmp; fastcgi_temp_path \(dir)/tmp;
                  uwsgi_temp_path \(dir)/tmp; scgi_temp_path \(dir)/tmp;
                  server {
                    listen 127.0.0.1:\(port) ssl;
                    ssl_certificate \(manager.identity.certificatePath);
                    ssl_certificate_key \(manager.identity.privateKeyPath);
                    location / {
                      proxy_pass http://127.0.0.1:\(plainPort);
                      proxy_http_version 1.1;
                      proxy_set_header Connection "";
                    }
                  }
                }
                """
            try conf.write(toFile: dir + "/nginx.conf", atomically: true, encoding: .utf8)
            // nginx returns once it has bound its socket and gone to the background.
            let start = try await Self.run(nginx, ["-c", dir + "/nginx.conf", "-p", dir])
            #expect(start == 0, "nginx did not start: \((try? String(contentsOfFile: dir + "/error.log", encoding: .utf8)) ?? "")")
            defer { _ = Self.spawnAndWait(nginx, ["-c", dir + "/nginx.conf", "-p", dir, "-s", "stop"]) }

            let proxied = "https://127.0.0.1:\(port)"
            let group = try await manager.store.createGroup(name: "Behind proxy")
            let policy = try await manager.store.createPolicy(name: "Proxied", document: #"{"via":"nginx"}"#, by: "admin")
            try await manager.store.publishPolicy(policyID: policy.id, version: 1)
            try await manager.store.assignPolicy(policyID: policy.id, toGroup: group.id)
            let state = try await AgentClient.enroll(bootstrap: manager.bootstrap, token: try await manager.makeToken(group: group.id), hostname: "proxied", os: "linux", managerURL: proxied)
            try await withAgent(AgentClient(state: state, managerURL: proxied)) { agent in
                #expect(try await agent.checkIn().policyChanged)
                #expect(try await agent.fetchPolicy().policies.map(\.document) == [#"{"via":"nginx"}"#])
                let acknowledged = try await agent.report([AgentEvent(id: "e1", kind: "test", occurredMilliseconds: 1, body: "{}")])
                #expect(acknowledged == ["e1"])
            }
        }
    }

    /// Runs a program to completion on a thread of its own. posix_spawn and waitpid directly:
    /// Foundation's Process did not reap nginx's parent after it went to the background.
    static func run(_ path: String, _ arguments: [String]) async throws -> Int32 {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: spawnAndWait(path, arguments)) }
        }
    }

    static func spawnAndWait(_ path: String, _ arguments: [String]) -> Int32 {
        var pid: pid_t = 0
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        guard posix_spawn(&pid, path, nil, nil, argv, environ) == 0 else { return -1 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
    }
}
