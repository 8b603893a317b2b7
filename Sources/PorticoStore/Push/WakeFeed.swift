import NIOConcurrencyHelpers

/// Devices that have something new to hear (a command queued for them, the policies
/// published, a certificate announced), told to whoever holds their agents' waits.
///
/// A write names the devices in its transaction (``Transaction/wake(device:)``,
/// ``Transaction/wakeEveryDevice()``); once it has committed, this manager's subscriber hears
/// of them at once, and on PostgreSQL every other manager sharing the database hears of them
/// through a notification sent in the same transaction (delivered at commit, so never before
/// the change is visible).
public final class WakeFeed: Sendable {
    /// Who is woken.
    public enum Target: Sendable, Equatable {
        case device(String)
        case everyDevice
    }

    private let subscriber = NIOLockedValueBox<(@Sendable (Target) -> Void)?>(nil)

    public init() {}

    /// Sets the one subscriber (the manager's push hub), replacing any earlier one.
    public func subscribe(_ handler: @escaping @Sendable (Target) -> Void) {
        subscriber.withLockedValue { $0 = handler }
    }

    func deliver(_ targets: [Target]) {
        guard !targets.isEmpty, let handler = subscriber.withLockedValue({ $0 }) else { return }
        for target in targets { handler(target) }
    }

    /// The notification payload: the manager that sent it (to skip its own, already
    /// delivered), then `*` or a device id.
    static func payload(_ target: Target, from instance: String) -> String {
        switch target {
        case .device(let id): instance + "|" + id
        case .everyDevice: instance + "|*"
        }
    }

    /// A notification another manager sent, or nil for this manager's own or a malformed one.
    static func target(ofPayload payload: String, skipping instance: String) -> Target? {
        guard let bar = payload.firstIndex(of: "|") else { return nil }
        guard payload[..<bar] != instance else { return nil }
        let rest = payload[payload.index(after: bar)...]
        if rest == "*" { return .everyDevice }
        guard !rest.isEmpty else { return nil }
        return .device(String(rest))
    }
}
