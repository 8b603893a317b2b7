#if canImport(Glibc)
import Glibc
#endif

/// A child process started with `posix_spawn`, its standard output and error on one pipe.
///
/// Not Foundation's `Process`: on Linux, `Process.run()` lists `/proc/self/fd` with a copy that
/// reads past the end of each directory entry (swift-corelibs-foundation #5472, still in Swift
/// 6.3.1), and with enough descriptors open it crashed the whole test process now and then
/// (`memcpy` in `Process.run()`, SIGSEGV). Here every descriptor above standard error is closed
/// in the child (`posix_spawn_file_actions_addclosefrom_np`), as `Process` meant to do: a
/// child holding another child's pipe would keep that pipe from ever reaching end of file.
public struct ChildProcess: Sendable {
    public let pid: pid_t
    /// The read end of the child's standard output and error.
    public let output: Int32
    /// The write end of the child's standard input, or -1 (it reads `/dev/null`).
    public let input: Int32

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public static func start(_ path: String, _ arguments: [String], withInput: Bool = false) throws -> ChildProcess {
        var out: [Int32] = [-1, -1]
        var inp: [Int32] = [-1, -1]
        // Close-on-exec, so that no other child started meanwhile holds them (`pipe2` is one
        // of the GNU extensions Swift's Glibc module leaves out).
        func makePipe(_ fds: inout [Int32]) -> Bool {
            guard pipe(&fds) == 0 else { return false }
            for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            return true
        }
        guard makePipe(&out) else { throw Failure(description: "pipe: errno \(errno)") }
        if withInput, !makePipe(&inp) {
            close(out[0]); close(out[1])
            throw Failure(description: "pipe: errno \(errno)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if withInput {
            posix_spawn_file_actions_adddup2(&actions, inp[0], 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        posix_spawn_file_actions_adddup2(&actions, out[1], 2)
        guard closeFrom(&actions, 3) == 0 else { throw Failure(description: "posix_spawn_file_actions_addclosefrom_np is missing (glibc 2.34 or later has it)") }
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, path, &actions, nil, argv, environ)
        close(out[1])
        if withInput { close(inp[0]) }
        guard spawned == 0 else {
            close(out[0])
            if withInput { close(inp[1]) }
            throw Failure(description: "\(path) could not be started: errno \(spawned)")
        }
        return ChildProcess(pid: pid, output: out[0], input: withInput ? inp[1] : -1)
    }

    /// `posix_spawn_file_actions_addclosefrom_np`, looked up at run time (Swift's Glibc module
    /// does not declare the GNU extensions of `spawn.h`).
    private static func closeFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ from: Int32) -> Int32 {
        typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return -1 }
        return unsafeBitCast(symbol, to: AddCloseFrom.self)(actions, from)
    }

    /// Writes `text` to the child's standard input and closes it.
    public func send(_ text: String) {
        guard input >= 0 else { return }
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { write(input, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 && errno == EINTR { continue }
            if written <= 0 { break }
            offset += written
        }
        close(input)
    }

    /// Reads the child's output until end of file, handing each piece to `body`, then closes
    /// the pipe. Blocks.
    public func readOutput(_ body: ([UInt8]) -> Void) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(output, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            body(Array(buffer[0..<count]))
        }
        close(output)
    }

    /// Waits for the child to exit: its exit status, or 128 plus the signal that ended it. Blocks.
    public func wait() -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }
}
