import Crypto
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// Certificates that client certificates must chain to: one PEM file, or every `.pem`/`.crt`
/// file in a folder.
package enum TrustBundle {
    package static func load(_ path: String) throws(IdentityError) -> [NIOSSLCertificate] {
        var info = stat()
        guard stat(path, &info) == 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        var files: [String] = []
        if (info.st_mode & S_IFMT) == S_IFDIR {
            guard let dir = opendir(path) else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
            defer { closedir(dir) }
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
                }
                if name.hasSuffix(".pem") || name.hasSuffix(".crt") { files.append(path + "/" + name) }
            }
            files.sort()
        } else {
            files = [path]
        }
        var certificates: [NIOSSLCertificate] = []
        for file in files {
            let bytes: [UInt8]
            do { bytes = try FileContents.read(file) } catch { throw .unreadable(path: file, reason: error.reason) }
            do {
                certificates += try NIOSSLCertificate.fromPEMBytes(bytes)
            } catch {
                throw .invalid(path: file, reason: "does not hold PEM certificates")
            }
        }
        return certificates
    }
}

extension NIOSSLCertificate {
    /// SHA-256 of the certificate's DER, in lower-case hex: how peers are recognised.
    public func sha256Hex() throws -> String {
        SHA256.hash(data: try toDERBytes()).map { String(format: "%02x", $0) }.joined()
    }
}
