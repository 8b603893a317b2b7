import NIOConcurrencyHelpers
import NIOCore

/// Something with a deadline that one event loop's sweeper checks.
package protocol DeadlineClient: AnyObject {
    /// Where the client sits in its sweeper's list; kept by the sweeper.
    var sweepIndex: Int { get set }
    /// The sweeper it joined; kept by ``joinSweeper(on:)`` and ``leaveSweeper()``.
    var sweeper: DeadlineSweeper? { get set }
    /// Called on the event loop at every sweep.
    func sweep(now: NIODeadline)
}

extension DeadlineClient {
    /// Joins the sweeper of the loop it runs on (a handler does so in `handlerAdded`).
    package func joinSweeper(on eventLoop: any EventLoop) {
        let sweeper = DeadlineSweeper.current(on: eventLoop)
        self.sweeper = sweeper
        sweeper.register(self)
    }

    /// Leaves it (in `handlerRemoved`).
    package func leaveSweeper() {
        sweeper?.unregister(self)
        sweeper = nil
    }
}

/// Checks the connection deadlines of one event loop (handshake, head, body and idle
/// timeouts) from one repeating task, four times a second.
///
/// A scheduled task per connection is what NIO offers, but cancelling one searches the
/// loop's whole list of scheduled tasks; with connections closing at thousands per second
/// (each leaving NIOSSL's 5 s shutdown timer behind) that search was a large share of the
/// CPU of new TLS connections. Registering here and leaving is constant time, and a deadline moved
/// per request is a stored value.
package final class DeadlineSweeper {
    package static let interval = TimeAmount.milliseconds(250)

    private let eventLoop: any EventLoop
    private var clients: [any DeadlineClient] = []
    private var task: RepeatedTask?

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    package func register(_ client: any DeadlineClient) {
        eventLoop.preconditionInEventLoop()
        client.sweepIndex = clients.count
        clients.append(client)
        if task == nil {
            let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
            task = eventLoop.scheduleRepeatedTask(initialDelay: Self.interval, delay: Self.interval) { _ in
                loopBound.value.sweep()
            }
        }
    }

    package func unregister(_ client: any DeadlineClient) {
        eventLoop.preconditionInEventLoop()
        let index = client.sweepIndex
        guard index >= 0, index < clients.count, clients[index] === client else { return }
        let last = clients.removeLast()
        if index < clients.count {
            clients[index] = last
            last.sweepIndex = index
        }
        client.sweepIndex = -1
    }

    private func sweep() {
        if clients.isEmpty {
            // Nothing to watch: stop until the next connection registers.
            task?.cancel()
            task = nil
            return
        }
        let now = NIODeadline.now()
        // A client may close (and unregister) while swept; walk a snapshot.
        for client in clients where client.sweepIndex >= 0 {
            client.sweep(now: now)
        }
    }

    /// Each event loop's sweeper, made on first use.
    private static let sweepers = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<DeadlineSweeper>]>([:])

    /// The sweeper of the loop this is called on.
    package static func current(on eventLoop: any EventLoop) -> DeadlineSweeper {
        eventLoop.preconditionInEventLoop()
        let key = ObjectIdentifier(eventLoop)
        return sweepers.withLockedValue { sweepers in
            if let existing = sweepers[key] { return existing.value }
            let created = DeadlineSweeper(eventLoop: eventLoop)
            sweepers[key] = NIOLoopBound(created, eventLoop: eventLoop)
            return created
        }
    }
}
