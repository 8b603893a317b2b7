import PorticoProtocol

/// A simulated fleet enrolled straight into a manager's database (`portico-bench
/// enroll-fleet`), for `portico-agent fleet --enrolled`: the seed its keys derive from
/// (``PorticoProtocol/DeviceKeys/init(fleetSeed:index:)``), how many, and the site key agents
/// get at enrollment. For load tests only.
public struct FleetEnrollment: Codable, Sendable {
    public var seed: String
    public var agents: Int
    public var siteKey: String
    public var checkInIntervalSeconds: Int

    public init(seed: String, agents: Int, siteKey: String, checkInIntervalSeconds: Int) {
        self.seed = seed
        self.agents = agents
        self.siteKey = siteKey
        self.checkInIntervalSeconds = checkInIntervalSeconds
    }

    /// The state of agent `index`, as its own enrollment would have left it.
    public func state(_ index: Int, pinned: PinnedCertificates, managerURL: String) -> AgentState {
        let keys = DeviceKeys(fleetSeed: seed, index: index)
        return AgentState(deviceID: keys.deviceID, signingKey: Base64URL.encode(keys.signing.rawRepresentation), agreementKey: Base64URL.encode(keys.agreement.rawRepresentation),
                          siteKey: siteKey, pinned: pinned, managerURLs: [managerURL], policySerial: 0, checkInIntervalSeconds: checkInIntervalSeconds)
    }

    enum CodingKeys: String, CodingKey { case seed, agents, siteKey = "site_key", checkInIntervalSeconds = "checkin_interval_s" }
}
