import Testing

/// Waits for `condition` to hold, checking it every 50 ms, and fails the test if it does not
/// within `limit`: for state that has no event to wait on (a row another process writes, a
/// count another component keeps).
public func eventually(_ what: String, within limit: Duration, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    Issue.record("\(what): not within \(limit)")
    throw CancellationError()
}
