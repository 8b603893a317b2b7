import Foundation
import NIOSSL
import PorticoGateway
import PorticoProtocol
import PorticoServer
import SwiftASN1
import X509

/// Certificate signing requests and imports, for `portico cert csr|import` and the API alike.
public enum IdentityRequests {
    /// A PEM certificate signing request for `identity`'s key and subject, asking for `names`
    /// (DNS names or IP addresses; none: the certificate's own names).
    public static func signingRequest(for identity: ServerIdentity, names: [String]) throws -> String {
        var sans: [GeneralName] = []
        if names.isEmpty {
            sans = (try identity.leaf.extensions.subjectAlternativeNames).map(Array.init) ?? []
        } else {
            for name in names {
                if let bytes = IdentityGenerator.ipBytesForCSR(name) {
                    sans.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes))))
                } else {
                    sans.append(.dnsName(name))
                }
            }
        }
        let request = try CertificateSigningRequest(
            version: .v1, subject: identity.leaf.subject, privateKey: identity.signingKey,
            attributes: .init([try .init(ExtensionRequest(extensions: try Certificate.Extensions { SubjectAlternativeNames(sans) }))]),
            signatureAlgorithm: ManagerSignature.algorithm(for: identity.signingKey.publicKey))
        return try request.serializeAsPEM().pemString + "\n"
    }

    /// The key of the live or staged identity that belongs to `certificatePEM`, for a
    /// certificate a CA signed from this manager's request.
    public static func matchingKey(for certificatePEM: [UInt8], configuration: GatewayConfiguration) -> [UInt8]? {
        let staged = StagedIdentity.paths(configuration)
        for keyPath in [staged.key, configuration.identity.privateKey] {
            guard let key = FileManager.default.contents(atPath: keyPath) else { continue }
            if (try? ServerIdentity.parse(certificatePEM: certificatePEM, privateKeyPEM: Array(key))) != nil { return Array(key) }
        }
        return nil
    }

    /// Checks an identity whole and writes it, staged (`ssl/next/`) or live; nothing is written
    /// when it is refused.
    public static func install(certificatePEM: [UInt8], keyPEM: [UInt8], staged: Bool, configuration: GatewayConfiguration) throws -> ServerIdentity {
        try IdentityImport.check(certificatePEM: certificatePEM, keyPEM: keyPEM)
        let target = staged ? StagedIdentity.paths(configuration) : (configuration.identity.certificate, configuration.identity.privateKey)
        try SecureFile.write(keyPEM, to: target.1, mode: 0o600)
        try SecureFile.write(certificatePEM, to: target.0, mode: 0o644)
        return try ServerIdentity.parse(certificatePEM: certificatePEM, privateKeyPEM: keyPEM)
    }
}
