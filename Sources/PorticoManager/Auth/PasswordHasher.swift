import Crypto
import Foundation
import NIOPosix
import PorticoProtocol
import PorticoStore
import _CryptoExtras

/// Operator passwords: scrypt (N = 2^15, r = 8, p = 1, 32 MiB, about 0.1 s), stored as
/// `$scrypt$ln=15,r=8,p=1$<salt>$<hash>` (base64url), compared in constant time.
public enum PasswordHasher {
    static let logRounds = 15  // the default of hash(_:logRounds:)
    static let blockSize = 8
    static let parallelism = 1

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
    public static func hash(_ password: String, logRounds rounds: Int = 15) async throws -> String {
        let salt = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let derived = try await pool.runIfActive {
            try derive(password, salt: salt, logRounds: rounds, blockSize: blockSize, parallelism: parallelism)
        }
        return "$scrypt$ln=\(rounds),r=\(blockSize),p=\(parallelism)$\(Base64URL.encode(salt))$\(Base64URL.encode(derived))"
    }

    /// Whether `password` matches a stored hash; false for a hash it cannot read.
    public static func verify(_ password: String, against stored: String) async -> Bool {
        let parts = stored.split(separator: "$", omittingEmptySubsequences: true)
        guard parts.count == 4, parts[0] == "scrypt" else { return false }
        var parameters: [String: Int] = [:]
        for pair in parts[1].split(separator: ",") {
            let kv = pair.split(separator: "=")
            if kv.count == 2, let value = Int(kv[1]) { parameters[String(kv[0])] = value }
        }
        guard let ln = parameters["ln"], let r = parameters["r"], let p = parameters["p"], (10...20).contains(ln), (1...32).contains(r), (1...16).contains(p),
              let salt = Base64URL.decode(String(parts[2])), let expected = Base64URL.decode(String(parts[3]))
        else { return false }
        guard let derived = try? await pool.runIfActive({ try derive(password, salt: salt, logRounds: ln, blockSize: r, parallelism: p) }) else { return false }
        return ConstantTime.equal(derived, expected)
    }

    private static func derive(_ password: String, salt: [UInt8], logRounds: Int, blockSize: Int, parallelism: Int) throws -> [UInt8] {
        let key = try KDF.Scrypt.deriveKey(from: Array(password.utf8), salt: salt, outputByteCount: 32, rounds: 1 << logRounds, blockSize: blockSize, parallelism: parallelism)
        return key.withUnsafeBytes { Array($0) }
    }
}
