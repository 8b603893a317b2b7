import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Why the access log cannot be written where the configuration says.
public struct AccessLogError: Error, CustomStringConvertible {
    public let description: String
}

/// The access log: one line per answered request, in the Common Log Format or as JSON, to a
/// file or standard output.
///
/// A request's line is formatted once, on its event loop, into that loop's buffer (no lock,
/// no allocation of its own). A buffer goes to the writer when it holds 32 KiB, or 100 ms
/// after its first line; the writer, a serial queue off the event loops, writes each buffer
/// with one `write`. ``reopen()`` (on SIGUSR1, after a log rotation moved the file away)
/// opens the path again, as nginx does; ``flush()`` writes out everything before a clean
/// shutdown returns.
public final class AccessLog: Sendable {
    private let writer: AccessLogWriter
    /// The format of new lines (``AccessLogConfiguration/Format``'s index), changed by a reload.
    private let format: Synchronization.Atomic<Int>
    private let buffers = NIOLockedValueBox<[ObjectIdentifier: AccessLogBuffer]>([:])

    /// Opens the destination.
    /// - Throws: ``AccessLogError`` when the file cannot be opened for appending.
    public init(_ configuration: AccessLogConfiguration) throws(AccessLogError) {
        writer = try AccessLogWriter(file: configuration.file)
        format = Synchronization.Atomic(AccessLogConfiguration.Format.allCases.firstIndex(of: configuration.format)!)
    }

    /// Takes a reloaded configuration: new lines in its format, to its file. Lines buffered
    /// before go where they were meant to.
    public func configure(_ configuration: AccessLogConfiguration) async throws(AccessLogError) {
        if configuration.file != writer.file {
            await handOverAll()
            try writer.open(configuration.file)
        }
        format.store(AccessLogConfiguration.Format.allCases.firstIndex(of: configuration.format)!, ordering: .relaxed)
    }

    package var currentFormat: AccessLogConfiguration.Format {
        AccessLogConfiguration.Format.allCases[format.load(ordering: .relaxed)]
    }

    /// Opens the file again at its path (after a rotation renamed it); nothing for standard
    /// output. Lines already handed over go to the file they were meant for.
    public func reopen() {
        writer.reopen()
    }

    /// Writes out every loop's buffer and everything handed over, then returns.
    public func flush() async {
        await handOverAll()
        await writer.drain()
    }

    private func handOverAll() async {
        let all = buffers.withLockedValue { Array($0.values) }
        for buffer in all {
            try? await buffer.loop.submit { buffer.handOver() }.get()
        }
    }

    /// Lines dropped because the destination did not take them (failed writes, or a backlog
    /// past the writer's bound).
    public var droppedLines: Int { writer.droppedLines }

    /// The buffer of the loop a connection runs on (looked up once per connection).
    package func buffer(on loop: any EventLoop) -> AccessLogBuffer {
        let key = ObjectIdentifier(loop)
        return buffers.withLockedValue { buffers in
            if let existing = buffers[key] { return existing }
            let created = AccessLogBuffer(log: self, writer: writer, loop: loop)
            buffers[key] = created
            return created
        }
    }
}

