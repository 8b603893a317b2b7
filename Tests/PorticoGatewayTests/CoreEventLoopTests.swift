import NIOConcurrencyHelpers
import NIOCore
@testable import PorticoServer
import PorticoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import PorticoGateway

/// Portico's own event loop keeps NIO's `EventLoop` contract: work handed in runs on the
/// loop's thread in order, timers fire by deadline and can be cancelled, futures complete on
/// it, and shutting down fails what was still scheduled.
@Suite struct CoreEventLoopTests {
    @Test func tasksHandedInRunOnTheLoopInOrder() async throws {
        let loop = try CoreEventLoop(name: "test-core")
        defer { loop.shutdownGracefully { _ in } }
        #expect(!loop.inEventLoop)
        let seen = NIOLockedValueBox<[Int]>([])
        let onLoop = NIOLockedValueBox(true)
        for value in 0..<100 {
            loop.execute {
                if !loop.inEventLoop { onLoop.withLockedValue { $0 = false } }
                seen.withLockedValue { $0.append(value) }
            }
        }
        // Queued after the hundred: by the time it runs, they have.
        let count = try await loop.submit { seen.withLockedValue { $0.count } }.get()
        #expect(count == 100)
        #expect(seen.withLockedValue { $0 } == Array(0..<100))
        #expect(onLoop.withLockedValue { $0 })
    }

    @Test func timersFireByDeadlineAndACancelledOneNever() async throws {
        let loop = try CoreEventLoop(name: "test-core")
        defer { loop.shutdownGracefully { _ in } }
        let order = NIOLockedValueBox<[String]>([])
        let late = loop.scheduleTask(in: .milliseconds(60)) { order.withLockedValue { $0.append("late") } }
        let cancelled = loop.scheduleTask(in: .milliseconds(30)) { order.withLockedValue { $0.append("cancelled") } }
        let early = loop.scheduleTask(in: .milliseconds(10)) { order.withLockedValue { $0.append("early") } }
        let sameDeadline = NIODeadline.now() + .milliseconds(40)
        let first = loop.scheduleTask(deadline: sameDeadline) { order.withLockedValue { $0.append("tie-1") } }
        let second = loop.scheduleTask(deadline: sameDeadline) { order.withLockedValue { $0.append("tie-2") } }
        cancelled.cancel()
        try await early.futureResult.get()
        try await first.futureResult.get()
        try await second.futureResult.get()
        try await late.futureResult.get()
        await #expect(throws: EventLoopError.cancelled) { try await cancelled.futureResult.get() }
        #expect(order.withLockedValue { $0 } == ["early", "tie-1", "tie-2", "late"])
    }

    @Test func aTimerNotYetDueWaitsForItsDeadline() async throws {
        let loop = try CoreEventLoop(name: "test-core")
        defer { loop.shutdownGracefully { _ in } }
        let deadline = NIODeadline.now() + .milliseconds(50)
        let firedAt = try await loop.scheduleTask(deadline: deadline) { NIODeadline.now() }.futureResult.get()
        #expect(firedAt >= deadline)
    }

