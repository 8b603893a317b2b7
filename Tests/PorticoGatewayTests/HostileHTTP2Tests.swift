import Foundation
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

private typealias Kind = RawHTTP2.Kind
private typealias Flag = RawHTTP2.Flag

/// Clients that attack HTTP/2 itself, with raw frames: each is answered as RFC 9113 says or
/// sent away, the server's memory stays bounded, and a well-behaved client on another
/// connection is still served. (How long the healthy client waits meanwhile is measured in
/// bench/, not asserted here.)
@Suite(.timeLimit(.minutes(2))) struct HostileHTTP2Tests {
    static let routes = """
        routes:
          - {listener: console, path: /echo, service: echo}
          - {listener: console, path: /slow, service: slow}
        """

    /// This process's resident memory in KiB (the gateway runs in it).
    static func residentKiB() -> Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    /// Growth the tests allow: far below what the floods would cost a server that buffered
    /// them (tens to hundreds of MB), with room for the other suites running meanwhile.
    static let boundKiB = 192 * 1024

    /// A new connection gets its answer.
    static func healthyClientIsServed(_ gw: RunningGateway) async throws {
        let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
        try await h2.headers(stream: 1, RawHTTP2.get("/healthz"), endStream: true)
        let answer = await h2.next { $0.type == Kind.headers && $0.stream == 1 }
        #expect(answer?.status == "200")
        await h2.close()
    }

    /// CVE-2023-44487: 10,000 streams opened and cancelled at once. nghttp2's limit on resets
    /// sends the client away, with INTERNAL_ERROR.
    @Test func rapidResetOfTenThousandStreamsIsSentAway() async throws {
        let gate = Gate()
        try await TestGateway.with(body: Self.routes, services: TestServices.registry(gate: gate)) { gw in
            let before = Self.residentKiB()
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            let bytes = h2.rapidResets(10_000, path: "/slow")
            h2.queue(bytes)
            let goAway = await h2.goAway()
            #expect(goAway?.code == 0x2, "\(String(describing: goAway))")
            // Far fewer than 10,000 requests reached a service.
            let answered = h2.frames.filter { $0.type == Kind.headers }.count
            #expect(answered < 1_000)
            #expect(Self.residentKiB() - before < Self.boundKiB)
            try await Self.healthyClientIsServed(gw)
            gate.open()
            await h2.close()
        }
    }

    /// CVE-2024-27316 and kin: a header block that never ends, in CONTINUATION frames that
    /// are not empty, or that are.
    @Test(arguments: [100, 0])
    func aHeaderBlockThatNeverEndsIsSentAway(continuationBytes: Int) async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let before = Self.residentKiB()
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            var bytes = RawHTTP2.frame(Kind.headers, stream: 1, h2.block(RawHTTP2.get("/healthz")))
            let piece = RawHTTP2.frame(Kind.continuation, stream: 1, [UInt8](repeating: 0x40, count: continuationBytes))
            for _ in 0..<20_000 { bytes += piece }
            h2.queue(bytes)
            let goAway = await h2.goAway()
            #expect(goAway?.code == 0xB, "\(String(describing: goAway))")
            #expect(!h2.frames.contains { $0.type == Kind.headers })
            #expect(Self.residentKiB() - before < Self.boundKiB)
            try await Self.healthyClientIsServed(gw)
            await h2.close()
        }
    }

    /// An HPACK "bomb": one 4,000-byte field put in the dynamic table, then referenced 12,000
    /// times by its one-byte index: a 16 KB block that decodes to 48 MB.
    @Test func anHPACKTableBombIsRefused() async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let before = Self.residentKiB()
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            // :method GET, :scheme https, :path / (static indices 2, 7, 4), :authority x.
            var block: [UInt8] = [0x82, 0x87, 0x84, 0x01, 0x01, UInt8(ascii: "x")]
            // Literal with incremental indexing, new name "x-bomb", a 4,000-byte value.
            block += [0x40, 6] + Array("x-bomb".utf8)
            block += [0x7F] + Self.prefixRest(4_000 - 127)
            block += [UInt8](repeating: UInt8(ascii: "a"), count: 4_000)
            // The new entry is dynamic index 62: 0x80 | 62.
            block += [UInt8](repeating: 0x80 | 62, count: 12_000)
            try await h2.send(RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders | Flag.endStream, stream: 1, block))
            // Refused: the connection ends naming a compression error or calm, or the stream is
            // refused; never answered as a request.
            let outcome = await h2.next { ($0.type == Kind.goAway) || ($0.type == Kind.rstStream && $0.stream == 1) || ($0.type == Kind.headers && $0.stream == 1) }
            let answered = outcome?.type == Kind.headers ? outcome?.status : nil
            #expect(outcome == nil || answered == "431" || outcome?.type == Kind.goAway || outcome?.type == Kind.rstStream, "\(String(describing: outcome))")
            #expect(answered != "200")
            #expect(Self.residentKiB() - before < Self.boundKiB)
            try await Self.healthyClientIsServed(gw)
            await h2.close()
        }
    }

    /// The rest of an HPACK integer past its 7-bit prefix (RFC 7541 5.1).
    static func prefixRest(_ value: Int) -> [UInt8] {
        var rest = value
        var bytes: [UInt8] = []
        while rest >= 128 {
            bytes.append(UInt8(rest % 128 + 128))
            rest /= 128
        }
        return bytes + [UInt8(rest)]
    }

    enum Flood: String, CaseIterable, Sendable { case ping, settings }

    /// A client that sends a million PINGs (or SETTINGS), each asking for an answer, and
    /// reads none: the server stops reading it or sends it away; it does not queue the
    /// answers without bound.
    @Test(arguments: Flood.allCases)
    func aFloodOfFramesThatAskForAnswersIsNotBuffered(_ flood: Flood) async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let before = Self.residentKiB()
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            _ = await h2.next { $0.type == Kind.settings && !$0.has(Flag.ack) }
            try await h2.stopReading()
            let frame = flood == .ping
                ? RawHTTP2.frame(Kind.ping, stream: 0, [UInt8](repeating: 7, count: 8))
                : RawHTTP2.frame(Kind.settings, stream: 0, [0, 4] + RawHTTP2.word(65_535))
            let batch = Array([[UInt8]](repeating: frame, count: 10_000).joined())
            for _ in 0..<100 { h2.queue(batch) }
            let outcome = await h2.waitUntilRefusedOrClosed()
            #expect(outcome.refused || outcome.closed)
            #expect(Self.residentKiB() - before < Self.boundKiB)
            try await Self.healthyClientIsServed(gw)
            await h2.close()
        }
    }

    /// A client that grants no credit (SETTINGS_INITIAL_WINDOW_SIZE 0) holds a response it
    /// will never take: the stream stalls and the connection is closed after the body timeout.
    @Test func aZeroWindowHeldOpenIsClosedAfterTheBodyTimeout() async throws {
        try await TestGateway.with(listeners: [.console: "limits: {body_timeout: 1s}"], body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console), settings: [(4, 0)])
            let body = [UInt8](repeating: UInt8(ascii: "z"), count: 40_000)
            var bytes = RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders, stream: 1, h2.block(RawHTTP2.post("/echo", length: body.count)))
            for start in stride(from: 0, to: body.count, by: 16_000) {
                let end = min(start + 16_000, body.count)
                bytes += RawHTTP2.frame(Kind.data, flags: end == body.count ? Flag.endStream : 0, stream: 1, Array(body[start..<end]))
            }
            try await h2.send(bytes)
            let head = await h2.next { $0.type == Kind.headers && $0.stream == 1 }
            #expect(head?.status == "200")
            let goAway = await h2.goAway()
            #expect(goAway != nil)
            // Nothing of the body went out without credit.
            #expect(h2.frames.filter { $0.type == Kind.data && $0.stream == 1 }.allSatisfy { $0.payload.isEmpty })
            try await Self.healthyClientIsServed(gw)
        }
    }

    enum Reuse: String, CaseIterable, Sendable { case sameStream, lowerStream }

    /// A stream id used again, or lower than one already used: a connection error
    /// (RFC 9113 5.1, 5.1.1).
    @Test(arguments: Reuse.allCases)
    func aStreamIDUsedAgainEndsTheConnection(_ reuse: Reuse) async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            try await h2.headers(stream: 5, RawHTTP2.get("/healthz"), endStream: true)
            let first = await h2.next { $0.type == Kind.headers && $0.stream == 5 }
            #expect(first?.status == "200")
            try await h2.headers(stream: reuse == .sameStream ? 5 : 3, RawHTTP2.get("/healthz"), endStream: true)
            let goAway = await h2.goAway()
            #expect(goAway.map { [0x1, 0x5].contains($0.code) } == true, "\(String(describing: goAway))")
            #expect(h2.frames.filter { $0.type == Kind.headers }.count == 1)
            try await Self.healthyClientIsServed(gw)
        }
    }
}
