import Atomics
import NIOConcurrencyHelpers
import NIOCore

/// Holds the current value of something a control plane replaces and a hot path reads.
///
/// Readers keep their own copy with its generation and check one atomic integer per request;
/// only when it moved do they take the lock to fetch the new value. Writers replace the value
/// whole, so a reader sees either the old or the new snapshot, never a mix.
///
/// Each event loop reads its own copy of the value (made by `localize` the first time a loop
/// asks for a generation): objects the hot path retains and releases per request (routes,
/// fixed responses, the snapshot itself) are then never shared by two cores. A reference count
/// that two cores change, each at a hundred thousand requests a second, moves its cache line
/// between them on every change.
package final class SnapshotBox<Value: Sendable>: Sendable {
    private struct State {
        var generation: Int
        var value: Value
        /// The copy of `value` each event loop reads, by loop.
        var local: [ObjectIdentifier: Value] = [:]
    }

    private let lock: NIOLockedValueBox<State>
    private let generationCounter = ManagedAtomic<Int>(0)
    private let localize: @Sendable (Value) -> Value

    package init(_ value: Value, localize: @escaping @Sendable (Value) -> Value = { $0 }) {
        self.lock = NIOLockedValueBox(State(generation: 0, value: value))
        self.localize = localize
    }

    /// The generation of the latest value.
    package var generation: Int { generationCounter.load(ordering: .acquiring) }

    /// The latest value and its generation: the copy made for `eventLoop`, or the value
    /// itself without a loop.
    package func load(for eventLoop: (any EventLoop)? = nil) -> (generation: Int, value: Value) {
        lock.withLockedValue { state in
            guard let eventLoop else { return (state.generation, state.value) }
            let key = ObjectIdentifier(eventLoop)
            if let local = state.local[key] { return (state.generation, local) }
            let local = localize(state.value)
            state.local[key] = local
            return (state.generation, local)
        }
    }

    /// Publishes a new value.
    package func store(_ value: Value) {
        lock.withLockedValue { state in
            state = State(generation: state.generation + 1, value: value)
            generationCounter.store(state.generation, ordering: .releasing)
        }
    }
}

/// A reader's cached copy of a ``SnapshotBox`` value (its event loop's copy).
package struct SnapshotReader<Value: Sendable> {
    package let box: SnapshotBox<Value>
    private let eventLoop: (any EventLoop)?
    /// The generation of `value`.
    package private(set) var generation: Int
    package private(set) var value: Value

    package init(_ box: SnapshotBox<Value>, eventLoop: (any EventLoop)? = nil) {
        self.box = box
        self.eventLoop = eventLoop
        (generation, value) = box.load(for: eventLoop)
    }

    /// Whether `value` is the latest (one atomic load).
    package var isCurrent: Bool { box.generation == generation }

    /// The latest value, refreshed only when the box moved on.
    package mutating func current() -> Value {
        if box.generation != generation {
            (generation, value) = box.load(for: eventLoop)
        }
        return value
    }
}
