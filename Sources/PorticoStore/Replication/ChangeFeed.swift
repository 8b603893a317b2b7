import NIOConcurrencyHelpers

/// A generation number that moves whenever committed writes have added to the change log;
/// a peer's long poll waits on it instead of asking again and again.
///
/// It only sees this process's writes: a manager sharing its database with others learns
/// of their changes when the wait times out.
public final class ChangeFeed: Sendable {
    private struct State {
        var generation: UInt64 = 0
        var nextWaiter: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    /// The current generation; pass it to ``wait(past:timeout:)``.
    public var generation: UInt64 { state.withLockedValue { $0.generation } }

    /// New changes are in the log: wake every waiter.
    public func signal() {
        let waiters = state.withLockedValue { state in
            state.generation &+= 1
            defer { state.waiters = [:] }
            return state.waiters
        }
        for waiter in waiters.values { waiter.resume() }
    }

    /// Returns once the generation has moved past `seen`, or after `timeout`.
    public func wait(past seen: UInt64, timeout: Duration) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let id: UInt64? = state.withLockedValue { state in
                guard state.generation == seen else { return nil }
                let id = state.nextWaiter
                state.nextWaiter &+= 1
                state.waiters[id] = continuation
                return id
            }
            guard let id else { return continuation.resume() }
            Task {
                try? await Task.sleep(for: timeout)
                if let waiter = self.state.withLockedValue({ $0.waiters.removeValue(forKey: id) }) { waiter.resume() }
            }
        }
    }
}
