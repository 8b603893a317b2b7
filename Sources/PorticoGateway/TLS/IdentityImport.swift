import Crypto
import Foundation
import PorticoServer
import _CryptoExtras
import NIOSSL
import X509

/// Checks an identity before it is installed, so that a bad import changes nothing.
public enum IdentityImport {
    /// Refuses a key that is not the certificate's, a certificate that has expired or is not
    /// yet valid, and a chain whose certificates do not each issue the one before.
    public static func check(certificatePEM: [UInt8], keyPEM: [UInt8], now: Date = Date()) throws {
        let identity = try ServerIdentity.parse(certificatePEM: certificatePEM, privateKeyPEM: keyPEM, certificatePath: "the certificate", privateKeyPath: "the private key", now: now)
        let chain = try identity.chain.map { try Certificate(derEncoded: $0.toDERBytes()) }
        for (child, parent) in zip(chain, chain.dropFirst()) {
            guard child.issuer == parent.subject, parent.publicKey.isValidSignature(child.signature, for: child) else {
                throw ImportError("the chain does not link: \(child.subject) is not issued by \(parent.subject), which follows it")
            }
            if now > parent.notValidAfter { throw ImportError("the chain certificate \(parent.subject) expired on \(parent.notValidAfter)") }
        }
        // Agents verify TLS to the manager against what they pinned: for a CA-signed
        // certificate that is its root, so the chain must reach it.
        if let last = chain.last, chain.count > 1 || last.issuer != last.subject {
            guard last.issuer == last.subject, last.publicKey.isValidSignature(last.signature, for: last) else {
                throw ImportError("the chain must end with its root CA certificate (self-signed), which agents pin to verify the connection; append it to the certificate file")
            }
        }
    }

    /// The certificate chain and key of a PKCS#12 bundle, as PEM.
    public static func fromPKCS12(path: String, password: String) throws -> (certificatePEM: [UInt8], keyPEM: [UInt8]) {
        let bundle: NIOSSLPKCS12Bundle
        do {
            bundle = try NIOSSLPKCS12Bundle(file: path, passphrase: Array(password.utf8))
        } catch {
            throw ImportError("\(path) is not a PKCS#12 bundle, or does not open with this password")
        }
        return try pem(of: bundle, source: path)
    }

    /// The same from the bundle's bytes.
    public static func fromPKCS12(bytes: [UInt8], password: String) throws -> (certificatePEM: [UInt8], keyPEM: [UInt8]) {
        let bundle: NIOSSLPKCS12Bundle
        do {
            bundle = try NIOSSLPKCS12Bundle(buffer: bytes, passphrase: Array(password.utf8))
        } catch {
            throw ImportError("the bundle is not PKCS#12, or does not open with this password")
        }
        return try pem(of: bundle, source: "the bundle")
    }

    private static func pem(of bundle: NIOSSLPKCS12Bundle, source path: String) throws -> (certificatePEM: [UInt8], keyPEM: [UInt8]) {
        var certificates = ""
        for certificate in bundle.certificateChain {
            let pem = try Certificate(derEncoded: certificate.toDERBytes()).serializeAsPEM().pemString
            certificates += pem + "\n"
        }
        let keyDER = try bundle.privateKey.derBytes
        // NIOSSL hands out RSA and EC keys in their traditional encodings, not PKCS#8.
        let key: Certificate.PrivateKey
        if let parsed = try? Certificate.PrivateKey(derBytes: keyDER) {
            key = parsed
        } else if let rsa = try? _RSA.Signing.PrivateKey(derRepresentation: keyDER) {
            key = Certificate.PrivateKey(rsa)
        } else if let p256 = try? P256.Signing.PrivateKey(derRepresentation: keyDER) {
            key = Certificate.PrivateKey(p256)
        } else if let p384 = try? P384.Signing.PrivateKey(derRepresentation: keyDER) {
            key = Certificate.PrivateKey(p384)
        } else {
            throw ImportError("\(path) holds a private key of a kind portico does not use (RSA, ECDSA P-256 or P-384)")
        }
        return (Array(certificates.utf8), Array((try key.serializeAsPEM().pemString + "\n").utf8))
    }

    public struct ImportError: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }
}
