import CPorticoFuzz
#if canImport(Glibc)
import Glibc
#endif

/// The harness this run exercises, named by `PORTICO_FUZZ_TARGET` (fuzz/run.sh sets it):
/// one binary for every target, so that one build serves them all.
let harness: Harness = {
    let name = getenv("PORTICO_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let harness = Harness.all.first(where: { $0.name == name }) else {
        let names = Harness.all.map(\.name).joined(separator: ", ")
        print("PORTICO_FUZZ_TARGET must name one of: \(names)")
        exit(2)
    }
    return harness
}()

/// One input from libFuzzer.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    harness.run(UnsafeBufferPointer(start: start, count: count))
    return 0
}

/// A fuzz target: a name and what it does with one input. An input that breaks an invariant
/// stops the process (a precondition), which libFuzzer reports as a crash with the input.
struct Harness: Sendable {
    let name: String
    let run: @Sendable (UnsafeBufferPointer<UInt8>) -> Void

    static let all: [Harness] = [
        Harness(name: "http1", run: HTTP1Fuzz.run),
        Harness(name: "http2", run: HTTP2Fuzz.run),
        Harness(name: "proxy", run: ProxyFuzz.run),
        Harness(name: "config", run: ConfigFuzz.run),
        Harness(name: "agent", run: AgentFuzz.run),
        Harness(name: "replication", run: ReplicationFuzz.run),
        Harness(name: "api", run: APIFuzz.run),
    ]
}
