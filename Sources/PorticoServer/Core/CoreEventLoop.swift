import Atomics
import CPorticoSystem
import Dispatch
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Something a ``CoreEventLoop`` tells when its descriptor is ready.
package protocol CoreIOHandler: AnyObject {
    /// Called on the loop with the epoll events that fired (`EPOLLIN`, `EPOLLOUT`, `EPOLLHUP`, ...).
    func ready(_ events: UInt32)
    /// The loop is shutting down with the handler still registered: close the descriptor.
    func loopShutDown()
}

/// The epoll events the core asks for and is told of.
package enum CoreEvents {
    package static let readable = portico_epoll_in
    package static let writable = portico_epoll_out
    /// The peer closed or the socket failed.
    package static let hangUp = portico_epoll_hup | portico_epoll_err | portico_epoll_rdhup
    /// The connection is gone both ways or failed: reported whether asked for or not.
    package static let failed = portico_epoll_hup | portico_epoll_err
}

/// Why the core could not do what it was asked.
package struct CoreSystemError: Error, CustomStringConvertible {
    package let call: String
    package let code: Int32

    package init(_ call: String, code: Int32 = errno) {
        self.call = call
        self.code = code
    }

    package var description: String { "\(call): \(String(cString: strerror(code)))" }
}

/// One thread running one epoll instance: Portico's own event loop.
///
/// Conforms to NIO's `EventLoop`, so futures, promises, `NIOLoopBound` and everything written
/// against that protocol work on it unchanged; what it adds is direct registration of
/// descriptors (``register(_:events:handler:)``), so that a connection is a socket and a
/// handler object with nothing between them. Work handed in from other threads goes through a
/// locked queue and an eventfd that wakes the loop (written only when the queue was empty);
/// timers are a heap the loop owns, and the next deadline is `epoll_wait`'s timeout.
package final class CoreEventLoop: EventLoop, @unchecked Sendable {
    // @unchecked Sendable: `inbox` is behind a lock and `thread` is set before any other thread
    // can see the loop (``init(name:)`` waits for it); every other stored property is touched
    // only on the loop's own thread (``inEventLoop``), which is what NIO's loops promise too.

    private let epoll: Int32
    private let wake: Int32
    private var thread = pthread_t()
    private let inbox = NIOLockedValueBox(Inbox())
    /// The tasks being run (``runTasks()``); the loop thread's own.
    private var runningTasks: [() -> Void] = []
    /// Timers by deadline (loop thread only).
    private var timers = TimerHeap()
    private var timerSequence: UInt64 = 0
    /// Handlers by descriptor, with the generation of their registration (events tagged with an
    /// older one are for a descriptor number since closed and reused).
    private var handlers: [Registration?] = []
    private var generation: UInt32 = 0
    private var running = true
    private let started = ConditionLock(value: 0)
    private let finished = ConditionLock(value: 0)
    private var shutdownCallbacks: [(DispatchQueue, @Sendable ((any Error)?) -> Void)] = []
    /// What connections read into (see ``takeReadBuffer()``).
    private var readBuffer: ByteBuffer?
    /// Raw memory for coalescing answers before they are encrypted; used and done with within
    /// one call on the loop.
    package let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    /// Raw memory for one read of TLS records from a socket, lent to OpenSSL while the
    /// connection handles them (answers encrypted meanwhile use ``scratch``, not this).
    package let recordSpace = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    /// The memory the next TLS connection to write records takes (see ``CoreTLSOutput``).
    private var tlsOutputBuffer: ByteBuffer?
    package let name: String

    private struct Inbox {
        var tasks: [() -> Void] = []
        var stopping = false
    }

    private struct Registration {
        let handler: any CoreIOHandler
        let generation: UInt32
    }

    /// Starts the loop's thread.
    package init(name: String) throws {
        self.name = name
        epoll = portico_epoll_create()
        guard epoll >= 0 else { throw CoreSystemError("epoll_create1") }
        wake = portico_eventfd()
        guard wake >= 0 else {
            let error = CoreSystemError("eventfd")
            Glibc.close(epoll)
            throw error
        }
        // Tag 0 is the wake descriptor's (registrations start at generation 1).
        guard portico_epoll_ctl(epoll, portico_epoll_add, wake, CoreEvents.readable, 0) == 0 else {
            let error = CoreSystemError("epoll_ctl")
            Glibc.close(epoll)
            Glibc.close(wake)
            throw error
        }
        let context = Unmanaged.passRetained(self).toOpaque()
        let created = pthread_create(&thread, nil, coreEventLoopThread, context)
        guard created == 0 else {
            Unmanaged<CoreEventLoop>.fromOpaque(context).release()
            Glibc.close(epoll)
            Glibc.close(wake)
            throw CoreSystemError("pthread_create", code: created)
        }
        started.lock()
        started.unlock(withValue: 1)
    }

    deinit {
        scratch.deallocate()
        recordSpace.deallocate()
    }

    /// The thread's body: waits until `thread` is set, then runs until shut down.
    fileprivate func threadMain() {
        started.lock(whenValue: 1)
        started.unlock()
        portico_set_thread_name(String(name.prefix(15)))
        run()
    }

    // MARK: - EventLoop

    package var inEventLoop: Bool { pthread_equal(pthread_self(), thread) != 0 }

    package func execute(_ task: @escaping @Sendable () -> Void) {
        enqueue(task)
    }

    /// Runs `task` on the loop. Not `@Sendable`: for work already on the loop (a connection's
    /// own callbacks), or handed in by code that proved it is safe to.
    private func enqueue(_ task: @escaping () -> Void) {
        let wasEmpty = inbox.withLockedValue { inbox in
            let wasEmpty = inbox.tasks.isEmpty
            inbox.tasks.append(task)
            return wasEmpty
        }
        // The loop drains the queue before it waits again; only a loop that may be waiting
        // needs waking.
        if wasEmpty && !inEventLoop { signal() }
    }

    private func signal() {
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
    }

    package func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        let promise = makePromise(of: T.self)
        let timer = CoreTimer(promise: promise, task: task)
        if inEventLoop {
            add(timer, deadline: deadline)
        } else {
            enqueue { self.add(timer, deadline: deadline) }
        }
        return Scheduled(promise: promise) {
            // Cancelled: the promise has failed; the timer is skipped when it comes due.
            timer.cancelled.store(true, ordering: .relaxed)
        }
    }

    package func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        scheduleTask(deadline: .now() + delay, task)
    }

    package func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable ((any Error)?) -> Void) {
        let alreadyStopping = inbox.withLockedValue { inbox in
            defer { inbox.stopping = true }
            return inbox.stopping
        }
        if alreadyStopping {
            // Told once the thread has finished.
            DispatchQueue.global().async {
                self.finished.lock(whenValue: 1)
                self.finished.unlock()
                queue.async { callback(nil) }
            }
            return
        }
        enqueue {
            self.running = false
            self.shutdownCallbacks.append((queue, callback))
        }
    }

    package func next() -> any EventLoop { self }

    package func any() -> any EventLoop { self }

    package func makeIterator() -> EventLoopIterator { EventLoopIterator([self]) }

    // MARK: - Descriptors

    /// Tells `handler` when `fd` is ready for `events` (on the loop).
    package func register(_ fd: Int32, events: UInt32, handler: any CoreIOHandler) throws {
        preconditionInEventLoop()
        generation = generation == UInt32.max ? 1 : generation + 1
        let index = Int(fd)
        if handlers.count <= index {
            handlers.append(contentsOf: repeatElement(nil, count: max(index + 1 - handlers.count, handlers.count)))
        }
        guard portico_epoll_ctl(epoll, portico_epoll_add, fd, events, Self.tag(fd, generation)) == 0 else {
            throw CoreSystemError("epoll_ctl")
        }
        handlers[index] = Registration(handler: handler, generation: generation)
    }

    /// Changes the events `fd` is watched for.
    package func modify(_ fd: Int32, events: UInt32) {
        preconditionInEventLoop()
        guard let registration = handlers[Int(fd)] else { return }
        _ = portico_epoll_ctl(epoll, portico_epoll_mod, fd, events, Self.tag(fd, registration.generation))
    }

    /// Stops watching `fd` (call before closing it).
    package func deregister(_ fd: Int32) {
        preconditionInEventLoop()
        guard Int(fd) < handlers.count, handlers[Int(fd)] != nil else { return }
        _ = portico_epoll_ctl(epoll, portico_epoll_del, fd, 0, 0)
        handlers[Int(fd)] = nil
    }

    /// How much one read takes.
    package static let readSize = 16 * 1024

    /// The buffer a connection reads into, empty. One per loop, handed back after each read
    /// (``returnReadBuffer(_:)``): when the connection kept none of the bytes, the next read
    /// reuses the same memory; when it kept some (a partial head, a request being answered),
    /// emptying it makes new memory for the next and leaves the kept bytes alone.
    package func takeReadBuffer() -> ByteBuffer {
        guard var buffer = readBuffer.take() else { return ByteBufferAllocator().buffer(capacity: Self.readSize) }
        buffer.clear()
        return buffer
    }

    package func returnReadBuffer(_ buffer: ByteBuffer) {
        readBuffer = buffer
    }

    /// Memory for a connection's TLS records, empty; handed back with
    /// ``returnTLSOutputBuffer(_:)`` once the socket took them all.
    package func takeTLSOutputBuffer() -> ByteBuffer {
        tlsOutputBuffer.take() ?? ByteBufferAllocator().buffer(capacity: 4 * 1024)
    }

    /// Keeps `buffer`'s memory for the next connection, unless it grew large (a big answer).
    package func returnTLSOutputBuffer(_ buffer: ByteBuffer) {
        guard buffer.capacity <= 64 * 1024 else { return }
        var buffer = buffer
        buffer.clear()
        tlsOutputBuffer = buffer
    }

    package enum SocketRead {
        /// What was read, in the loop's read buffer: hand it back with ``returnReadBuffer(_:)``.
        case bytes(ByteBuffer)
        /// Nothing to read now.
        case wouldBlock
        /// The end of the stream, or a failure.
        case ended
    }

    /// One `read` from `fd` into the loop's read buffer.
    package func read(from fd: Int32) -> SocketRead {
        var buffer = takeReadBuffer()
        var failure: Int32 = 0
        let count = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { space in
            let count = Glibc.read(fd, space.baseAddress, space.count)
            if count < 0 { failure = errno }
            return max(count, 0)
        }
        if count > 0 { return .bytes(buffer) }
        returnReadBuffer(buffer)
        return failure == EAGAIN || failure == EINTR ? .wouldBlock : .ended
    }

    private static func tag(_ fd: Int32, _ generation: UInt32) -> UInt64 {
        UInt64(generation) << 32 | UInt64(UInt32(bitPattern: fd))
    }

    // MARK: - Running

    private func run() {
        let capacity = 256
        let events = UnsafeMutablePointer<portico_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        while running {
            let ready = portico_epoll_wait(epoll, events, Int32(capacity), waitTimeout())
            if ready < 0 && errno != EINTR { fatalError("\(name): \(CoreSystemError("epoll_wait"))") }
            for index in 0..<max(0, Int(ready)) {
                let tag = events[index].tag
                if tag == 0 {
                    var value: UInt64 = 0
                    _ = Glibc.read(wake, &value, 8)
                    continue
                }
                let fd = Int(UInt32(truncatingIfNeeded: tag))
                guard fd < handlers.count, let registration = handlers[fd], registration.generation == UInt32(tag >> 32) else { continue }
                registration.handler.ready(events[index].events)
            }
            runDueTimers()
            runTasks()
        }
        finish()
    }

    /// Milliseconds until the next timer (rounded up), 0 with tasks queued, -1 with neither.
    private func waitTimeout() -> Int32 {
        if inbox.withLockedValue({ !$0.tasks.isEmpty }) { return 0 }
        guard let next = timers.first?.deadline else { return -1 }
        let now = NIODeadline.now().uptimeNanoseconds
        guard next > now else { return 0 }
        let milliseconds = (next - now + 999_999) / 1_000_000
        return Int32(clamping: milliseconds)
    }

    /// Runs what was handed in since the last time. The queue is swapped with `runningTasks` (the
    /// loop thread's own) rather than copied out: copying it and emptying the original
    /// allocated an array on every turn of the loop, tasks or none.
    private func runTasks() {
        inbox.withLockedValue { inbox in
            if !inbox.tasks.isEmpty { swap(&inbox.tasks, &runningTasks) }
        }
        guard !runningTasks.isEmpty else { return }
        for task in runningTasks { task() }
        runningTasks.removeAll(keepingCapacity: true)
    }

    private func add(_ timer: any ScheduledWork, deadline: NIODeadline) {
        timerSequence += 1
        timers.insert(TimerEntry(deadline: deadline.uptimeNanoseconds, sequence: timerSequence, work: timer))
    }

    private func runDueTimers() {
        let now = NIODeadline.now().uptimeNanoseconds
        while let first = timers.first, first.deadline <= now {
            timers.removeFirst()
            first.work.run()
        }
    }

    /// After the last iteration: fails what is scheduled, runs what was handed in, tells the
    /// handlers still registered, closes the loop's descriptors, reports.
    private func finish() {
        while let first = timers.first {
            timers.removeFirst()
            first.work.fail(EventLoopError.shutdown)
        }
        runTasks()
        for case let registration? in handlers { registration.handler.loopShutDown() }
        handlers.removeAll()
        Glibc.close(epoll)
        Glibc.close(wake)
        let callbacks = shutdownCallbacks
        shutdownCallbacks.removeAll()
        finished.lock()
        finished.unlock(withValue: 1)
        for (queue, callback) in callbacks { queue.async { callback(nil) } }
    }
}

