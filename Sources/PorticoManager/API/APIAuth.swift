import Crypto
import Foundation
import NIOConcurrencyHelpers
import PorticoProtocol
import PorticoStore

/// Who is calling: an operator signed in with a password, or an API token.
struct Principal: Sendable {
    enum Kind: Sendable { case session(id: String), token(id: String) }

    var kind: Kind
    /// The operator's name, or the token's id.
    var name: String
    var role: OperatorRole
    /// A token's scopes; empty means everything its role allows.
    var scopes: [String]

    /// How the audit log names the actor.
    var actor: String {
        switch kind {
        case .session: "operator:\(name)"
        case .token(let id): "token:\(id)"
        }
    }
}

/// What an endpoint requires: a scope (`devices.read`), granted to some roles.
struct Permission: Sendable {
    var scope: String
    var roles: Set<OperatorRole>

    static func read(_ resource: String, auditor: Bool = true) -> Permission {
        Permission(scope: "\(resource).read", roles: auditor ? [.admin, .operator, .auditor] : [.admin, .operator])
    }

    static func write(_ resource: String) -> Permission { Permission(scope: "\(resource).write", roles: [.admin, .operator]) }
    static func admin(_ scope: String) -> Permission { Permission(scope: scope, roles: [.admin]) }
    static func auditing(_ scope: String) -> Permission { Permission(scope: scope, roles: [.admin, .auditor]) }

    func allows(_ principal: Principal) -> Bool {
        roles.contains(principal.role) && (principal.scopes.isEmpty || principal.scopes.contains(scope))
    }
}

/// Bearer secrets: `pa.<session>.<secret>` (access), `pr.<session>.<secret>` (refresh) and
/// `pt.<token>.<secret>` (API token). Only SHA-256 hashes of the secrets are stored.
enum BearerSecret {
    enum Kind: String { case access = "pa", refresh = "pr", token = "pt" }

    static func make(_ kind: Kind, id: String) -> (text: String, hash: [UInt8]) {
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255) }
        return ("\(kind.rawValue).\(id).\(Base64URL.encode(secret))", Array(SHA256.hash(data: secret)))
    }

    static func newID() -> String { UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "") }

    /// The id and the hash of the secret, when `text` has the shape of `kind`.
    static func parse(_ text: String, as kind: Kind) -> (id: String, hash: [UInt8])? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == kind.rawValue, !parts[1].isEmpty, parts[1].count <= 64,
              let secret = Base64URL.decode(String(parts[2])), secret.count == 32 else { return nil }
        return (String(parts[1]), Array(SHA256.hash(data: secret)))
    }
}

/// Failed sign-ins per source address and account name in a sliding window, shared by the
/// console and the API; beyond the limit, sign-ins to that account from that address are
/// refused with 429 until the window moves on. Keyed by the pair, so a noisy host behind a
/// NAT that keeps failing on one account does not lock every other operator of that NAT
/// out; per account, the store's lockout caps guessing durably whatever the address.
final class LoginThrottle: Sendable {
    let limit: Int
    let windowMilliseconds: Int64
    private let failures = NIOLockedValueBox<[String: [Int64]]>([:])

    init(limit: Int, windowMilliseconds: Int64) {
        self.limit = limit
        self.windowMilliseconds = windowMilliseconds
    }

    private static func key(_ source: String, _ name: String) -> String { source + "\u{0}" + name.lowercased() }

    /// Seconds until a sign-in to `name` from `source` may be tried again, or nil when it may now.
    func retryAfter(source: String, name: String, now: Int64) -> Int? {
        let key = Self.key(source, name)
        return failures.withLockedValue { table in
            let recent = (table[key] ?? []).filter { $0 > now - windowMilliseconds }
            table[key] = recent.isEmpty ? nil : recent
            guard recent.count >= limit, let oldest = recent.first else { return nil }
            return Int((oldest + windowMilliseconds - now + 999) / 1000)
        }
    }

    func recordFailure(source: String, name: String, now: Int64) {
        let key = Self.key(source, name)
        failures.withLockedValue { table in
            var recent = (table[key] ?? []).filter { $0 > now - windowMilliseconds }
            recent.append(now)
            table[key] = recent
            if table.count > 100_000 { table = table.filter { $0.value.last ?? 0 > now - windowMilliseconds } }
        }
    }
}
