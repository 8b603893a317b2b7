import Foundation
import Testing

/// A PostgreSQL server of a test's own, on a loopback port, that the test may stop and start
/// again (the shared server CI runs must not be restarted under other tests). Made with the
/// server binaries of Debian's `postgresql` package; run as the `postgres` user when the
/// tests run as root, since the server refuses to run as root.
public final class TestPostgres: Sendable {
    public let url: String
    let bin: String
    let data: String
    let port: Int
    let user: String?

    /// Where the server binaries are, or nil when the package is not installed.
    public static var binaries: String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        return versions.last.map { "\(root)/\($0)/bin" }.flatMap { FileManager.default.isExecutableFile(atPath: $0 + "/pg_ctl") ? $0 : nil }
    }

    /// Creates a cluster under `directory` and starts it.
    public init(in directory: TemporaryDirectory) async throws {
        bin = try #require(Self.binaries, "PostgreSQL's server binaries are not installed (Debian package postgresql)")
        data = directory.file("pgdata")
        port = try TestPorts.unused()
        user = getuid() == 0 ? "postgres" : nil
        url = "postgres://portico@127.0.0.1:\(port)/portico"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        if let user {
            // The server's user must reach its folder.
            chmod(directory.path, 0o755)
            let chown = try await Tools.run("/bin/chown", ["-R", user, data])
            try #require(chown.status == 0, "\(chown.output)")
        }
        let initdb = try await run("initdb", ["-D", data, "-U", "portico", "-A", "trust", "--no-sync", "-E", "UTF8"])
        try #require(initdb.status == 0, "initdb failed: \(initdb.output)")
        try await start()
        let created = try await run("createdb", ["-h", "127.0.0.1", "-p", "\(port)", "-U", "portico", "portico"])
        try #require(created.status == 0, "createdb failed: \(created.output)")
    }

    /// Starts the server and returns once it accepts connections.
    public func start() async throws {
        let started = try await run("pg_ctl", ["-D", data, "-l", data + "/server.log", "-w", "-t", "60",
                                               "-o", "-p \(port) -h 127.0.0.1 -k \(data) -c fsync=off", "start"])
        try #require(started.status == 0, "pg_ctl start failed: \(started.output)")
    }

    /// Stops the server: `immediate` as a crash does (no checkpoint, clients cut off).
    public func stop(immediate: Bool = false) async throws {
        let stopped = try await run("pg_ctl", ["-D", data, "-m", immediate ? "immediate" : "fast", "-w", "stop"])
        try #require(stopped.status == 0, "pg_ctl stop failed: \(stopped.output)")
    }

    /// Runs a server binary, as the server's user when the tests run as root.
    func run(_ tool: String, _ arguments: [String]) async throws -> Tools.Result {
        if let user { return try await Tools.run("/usr/sbin/runuser", ["-u", user, "--", bin + "/" + tool] + arguments) }
        return try await Tools.run(bin + "/" + tool, arguments)
    }

    deinit {
        // Never leave a server behind, whatever the test did.
        let arguments = ["-D", data, "-m", "immediate", "stop"]
        if let user {
            _ = try? ChildProcess.start("/usr/sbin/runuser", ["-u", user, "--", bin + "/pg_ctl"] + arguments).wait()
        } else {
            _ = try? ChildProcess.start(bin + "/pg_ctl", arguments).wait()
        }
    }
}
