import NIOConcurrencyHelpers

/// A generation number that moves whenever something of interest has happened (committed
/// writes added to the change log; a replication link's status changed); a peer's long poll
/// waits on it instead of asking again and again.
///
/// A store's feed only sees this process's writes, unless the store listens for other
/// managers' (PostgreSQL, ``Store/waitForChanges(past:timeout:)``).
public final class ChangeFeed: Sendable {
    private struct State {
        var generation: UInt64 = 0
        var nextWaiter: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        /// Waits cancelled before they were registered.
        var cancelled: Set<UInt64> = []
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    /// The current generation; pass it to ``wait(past:timeout:)``.
    public var generation: UInt64 { state.withLockedValue { $0.generation } }

    /// Something happened: wake every waiter.
    public func signal() {
        let waiters = state.withLockedValue { state in
            state.generation &+= 1
            defer { state.waiters = [:] }
            return state.waiters
        }
        for waiter in waiters.values { waiter.resume() }
    }

    /// Returns once the generation has moved past `seen`, after `timeout`, or when the task
    /// is cancelled.
    public func wait(past seen: UInt64, timeout: Duration) async {
        let id = state.withLockedValue { state -> UInt64 in
            defer { state.nextWaiter &+= 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let registered = state.withLockedValue { state -> Bool in
                    guard state.generation == seen, state.cancelled.remove(id) == nil else { return false }
                    state.waiters[id] = continuation
                    return true
                }
                guard registered else { return continuation.resume() }
                Task {
                    try? await Task.sleep(for: timeout)
                    self.resume(id)
                }
            }
        } onCancel: {
            let waiter = state.withLockedValue { state -> CheckedContinuation<Void, Never>? in
                if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
                state.cancelled.insert(id)
                return nil
            }
            waiter?.resume()
        }
    }

    private func resume(_ id: UInt64) {
        if let waiter = state.withLockedValue({ $0.waiters.removeValue(forKey: id) }) { waiter.resume() }
    }
}
