import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing
import X509

import PorticoGateway
import PorticoServer

/// Whether an outside program is on the PATH, for tests that drive real clients.
public enum Tools {
    public static func path(of tool: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(dir)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    public static func has(_ tool: String) -> Bool { path(of: tool) != nil }

    public struct Result: Sendable {
        public let status: Int32
        public let output: String
    }

    /// Runs a program to completion, capturing stdout and stderr together, on a thread of
    /// its own so that the concurrency pool is never blocked.
    public static func run(_ tool: String, _ arguments: [String], input: String? = nil) async throws -> Result {
        let executable = tool.hasPrefix("/") ? tool : try #require(path(of: tool), "\(tool) is not installed")
        return try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                do {
                    let child = try ChildProcess.start(executable, arguments, withInput: true)
                    child.send(input ?? "")  // closes the child's input even when there is none
                    var output: [UInt8] = []
                    child.readOutput { output += $0 }
                    let status = child.wait()
                    continuation.resume(returning: Result(status: status, output: String(decoding: output, as: UTF8.self)))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }
}
