import Foundation
@testable import PorticoManager
import PorticoStore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Schemathesis (from PyPI) generates requests from the OpenAPI document, valid and not,
/// against the live API with an admin token: no answer may be a 5xx, and every answer must
/// match the document (status, content type, headers, body schema), and requests the
/// document calls invalid must be refused.
@Suite(.timeLimit(.minutes(6))) struct SchemathesisTests {
    static let schemathesis: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for directory in path.split(separator: ":") {
            for name in ["schemathesis", "st"] where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
                return "\(directory)/\(name)"
            }
        }
        return nil
    }()
    static let required = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil

    @Test(.enabled(if: schemathesis != nil || required, "schemathesis is not installed (python3 -m venv v && v/bin/pip install schemathesis, then put v/bin on PATH)"))
    func theLiveAPIMatchesItsOpenAPIDocument() async throws {
        let schemathesis = try #require(Self.schemathesis, "schemathesis is not on PATH")
        try await TestManager.with { manager in
            let token = try await manager.apiToken(role: .admin, expiresIn: 3_600_000)
            let document = manager.directory + "/openapi.yaml"
            try Data(OpenAPIDocument.bytes).write(to: URL(fileURLWithPath: document))
            let output = manager.directory + "/schemathesis.out"
            // A body over a route's limit is refused with 413 (documented on every operation
            // that takes one); schemathesis counts only its default list as a refusal.
            let configuration = manager.directory + "/schemathesis.toml"
            try """
                [checks.negative_data_rejection]
                expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
                """.write(toFile: configuration, atomically: true, encoding: .utf8)
            let status = try await Self.run(schemathesis, [
                "--config-file", configuration,
                "run", document,
                // Nothing kept between runs: every run, here and in CI, generates from the seed alone.
                "--generation-database", "none", "--url", manager.apiURL, "--tls-verify", "false",
                "-H", "Authorization: Bearer \(token)",
                "--max-examples", "25", "--seed", "20261121",
                "--checks", "all",
                // A schema cannot say which cursors, ids or passwords exist: a request that is
                // well-formed by the document may still be refused, rightly.
                "--exclude-checks", "positive_data_acceptance",
                // These would end the test's own credentials midway.
                "--exclude-operation-id", "logout", "--exclude-operation-id", "revokeAPIToken",
            ], output: output)
            let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            #expect(status == 0, "schemathesis found problems:\n\(text.suffix(6000))")
            #expect(text.contains("passed"), "schemathesis did not report a run:\n\(text.suffix(2000))")
        }
    }

    /// Runs a program to completion on its own thread with stdout and stderr in `output`.
    static func run(_ path: String, _ arguments: [String], output: String) async throws -> Int32 {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var actions = posix_spawn_file_actions_t()
                posix_spawn_file_actions_init(&actions)
                defer { posix_spawn_file_actions_destroy(&actions) }
                posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
                posix_spawn_file_actions_adddup2(&actions, 1, 2)
                let argv = ([path] + arguments).map { strdup($0) } + [nil]
                defer { argv.forEach { free($0) } }
                var pid = pid_t()
                guard posix_spawn(&pid, path, &actions, nil, argv, environ) == 0 else { return continuation.resume(returning: -1) }
                var status: Int32 = 0
                while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
                continuation.resume(returning: (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f))
            }
        }
    }
}