/// One event loop's lines not yet handed to the writer.
package final class AccessLogBuffer: @unchecked Sendable {
    // @unchecked Sendable: everything mutable is only touched on `loop` (lines are recorded
    // there, and a flush or the timer hands over by running on it); the log's table holds the
    // buffer so that a flush can find it.
    /// The log the format is read from (it outlives its buffers' use: connections hold both).
    private unowned let log: AccessLog
    private let writer: AccessLogWriter
    package let loop: any EventLoop
    private var bytes: [UInt8] = []
    private var lines = 0
    private var handOverScheduled = false
    /// The second the cached times are for, and `[07/Dec/2026:07:40:01 +0000]` and
    /// `2026-12-07T07:40:01Z` for it.
    private var second = -1
    private var commonTime: [UInt8] = []
    private var isoTime: [UInt8] = []

    package static let handOverBytes = 32 * 1024
    package static let handOverDelay = TimeAmount.milliseconds(100)

    package init(log: AccessLog, writer: AccessLogWriter, loop: any EventLoop) {
        self.log = log
        self.writer = writer
        self.loop = loop
        bytes.reserveCapacity(Self.handOverBytes + 1024)
    }

    /// Formats one request's line (`http` is "1.1" or "2").
    package func record(listener: String, client: String?, method: String, uri: String, http: String, status: Int, bytes sent: Int, microseconds: Int64) {
        let now = time(nil)
        if now != second { setTimes(now) }
        switch log.currentFormat {
        case .text:
            // client - - [time] "METHOD uri HTTP/x" status bytes listener seconds
            appendText(client ?? "-")
            bytes.append(contentsOf: " - - ".utf8)
            bytes.append(contentsOf: commonTime)
            bytes.append(contentsOf: " \"".utf8)
            appendText(method)
            bytes.append(UInt8(ascii: " "))
            appendText(uri)
            bytes.append(contentsOf: " HTTP/".utf8)
            bytes.append(contentsOf: http.utf8)
            bytes.append(contentsOf: "\" ".utf8)
            appendNumber(status)
            bytes.append(UInt8(ascii: " "))
            appendNumber(sent)
            bytes.append(UInt8(ascii: " "))
            appendText(listener)
            bytes.append(UInt8(ascii: " "))
            appendSeconds(microseconds)
        case .json:
            bytes.append(contentsOf: #"{"time":""#.utf8)
            bytes.append(contentsOf: isoTime)
            bytes.append(contentsOf: #"","listener":"#.utf8)
            appendJSON(listener)
            bytes.append(contentsOf: #","client":"#.utf8)
            if let client { appendJSON(client) } else { bytes.append(contentsOf: "null".utf8) }
            bytes.append(contentsOf: #","method":"#.utf8)
            appendJSON(method)
            bytes.append(contentsOf: #","uri":"#.utf8)
            appendJSON(uri)
            bytes.append(contentsOf: #","protocol":"HTTP/"#.utf8)
            bytes.append(contentsOf: http.utf8)
            bytes.append(contentsOf: #"","status":"#.utf8)
            appendNumber(status)
            bytes.append(contentsOf: #","bytes":"#.utf8)
            appendNumber(sent)
            bytes.append(contentsOf: #","duration_us":"#.utf8)
            appendNumber(Int(max(microseconds, 0)))
            bytes.append(UInt8(ascii: "}"))
        }
        bytes.append(UInt8(ascii: "\n"))
        lines += 1
        if bytes.count >= Self.handOverBytes {
            handOver()
        } else if !handOverScheduled {
            handOverScheduled = true
            loop.scheduleTask(in: Self.handOverDelay) { self.handOver() }
        }
    }

    /// Gives what is buffered to the writer.
    package func handOver() {
        handOverScheduled = false
        guard !bytes.isEmpty else { return }
        let chunk = bytes
        bytes = []
        bytes.reserveCapacity(Self.handOverBytes + 1024)
        writer.write(chunk, lines: lines)
        lines = 0
    }

    private func setTimes(_ now: Int) {
        second = now
        var seconds = now
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let year = "\(parts.tm_year + 1900)"
        let clock = "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))"
        commonTime = Array("[\(two(parts.tm_mday))/\(months[Int(parts.tm_mon)])/\(year):\(clock) +0000]".utf8)
        isoTime = Array("\(year)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(clock)Z".utf8)
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// A field of the text format: `"`, `\`, control bytes and bytes past ASCII as `\xHH`, as
    /// nginx writes them, so that a line stays one line and its quotes stay its own.
    private func appendText(_ text: String) {
        for byte in text.utf8 {
            if byte >= 0x20 && byte < 0x7f && byte != UInt8(ascii: "\"") && byte != UInt8(ascii: "\\") {
                bytes.append(byte)
            } else {
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "x"), Self.hex[Int(byte >> 4)], Self.hex[Int(byte & 0xf)]])
            }
        }
    }

    /// A JSON string (Swift strings are valid UTF-8, so only quotes, backslashes and control
    /// characters need escapes).
    private func appendJSON(_ text: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                bytes.append(UInt8(ascii: "\\"))
                bytes.append(byte)
            case 0..<0x20, 0x7f:
                bytes.append(contentsOf: "\\u00".utf8)
                bytes.append(Self.hex[Int(byte >> 4)])
                bytes.append(Self.hex[Int(byte & 0xf)])
            default:
                bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    private func appendNumber(_ value: Int) {
        guard value > 0 else {
            if value == 0 { bytes.append(UInt8(ascii: "0")) } else { bytes.append(contentsOf: String(value).utf8) }
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { space in
            while rest > 0 {
                space[19 - count] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
            }
            bytes.append(contentsOf: space[(20 - count)...])
        }
    }

    /// Microseconds as seconds with six decimals, as nginx's `$request_time` (with three).
    private func appendSeconds(_ microseconds: Int64) {
        let value = Int(max(microseconds, 0))
        appendNumber(value / 1_000_000)
        bytes.append(UInt8(ascii: "."))
        let fraction = value % 1_000_000
        var scale = 100_000
        while scale > 0 {
            bytes.append(UInt8(ascii: "0") + UInt8(fraction / scale % 10))
            scale /= 10
        }
    }
}

/// Writes the access log's buffers, in the order handed over, on a serial queue of its own.
package final class AccessLogWriter: @unchecked Sendable {
    // @unchecked Sendable: `descriptor` is only used on `queue`; the rest is locked or atomic.
    private let queue = DispatchQueue(label: "portico.access-log")
    private var descriptor: Int32
    private let destination: NIOLockedValueBox<String>
    private let queuedBytes = Synchronization.Atomic<Int>(0)
    private let dropped = Synchronization.Atomic<Int>(0)

    /// Beyond this much waiting to be written (a destination that stopped taking lines), new
    /// buffers are dropped and counted rather than held without bound.
    package static let maxQueuedBytes = 64 * 1024 * 1024

    package init(file: String) throws(AccessLogError) {
        self.destination = NIOLockedValueBox(file)
        self.descriptor = try Self.openDescriptor(file)
    }

    /// The destination as configured (`-` for standard output).
    package var file: String { destination.withLockedValue { $0 } }

    deinit {
        if descriptor != STDOUT_FILENO { close(descriptor) }
    }

    package var droppedLines: Int { dropped.load(ordering: .relaxed) }

    private static func openDescriptor(_ file: String) throws(AccessLogError) -> Int32 {
        if file == "-" { return STDOUT_FILENO }
        let fd = Glibc.open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw AccessLogError(description: "cannot open \(file) for appending: \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// Points the log at another destination; buffers handed over before go where they were
    /// meant to.
    package func open(_ file: String) throws(AccessLogError) {
        let fd = try Self.openDescriptor(file)
        destination.withLockedValue { $0 = file }
        queue.async { self.replace(with: fd) }
    }

    /// Opens the same path again (a rotation moved the file away).
    package func reopen() {
        queue.async {
            let file = self.file
            guard file != "-", let fd = try? Self.openDescriptor(file) else { return }
            self.replace(with: fd)
        }
    }

    private func replace(with fd: Int32) {
        if descriptor != STDOUT_FILENO { close(descriptor) }
        descriptor = fd
    }

    /// Queues a buffer of `lines` lines.
    package func write(_ chunk: [UInt8], lines: Int) {
        let queued = queuedBytes.add(chunk.count, ordering: .relaxed).newValue
        guard queued <= Self.maxQueuedBytes else {
            queuedBytes.subtract(chunk.count, ordering: .relaxed)
            dropped.add(lines, ordering: .relaxed)
            return
        }
        queue.async {
            if !self.writeAll(chunk) { self.dropped.add(lines, ordering: .relaxed) }
            self.queuedBytes.subtract(chunk.count, ordering: .relaxed)
        }
    }

    private func writeAll(_ chunk: [UInt8]) -> Bool {
        chunk.withUnsafeBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let result = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if result < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += result
            }
            return true
        }
    }

    /// Returns once everything queued before the call is written.
    package func drain() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async { continuation.resume() }
        }
    }
}
