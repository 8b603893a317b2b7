import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// A certificate/key pair on disk that new TLS connections pick up when it changes.
///
/// Open connections keep the pair they started with. A change that does not load (unreadable,
/// a key of another certificate, expired) leaves the last good pair in service and is
/// reported through ``lastError`` and the reload counters.
public final class ReloadableIdentity: Sendable {
    public let certificatePath: String
    public let privateKeyPath: String

    private struct State {
        var identity: ServerIdentity
        /// Counts the loads of changed files (a new chain may keep the same leaf).
        var generation = 0
        var stamp: FileStamp?
        var lastError: String?
    }
    private let state: NIOLockedValueBox<State>

    /// The outcome of a reload attempt.
    public enum ReloadOutcome: Sendable, Equatable {
        case unchanged
        case reloaded
        case failed(String)
    }

    /// Loads the pair now.
    public init(certificatePath: String, privateKeyPath: String) throws(IdentityError) {
        let stamp = FileStamp(certificatePath, privateKeyPath)
        let identity = try ServerIdentity.load(certificatePath: certificatePath, privateKeyPath: privateKeyPath)
        self.certificatePath = certificatePath
        self.privateKeyPath = privateKeyPath
        self.state = NIOLockedValueBox(State(identity: identity, stamp: stamp))
    }

    /// The pair in service.
    public var current: ServerIdentity { state.withLockedValue { $0.identity } }

    /// What went wrong with the last attempt to load a changed pair, if it failed.
    public var lastError: String? { state.withLockedValue { $0.lastError } }

    /// What a TLS handshake should serve now (read once per ClientHello).
    /// How many times the pair was replaced (read per connection, without copying the pair).
    package var generation: Int { state.withLockedValue { $0.generation } }

    /// The pair in service and its generation, read together.
    package var currentAndGeneration: (ServerIdentity, Int) { state.withLockedValue { ($0.identity, $0.generation) } }

    /// Loads the files again if they changed since the last load, or always when `force` is set.
    @discardableResult
    public func reload(force: Bool = false) -> ReloadOutcome {
        let stamp = FileStamp(certificatePath, privateKeyPath)
        let known = state.withLockedValue { $0.stamp }
        if !force, stamp == known { return .unchanged }
        do {
            let identity = try ServerIdentity.load(certificatePath: certificatePath, privateKeyPath: privateKeyPath)
            let changed = state.withLockedValue { state -> Bool in
                let changed = state.identity.fingerprint != identity.fingerprint
                state.identity = identity
                state.generation += 1
                state.stamp = stamp
                state.lastError = nil
                return changed
            }
            return changed ? .reloaded : .unchanged
        } catch {
            // Remember the stamp so that a broken pair is reported once, not on every poll;
            // a further change to either file is tried again.
            state.withLockedValue {
                $0.stamp = stamp
                $0.lastError = error.message
            }
            return .failed(error.message)
        }
    }
}

/// What identifies a version of a pair of files: inode, size and modification time of each.
package struct FileStamp: Equatable, Sendable {
    package var parts: [Int64]

    package init?(_ paths: String...) {
        var parts: [Int64] = []
        for path in paths {
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            parts += [Int64(info.st_ino), Int64(info.st_size), Int64(info.st_mtim.tv_sec), Int64(info.st_mtim.tv_nsec)]
        }
        self.parts = parts
    }
}
