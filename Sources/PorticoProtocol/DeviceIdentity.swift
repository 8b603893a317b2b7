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

extension DeviceKeys {
    /// Keys derived from a seed and an index, for load tests only: a simulated fleet of any
    /// size is made again from the seed alone, with no file of private keys. A real device's
    /// keys are random (the initializer above).
    public init(fleetSeed seed: String, index: Int) {
        func raw(_ label: String) -> [UInt8] { Array(SHA256.hash(data: Array("portico-fleet|\(seed)|\(index)|\(label)".utf8))) }
        // 32 bytes are always a valid Curve25519 private key.
        self.init(signing: try! .init(rawRepresentation: raw("signing")), agreement: try! .init(rawRepresentation: raw("agreement")))
    }
}

public enum DeviceID {
    /// `d-` and the first 16 bytes of SHA-256 of the raw Ed25519 public key, in hex.
    public static func derive(fromSigningKey publicKey: [UInt8]) -> String {
        "d-" + SHA256.hash(data: publicKey).prefix(16).map { String(format: "%02x", $0) }.joined()
    }
}

import Foundation