/// The loop thread's entry (a `nonisolated` function: a closure written where an actor is
/// in scope would be isolated to it and trap on a thread of its own).
private nonisolated func coreEventLoopThread(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let loop = Unmanaged<CoreEventLoop>.fromOpaque(context!).takeRetainedValue()
    loop.threadMain()
    return nil
}

// MARK: - Timers

private protocol ScheduledWork: AnyObject {
    func run()
    func fail(_ error: any Error)
}

private final class CoreTimer<T>: ScheduledWork, Sendable {
    let promise: EventLoopPromise<T>
    let task: @Sendable () throws -> T
    let cancelled = ManagedAtomic(false)

    init(promise: EventLoopPromise<T>, task: @escaping @Sendable () throws -> T) {
        self.promise = promise
        self.task = task
    }

    func run() {
        guard !cancelled.load(ordering: .relaxed) else { return }
        do {
            // On the loop (timers only run there), where a non-Sendable value may complete it.
            promise.assumeIsolatedUnsafeUnchecked().succeed(try task())
        } catch {
            promise.fail(error)
        }
    }

    func fail(_ error: any Error) {
        promise.fail(error)
    }
}

private struct TimerEntry {
    let deadline: UInt64
    /// Ties on the deadline run in the order scheduled.
    let sequence: UInt64
    let work: any ScheduledWork

