import Crypto
import Foundation
import NIOSSL
import SwiftASN1
import X509
import _CryptoExtras

/// A certificate chain and its private key, loaded and checked to belong together.
public struct ServerIdentity: Sendable {
    /// The chain as NIOSSL serves it, leaf first.
    public let chain: [NIOSSLCertificate]
    public let privateKey: NIOSSLPrivateKey
    /// The leaf, parsed, for what operators and metrics need to know of it.
    public let leaf: Certificate
    /// SHA-256 of the leaf's DER encoding.
    public let fingerprint: [UInt8]
    /// The private key for signing (policies, handshakes), as swift-certificates holds it.
    public let signingKey: Certificate.PrivateKey
    /// The leaf certificate in PEM, as agents pin it.
    public let certificatePEM: String

    /// The certificates after the leaf (its issuers), as PEM; empty for a self-signed identity.
    public var authorityPEMs: [String] {
        chain.dropFirst().compactMap { try? Certificate(derEncoded: $0.toDERBytes()).serializeAsPEM().pemString }
    }

    /// Serial number as colon-free lowercase hex.
    public var serialHex: String { leaf.serialNumber.bytes.map { String(format: "%02x", $0) }.joined() }
    public var fingerprintHex: String { fingerprint.map { String(format: "%02x", $0) }.joined() }
    public var notValidAfter: Date { leaf.notValidAfter }

    /// Loads and checks a PEM certificate chain and key.
    /// - Throws: ``IdentityError`` naming the file and what is wrong with it.
    public static func load(certificatePath: String, privateKeyPath: String, now: Date = Date()) throws(IdentityError) -> ServerIdentity {
        let certBytes: [UInt8]
        let keyBytes: [UInt8]
        do { certBytes = try FileContents.read(certificatePath) } catch { throw .unreadable(path: certificatePath, reason: error.reason) }
        do { keyBytes = try FileContents.read(privateKeyPath) } catch { throw .unreadable(path: privateKeyPath, reason: error.reason) }
        return try parse(certificatePEM: certBytes, privateKeyPEM: keyBytes, certificatePath: certificatePath, privateKeyPath: privateKeyPath, now: now)
    }

    /// Checks PEM bytes already in memory.
    public static func parse(certificatePEM: [UInt8], privateKeyPEM: [UInt8], certificatePath: String = "certificate", privateKeyPath: String = "private key", now: Date = Date()) throws(IdentityError) -> ServerIdentity {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMBytes(certificatePEM)
        } catch {
            throw .invalid(path: certificatePath, reason: "does not hold a PEM certificate (\(error))")
        }
        guard let first = chain.first else { throw .invalid(path: certificatePath, reason: "holds no certificate") }
        let leaf: Certificate
        let der: [UInt8]
        do {
            der = try first.toDERBytes()
            leaf = try Certificate(derEncoded: der)
        } catch {
            throw .invalid(path: certificatePath, reason: "the certificate cannot be parsed (\(error))")
        }
        let keyText = String(decoding: privateKeyPEM, as: UTF8.self)
        let parsedKey: Certificate.PrivateKey
        do {
            parsedKey = try Certificate.PrivateKey(pemEncoded: keyText)
        } catch {
            throw .invalid(path: privateKeyPath, reason: "does not hold a PEM private key (RSA, EC or PKCS#8)")
        }
        guard parsedKey.publicKey == leaf.publicKey else {
            throw .keyMismatch(certificatePath: certificatePath, privateKeyPath: privateKeyPath)
        }
        if now > leaf.notValidAfter {
            throw .expired(path: certificatePath, notAfter: leaf.notValidAfter)
        }
        if now < leaf.notValidBefore {
            throw .notYetValid(path: certificatePath, notBefore: leaf.notValidBefore)
        }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(bytes: privateKeyPEM, format: .pem)
        } catch {
            throw .invalid(path: privateKeyPath, reason: "the private key cannot be loaded (\(error))")
        }
        let pem: String
        do { pem = try leaf.serializeAsPEM().pemString } catch { throw .invalid(path: certificatePath, reason: "the certificate cannot be written as PEM (\(error))") }
        return ServerIdentity(chain: chain, privateKey: key, leaf: leaf, fingerprint: Array(SHA256.hash(data: der)), signingKey: parsedKey, certificatePEM: pem)
    }
}

/// Why a certificate/key pair cannot be used.
public struct IdentityError: Error, Sendable, CustomStringConvertible {
    private enum Kind: Sendable {
        case unreadable, invalid, keyMismatch, expired, notYetValid, generation
    }
    private let kind: Kind
    public let message: String

    package static func unreadable(path: String, reason: String) -> IdentityError {
        IdentityError(kind: .unreadable, message: "cannot read \(path): \(reason)")
    }
    package static func invalid(path: String, reason: String) -> IdentityError {
        IdentityError(kind: .invalid, message: "\(path) \(reason)")
    }
    package static func keyMismatch(certificatePath: String, privateKeyPath: String) -> IdentityError {
        IdentityError(kind: .keyMismatch, message: "the private key \(privateKeyPath) does not belong to the certificate \(certificatePath)")
    }
    package static func expired(path: String, notAfter: Date) -> IdentityError {
        IdentityError(kind: .expired, message: "the certificate \(path) expired on \(notAfter)")
    }
    package static func notYetValid(path: String, notBefore: Date) -> IdentityError {
        IdentityError(kind: .notYetValid, message: "the certificate \(path) is not valid before \(notBefore)")
    }
    package static func generation(_ message: String) -> IdentityError {
        IdentityError(kind: .generation, message: message)
    }

    /// Whether the problem is a key that belongs to another certificate.
    public var isKeyMismatch: Bool { kind == .keyMismatch }
    public var description: String { message }
}
