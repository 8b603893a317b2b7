import Foundation
import NIOPosix
import PorticoProtocol

/// Operator and local user passwords: scrypt (N = 2^15, r = 8, p = 1, 32 MiB, about 0.1 s)
/// in ``PasswordVerifier``'s format, worked out on threads of their own.
public enum PasswordHasher {
    /// Threads of their own: scrypt is slow on purpose, and on the shared pool (where SQLite
    /// and file reads run) a burst of sign-ins, or a password spray, would stall the
    /// manager's database work behind it. Two threads: sign-ins queue, nothing else waits.
    static let pool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        return pool
    }()

    /// Hashes off the caller's thread (the work is deliberately slow).
    /// - Parameter rounds: log2 of scrypt's N; the stored hash names it, and ``verify`` reads
    ///   it from there (tests make cheaper accounts with a lower one).
    public static func hash(_ password: String, logRounds rounds: Int = PasswordVerifier.defaultLogRounds) async throws -> String {
        try await pool.runIfActive { try PasswordVerifier.make(password, logRounds: rounds) }
    }

    /// Whether `password` matches a stored hash; false for a hash it cannot read.
    public static func verify(_ password: String, against stored: String) async -> Bool {
        (try? await pool.runIfActive { PasswordVerifier.matches(password, stored) }) ?? false
    }
}
