import Crypto
import Foundation

/// Bytes sealed to an X25519 public key: an ephemeral key agreement, HKDF-SHA256, AES-256-GCM.
public struct SealedBox: Codable, Sendable, Equatable {
    /// The sender's ephemeral X25519 public key.
    public var ephemeral: String
    /// AES-GCM nonce (12 bytes), ciphertext and tag, base64url.
    public var nonce: String
    public var ciphertext: String

    static let info = Array("portico-seal-v1".utf8)

    public static func seal(_ plaintext: [UInt8], to recipient: Curve25519.KeyAgreement.PublicKey, context: String) throws -> SealedBox {
        let ephemeral = Curve25519.KeyAgreement.PrivateKey()
        let key = try derive(ephemeral.sharedSecretFromKeyAgreement(with: recipient), ephemeral: ephemeral.publicKey, recipient: recipient, context: context)
        let box = try AES.GCM.seal(plaintext, using: key, authenticating: Array(context.utf8))
        return SealedBox(ephemeral: Base64URL.encode(ephemeral.publicKey.rawRepresentation), nonce: Base64URL.encode(box.nonce), ciphertext: Base64URL.encode(box.ciphertext + box.tag))
    }

    public func open(with recipient: Curve25519.KeyAgreement.PrivateKey, context: String) throws -> [UInt8] {
        guard let ephemeralBytes = Base64URL.decode(ephemeral), let nonceBytes = Base64URL.decode(nonce), let sealed = Base64URL.decode(ciphertext), sealed.count >= 16,
              let ephemeralKey = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: ephemeralBytes)
        else { throw ProtocolError(.malformed, "the sealed box is not well formed") }
        do {
            let key = try Self.derive(recipient.sharedSecretFromKeyAgreement(with: ephemeralKey), ephemeral: ephemeralKey, recipient: recipient.publicKey, context: context)
            let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: nonceBytes), ciphertext: sealed.dropLast(16), tag: sealed.suffix(16))
            return Array(try AES.GCM.open(box, using: key, authenticating: Array(context.utf8)))
        } catch {
            throw ProtocolError(.decryptionFailed, "the sealed box does not open with this key")
        }
    }

    private static func derive(_ secret: SharedSecret, ephemeral: Curve25519.KeyAgreement.PublicKey, recipient: Curve25519.KeyAgreement.PublicKey, context: String) throws -> SymmetricKey {
        let salt = ephemeral.rawRepresentation + recipient.rawRepresentation
        return secret.hkdfDerivedSymmetricKey(using: SHA256.self, salt: salt, sharedInfo: info + Array(context.utf8), outputByteCount: 32)
    }
}
