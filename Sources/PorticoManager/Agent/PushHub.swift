import NIOConcurrencyHelpers
import PorticoServer
import PorticoStore
import Prometheus
import ServiceLifecycle

/// The agents' waits this manager holds (push): each device's one `wait` message, answered
/// as soon as the store says the device has something new (``WakeFeed``) or when its hold
/// time has passed.
///
/// A wait is registered before the manager looks for what the device should hear, so that a
/// wake arriving in between is not lost: the wait then returns at once. Waking every device
/// (policies published, a certificate announced) goes at ``wakeRate`` devices a second, so
/// that their fetches do not all arrive at once. A held wait costs no CPU and no task: it is
/// an entry in a dictionary with what answers it, timed out by one sweep a second.
public final class PushHub: Service, Sendable {
    /// Why a wait ended.
    public enum Outcome: Sendable, Equatable {
        /// The device has something new.
        case woken
        /// Its hold time passed with nothing new.
        case timedOut
        /// A newer wait of the same device took its place (the agent gave up on this one).
        case replaced
        /// The manager is shutting down.
        case stopping
    }

    /// A wait registered and not answered yet.
    public struct Ticket: Sendable {
        let device: String
        let id: UInt64
    }

    /// What answers a held wait, told once.
    public typealias Resume = @Sendable (Outcome) -> Void

    private struct Waiter {
        let id: UInt64
        let deadline: ContinuousClock.Instant
        var resume: Resume?
        /// Woken before it began waiting.
        var outcome: Outcome?
    }

    private struct State {
        var waiters: [String: Waiter] = [:]
        var nextID: UInt64 = 0
        /// Devices a fan-out still has to wake, in order.
        var fanOut: [String] = []
        var fanOutNext = 0
        var fanOutRunning = false
        var sweeping = false
        var stopped = false
        var wakeUps = 0
        var timeouts = 0
    }

    private let state = NIOLockedValueBox(State())
    /// Devices woken a second when every device is.
    public let wakeRate: Int
    /// `/metrics`: waits held now, waits answered by outcome, devices a fan-out has left.
    private let heldGauge: Gauge?
    private let wokenCounter: Counter?
    private let timedOutCounter: Counter?
    private let fanOutGauge: Gauge?

    /// - Parameters:
    ///   - wakeRate: how many held waits a fan-out answers per second.
    ///   - metrics: where `/metrics` reads the hub's series.
    public init(wakes: WakeFeed, wakeRate: Int = 5_000, metrics: PrometheusCollectorRegistry? = nil) {
        self.wakeRate = max(1, wakeRate)
        self.heldGauge = metrics?.makeGauge(descriptor: .portico("push_held", unit: "", help: "Agents' waits held open by this manager now"))
        self.wokenCounter = metrics?.makeCounter(descriptor: .portico("push_answered", unit: "total", help: "Held waits answered, by why"), labels: [("outcome", "woken")])
        self.timedOutCounter = metrics?.makeCounter(descriptor: .portico("push_answered", unit: "total", help: "Held waits answered, by why"), labels: [("outcome", "timed_out")])
        self.fanOutGauge = metrics?.makeGauge(descriptor: .portico("push_fanout_pending", unit: "", help: "Held waits a fan-out (policies published to everyone) has still to answer"))
        wakes.subscribe { [weak self] target in
            switch target {
            case .device(let id): self?.wake(device: id)
            case .everyDevice: self?.wakeEveryDevice()
            }
        }
    }

    /// Waits held now.
    public var heldCount: Int { state.withLockedValue { $0.waiters.count } }
    /// Waits answered because their device had something new, since start.
    public var wakeUpCount: Int { state.withLockedValue { $0.wakeUps } }
    /// Waits answered with nothing new after their hold time, since start.
    public var timeoutCount: Int { state.withLockedValue { $0.timeouts } }
    /// Devices a fan-out has still to wake.
    public var fanOutPending: Int { state.withLockedValue { $0.fanOut.count - $0.fanOutNext } }
    /// Whether a device's wait is held here now.
    public func isHeld(device: String) -> Bool { state.withLockedValue { $0.waiters[device] != nil } }

    /// Brings the gauge up to date; called under the lock, so that a stale count never
    /// overwrites a newer one.
    private func publish(held: Int) {
        heldGauge?.set(to: Double(held))
    }

    /// Registers a device's wait, to be held for at most `hold`. A wait of the same device
    /// held already is answered ``Outcome/replaced``.
    public func register(device: String, hold: Duration) -> Ticket {
        // Once stopped, nothing is registered: the wait returns `.stopping` at once.
        let (ticket, replaced, startSweep) = state.withLockedValue { state -> (Ticket, Resume?, Bool) in
            state.nextID &+= 1
            let ticket = Ticket(device: device, id: state.nextID)
            if state.stopped { return (ticket, nil, false) }
            let replaced = state.waiters[device]?.resume
            state.waiters[device] = Waiter(id: ticket.id, deadline: .now + hold, resume: nil, outcome: nil)
            let startSweep = !state.sweeping
            state.sweeping = true
            publish(held: state.waiters.count)
            return (ticket, replaced, startSweep)
        }
        replaced?(.replaced)
        if startSweep { startSweeping() }
        return ticket
    }

