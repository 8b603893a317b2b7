import Crypto
import Foundation
import PorticoGateway
import PorticoProtocol
import PorticoServer
import PorticoStore

struct CSRBody: APIRequestBody {
    static let fields: Set<String> = ["staged", "names"]
    var staged: Bool?
    var names: [String]?

    func validate() -> [APIProblem.FieldError] {
        if let names, !CertificateNames.acceptable(names) { return [.init(field: "names", message: CertificateNames.rule)] }
        return []
    }
}

/// Names a certificate may carry: DNS names (a `*.` wildcard first at most) or IP addresses.
enum CertificateNames {
    static let rule = "must be up to 32 DNS names (letters, digits, '-', dots; '*.' first at most) or IP addresses"

    static func acceptable(_ names: [String]) -> Bool {
        names.count <= 32 && names.allSatisfy { name in
            if IdentityGenerator.ipBytesForCSR(name) != nil { return true }
            let host = name.hasPrefix("*.") ? String(name.dropFirst(2)) : name
            guard !host.isEmpty, host.utf8.count <= 253 else { return false }
            return host.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
                !label.isEmpty && label.utf8.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
                    && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
            }
        }
    }
}

struct CSRAnswer: Encodable, Sendable {
    var csr: String
}

struct ImportBody: APIRequestBody {
    static let fields: Set<String> = ["certificate", "key", "pkcs12", "password", "live"]
    var certificate: String?
    var key: String?
    var pkcs12: String?
    var password: String?
    var live: Bool?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if (certificate == nil) == (pkcs12 == nil) { problems.append(.init(field: "certificate", message: "or pkcs12 must be given, not both")) }
        if pkcs12 == nil, password != nil { problems.append(.init(field: "password", message: "goes with pkcs12 only")) }
        if pkcs12 != nil, key != nil { problems.append(.init(field: "key", message: "goes with certificate only")) }
        for (field, value) in [("certificate", certificate), ("key", key), ("pkcs12", pkcs12)] where (value?.unicodeScalars.count ?? 0) > 65_536 {
            problems.append(.init(field: field, message: "must be at most 65536 characters"))
        }
        return problems
    }
}

struct IdentityView: Encodable, Sendable {
    var current: CertificateView
    var staged: CertificateView?
    var rotation: RotationView?
}

struct RotationView: Encodable, Sendable {
    var acknowledged: Int
    var active: Int
    var share: Double
    var switchAt: Double
    var activeWindowSeconds: Int
    var startedAt: String

    init(_ status: IdentityRotation.Status) {
        acknowledged = status.acknowledged
        active = status.active
        share = (status.share * 1000).rounded() / 1000
        switchAt = status.plan.switchAt
        activeWindowSeconds = status.plan.activeWindowSeconds
        startedAt = APIJSON.time(status.plan.startedMilliseconds)
    }
}

struct RotateBody: APIRequestBody {
    static let fields: Set<String> = ["key", "days", "names", "switch_at", "active_window_seconds"]
    var key: String?
    var days: Int?
    var names: [String]?
    var switchAt: Double?
    var activeWindowSeconds: Int?

    func validate() -> [APIProblem.FieldError] {
        var problems: [APIProblem.FieldError] = []
        if let key, KeyType(rawValue: key) == nil { problems.append(.init(field: "key", message: "must be rsa-2048, rsa-3072 or ecdsa-p256")) }
        if let days, !(1...3650).contains(days) { problems.append(.init(field: "days", message: "must be from 1 to 3650")) }
        if let names, !CertificateNames.acceptable(names) { problems.append(.init(field: "names", message: CertificateNames.rule)) }
        if let switchAt, !(switchAt > 0 && switchAt <= 1) { problems.append(.init(field: "switch_at", message: "must be a share above 0 and at most 1")) }
        if let activeWindowSeconds, !(3600...31_536_000).contains(activeWindowSeconds) { problems.append(.init(field: "active_window_seconds", message: "must be from 3600 to 31536000")) }
        return problems
    }
}

/// Peer managers, and the server identity: shown, rotated, imported, switched.
extension APIService {
    func listPeers(_ context: APIContext) async throws -> APIReply {
        let statuses = links?.statuses ?? [:]
        let cursors = try await store.replicationCursors()
        return try .json(Page(items: try await store.peers().map { PeerView($0, status: statuses[$0.name], cursor: $0.siteID.flatMap { cursors[$0] }) }, nextCursor: nil))
    }

    func showIdentity(_ context: APIContext) async throws -> APIReply {
        try .json(try await identityView())
    }

