import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
@testable import PorticoManager
import PorticoProtocol
import PorticoStore
import Testing

/// One answer from the API, with its JSON parsed.
struct APIAnswer {
    let status: UInt
    let headers: HTTPHeaders
    let body: Data

    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:] }
    var items: [[String: Any]] { json["items"] as? [[String: Any]] ?? [] }
    var problemType: String? { headers.first(name: "content-type") == "application/problem+json" ? json["type"] as? String : nil }
    var text: String { String(decoding: body, as: UTF8.self) }
}

/// An HTTPS client for the API that trusts the manager's certificate.
struct APICaller {
    let client: HTTPClient
    let base: String

    static func with<T>(_ manager: TestManager, trustAny: Bool = false, _ body: (APICaller) async throws -> T) async throws -> T {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(manager.identity.current.chain)
        tls.certificateVerification = trustAny ? .none : .noHostnameVerification
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: HTTPClient.Configuration(tlsConfiguration: tls))
        do {
            let result = try await body(APICaller(client: client, base: manager.apiURL))
            try await client.shutdown()
            return result
        } catch {
            try await client.shutdown()
            throw error
        }
    }

    func call(_ method: HTTPMethod, _ path: String, token: String? = nil, json: String? = nil, contentType: String = "application/json") async throws -> APIAnswer {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        if let token { request.headers.add(name: "authorization", value: "Bearer \(token)") }
        if let json {
            request.headers.add(name: "content-type", value: contentType)
            request.body = .bytes(ByteBuffer(string: json))
        }
        let response = try await client.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 8 << 20)
        return APIAnswer(status: response.status.code, headers: response.headers, body: Data(body.readableBytesView))
    }
}

extension TestManager {
    /// An operator account with a known password, hashed with scrypt at a lower cost than the
    /// manager's (the hash names its cost, so sign-ins verify it as any other): the suite
    /// makes many accounts at once.
    func makeOperator(_ name: String, role: OperatorRole, password: String = "correct horse battery") async throws {
        try await store.createOperator(OperatorRecord(name: name, passwordHash: try await PasswordHasher.hash(password, logRounds: 10), role: role))
    }

    /// A signed-in session made directly in the store (no password hashing), as login makes it.
    func session(for name: String, accessLifetime: Int64 = 600_000) async throws -> (access: String, refresh: String) {
        let id = BearerSecret.newID()
        let access = BearerSecret.make(.access, id: id)
        let refresh = BearerSecret.make(.refresh, id: id)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let record = AuthSessionRecord(id: id, operatorName: name, accessHash: access.hash, accessExpiresMilliseconds: now + accessLifetime,
                                       refreshHash: refresh.hash, refreshExpiresMilliseconds: now + 3_600_000, source: "test")
        try await store.write { try await $0.createAuthSession(record) }
        return (access.text, refresh.text)
    }

    /// An API token made directly in the store.
    func apiToken(role: OperatorRole, scopes: [String] = [], expiresIn: Int64 = 3_600_000, revoked: Bool = false) async throws -> String {
        let id = BearerSecret.newID()
        let secret = BearerSecret.make(.token, id: id)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        try await store.createAPIToken(APITokenRecord(id: id, secretHash: secret.hash, name: "test", role: role, scopes: scopes,
                                                      expiresMilliseconds: now + expiresIn, revoked: revoked, createdBy: "test"))
        return secret.text
    }

    /// A device row with real keys (as enrollment would store it), without an agent.
    func makeDevice(hostname: String = "host", id: String? = nil) async throws -> String {
        let signing = Curve25519.Signing.PrivateKey()
        let agreement = Curve25519.KeyAgreement.PrivateKey()
        let deviceID = id ?? "d-" + UUID().uuidString.lowercased()
        try await store.addDevice(DeviceRecord(id: deviceID, signingKey: Array(signing.publicKey.rawRepresentation), agreementKey: Array(agreement.publicKey.rawRepresentation),
                                               hostname: hostname, os: "linux"))
        return deviceID
    }
}
