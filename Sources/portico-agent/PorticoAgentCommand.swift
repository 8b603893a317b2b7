import ArgumentParser
import AsyncHTTPClient
import Foundation
import PorticoAgent
import PorticoProtocol

@main
struct PorticoAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "portico-agent",
        abstract: "Reference Portico agent, and a load simulator of many agents.",
        subcommands: [Enroll.self, Run.self, Report.self, Status.self, UserAuth.self, UserPassword.self, UserUnlock.self, Simulate.self, Fleet.self, Hold.self])
}

struct Enroll: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Enroll this machine with the manager named in a bootstrap file.")
    @Option(help: "The bootstrap file from `portico agent-config export`.") var bootstrap: String
    @Option(help: "An enrollment token (else the one in the bootstrap file).") var token: String?
    @Option(help: "Where the agent keeps its keys and state.") var state: String
    @Option(help: "A manager URL to use instead of the bootstrap file's first.") var url: String?
    @Option(name: .customLong("operator"), help: "Enroll with an operator's credentials instead of a token; the password is read from standard input.") var operatorName: String?

    func run() async throws {
        let file = try readBootstrap(bootstrap)
        let credential: AgentClient.Credential
        if let operatorName {
            guard let password = readLine(strippingNewline: true), !password.isEmpty else { throw ValidationError("no password on standard input") }
            credential = .operator(name: operatorName, password: password)
        } else if let token = token ?? file.enrollmentToken {
            credential = .token(token)
        } else {
            throw ValidationError("no token: pass --token, put one in the bootstrap file, or use --operator")
        }
        let enrolled = try await AgentClient.enroll(bootstrap: file, credential: credential, hostname: ProcessInfo.processInfo.hostName,
                                                    os: ProcessInfo.processInfo.operatingSystemVersionString, managerURL: url)
        try enrolled.save(to: state)
        print("enrolled as \(enrolled.deviceID)")
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check in at the interval the manager asks, apply policies, carry out commands.",
        discussion: """
            When the manager offers push, the agent keeps a wait open between check-ins and hears of \
            a command at once. If a wait fails (a proxy in front cuts long requests), it checks in \
            at the interval instead and tries a wait again an hour later.
            """)
    @Option(help: "The agent's state folder.") var state: String
    @Flag(help: "Check in once and exit.") var once = false
    @Flag(help: "Never hold a wait open; check in at the interval only.") var noPush = false

    /// How long the agent checks in at the interval after a wait failed, before trying push again.
    static let pushRetryAfter: Duration = .seconds(3600)

    func run() async throws {
        let client = AgentClient(state: try AgentState.load(from: state))
        var failures = 0
        // The manager's offer, from its last reply; nil: check in at the interval.
        var offer: PushOffer?
        let clock = ContinuousClock()
        var pushRetry: ContinuousClock.Instant?
        while true {
            let waiting = !once && !noPush && offer != nil && pushRetry.map { clock.now >= $0 } ?? true
            do {
                let reply: CheckInReply
                if waiting, let hold = offer?.holdSeconds {
                    do {
                        reply = try await client.wait(holdSeconds: hold)
                        pushRetry = nil
                    } catch let error as ProtocolError {
                        throw error
                    } catch {
                        // Not the manager refusing: the wait was cut on its way (a proxy's
                        // read timeout, a connection closed). Pull for a while, starting now.
                        emit("push unavailable (\(error)); checking in at the interval")
                        pushRetry = clock.now + Self.pushRetryAfter
                        continue
                    }
                } else {
                    reply = try await client.checkIn()
                }
                if reply.policyChanged {
                    let contents = try await client.fetchPolicy()
                    let data = try JSONEncoder().encode(contents)
                    guard FileManager.default.createFile(atPath: state + "/policy.json", contents: data, attributes: [.posixPermissions: 0o600]) else {
                        throw ValidationError("cannot write \(state)/policy.json")
                    }
                    emit("policy serial \(contents.serial): \(contents.policies.count) polic\(contents.policies.count == 1 ? "y" : "ies")")
                }
                for command in reply.commands {
                    // The reference agent records commands; a real one locks the screen, wipes...
                    emit("command \(command.kind) \(command.id)")
                    try await client.reportResult(commandID: command.id, succeeded: true, detail: "carried out by the reference agent")
                }
                try await client.state.save(to: state)
                failures = 0
                if once { break }
                let wasOffered = offer != nil
                offer = reply.push
                if offer != nil, !noPush, pushRetry.map({ clock.now >= $0 }) ?? true {
                    if !wasOffered { emit("push: waits held up to \(offer!.holdSeconds) s") }
                    continue  // the next wait at once: it is what holds
                }
                try await Task.sleep(for: .seconds(max(1, reply.nextCheckInSeconds)))
            } catch let error as CancellationError {
                throw error
            } catch {
                failures += 1
                emit("check-in failed: \(error)")
                if once { await client.shutdown(); throw ExitCode(1) }
                // Exponential backoff with jitter, at most ten minutes.
                let delay = min(600.0, pow(2.0, Double(min(failures, 10)))) * Double.random(in: 0.5...1.0)
                try await Task.sleep(for: .seconds(delay))
            }
        }
        await client.shutdown()
    }
}

struct Report: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Report an event to the manager, as the agent's own detections do.",
        discussion: "Sent sealed in the agent's session, and stored once: a repeated id is acknowledged, not stored again.")
    @Option(help: "The agent's state folder.") var state: String
    @Option(help: "The event's kind, such as malware.detected.") var kind: String
    @Option(help: "The event's details, a JSON object.") var body = "{}"
    @Option(help: "How many such events to report (1 to 1000).") var count = 1

    func run() async throws {
        guard (1...1000).contains(count) else { throw ValidationError("--count must be from 1 to 1000") }
        let client = AgentClient(state: try AgentState.load(from: state))
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let base = UUID().uuidString.lowercased()
        do {
            let accepted = try await client.report((0..<count).map { AgentEvent(id: "\(base)-\($0)", kind: kind, occurredMilliseconds: now, body: body) })
            try await client.state.save(to: state)
            emit("reported \(accepted.count) event\(accepted.count == 1 ? "" : "s")")
        } catch {
            emit("report failed: \(error)")
            await client.shutdown()
            throw ExitCode(1)
        }
        await client.shutdown()
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show what the agent knows of itself.")
    @Option(help: "The agent's state folder.") var state: String

    func run() async throws {
        let current = try AgentState.load(from: state)
        print("device: \(current.deviceID)")
        print("managers: \(current.managerURLs.joined(separator: ", "))")
        print("policy serial: \(current.policySerial)")
        print("pinned certificates: \(current.pinned.pem.count)")
        print("check-in interval: \(current.checkInIntervalSeconds) s")
    }
}

func readBootstrap(_ path: String) throws -> BootstrapFile {
    try JSONDecoder().decode(BootstrapFile.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
}
