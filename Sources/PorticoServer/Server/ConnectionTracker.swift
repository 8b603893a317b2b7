import NIOConcurrencyHelpers
import Prometheus

/// An open connection as its listener's tracker sees it: something to ask to finish, or to close.
package protocol TrackedConnection: Sendable {
    /// Finish the request in progress, then close.
    func quiesce()
    func close()
}

/// The open connections of one listener: counted for limits and metrics, and told to finish
/// when the listener drains.
package final class ConnectionTracker: Sendable {
    private struct State {
        var connections: [ObjectIdentifier: any TrackedConnection] = [:]
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = NIOLockedValueBox(State())

    /// Adds a connection known by `id` unless `limit` are already open; returns whether it
    /// was added. `gauge` (the listener's open connections) goes up now; its owner calls
    /// ``release(_:gauge:)`` when it closes.
    package func admit(_ connection: any TrackedConnection, id: ObjectIdentifier, limit: Int, gauge: Gauge? = nil) -> Bool {
        let admitted = state.withLockedValue { state -> Bool in
            guard state.connections.count < limit else { return false }
            state.connections[id] = connection
            return true
        }
        guard admitted else { return false }
        gauge?.increment()
        return true
    }

    /// The connection `id` has closed.
    package func release(_ id: ObjectIdentifier, gauge: Gauge? = nil) {
        gauge?.decrement()
        let waiters = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
            state.connections.removeValue(forKey: id)
            guard state.connections.isEmpty else { return [] }
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        waiters.forEach { $0.resume() }
    }

    package var count: Int { state.withLockedValue { $0.connections.count } }

    private var all: [any TrackedConnection] { state.withLockedValue { Array($0.connections.values) } }

    /// Asks every connection to finish what it is doing and close.
    package func quiesceAll() {
        for connection in all { connection.quiesce() }
    }

    /// Closes every connection now.
    package func closeAll() {
        for connection in all { connection.close() }
    }

    /// Returns once no connection is open.
    package func waitUntilEmpty() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLockedValue { state -> Bool in
                if state.connections.isEmpty { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }
}
