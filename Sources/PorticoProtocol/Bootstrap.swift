import Foundation

/// What an installer ships beside an agent (the role of SEPM's sylink.xml): where the
/// manager is, which certificates to trust, and optionally a token to enroll with.
public struct BootstrapFile: Codable, Sendable, Equatable {
    public var version: Int
    public var site: String
    /// HTTPS and plain URLs of the client listeners, in order of preference.
    public var managerURLs: [String]
    public var pinned: PinnedCertificates
    public var enrollmentToken: String?

    public init(version: Int = 1, site: String, managerURLs: [String], pinned: PinnedCertificates, enrollmentToken: String? = nil) {
        self.version = version
        self.site = site
        self.managerURLs = managerURLs
        self.pinned = pinned
        self.enrollmentToken = enrollmentToken
    }

    enum CodingKeys: String, CodingKey {
        case version, site, managerURLs = "manager_urls", pinned = "pinned_certificates", enrollmentToken = "enrollment_token"
    }
}
