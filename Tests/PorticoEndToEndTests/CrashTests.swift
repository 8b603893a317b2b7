import Foundation
import Logging
import PorticoStore
import PorticoManager
import PorticoTestSupport
import Testing

/// Durability through the real executable: a process ingesting event batches is killed
/// with SIGKILL at random moments; every batch it acknowledged must be there afterwards,
/// exactly once and whole.
@Suite(.serialized, .timeLimit(.minutes(5))) struct CrashTests {
    @Test func everyAcknowledgedEventSurvivesTwentyKills() async throws {
        let dir = try TemporaryDirectory()
        let config = try dir.write("portico.yaml", "data_dir: data\n")
        let batchSize = 50
        var acknowledged: Set<Int> = []
        for round in 0..<20 {
            let first = round * 1_000_000
            let process = try ServerProcess(["ingest-probe", "--config", config, "--first-batch", "\(first)", "--batch-size", "\(batchSize)"], executable: "portico-bench")
            await process.waitFor("acked ", count: Int.random(in: 1...40))
            process.signal(SIGKILL)
            _ = await process.wait()
            let acks = process.text.split(separator: "\n").compactMap { line -> Int? in
                line.hasPrefix("acked ") ? Int(line.dropFirst("acked ".count)) : nil
            }
            #expect(!acks.isEmpty, "round \(round) acknowledged nothing")
            acknowledged.formUnion(acks)
        }

        var logger = Logger(label: "crash-test")
        logger.logLevel = .critical
        let store = try await Store.open(.sqlite(path: dir.file("data/portico.sqlite")), siteID: "default-site", logger: logger)
        let stored = try await store.events(device: "probe", limit: 10_000_000)
        await store.close()
        var perBatch: [Int: Int] = [:]
        for event in stored {
            let batch = Int(event.eventID.dropFirst().split(separator: "-")[0])!
            perBatch[batch, default: 0] += 1
        }
        let lost = acknowledged.filter { perBatch[$0] != batchSize }
        #expect(lost.isEmpty, "acknowledged batches missing or partial: \(lost.sorted().prefix(10))")
        // Unacknowledged batches that did commit are whole too: a transaction is all or nothing.
        #expect(perBatch.values.allSatisfy { $0 == batchSize })
        #expect(Set(stored.map(\.eventID)).count == stored.count)
        #expect(acknowledged.count >= 20)
    }
}
