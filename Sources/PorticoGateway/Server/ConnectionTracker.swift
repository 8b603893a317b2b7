import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import Prometheus

/// The open connections of one listener: counted for limits and metrics, and told to finish
/// when the listener drains.
final class ConnectionTracker: Sendable {
    private struct State {
        var channels: [ObjectIdentifier: any Channel] = [:]
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = NIOLockedValueBox(State())

    /// Adds a connection unless `limit` are already open; returns whether it was added.
    /// `gauge` (the listener's open connections) goes up now and down when it closes, from
    /// the same close callback as the tracker's own bookkeeping.
    func admit(_ channel: any Channel, limit: Int, gauge: Gauge? = nil) -> Bool {
        let admitted = state.withLockedValue { state -> Bool in
            guard state.channels.count < limit else { return false }
            state.channels[ObjectIdentifier(channel)] = channel
            return true
        }
        guard admitted else { return false }
        gauge?.increment()
        channel.closeFuture.whenComplete { [self] _ in
            gauge?.decrement()
            let waiters = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
                state.channels.removeValue(forKey: ObjectIdentifier(channel))
                guard state.channels.isEmpty else { return [] }
                defer { state.waiters.removeAll() }
                return state.waiters
            }
            waiters.forEach { $0.resume() }
        }
        return true
    }

    var count: Int { state.withLockedValue { $0.channels.count } }

    /// The open connections.
    var channels: [any Channel] { state.withLockedValue { Array($0.channels.values) } }

    /// Asks every connection to finish what it is doing and close.
    func quiesceAll() {
        for channel in channels {
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    /// Closes every connection now.
    func closeAll() {
        for channel in channels {
            channel.close(promise: nil)
        }
    }

    /// Returns once no connection is open.
    func waitUntilEmpty() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLockedValue { state -> Bool in
                if state.channels.isEmpty { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }
}