    @Test func aThrowingTaskFailsItsFuture() async throws {
        struct Refused: Error {}
        let loop = try CoreEventLoop(name: "test-core")
        defer { loop.shutdownGracefully { _ in } }
        await #expect(throws: Refused.self) { try await loop.submit { throw Refused() }.get() }
        await #expect(throws: Refused.self) {
            try await loop.scheduleTask(in: .milliseconds(1)) { throw Refused() }.futureResult.get()
        }
    }

    @Test func promisesCompletedElsewhereCallBackOnTheLoop() async throws {
        let loop = try CoreEventLoop(name: "test-core")
        defer { loop.shutdownGracefully { _ in } }
        let promise = loop.makePromise(of: Int.self)
        let result = promise.futureResult.map { value -> (Int, Bool) in (value * 2, loop.inEventLoop) }
        promise.succeed(21)
        let (value, onLoop) = try await result.get()
        #expect(value == 42)
        #expect(onLoop)
        // Async work started from the loop's futures and delivered back to it.
        let fromTask = try await loop.makeFutureWithTask { 7 }.map { $0 + (loop.inEventLoop ? 1 : 100) }.get()
        #expect(fromTask == 8)
    }

    @Test func aRegisteredDescriptorIsReportedWhenReadable() async throws {
        let loop = try CoreEventLoop(name: "test-core")
        defer { loop.shutdownGracefully { _ in } }
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        _ = fcntl(ends[0], F_SETFL, O_NONBLOCK)
        let received = loop.makePromise(of: [UInt8].self)
        let readEnd = ends[0]
        let reader = PipeReader(fd: readEnd, loop: loop, received: received)
        try await loop.submit { try loop.register(readEnd, events: CoreEvents.readable, handler: reader) }.get()
        let message: [UInt8] = Array("ready".utf8)
        #expect(write(ends[1], message, message.count) == message.count)
        #expect(try await received.futureResult.get() == message)
        close(ends[1])
        #expect(try await reader.closed.futureResult.get())
    }

    @Test func shuttingDownFailsWhatIsScheduledAndClosesRegisteredDescriptors() async throws {
        let loop = try CoreEventLoop(name: "test-core")
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let readEnd = ends[0]
        let reader = PipeReader(fd: readEnd, loop: loop, received: loop.makePromise())
        try await loop.submit { try loop.register(readEnd, events: CoreEvents.readable, handler: reader) }.get()
        let never = loop.scheduleTask(in: .hours(1)) { 1 }
        // Watched before the loop stops (a future's callbacks run on its loop).
        let failure = NIOLockedValueBox<(any Error)?>(nil)
        never.futureResult.whenFailure { error in failure.withLockedValue { $0 = error } }
        try await loop.shutdownGracefully()
        #expect(failure.withLockedValue { $0 as? EventLoopError } == .shutdown)
        #expect(reader.shutDownByLoop.withLockedValue { $0 })
        close(ends[1])
    }

    /// A send to a peer that has gone fails with EPIPE, which closes the connection; it does
    /// not raise SIGPIPE (whose default action would end the whole process: the test run here).
    @Test func aPeerThatHasGoneIsAnErrorNotASignal() async throws {
        let loop = try CoreEventLoop(name: "test-core")
        defer { loop.shutdownGracefully { _ in } }
        var ends: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        _ = fcntl(ends[0], F_SETFL, O_NONBLOCK)
        close(ends[1])
        let closed = loop.makePromise(of: Bool.self)
        let fd = ends[0]
        try await loop.submit {
            let connection = CoreConnection(fd: fd, loop: loop) { closed.succeed(true) }
            connection.write(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"))
            connection.flush()
            #expect(connection.isClosed)
        }.get()
        #expect(try await closed.futureResult.get())
    }

    @Test func aGroupHandsOutEachLoopInTurn() async throws {
        let group = try CoreEventLoopGroup(loopCount: 3)
        defer { group.shutdownGracefully { _ in } }
        let handed = (0..<6).map { _ in ObjectIdentifier(group.next()) }
        let loops = group.loops.map { ObjectIdentifier($0) }
        #expect(handed == loops + loops)
        var names: [String] = []
        for loop in group.loops { names.append(try await loop.submit { loop.name }.get()) }
        #expect(Set(names).count == 3)
    }
}

/// Reads a pipe on the loop; tells what it read, and when the other end closed.
private final class PipeReader: CoreIOHandler, Sendable {
    let fd: Int32
    let loop: CoreEventLoop
    let received: EventLoopPromise<[UInt8]>
    let closed: EventLoopPromise<Bool>
    let shutDownByLoop = NIOLockedValueBox(false)

    init(fd: Int32, loop: CoreEventLoop, received: EventLoopPromise<[UInt8]>) {
        self.fd = fd
        self.loop = loop
        self.received = received
        self.closed = loop.makePromise()
    }

    func ready(_ events: UInt32) {
        #expect(loop.inEventLoop)
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = read(fd, &buffer, buffer.count)
        if count > 0 {
            received.succeed(Array(buffer[..<count]))
        } else if count == 0 {
            loop.deregister(fd)
            close(fd)
            closed.succeed(true)
        }
    }

    func loopShutDown() {
        shutDownByLoop.withLockedValue { $0 = true }
        close(fd)
        received.fail(EventLoopError.shutdown)
        closed.fail(EventLoopError.shutdown)
    }
}