    func precedes(_ other: TimerEntry) -> Bool {
        deadline != other.deadline ? deadline < other.deadline : sequence < other.sequence
    }
}

/// A binary min-heap of timers.
private struct TimerHeap {
    private var entries: [TimerEntry] = []

    var first: TimerEntry? { entries.first }

    mutating func insert(_ entry: TimerEntry) {
        entries.append(entry)
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].precedes(entries[parent]) else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    mutating func removeFirst() {
        let last = entries.removeLast()
        guard !entries.isEmpty else { return }
        entries[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < entries.count && entries[left].precedes(entries[smallest]) { smallest = left }
            if right < entries.count && entries[right].precedes(entries[smallest]) { smallest = right }
            if smallest == parent { return }
            entries.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

/// The server engine's loops: a fixed set of ``CoreEventLoop``s, one thread and one epoll
/// instance each. Whoever runs a ``Gateway`` makes them (one per core) and hands them to it;
/// nothing in the engine makes loops of its own.
public final class CoreEventLoopGroup: EventLoopGroup, Sendable {
    package let loops: [CoreEventLoop]
    private let counter = NIOLockedValueBox(0)

    /// The loops of a server: one per CPU core as NIO counts them (`NIO_SINGLETON_GROUP_LOOP_COUNT`
    /// sets another number).
    public static func perCore() throws -> CoreEventLoopGroup {
        try CoreEventLoopGroup(loopCount: NIOSingletons.groupLoopCountSuggestion)
    }

    public init(loopCount: Int, name: String = "portico-core") throws {
        var loops: [CoreEventLoop] = []
        do {
            for index in 0..<max(1, loopCount) { loops.append(try CoreEventLoop(name: "\(name)-\(index)")) }
        } catch {
            for loop in loops { try? loop.syncShutdownGracefully() }
            throw error
        }
        self.loops = loops
    }

    public func next() -> any EventLoop {
        let index = counter.withLockedValue { value in
            defer { value &+= 1 }
            return value
        }
        return loops[index % loops.count]
    }

    public func any() -> any EventLoop {
        loops.first { $0.inEventLoop } ?? next()
    }

    public func makeIterator() -> EventLoopIterator { EventLoopIterator(loops) }

    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable ((any Error)?) -> Void) {
        let remaining = NIOLockedValueBox(loops.count)
        for loop in loops {
            loop.shutdownGracefully(queue: queue) { _ in
                let last = remaining.withLockedValue { count in
                    count -= 1
                    return count == 0
                }
                if last { callback(nil) }
            }
        }
    }
}

/// A loop is also a task executor: a request's service code started with the loop as its
/// preference runs on the loop's thread, as the connection does, instead of hopping to the
/// shared pool and back (work that blocks, such as password hashing, goes to a thread pool of
/// its own).
extension CoreEventLoop: TaskExecutor {
    package func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        enqueue { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