    /// Holds until the device is woken or the hold time passes, then calls `resume` (at once
    /// if that happened since the wait was registered). Nothing waits meanwhile: a held wait
    /// is this entry and what `resume` keeps.
    public func hold(_ ticket: Ticket, then resume: @escaping Resume) {
        let now: Outcome? = state.withLockedValue { state in
            if state.stopped { return .stopping }
            guard var waiter = state.waiters[ticket.device], waiter.id == ticket.id else { return .replaced }
            if let outcome = waiter.outcome {
                state.waiters[ticket.device] = nil
                publish(held: state.waiters.count)
                return outcome
            }
            waiter.resume = resume
            state.waiters[ticket.device] = waiter
            return nil
        }
        if let now { resume(now) }
    }

    /// Suspends until the device is woken or the hold time passes.
    public func wait(_ ticket: Ticket) async -> Outcome {
        await withCheckedContinuation { continuation in
            hold(ticket) { continuation.resume(returning: $0) }
        }
    }

    /// Forgets a registered wait that is answered without waiting.
    public func cancel(_ ticket: Ticket) {
        let resume = state.withLockedValue { state -> Resume? in
            guard let waiter = state.waiters[ticket.device], waiter.id == ticket.id else { return nil }
            state.waiters[ticket.device] = nil
            publish(held: state.waiters.count)
            return waiter.resume
        }
        resume?(.replaced)
    }

    /// Answers a device's held wait now (or the one it is about to begin).
    public func wake(device: String) {
        let resume = state.withLockedValue { state -> Resume? in
            guard var waiter = state.waiters[device], waiter.outcome == nil else { return nil }
            state.wakeUps += 1
            wokenCounter?.increment()
            guard let resume = waiter.resume else {
                waiter.outcome = .woken
                state.waiters[device] = waiter
                return nil
            }
            state.waiters[device] = nil
            publish(held: state.waiters.count)
            return resume
        }
        resume?(.woken)
    }

    /// Wakes every wait held now, at ``wakeRate`` a second.
    public func wakeEveryDevice() {
        let start = state.withLockedValue { state -> Bool in
            // Devices already queued are not queued twice; the rest join the end.
            let queued = Set(state.fanOut[state.fanOutNext...])
            state.fanOut.append(contentsOf: state.waiters.keys.filter { !queued.contains($0) })
            defer { state.fanOutRunning = true }
            return !state.fanOutRunning
        }
        guard start else { return }
        Task { [weak self] in await self?.runFanOut() }
    }

    private func runFanOut() async {
        // Slices of a hundredth of a second's worth.
        let slice = max(1, wakeRate / 100)
        while true {
            let batch = state.withLockedValue { state -> [String] in
                let end = min(state.fanOut.count, state.fanOutNext + slice)
                let batch = Array(state.fanOut[state.fanOutNext..<end])
                state.fanOutNext = end
                if state.fanOutNext == state.fanOut.count {
                    state.fanOut = []
                    state.fanOutNext = 0
                    if batch.isEmpty { state.fanOutRunning = false }
                }
                return batch
            }
            if batch.isEmpty { return }
            for device in batch { wake(device: device) }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    private func startSweeping() {
        Task { [weak self] in
            while true {
                try? await Task.sleep(for: .seconds(1))
                guard let self, self.sweep() else { return }
            }
        }
    }

    /// Answers the waits whose hold time has passed; false once the hub has stopped.
    private func sweep() -> Bool {
        let now = ContinuousClock.now
        let (expired, running) = state.withLockedValue { state -> ([Resume], Bool) in
            if state.stopped { return ([], false) }
            var expired: [Resume] = []
            for (device, waiter) in state.waiters where waiter.deadline <= now {
                if let resume = waiter.resume {
                    expired.append(resume)
                    state.waiters[device] = nil
                    state.timeouts += 1
                }
            }
            publish(held: state.waiters.count)
            fanOutGauge?.set(to: Double(state.fanOut.count - state.fanOutNext))
            return (expired, true)
        }
        timedOutCounter?.increment(by: Int64(expired.count))
        for resume in expired { resume(.timedOut) }
        return running
    }

    /// Answers every held wait (``Outcome/stopping``) and holds no more.
    public func stop() {
        let resumes = state.withLockedValue { state -> [Resume] in
            state.stopped = true
            defer { state.waiters = [:] }
            publish(held: 0)
            return state.waiters.values.compactMap(\.resume)
        }
        for resume in resumes { resume(.stopping) }
    }

    /// Runs until the process shuts down, then answers the held waits so that the listeners'
    /// drain does not wait for their hold times.
    public func run() async throws {
        try? await gracefulShutdown()
        stop()
    }
}
