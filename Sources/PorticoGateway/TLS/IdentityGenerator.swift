import Crypto
import Foundation
import PorticoServer
import SwiftASN1
import X509
import _CryptoExtras

#if canImport(Glibc)
import Glibc
#endif

/// Makes the self-signed server identity written on first run.
public enum IdentityGenerator {
    /// A new certificate and key in PEM.
    public struct Generated: Sendable {
        public var certificatePEM: String
        public var privateKeyPEM: String
    }

    /// Creates a self-signed certificate for `names` (DNS names or IP literals) plus the host
    /// name, `localhost`, `127.0.0.1` and `::1`, valid for `days`.
    public static func generate(keyType: KeyType, commonName: String, names: [String] = [], days: Int = 825, now: Date = Date()) throws -> Generated {
        let privateKey: Certificate.PrivateKey
        let keyPEM: String
        let signature: Certificate.SignatureAlgorithm
        switch keyType {
        case .rsa2048, .rsa3072:
            let rsa = try _RSA.Signing.PrivateKey(keySize: keyType == .rsa2048 ? .bits2048 : .bits3072)
            privateKey = Certificate.PrivateKey(rsa)
            keyPEM = rsa.pemRepresentation
            signature = .sha256WithRSAEncryption
        case .ecdsaP256:
            let ec = P256.Signing.PrivateKey()
            privateKey = Certificate.PrivateKey(ec)
            keyPEM = ec.pemRepresentation
            signature = .ecdsaWithSHA256
        }
        var allNames = [hostName(), "localhost", "127.0.0.1", "::1"]
        for name in names where !allNames.contains(name) { allNames.append(name) }
        var sans: [GeneralName] = []
        for name in allNames {
            if let bytes = ipBytes(name) {
                sans.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes))))
            } else if !name.isEmpty {
                sans.append(.dnsName(name))
            }
        }
        var serial = [UInt8](repeating: 0, count: 16)
        for index in serial.indices { serial[index] = UInt8.random(in: 0...255) }
        serial[0] &= 0x7F
        // Each identity gets a subject of its own: agents trust the old and the next identity
        // side by side during a rotation, and TLS looks a trusted certificate up by subject, so
        // two with one subject could be confused for each other.
        let subject = try DistinguishedName {
            OrganizationalUnitName("identity " + serial.prefix(4).map { String(format: "%02x", $0) }.joined())
            CommonName(commonName)
            OrganizationName("Portico")
        }
        let keyIdentifier = SubjectKeyIdentifier(hash: privateKey.publicKey)
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(bytes: serial),
            publicKey: privateKey.publicKey,
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(Double(days) * 86_400),
            issuer: subject,
            subject: subject,
            signatureAlgorithm: signature,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames(sans)
                keyIdentifier
                AuthorityKeyIdentifier(keyIdentifier: keyIdentifier.keyIdentifier)
            },
            issuerPrivateKey: privateKey
        )
        return Generated(certificatePEM: try certificate.serializeAsPEM().pemString + "\n", privateKeyPEM: keyPEM + "\n")
    }

    /// Writes a generated identity, the key with mode 0600, creating folders as needed.
    public static func write(_ generated: Generated, certificatePath: String, privateKeyPath: String) throws(IdentityError) {
        try SecureFile.write(Array(generated.privateKeyPEM.utf8), to: privateKeyPath, mode: 0o600)
        try SecureFile.write(Array(generated.certificatePEM.utf8), to: certificatePath, mode: 0o644)
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The bytes of an IPv4 or IPv6 literal, or nil for a DNS name.
    public static func ipBytesForCSR(_ text: String) -> [UInt8]? { ipBytes(text) }

    static func ipBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }
}

/// Writes files atomically (temp file, fsync, rename) with a mode set before any byte lands.
public enum SecureFile {
    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t) throws(IdentityError) {
        try makeDirectories(Paths.directory(of: path))
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw .unreadable(path: temporary, reason: String(cString: strerror(errno))) }
        // umask may have narrowed the mode; a key must be exactly 0600 whatever the umask.
        fchmod(fd, mode)
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                let reason = String(cString: strerror(errno))
                close(fd)
                unlink(temporary)
                throw .unreadable(path: temporary, reason: reason)
            }
            offset += n
        }
        fsync(fd)
        close(fd)
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw .unreadable(path: path, reason: reason)
        }
    }

    public static func makeDirectories(_ path: String) throws(IdentityError) {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw .unreadable(path: current, reason: String(cString: strerror(errno)))
            }
        }
    }
}
