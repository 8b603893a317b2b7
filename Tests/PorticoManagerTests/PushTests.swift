import Foundation
import PorticoAgent
import PorticoManager
import PorticoServer
import PorticoProtocol
import PorticoStore
import PorticoTestSupport
import Testing

/// Push: an agent holds a `wait` open in its session; the manager answers it as soon as the
/// device has something new, or with nothing after its hold time.
@Suite(.timeLimit(.minutes(2))) struct PushTests {
    static func configuration(hold: Int) -> AgentService.Configuration {
        var configuration = AgentService.Configuration()
        configuration.pushHoldSeconds = hold
        return configuration
    }

    @Test(arguments: [false, true])
    func aHeldWaitIsAnsweredWithTheCommandQueuedWhileItWaits(plain: Bool) async throws {
        // A hold far beyond the test's time limit: only the command can answer the wait.
        try await TestManager.with(configuration: Self.configuration(hold: 3_600)) { manager in
            try await withAgent(try await manager.enrolledAgent(url: plain ? manager.plainURL : manager.httpsURL)) { agent in
                let deviceID = await agent.state.deviceID
                let first = try await agent.checkIn()
                #expect(first.push == PushOffer(holdSeconds: 3_600))
                let waiting = Task { try await agent.wait(holdSeconds: 3_600) }
                try await eventually("the wait is held", within: .seconds(20)) { manager.agent.push.isHeld(device: deviceID) }
                // Every manager of the site reads which one holds the device (once the wait's
                // check-in, which runs after the wait is registered, has committed).
                try await eventually("the device reads as held by this manager", within: .seconds(20)) {
                    try await manager.store.device(id: deviceID)?.pushHeld(at: Int64(Date().timeIntervalSince1970 * 1000)) == ProcessInfo.processInfo.hostName
                }
                let operations = ManagerOperations(store: manager.store, agent: manager.agent)
                let lock = try await operations.issueCommand(deviceID: deviceID, kind: .lock, by: .init(name: "test", source: "local"))
                let reply = try await waiting.value
                #expect(reply.commands.map(\.id) == [lock.id])
                #expect(reply.push == PushOffer(holdSeconds: 3_600))
                #expect(try await manager.store.command(id: lock.id)?.state == .delivered)
                try await agent.reportResult(commandID: lock.id, succeeded: true, detail: "locked")
                #expect(try await manager.store.device(id: deviceID)?.state == .locked)
                #expect(!manager.agent.push.isHeld(device: deviceID))
                #expect(manager.agent.push.wakeUpCount == 1)
                // A check-in without waiting: the device only pulls now.
                _ = try await agent.checkIn()
                #expect(try await manager.store.device(id: deviceID)?.pushHeld(at: Int64(Date().timeIntervalSince1970 * 1000)) == nil)
            }
        }
    }

    @Test func aWaitIsAnsweredAtOnceWhenTheDeviceHasSomethingAlreadyAndAPublicationWakesIt() async throws {
        try await TestManager.with(configuration: Self.configuration(hold: 3_600)) { manager in
            try await withAgent(try await manager.enrolledAgent()) { agent in
                let deviceID = await agent.state.deviceID
                _ = try await agent.checkIn()
                try await manager.store.enqueueCommand(CommandRecord(id: "c-1", deviceID: deviceID, kind: .unlock, issuedBy: "op"))
                #expect(try await agent.wait(holdSeconds: 3_600).commands.map(\.id) == ["c-1"])
                try await agent.reportResult(commandID: "c-1", succeeded: true, detail: "unlocked")
                // Policies published while the wait is held: it is answered, saying so.
                let policy = try await manager.store.createPolicy(name: "p", document: #"{"usb_storage":"block"}"#, by: "op")
                _ = try await agent.fetchPolicy()
                let waiting = Task { try await agent.wait(holdSeconds: 3_600) }
                try await eventually("the wait is held", within: .seconds(20)) { manager.agent.push.isHeld(device: deviceID) }
                try await manager.store.publishPolicy(policyID: policy.id, version: 1)
                let changed = try await waiting.value
                #expect(changed.policyChanged)
                #expect(changed.commands.isEmpty)
            }
        }
    }

    @Test func aWaitWithNothingNewIsAnsweredAfterTheHoldTime() async throws {
        try await TestManager.with(configuration: Self.configuration(hold: 1)) { manager in
            try await withAgent(try await manager.enrolledAgent()) { agent in
                let deviceID = await agent.state.deviceID
                _ = try await agent.checkIn()
                let before = try #require(try await manager.store.device(id: deviceID)?.lastCheckInMilliseconds)
                let reply = try await agent.wait(holdSeconds: 1)
                #expect(reply.commands.isEmpty && !reply.policyChanged)
                #expect(reply.push == PushOffer(holdSeconds: 1))
                #expect(manager.agent.push.timeoutCount == 1)
                // The wait counts as the device being seen.
                #expect(try #require(try await manager.store.device(id: deviceID)?.lastCheckInMilliseconds) >= before)
            }
        }
    }

    @Test func aReplayedWaitIsRefused() async throws {
        try await TestManager.with(configuration: Self.configuration(hold: 1)) { manager in
            try await withAgent(try await manager.enrolledAgent(url: manager.plainURL)) { agent in
                try await agent.openSession()
                let wait = try await agent.seal(.wait(CheckInRequest(policySerial: 0, status: "ok")))
                #expect(try await agent.post(envelope: wait).status == 200)
                let replay = try await agent.post(envelope: wait)
                #expect(replay.status == 409, "\(String(decoding: replay.body, as: UTF8.self))")
                #expect(String(decoding: replay.body, as: UTF8.self).contains("replayed"))
                let refusals = try await manager.store.auditEntries(action: "device.message").filter { $0.result == "refused" }
                #expect(refusals.contains { $0.detail.contains("replayed") })
            }
        }
    }

    /// Agents that only wait are not load: with more held than the manager's back-off
    /// threshold, a check-in is still offered push and not told to back off.
    @Test func heldWaitsDoNotCountAsRequestsInProgress() async throws {
        var configuration = Self.configuration(hold: 3_600)
        configuration.backOffAbove = 1
        try await TestManager.with(configuration: configuration) { manager in
            var waits: [Task<CheckInReply, any Error>] = []
            var clients: [AgentClient] = []
            for _ in 0..<3 {
                let agent = try await manager.enrolledAgent(url: manager.plainURL)
                clients.append(agent)
                let deviceID = await agent.state.deviceID
                _ = try await agent.checkIn()
                waits.append(Task { try await agent.wait(holdSeconds: 3_600) })
                try await eventually("the wait is held", within: .seconds(20)) { manager.agent.push.isHeld(device: deviceID) }
            }
            try await withAgent(try await manager.enrolledAgent()) { agent in
                let reply = try await agent.checkIn()
                #expect(!reply.backOff)
                #expect(reply.push == PushOffer(holdSeconds: 3_600))
            }
            manager.agent.push.stop()
            for wait in waits { _ = try await wait.value }
            for client in clients { await client.shutdown() }
        }
    }

    @Test func aManagerWithPushOffOffersNoWaitAndRefusesOne() async throws {
        var configuration = AgentService.Configuration()
        configuration.pushEnabled = false
        try await TestManager.with(configuration: configuration) { manager in
            try await withAgent(try await manager.enrolledAgent()) { agent in
                let reply = try await agent.checkIn()
                #expect(reply.push == nil)
                await #expect(throws: ProtocolError.self) { _ = try await agent.wait(holdSeconds: 1) }
            }
        }
    }

    @Test func aNewerWaitOfTheSameDeviceReplacesTheHeldOne() async throws {
        try await TestManager.with(configuration: Self.configuration(hold: 3_600)) { manager in
            try await withAgent(try await manager.enrolledAgent()) { agent in
                let deviceID = await agent.state.deviceID
                _ = try await agent.checkIn()
                let atB = AgentClient(state: await agent.state, managerURL: manager.plainURL)
                defer { Task { await atB.shutdown() } }
                let first = Task { try await agent.wait(holdSeconds: 3_600) }
                try await eventually("the first wait is held", within: .seconds(20)) { manager.agent.push.isHeld(device: deviceID) }
                // The agent gave up on the first (its connection was cut, say) and waits again.
                let second = Task { try await atB.wait(holdSeconds: 3_600) }
                let answered = try await first.value
                #expect(answered.commands.isEmpty)
                try await eventually("the second wait is held", within: .seconds(20)) { manager.agent.push.isHeld(device: deviceID) }
                try await manager.store.enqueueCommand(CommandRecord(id: "c-2", deviceID: deviceID, kind: .lock, issuedBy: "op"))
                #expect(try await second.value.commands.map(\.id) == ["c-2"])
            }
        }
    }

    @Test func shuttingDownAnswersHeldWaitsAndOffersNoMore() async throws {
        try await TestManager.with(configuration: Self.configuration(hold: 3_600)) { manager in
            try await withAgent(try await manager.enrolledAgent()) { agent in
                let deviceID = await agent.state.deviceID
                _ = try await agent.checkIn()
                let waiting = Task { try await agent.wait(holdSeconds: 3_600) }
                try await eventually("the wait is held", within: .seconds(20)) { manager.agent.push.isHeld(device: deviceID) }
                manager.agent.push.stop()
                let reply = try await waiting.value
                #expect(reply.commands.isEmpty)
                #expect(reply.push == nil, "a stopping manager offers no further wait")
            }
        }
    }
}

/// The hub's series in `/metrics`.
@Suite(.timeLimit(.minutes(1))) struct PushMetricsTests {
    @Test func heldWaitsAndTheirAnswersAreCounted() async throws {
        let metrics = GatewayMetrics()
        let hub = PushHub(wakes: WakeFeed(), metrics: metrics.registry)
        func text() -> String { String(decoding: metrics.emit(), as: UTF8.self) }
        /// The value of one series (its name and labels as written), as a number.
        func value(_ series: String) -> Double? {
            text().split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.dropFirst(series.count + 1)) }
        }
        let ticket = hub.register(device: "d-1", hold: .seconds(3_600))
        let waiting = Task { await hub.wait(ticket) }
        try await eventually("the wait is counted", within: .seconds(20)) { value("portico_push_held") == 1 }
        hub.wake(device: "d-1")
        #expect(await waiting.value == .woken)
        #expect(value("portico_push_held") == 0, "\(text())")
        #expect(value(#"portico_push_answered_total{outcome="woken"}"#) == 1, "\(text())")
        // A wait whose hold passes is answered by the sweep, and counted as timed out.
        let short = hub.register(device: "d-2", hold: .milliseconds(1))
        #expect(await hub.wait(short) == .timedOut)
        #expect(value(#"portico_push_answered_total{outcome="timed_out"}"#) == 1, "\(text())")
        hub.stop()
    }
}
