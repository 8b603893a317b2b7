import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

import PorticoGateway
import PorticoServer

/// The `portico` executable built beside the tests, run as a real process.
public final class ServerProcess: Sendable {
    /// Where the test binary's build put the executable.
    public static var executable: String? { executable(named: "portico") }

    public static func executable(named name: String) -> String? {
        let testBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = testBinary.deletingLastPathComponent()
        // The runner may be inside the .xctest bundle.
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return nil
    }

    private let child: ChildProcess
    /// Whether the child has been waited for (its pid may then belong to another process).
    private let reaped = NIOLockedValueBox(false)
    private struct Output {
        public var text = ""
        public var ended = false
        public var endWaiters: [CheckedContinuation<Void, Never>] = []
        public var waiters: [(needle: String, count: Int, continuation: CheckedContinuation<Void, Never>)] = []

        public func occurrences(of needle: String) -> Int { text.components(separatedBy: needle).count - 1 }

        /// Removes and returns the waiters whose condition now holds.
        public mutating func satisfied() -> [CheckedContinuation<Void, Never>] {
            let text = self.text
            let met = { (waiter: (needle: String, count: Int, continuation: CheckedContinuation<Void, Never>)) in
                text.components(separatedBy: waiter.needle).count - 1 >= waiter.count
            }
            let done = waiters.filter(met).map(\.continuation)
            waiters.removeAll(where: met)
            return done
        }
    }
    private let output = NIOLockedValueBox(Output())

    /// Starts `portico` (or another executable of the package, or the program at an absolute
    /// path) with `arguments`, collecting
    /// its standard output and error; with at most `descriptorLimit` open files when given
    /// (a shell sets the limit and then becomes the process).
    public init(_ arguments: [String], executable name: String = "portico", descriptorLimit: Int? = nil) throws {
        let path = name.hasPrefix("/") ? name : try #require(Self.executable(named: name), "the \(name) executable was not built beside the tests")
        if let descriptorLimit {
            child = try ChildProcess.start("/bin/sh", ["-c", "ulimit -n \(descriptorLimit) && exec \"$0\" \"$@\"", path] + arguments)
        } else {
            child = try ChildProcess.start(path, arguments)
        }
        // A thread of its own blocks on the pipe until end of file (blocking a shared pool
        // could starve tests).
        let output = self.output
        let child = self.child
        Thread.detachNewThread {
            child.readOutput { data in
                let ready = output.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
                    state.text += String(decoding: data, as: UTF8.self)
                    return state.satisfied()
                }
                ready.forEach { $0.resume() }
            }
            let ready = output.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
                state.ended = true
                defer { state.endWaiters = [] }
                return state.endWaiters + state.waiters.map(\.continuation)
            }
            ready.forEach { $0.resume() }
        }
    }

    public var text: String { output.withLockedValue { $0.text } }

    /// The process id, for tools that watch the process.
    public var pid: Int32 { child.pid }

    /// The port a listener bound, read from the process's "listening" log line (so tests can
    /// let it bind port 0 rather than guess a free one another test might take first).
    public func boundPort(_ role: ListenerName) -> Int? {
        for line in text.split(separator: "\n") where line.hasSuffix("listening") && line.contains("listener=\(role.rawValue) ") {
            guard let start = line.range(of: "address=") else { continue }
            let address = line[start.upperBound...].prefix { $0 != " " }
            return address.split(separator: ":").last.flatMap { Int($0) }
        }
        return nil
    }

    /// Returns once the output holds `needle` at least `count` times: the process's log is
    /// the event waited on. If the test is cancelled meanwhile (its time limit), the process
    /// is killed, which ends its output and the wait, so a missing line fails the test
    /// instead of hanging the run.
    public func waitFor(_ needle: String, count: Int = 1) async {
        let pid = child.pid
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = output.withLockedValue { state -> Bool in
                    if state.occurrences(of: needle) >= count || state.ended { return true }
                    state.waiters.append((needle, count, continuation))
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            kill(pid, SIGKILL)
        }
    }

    public func signal(_ signal: Int32) {
        reaped.withLockedValue { reaped in
            if !reaped { _ = kill(child.pid, signal) }
        }
    }

    /// Waits for the process to exit and for all of its output, and returns its status.
    public func wait() async -> Int32 {
        let child = self.child
        let reaped = self.reaped
        let status = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                let status = child.wait()
                reaped.withLockedValue { $0 = true }
                continuation.resume(returning: status)
            }
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ended = output.withLockedValue { state -> Bool in
                if state.ended { return true }
                state.endWaiters.append(continuation)
                return false
            }
            if ended { continuation.resume() }
        }
        return status
    }

    deinit {
        // Stopped and reaped if the test did not wait for it (no zombie left behind).
        let child = self.child
        let running = reaped.withLockedValue { reaped in
            defer { reaped = true }
            return !reaped
        }
        if running {
            kill(child.pid, SIGTERM)
            Thread.detachNewThread { _ = child.wait() }
        }
    }
}
