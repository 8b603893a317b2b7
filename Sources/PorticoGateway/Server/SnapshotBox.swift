import Atomics
import NIOConcurrencyHelpers

/// Holds the current value of something a control plane replaces and a hot path reads.
///
/// Readers keep their own copy with its generation and check one atomic integer per request;
/// only when it moved do they take the lock to fetch the new value. Writers replace the value
/// whole, so a reader sees either the old or the new snapshot, never a mix.
final class SnapshotBox<Value: Sendable>: Sendable {
    private let lock: NIOLockedValueBox<(generation: Int, value: Value)>
    private let generationCounter = ManagedAtomic<Int>(0)

    init(_ value: Value) {
        self.lock = NIOLockedValueBox((0, value))
    }

    /// The generation of the latest value.
    var generation: Int { generationCounter.load(ordering: .acquiring) }

    /// The latest value and its generation.
    func load() -> (generation: Int, value: Value) {
        lock.withLockedValue { $0 }
    }

    /// Publishes a new value.
    func store(_ value: Value) {
        lock.withLockedValue { state in
            state = (state.generation + 1, value)
            generationCounter.store(state.generation, ordering: .releasing)
        }
    }
}

/// A reader's cached copy of a ``SnapshotBox`` value.
struct SnapshotReader<Value: Sendable> {
    let box: SnapshotBox<Value>
    private var generation: Int
    private(set) var value: Value

    init(_ box: SnapshotBox<Value>) {
        self.box = box
        (generation, value) = box.load()
    }

    /// The latest value, refreshed only when the box moved on.
    mutating func current() -> Value {
        if box.generation != generation {
            (generation, value) = box.load()
        }
        return value
    }
}
