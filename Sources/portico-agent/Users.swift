import ArgumentParser
import Foundation
import PorticoAgent
import PorticoProtocol

/// `portico-agent user-auth`: a user signing in on this device, as the agent's sign-in screen
/// would do it: through the manager when it answers, else with the verifier it last gave.
struct UserAuth: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user-auth",
        abstract: "Sign a user in on this device; the password is read from standard input.",
        discussion: """
            The manager checks the password (its own users', or the directory's) inside the \
            device's session and answers a signed result. When the manager or its directory \
            cannot be reached, the password is checked against the verifier of the user's last \
            sign-in here, for as long as the manager allowed. Exits 0 when the user may sign in.
            """)
    @Option(help: "The agent's state folder.") var state: String
    @Option(help: "The user's sign-in name.") var user: String
    @Flag(help: "Check offline only, against the verifier this device keeps.") var offline = false
    @Flag(help: "Read a one-time code an operator gave the user instead of a password (checked by the manager only).") var code = false

    func run() async throws {
        guard let password = readLine(strippingNewline: true), !password.isEmpty else { throw ValidationError("no \(code ? "code" : "password") on standard input") }
        if code && offline { throw ValidationError("a one-time code is checked by the manager: --code and --offline do not go together") }
        let agent = try AgentState.load(from: state)
        var cache = try UserSignInCache.load(from: state)
        if !offline {
            let client = AgentClient(state: agent)
            let online: Result<UserSignInResult, any Error>
            do {
                online = .success(code ? try await client.signInUser(user, code: password) : try await client.signInUser(user, password: password))
            } catch {
                online = .failure(error)
            }
            await client.shutdown()
            switch online {
            case .success(let result):
                cache.record(result)
                try cache.save(to: state)
                switch result.outcome {
                case .allowed:
                    let offlineUntil = result.offlineUntilMilliseconds.map { ", offline sign-in until \(Date(timeIntervalSince1970: Double($0) / 1000))" } ?? ""
                    emit("allowed: \(result.displayName.isEmpty ? result.user : result.displayName)\(offlineUntil)")
                    return
                case .unavailable where !code:
                    emit("\(result.message); checking offline")
                default:
                    emit("refused (\(result.outcome.rawValue)): \(result.message)")
                    throw ExitCode(1)
                }
            case .failure(let error as ProtocolError) where error.code != .overloaded:
                // The manager refused the device itself: no offline fallback for that.
                emit("sign-in failed: \(error)")
                throw ExitCode(1)
            case .failure(let error) where !code:
                emit("the manager cannot be reached (\(error)); checking offline")
            case .failure(let error):
                emit("sign-in failed: the manager cannot be reached (\(error)); a one-time code needs it")
                throw ExitCode(1)
            }
        }
        let outcome = cache.signInOffline(user: user, password: password, state: agent, now: Int64(Date().timeIntervalSince1970 * 1000))
        try cache.save(to: state)
        switch outcome {
        case .allowed(let until):
            emit("allowed offline: \(user) (until \(Date(timeIntervalSince1970: Double(until) / 1000)))")
        case .noVerifier:
            emit("refused offline: \(user) has not signed in on this device with the manager, or offline sign-in is off")
            throw ExitCode(1)
        case .expired:
            emit("refused offline: \(user)'s offline sign-in has expired; connect to the manager")
            throw ExitCode(1)
        case .wrongPassword(let left):
            emit("refused offline: the password is wrong (\(left) more tries before \(user) is locked on this device)")
            throw ExitCode(1)
        case .locked:
            emit("refused offline: \(user) is locked on this device; ask for remote help (portico-agent user-unlock)")
            throw ExitCode(1)
        }
    }
}

/// `portico-agent user-password`: a user changing their password online.
struct UserPassword: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user-password",
        abstract: "Change a user's password through the manager; the old and the new password are read from standard input, one per line.",
        discussion: "A directory user's password is changed in the directory, under its policy; a refusal is shown in the directory's words.")
    @Option(help: "The agent's state folder.") var state: String
    @Option(help: "The user's sign-in name.") var user: String

    func run() async throws {
        guard let old = readLine(strippingNewline: true), !old.isEmpty, let new = readLine(strippingNewline: true), !new.isEmpty else {
            throw ValidationError("give the old and the new password on standard input, one per line")
        }
        let client = AgentClient(state: try AgentState.load(from: state))
        var cache = try UserSignInCache.load(from: state)
        let result: UserSignInResult
        do {
            result = try await client.changeUserPassword(user, old: old, new: new)
        } catch {
            await client.shutdown()
            emit("password change failed: \(error)")
            throw ExitCode(1)
        }
        await client.shutdown()
        cache.record(result)
        try cache.save(to: state)
        guard result.outcome == .allowed else {
            emit("refused (\(result.outcome.rawValue)): \(result.message)")
            throw ExitCode(1)
        }
        emit("changed: \(result.message)")
    }
}

/// `portico-agent user-unlock`: remote help for a user locked on this device, without a network.
struct UserUnlock: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user-unlock",
        abstract: "Unlock a user locked on this device by remote help: shows a challenge, then takes the response the help desk reads back.",
        discussion: """
            Without --response, prints a challenge for the help desk, who gets the response from \
            the manager (console: the device's page, "unlock a user"; API: POST \
            /api/v1/devices/{id}/remote-help with the user). With --response, checks it against \
            the last challenge and unlocks the user. Works while the manager cannot be reached.
            """)
    @Option(help: "The agent's state folder.") var state: String
    @Option(help: "The user's sign-in name.") var user: String
    @Option(help: "The response code the help desk read back.") var response: String?

    func run() async throws {
        let agent = try AgentState.load(from: state)
        var cache = try UserSignInCache.load(from: state)
        guard let response else {
            let challenge = cache.unlockChallenge(user: user, now: Int64(Date().timeIntervalSince1970 * 1000))
            try cache.save(to: state)
            print("device: \(agent.deviceID)")
            print("challenge: \(challenge)")
            return
        }
        guard try cache.unlock(user: user, response: response, state: agent) else {
            emit("refused: the response does not answer this device's last challenge for \(user) (or it is more than 10 minutes old)")
            throw ExitCode(1)
        }
        try cache.save(to: state)
        emit("unlocked: \(user) may sign in on this device again")
    }
}
