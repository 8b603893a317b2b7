import Crypto

/// A device's long-term keys: Ed25519 to sign, X25519 to agree keys.
public struct DeviceKeys: Sendable {
    public let signing: Curve25519.Signing.PrivateKey
    public let agreement: Curve25519.KeyAgreement.PrivateKey

    public init(signing: Curve25519.Signing.PrivateKey = .init(), agreement: Curve25519.KeyAgreement.PrivateKey = .init()) {
        self.signing = signing
        self.agreement = agreement
    }

    /// The device id: derived from the signing key, so it cannot be claimed without it and a
    /// re-imaged machine with a new key is a new device.
    public var deviceID: String { DeviceID.derive(fromSigningKey: Array(signing.publicKey.rawRepresentation)) }
}

public enum DeviceID {
    /// `d-` and the first 16 bytes of SHA-256 of the raw Ed25519 public key, in hex.
    public static func derive(fromSigningKey publicKey: [UInt8]) -> String {
        "d-" + SHA256.hash(data: publicKey).prefix(16).map { String(format: "%02x", $0) }.joined()
    }
}

import Foundation
