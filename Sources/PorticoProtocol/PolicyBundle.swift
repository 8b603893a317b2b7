import Crypto
import Foundation

/// The policies that apply to a device: JSON, encrypted with the site policy key
/// (AES-256-GCM), then signed by the manager's identity key over the sealed bytes. An agent
/// checks the signature against its pinned certificates before it decrypts anything.
public struct PolicyBundle: Codable, Sendable, Equatable {
    public var serial: Int64
    /// AES-GCM nonce + ciphertext + tag, base64url.
    public var sealed: String
    public var signature: String

    public init(serial: Int64, sealed: String, signature: String) {
        self.serial = serial
        self.sealed = sealed
        self.signature = signature
    }

    /// The content of a bundle.
    public struct Contents: Codable, Sendable, Equatable {
        public var serial: Int64
        public var policies: [Policy]

        public init(serial: Int64, policies: [Policy]) {
            self.serial = serial
            self.policies = policies
        }
    }

    public struct Policy: Codable, Sendable, Equatable {
        public var id: String
        public var name: String
        public var version: Int
        public var document: String

        public init(id: String, name: String, version: Int, document: String) {
            self.id = id
            self.name = name
            self.version = version
            self.document = document
        }
    }

    /// What the signature covers: the serial and the sealed bytes.
    public static func transcript(serial: Int64, sealed: String) -> [UInt8] { Array("portico-policy-v1|\(serial)|\(sealed)".utf8) }

    /// Seals and signs contents (manager side).
    public static func make(_ contents: Contents, siteKey: SymmetricKey, sign: ([UInt8]) throws -> [UInt8]) throws -> PolicyBundle {
        let box = try AES.GCM.seal(try JSONEncoder().encode(contents), using: siteKey)
        let sealed = Base64URL.encode(box.nonce + box.ciphertext + box.tag)
        return PolicyBundle(serial: contents.serial, sealed: sealed, signature: Base64URL.encode(try sign(transcript(serial: contents.serial, sealed: sealed))))
    }

    /// The contents of `sealed` (`b64u(nonce || ciphertext || tag)`, no additional data),
    /// without the signature check: only after it.
    static func decrypt(_ sealed: String, siteKey: SymmetricKey) throws -> Contents {
        guard let bytes = Base64URL.decode(sealed), bytes.count > 28 else { throw ProtocolError(.malformed, "the policy bundle is truncated") }
        do {
            let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: bytes.prefix(12)), ciphertext: bytes.dropFirst(12).dropLast(16), tag: bytes.suffix(16))
            return try JSONDecoder().decode(Contents.self, from: Data(try AES.GCM.open(box, using: siteKey)))
        } catch {
            throw ProtocolError(.decryptionFailed, "the policy bundle does not open with the site key")
        }
    }

    /// Verifies against the pinned certificates, then decrypts (agent side).
    public func open(pinned: PinnedCertificates, siteKey: SymmetricKey) throws -> Contents {
        guard let signatureBytes = Base64URL.decode(signature), pinned.verify(signatureBytes, over: Self.transcript(serial: serial, sealed: sealed)) else {
            throw ProtocolError(.badSignature, "the policy bundle is not signed by a pinned manager certificate")
        }
        let contents = try Self.decrypt(sealed, siteKey: siteKey)
        guard contents.serial == serial else { throw ProtocolError(.malformed, "the policy bundle's serial does not match its contents") }
        return contents
    }
}