    func identityView() async throws -> IdentityView {
        guard let status = identityStatus() else { throw APIProblem.notFound("a server identity (no TLS listener is enabled)") }
        let rotation = try await self.rotation?.status()
        return IdentityView(current: CertificateView(status.current), staged: status.staged.map(CertificateView.init), rotation: rotation.map(RotationView.init))
    }

    /// Stages a new self-signed identity and announces it to agents at their check-ins; the
    /// listeners switch when `switch_at` of the active agents have pinned it.
    func rotateIdentity(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(RotateBody.self, from: context.request)
        guard let rotation else { throw APIProblem(.conflict, "identity rotation needs the agent service, which this manager does not run") }
        let keyType = KeyType(rawValue: body.key ?? "rsa-2048") ?? .rsa2048
        let plan = StagedIdentity.Plan(switchAt: body.switchAt ?? 0.95, activeWindowSeconds: body.activeWindowSeconds ?? 7 * 86_400)
        let status: IdentityRotation.Status
        do {
            status = try await rotation.stage(keyType: keyType, days: body.days ?? 825, names: body.names ?? [], plan: plan)
        } catch let error as RotationError {
            throw APIProblem(.conflict, error.description)
        }
        try await operations.record(context.entry("identity.rotate", target: status.fingerprintHex, detail: "\(keyType.rawValue), switch at \(plan.switchAt)"))
        return try .json(try await identityView(), status: .created)
    }

    /// A signing request for the live (or staged) key, for a corporate CA.
    func identityCSR(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(CSRBody.self, from: context.request)
        guard let rotation else { throw APIProblem(.conflict, "this manager has no identity files to sign") }
        let configuration = rotation.configuration
        let paths = body.staged == true ? StagedIdentity.paths(configuration) : (configuration.identity.certificate, configuration.identity.privateKey)
        guard let identity = try? ServerIdentity.load(certificatePath: paths.0, privateKeyPath: paths.1) else {
            throw APIProblem(.conflict, body.staged == true ? "no next identity is staged" : "the live identity does not load")
        }
        return try .json(CSRAnswer(csr: try IdentityRequests.signingRequest(for: identity, names: body.names ?? [])))
    }

    /// Installs an identity from PEM (the certificate with its chain, and its key, or only the
    /// certificate a CA signed from this manager's request) or a base64 PKCS#12 bundle. It is
    /// staged, so that a rotation announces it before the listeners serve it, unless `live`.
    func importIdentity(_ context: APIContext) async throws -> APIReply {
        let body = try APIJSON.decode(ImportBody.self, from: context.request)
        guard let rotation else { throw APIProblem(.conflict, "this manager has no identity files to replace") }
        let configuration = rotation.configuration
        let certificatePEM: [UInt8]
        let keyPEM: [UInt8]
        let installed: ServerIdentity
        do {
            if let pkcs12 = body.pkcs12 {
                guard let bytes = Data(base64Encoded: pkcs12, options: .ignoreUnknownCharacters) else { throw APIProblem.invalid("pkcs12", "must be base64") }
                (certificatePEM, keyPEM) = try IdentityImport.fromPKCS12(bytes: Array(bytes), password: body.password ?? "")
            } else {
                certificatePEM = Array((body.certificate ?? "").utf8)
                guard let key = body.key.map({ Array($0.utf8) }) ?? IdentityRequests.matchingKey(for: certificatePEM, configuration: configuration) else {
                    throw APIProblem.invalid("key", "is needed: the certificate belongs to neither the live nor the staged key")
                }
                keyPEM = key
            }
            installed = try IdentityRequests.install(certificatePEM: certificatePEM, keyPEM: keyPEM, staged: body.live != true, configuration: configuration)
        } catch let error as IdentityImport.ImportError {
            throw APIProblem.invalid(body.pkcs12 == nil ? "certificate" : "pkcs12", "is refused: \(error.description)")
        } catch let error as IdentityError {
            throw APIProblem.invalid(body.pkcs12 == nil ? "certificate" : "pkcs12", "is refused: \(error.description)")
        }
        if body.live == true { rotation.reloadLive() }
        try await rotation.exchange()
        _ = try await rotation.status()
        try await operations.record(context.entry("identity.import", target: installed.fingerprintHex, detail: body.live == true ? "live" : "staged"))
        return try .json(try await identityView())
    }

    /// Makes the staged identity live now, whatever share of agents has pinned it.
    func switchIdentity(_ context: APIContext) async throws -> APIReply {
        guard let rotation, let status = try await rotation.status() else { throw APIProblem(.conflict, "no next identity is staged; POST /api/v1/identity/rotate first") }
        try rotation.switchNow()
        try await rotation.exchange()
        try await operations.record(context.entry("identity.switch", target: status.fingerprintHex, detail: "forced at \(status.acknowledged) of \(status.active) agents"))
        return try .json(try await identityView())
    }
}
