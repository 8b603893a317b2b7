import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

/// The key that seals the site's secrets in the database: its private keys, its identity and
/// its agents' session keys. Every manager of a site is given the same key, from a file or an
/// environment variable (`secrets` in the config); the database alone opens nothing.
public struct SecretsKey: Sendable {
    let key: SymmetricKey
    /// Names the key without revealing it, so that a manager given the wrong one says so.
    public let id: String

    public init(bytes: [UInt8]) throws {
        guard bytes.count == 32 else { throw ManagerError("the secrets key must be 32 bytes (openssl rand -base64 32), not \(bytes.count)") }
        key = SymmetricKey(data: bytes)
        id = SHA256.hash(data: Array("portico-secrets-key-id".utf8) + bytes).prefix(6).map { String(format: "%02x", $0) }.joined()
    }

    /// A new random key, for tests and the first start of a manager on its defaults.
    public static func random() -> SecretsKey {
        // 32 random bytes always make a key.
        try! SecretsKey(bytes: SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) })
    }

    /// The key the configuration names: `secrets.key_env`, else `secrets.key_file`, else
    /// `data_dir/secrets.key`, which a manager creates on its first start (mode 0600) when
    /// the config names no key.
    public static func load(_ settings: SecretsSettings, dataDirectory: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> SecretsKey {
        if let variable = settings.keyEnvironment {
            guard let text = environment[variable], !text.isEmpty else {
                throw ManagerError("secrets.key_env names \(variable), which is not set: give this manager the site's secrets key in it")
            }
            return try parse(text, from: "the environment variable \(variable)")
        }
        let path = settings.keyFile ?? dataDirectory + "/secrets.key"
        if let bytes = try? FileContents.read(path) {
            return try parse(String(decoding: bytes, as: UTF8.self), from: path)
        }
        guard settings.keyFile == nil else {
            throw ManagerError("secrets.key_file \(path) cannot be read: give this manager the site's secrets key there (the first manager's, or a new one from openssl rand -base64 32)")
        }
        let created = random()
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        try SecureFile.write(Array((created.key.withUnsafeBytes { Data($0) }.base64EncodedString() + "\n").utf8), to: path, mode: 0o600)
        return created
    }

    private static func parse(_ text: String, from source: String) throws -> SecretsKey {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let bytes = Data(base64Encoded: trimmed).map(Array.init) ?? Base64URL.decode(trimmed) else {
            throw ManagerError("\(source) does not hold a secrets key: it must be 32 bytes in base64 (openssl rand -base64 32)")
        }
        do { return try SecretsKey(bytes: bytes) } catch { throw ManagerError("\(source): \(error)") }
    }

    /// Seals `plaintext` for the database; `name` is bound to it, so that a sealed value moved
    /// to another name does not open.
    public func seal(_ plaintext: [UInt8], name: String) throws -> SealedSecret {
        let box = try AES.GCM.seal(plaintext, using: key, authenticating: Array(name.utf8))
        guard let combined = box.combined else { throw ManagerError("sealing \(name) failed") }
        return SealedSecret(sealed: Array(combined), keyID: id)
    }

    /// Opens a value sealed under `name`.
    /// - Throws: ``ManagerError`` naming both keys when it was sealed with another key.
    public func open(_ secret: SealedSecret, name: String) throws -> [UInt8] {
        guard secret.keyID == id else {
            throw ManagerError("the site's \(name) was sealed with the secrets key \(secret.keyID), and this manager was given the key \(id): give it the site's key (secrets.key_file or secrets.key_env)")
        }
        do {
            return Array(try AES.GCM.open(AES.GCM.SealedBox(combined: secret.sealed), using: key, authenticating: Array(name.utf8)))
        } catch {
            throw ManagerError("the site's \(name) does not open with the secrets key \(id): it was altered in the database, or sealed under another name")
        }
    }
}

/// `secrets`: where a manager finds the key that seals the site's secrets.
public struct SecretsSettings: Sendable, Equatable {
    /// `secrets.key_file`: a file holding the key in base64 (mode 0600).
    public var keyFile: String?
    /// `secrets.key_env`: an environment variable holding it instead.
    public var keyEnvironment: String?

    public init(keyFile: String? = nil, keyEnvironment: String? = nil) {
        self.keyFile = keyFile
        self.keyEnvironment = keyEnvironment
    }
}

/// The site's secrets as the database keeps them, sealed with the ``SecretsKey``.
public struct SiteVault: Sendable {
    public let store: Store
    public let key: SecretsKey

    public init(store: Store, key: SecretsKey) {
        self.store = store
        self.key = key
    }

    /// A secret and its version, opened.
    public func read(_ name: String) async throws -> (bytes: [UInt8], version: Int64)? {
        guard let sealed = try await store.sealedSecret(name) else { return nil }
        return (try key.open(sealed, name: name), sealed.version)
    }

    /// The site's secret `name`, made by `make` and stored if the site has none yet. When
    /// managers start together, every one ends with the first one's.
    public func readOrCreate(_ name: String, make: () throws -> [UInt8]) async throws -> [UInt8] {
        if let existing = try await read(name) { return existing.bytes }
        let sealed = try key.seal(try make(), name: name)
        _ = try await ManagerOperations(store: store, agent: nil).createSiteSecret(name, sealed)
        guard let stored = try await read(name) else { throw ManagerError("the site's \(name) was stored and then not found") }
        return stored.bytes
    }
}
