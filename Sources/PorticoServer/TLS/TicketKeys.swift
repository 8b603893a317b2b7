import NIOConcurrencyHelpers

/// The keys a listener seals its TLS session tickets with, newest first.
///
/// A new key is made every `rotation` and the last `kept` are accepted, so a ticket resumes
/// for at least `rotation * (kept - 1)` after it was issued, and no key protects sessions for
/// longer than `rotation * kept`. A ticket sealed under an older key is accepted and replaced
/// by one under the newest. The ring belongs to the listener, not to a TLS context: a reloaded
/// identity does not cost every client a full handshake.
package final class TicketKeys: Sendable {
    package struct Key: Sendable {
        /// What a ticket names its key by (16 bytes, random).
        package let name: [UInt8]
        package let cipherKey: [UInt8]
        package let macKey: [UInt8]
        package let made: ContinuousClock.Instant
    }

    package static let nameLength = 16

    package let rotation: Duration
    package let kept: Int
    private let now: @Sendable () -> ContinuousClock.Instant
    private let ring: NIOLockedValueBox<[Key]>

    /// With the defaults a ticket resumes for at least two hours, the sessions' lifetime.
    package init(rotation: Duration = .seconds(3600), kept: Int = 3, now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.rotation = rotation
        self.kept = max(kept, 1)
        self.now = now
        self.ring = NIOLockedValueBox([Self.makeKey(at: now())])
    }

    private static func makeKey(at instant: ContinuousClock.Instant) -> Key {
        var random = SystemRandomNumberGenerator()
        func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in random.next() } }
        return Key(name: bytes(nameLength), cipherKey: bytes(32), macKey: bytes(32), made: instant)
    }

    /// The key to seal a new ticket with (made now when the newest is due for rotation).
    package func current() -> Key {
        let now = now()
        return ring.withLockedValue { keys in
            if keys[0].made.duration(to: now) >= rotation {
                keys.insert(Self.makeKey(at: now), at: 0)
                if keys.count > kept { keys.removeLast(keys.count - kept) }
            }
            return keys[0]
        }
    }

    /// The key a ticket names, if it is still accepted, and whether it is the newest.
    package func key(named name: UnsafeRawBufferPointer) -> (key: Key, isNewest: Bool)? {
        let now = now()
        return ring.withLockedValue { keys in
            for (index, key) in keys.enumerated() where key.name.elementsEqual(name) {
                // A key older than the ring's span is refused even if no ticket was sealed
                // since (no rotation happened to drop it).
                guard key.made.duration(to: now) < rotation * kept else { return nil }
                return (key, index == 0 && key.made.duration(to: now) < rotation)
            }
            return nil
        }
    }
}
