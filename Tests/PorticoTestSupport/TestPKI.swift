import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing
import X509

import PorticoGateway
import PorticoServer

/// Identities made by the code under test, written to a folder.
public enum TestPKI {
    public struct Pair: Sendable {
        public let certificatePath: String
        public let keyPath: String
        public let certificate: NIOSSLCertificate
        public let key: NIOSSLPrivateKey
        public let serialHex: String
    }

    public static func make(in dir: TemporaryDirectory, name: String, keyType: KeyType = .ecdsaP256, commonName: String = "portico-test") throws -> Pair {
        let generated = try IdentityGenerator.generate(keyType: keyType, commonName: commonName)
        let cert = dir.file("\(name).crt")
        let key = dir.file("\(name).key")
        try IdentityGenerator.write(generated, certificatePath: cert, privateKeyPath: key)
        let identity = try ServerIdentity.load(certificatePath: cert, privateKeyPath: key)
        return Pair(certificatePath: cert, keyPath: key, certificate: identity.chain[0], key: identity.privateKey, serialHex: identity.serialHex)
    }
}
