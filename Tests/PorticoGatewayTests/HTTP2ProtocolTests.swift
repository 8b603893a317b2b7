import NIOHPACK
import NIOCore
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

private typealias Kind = RawHTTP2.Kind
private typealias Flag = RawHTTP2.Flag

/// A client breaking one rule of RFC 9113 and the error the server must end the connection with.
struct HTTP2Violation: Sendable, CustomStringConvertible {
    let description: String
    /// Frames after the preface and SETTINGS, built with a fresh HPACK encoder.
    let frames: @Sendable () -> [UInt8]
    let code: UInt32

    static func block(_ fields: [(String, String)]) -> [UInt8] {
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        var buffer = ByteBuffer()
        try! encoder.encode(headers: HPACKHeaders(fields), to: &buffer)
        return Array(buffer.readableBytesView)
    }

    static let all: [HTTP2Violation] = [
        .init(description: "DATA on stream 0", frames: { RawHTTP2.frame(Kind.data, stream: 0, [0]) }, code: 0x1),
        .init(description: "a frame larger than SETTINGS_MAX_FRAME_SIZE",
              frames: { RawHTTP2.frame(Kind.data, stream: 1, [UInt8](repeating: 0, count: 16_385)) }, code: 0x6),
        .init(description: "WINDOW_UPDATE of 0 on the connection",
              frames: { RawHTTP2.frame(Kind.windowUpdate, stream: 0, RawHTTP2.word(0)) }, code: 0x1),
        .init(description: "WINDOW_UPDATE of 0 on a stream",
              frames: {
                  RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders, stream: 1, block(RawHTTP2.post("/echo", length: 10)))
                      + RawHTTP2.frame(Kind.windowUpdate, stream: 1, RawHTTP2.word(0))
              }, code: 0x1),
        .init(description: "trailers on a stream whose request has ended",
              frames: {
                  RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders | Flag.endStream, stream: 1, block(RawHTTP2.get("/slow")))
                      + RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders | Flag.endStream, stream: 1, block([("x-late", "1")]))
              }, code: 0x5),
        .init(description: "a stream that depends on itself",
              frames: {
                  RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders | Flag.endStream | 0x20, stream: 1, RawHTTP2.word(1) + [16] + block(RawHTTP2.get("/healthz")))
              }, code: 0x1),
        .init(description: "PRIORITY making a stream depend on itself",
              frames: { RawHTTP2.frame(Kind.priority, stream: 3, RawHTTP2.word(3) + [16]) }, code: 0x1),
        .init(description: "a connection window beyond 2^31-1",
              frames: { RawHTTP2.frame(Kind.windowUpdate, stream: 0, RawHTTP2.word(0x7FFF_FFFF)) }, code: 0x3),
        .init(description: "a stream opened with an even id",
              frames: { RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders | Flag.endStream, stream: 2, block(RawHTTP2.get("/healthz"))) }, code: 0x1),
        .init(description: "a PING inside a header block",
              frames: {
                  RawHTTP2.frame(Kind.headers, stream: 1, block(RawHTTP2.get("/healthz")))
                      + RawHTTP2.frame(Kind.ping, stream: 0, [UInt8](repeating: 0, count: 8))
              }, code: 0x1),
        .init(description: "CONTINUATION without HEADERS",
              frames: { RawHTTP2.frame(Kind.continuation, flags: Flag.endHeaders, stream: 1, block(RawHTTP2.get("/healthz"))) }, code: 0x1),
        .init(description: "PUSH_PROMISE from a client",
              frames: { RawHTTP2.frame(Kind.pushPromise, flags: Flag.endHeaders, stream: 1, RawHTTP2.word(2)) }, code: 0x1),
        .init(description: "a header block that does not decode (index 0)",
              frames: { RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders | Flag.endStream, stream: 1, [0x80]) }, code: 0x9),
        .init(description: "a PING of 7 bytes",
              frames: { RawHTTP2.frame(Kind.ping, stream: 0, [UInt8](repeating: 0, count: 7)) }, code: 0x6),
        .init(description: "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
              frames: { RawHTTP2.frame(Kind.settings, stream: 0, [0, 4] + RawHTTP2.word(0x8000_0000)) }, code: 0x3),
        .init(description: "SETTINGS_MAX_FRAME_SIZE below 16384",
              frames: { RawHTTP2.frame(Kind.settings, stream: 0, [0, 5] + RawHTTP2.word(100)) }, code: 0x1),
        .init(description: "SETTINGS of 5 bytes",
              frames: { RawHTTP2.frame(Kind.settings, stream: 0, [0, 4, 0, 0, 1]) }, code: 0x6),
        .init(description: "DATA on a stream already closed",
              frames: {
                  RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders | Flag.endStream, stream: 1, block(RawHTTP2.get("/healthz")))
                      + RawHTTP2.frame(Kind.data, flags: Flag.endStream, stream: 1, [0x41])
              }, code: 0x5),
        .init(description: "RST_STREAM on a stream never opened",
              frames: { RawHTTP2.frame(Kind.rstStream, stream: 5, RawHTTP2.word(8)) }, code: 0x1),
        .init(description: "a header block beyond 64 KiB in CONTINUATION frames",
              frames: {
                  var bytes = RawHTTP2.frame(Kind.headers, stream: 1, block(RawHTTP2.get("/healthz")))
                  // 150 fields `x-a: aaa…` (literals without indexing, 106 bytes each) per frame.
                  let field: [UInt8] = [0x00, 3] + Array("x-a".utf8) + [100] + [UInt8](repeating: UInt8(ascii: "a"), count: 100)
                  let piece = Array([[UInt8]](repeating: field, count: 150).joined())
                  for _ in 0..<5 { bytes += RawHTTP2.frame(Kind.continuation, stream: 1, piece) }
                  return bytes
              }, code: 0xB),
    ]
}

@Suite(.timeLimit(.minutes(2))) struct HTTP2ProtocolTests {
    static let routes = """
        routes:
          - {listener: console, path: /echo, service: echo}
          - {listener: console, path: /slow, service: slow}
          - {listener: console, path: /big, service: echo, max_body_bytes: 2MiB}
        """

    @Test func theServerSendsSettingsFirstAndAnswersSettingsPingAndRequests() async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            let first = try #require(await h2.next { _ in true })
            #expect(first.type == Kind.settings && !first.has(Flag.ack))
            let settings = stride(from: 0, to: first.payload.count, by: 6).map { offset in
                (UInt16(first.payload[offset]) << 8 | UInt16(first.payload[offset + 1]), first.word(at: offset + 2))
            }
            #expect(settings.contains { $0.0 == 3 && $0.1 == 128 }, "MAX_CONCURRENT_STREAMS: \(settings)")
            let settingsAck = await h2.next { $0.type == Kind.settings && $0.has(Flag.ack) }
            #expect(settingsAck != nil)

            try await h2.send(Kind.ping, stream: 0, [1, 2, 3, 4, 5, 6, 7, 8])
            let pong = await h2.next { $0.type == Kind.ping }
            #expect(pong?.has(Flag.ack) == true)
            #expect(pong?.payload == [1, 2, 3, 4, 5, 6, 7, 8])

            try await h2.headers(stream: 1, RawHTTP2.get("/healthz"), endStream: true)
            let healthz = await h2.next { $0.type == Kind.headers && $0.stream == 1 }
            #expect(healthz?.status == "200")
            await h2.close()
        }
    }

    /// Responses are encoded with nghttp2's HPACK table; the client decodes them with the
    /// default table and with none at all (SETTINGS_HEADER_TABLE_SIZE 0).
    @Test(arguments: [nil, 0] as [UInt32?])
    func responsesDecodeWhateverHeaderTableTheClientAllows(_ tableSize: UInt32?) async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let settings: [(UInt16, UInt32)] = tableSize.map { [(UInt16(1), $0)] } ?? []
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console), settings: settings)
            for (index, path) in ["/healthz", "/echo", "/healthz", "/echo", "/healthz"].enumerated() {
                let stream = UInt32(2 * index + 1)
                try await h2.headers(stream: stream, RawHTTP2.get(path), endStream: true)
                let answer = await h2.next { $0.type == Kind.headers && $0.stream == stream }
                #expect(answer?.status == "200", "\(path): \(answer?.fields ?? [])")
                #expect(answer?.fields.contains { $0.0 == "date" } == true)
            }
            #expect(!h2.frames.contains { $0.type == Kind.goAway })
            await h2.close()
        }
    }

    /// A frame on a stream that has closed, sent after the server closed it (RFC 9113 5.1):
    /// DATA after both sides ended the stream, and DATA or HEADERS after the client reset it,
    /// are answered STREAM_CLOSED (a stream error or a connection error), not ignored.
    @Test(arguments: ["after the answer", "after the client reset it"])
    func aFrameOnAClosedStreamIsAnsweredStreamClosed(_ when: String) async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            if when == "after the answer" {
                try await h2.headers(stream: 1, RawHTTP2.get("/healthz"), endStream: true)
                let end = await h2.next { $0.stream == 1 && $0.has(Flag.endStream) }
                #expect(end != nil, "no answer on stream 1")
            } else {
                try await h2.headers(stream: 1, RawHTTP2.post("/echo", length: 10), endStream: false)
                try await h2.send(Kind.rstStream, stream: 1, RawHTTP2.word(8))
                // A PING answered after the reset: the server has read it.
                try await h2.send(Kind.ping, stream: 0, [9, 9, 9, 9, 9, 9, 9, 9])
                let pong = await h2.next { $0.type == Kind.ping && $0.has(Flag.ack) }
                #expect(pong != nil)
            }
            try await h2.send(Kind.data, flags: Flag.endStream, stream: 1, [0x41])
            let answer = await h2.next { ($0.type == Kind.goAway && $0.stream == 0) || ($0.type == Kind.rstStream && $0.stream == 1) }
            let frame = try #require(answer, "no answer to DATA on a closed stream (\(when))")
            let code = frame.type == Kind.goAway ? frame.word(at: 4) : frame.word(at: 0)
            #expect(code == 0x5, "\(when): \(frame.type == Kind.goAway ? "GOAWAY" : "RST_STREAM") code \(code)")
            await h2.close()
        }
    }

    @Test(arguments: HTTP2Violation.all)
    func aConnectionErrorEndsTheConnectionWithAGoAwayNamingIt(_ violation: HTTP2Violation) async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            try await h2.send(violation.frames())
            let goAway = try #require(await h2.goAway(), "no GOAWAY for \(violation)")
            #expect(goAway.code == violation.code, "\(violation): GOAWAY \(goAway.code) \(goAway.reason)")
            // And the server closes the connection.
            let anotherFrame = await h2.next { _ in false }
            #expect(anotherFrame == nil)
        }
    }

    @Test func aClientThatDoesNotSpeakHTTP2IsToldSo() async throws {
        try await TestGateway.with { gw in
            let port = try await gw.port(.console)
            let http1 = try await RawHTTP2.connect(port: port, preface: false)
            try await http1.send(Array("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8))
            let toldHTTP1 = await http1.goAway()
            #expect(toldHTTP1?.code == 0x1)

            let noSettings = try await RawHTTP2.connect(port: port, preface: false)
            try await noSettings.send(Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + RawHTTP2.frame(Kind.ping, stream: 0, [UInt8](repeating: 0, count: 8)))
            let toldNoSettings = await noSettings.goAway()
            #expect(toldNoSettings?.code == 0x1)
        }
    }

    @Test func aStreamErrorResetsOnlyThatStream() async throws {
        let gate = Gate()
        defer { gate.open() }
        try await TestGateway.with(body: Self.routes, services: TestServices.registry(gate: gate)) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            // A malformed request (an upper-case field name, RFC 9113 8.2.1).
            try await h2.headers(stream: 1, RawHTTP2.get("/echo") + [("X-Upper", "1")], endStream: true)
            let reset = await h2.next { $0.type == Kind.rstStream }
            #expect(reset?.stream == 1)
            #expect(reset?.word(at: 0) == 0x1)
            // DATA beyond the declared content-length (RFC 9113 8.1.1).
            try await h2.headers(stream: 3, RawHTTP2.post("/echo", length: 2), endStream: false)
            try await h2.send(Kind.data, flags: Flag.endStream, stream: 3, Array("hello".utf8))
            let tooLong = await h2.next { $0.type == Kind.rstStream && $0.stream == 3 }
            #expect(tooLong?.word(at: 0) == 0x1)

            try await h2.headers(stream: 5, RawHTTP2.get("/healthz"), endStream: true)
            let healthz = await h2.next { $0.type == Kind.headers && $0.stream == 5 }
            #expect(healthz?.status == "200")
            #expect(h2.frames.contains { $0.type == Kind.goAway } == false)
            await h2.close()
        }
    }

    @Test func headersInContinuationFramesAndTrailersMakeOneRequest() async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            let block = h2.block(RawHTTP2.post("/echo") + [("x-split", "across-frames")])
            let half = block.count / 2
            try await h2.send(
                RawHTTP2.frame(Kind.headers, stream: 1, Array(block[..<half]))
                    + RawHTTP2.frame(Kind.continuation, flags: Flag.endHeaders, stream: 1, Array(block[half...]))
                    + RawHTTP2.frame(Kind.data, stream: 1, Array("hello".utf8))
            )
            try await h2.headers(stream: 1, [("x-checksum", "5")], endStream: true)
            let end = await h2.next { $0.type == Kind.data && $0.stream == 1 && $0.has(Flag.endStream) }
            #expect(end != nil)
            let response = h2.frames.filter { $0.stream == 1 }
            #expect(response.first { $0.type == Kind.headers }?.status == "200")
            let body = String(decoding: response.filter { $0.type == Kind.data }.flatMap(\.payload), as: UTF8.self)
            #expect(body.contains("body=hello"), "\(body)")
            #expect(body.contains("header.x-split=across-frames"), "\(body)")
            await h2.close()
        }
    }

    enum Credit: String, CaseIterable, Sendable { case windowUpdate, settings }

    /// The client allows 100 bytes per stream: the server sends 100 and waits; a
    /// WINDOW_UPDATE for the stream, or a larger SETTINGS_INITIAL_WINDOW_SIZE, lets the rest
    /// through.
    @Test(arguments: Credit.allCases)
    func aResponseLargerThanTheClientsStreamWindowWaitsForCredit(_ credit: Credit) async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console), settings: [(4, 100)])
            let payload = String(repeating: "0123456789", count: 500)
            try await h2.headers(stream: 1, RawHTTP2.post("/echo", length: payload.utf8.count), endStream: false)
            try await h2.send(Kind.data, flags: Flag.endStream, stream: 1, Array(payload.utf8))
            let firstData = await h2.next { $0.type == Kind.data && $0.stream == 1 }
            #expect(firstData != nil)
            // The PING's answer comes after everything the server could send before it.
            try await h2.send(Kind.ping, stream: 0, [9, 9, 9, 9, 9, 9, 9, 9])
            let pingAnswer = await h2.next { $0.type == Kind.ping && $0.has(Flag.ack) }
            #expect(pingAnswer != nil)
            func received() -> [UInt8] { h2.frames.filter { $0.type == Kind.data && $0.stream == 1 }.flatMap(\.payload) }
            #expect(received().count == 100)

            switch credit {
            case .windowUpdate: try await h2.send(Kind.windowUpdate, stream: 1, RawHTTP2.word(1_000_000))
            case .settings: try await h2.settings([(4, 1_000_000)])
            }
            let end = await h2.next { $0.type == Kind.data && $0.stream == 1 && $0.has(Flag.endStream) }
            #expect(end != nil)
            let body = String(decoding: received(), as: UTF8.self)
            #expect(body.contains("body=\(payload)"))
            await h2.close()
        }
    }

    /// Streams may send a lot (their windows are large) but the connection's window is the
    /// default 65,535 bytes: the server stops there until the connection gets credit.
    @Test func aResponseLargerThanTheConnectionsWindowWaitsForConnectionCredit() async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console), settings: [(4, 1_000_000)])
            let payload = [UInt8](repeating: UInt8(ascii: "p"), count: 65_000)
            let pad = String(repeating: "q", count: 1_000)
            try await h2.headers(stream: 1, RawHTTP2.post("/big", length: payload.count) + [("x-pad", pad)], endStream: false)
            for start in stride(from: 0, to: payload.count, by: 16_384) {
                let end = min(start + 16_384, payload.count)
                try await h2.send(Kind.data, flags: end == payload.count ? Flag.endStream : 0, stream: 1, Array(payload[start..<end]))
            }
            let first = await h2.next { $0.type == Kind.data && $0.stream == 1 }
            #expect(first != nil)
            try await h2.send(Kind.ping, stream: 0, [7, 7, 7, 7, 7, 7, 7, 7])
            let pong = await h2.next { $0.type == Kind.ping && $0.has(Flag.ack) }
            #expect(pong != nil)
            func received() -> Int { h2.frames.filter { $0.type == Kind.data && $0.stream == 1 }.reduce(0) { $0 + $1.payload.count } }
            #expect(received() == 65_535)

            try await h2.send(Kind.windowUpdate, stream: 0, RawHTTP2.word(100_000))
            let end = await h2.next { $0.type == Kind.data && $0.stream == 1 && $0.has(Flag.endStream) }
            #expect(end != nil, "the rest of the response never came")
            let body = String(decoding: h2.frames.filter { $0.type == Kind.data && $0.stream == 1 }.flatMap(\.payload), as: UTF8.self)
            #expect(received() > 65_535, "frames (type/flags/stream/bytes): \(h2.frames.map { "\($0.type)/\($0.flags)/\($0.stream)/\($0.payload.count)" })")
            #expect(body.contains("body=" + String(repeating: "p", count: 65_000) + "\n"))
            await h2.close()
        }
    }

    /// Padding is taken off HEADERS and DATA (and counted against the windows); the body the
    /// service sees is only the data.
    @Test func paddedFramesCarryOnlyTheirData() async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            let block = h2.block(RawHTTP2.post("/echo", length: 5))
            try await h2.send(RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders | Flag.padded, stream: 1, [3] + block + [0, 0, 0]))
            try await h2.send(Kind.data, flags: Flag.endStream | Flag.padded, stream: 1, [10] + Array("hello".utf8) + [UInt8](repeating: 0, count: 10))
            let end = await h2.next { $0.type == Kind.data && $0.stream == 1 && $0.has(Flag.endStream) }
            #expect(end != nil)
            let body = String(decoding: h2.frames.filter { $0.type == Kind.data && $0.stream == 1 }.flatMap(\.payload), as: UTF8.self)
            #expect(body.contains("body=hello\n"), "\(body)")
            await h2.close()
        }
    }

    /// A body over the route's limit is answered 413 at once; what the client still sends is
    /// read and dropped, and the connection serves the next request.
    @Test func aBodyOverTheLimitIsAnswered413AndTheConnectionGoesOn() async throws {
        let routes = Self.routes + "\n  - {listener: console, path: /small, service: echo, max_body_bytes: 16}"
        try await TestGateway.with(body: routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            try await h2.headers(stream: 1, RawHTTP2.post("/small"), endStream: false)
            try await h2.send(Kind.data, stream: 1, [UInt8](repeating: 0x61, count: 1_000))
            let answer = await h2.next { $0.type == Kind.headers && $0.stream == 1 }
            #expect(answer?.status == "413")
            try await h2.send(Kind.data, flags: Flag.endStream, stream: 1, [UInt8](repeating: 0x61, count: 1_000))
            try await h2.headers(stream: 3, RawHTTP2.get("/healthz"), endStream: true)
            let healthz = await h2.next { $0.type == Kind.headers && $0.stream == 3 }
            #expect(healthz?.status == "200")
            #expect(!h2.frames.contains { $0.type == Kind.goAway || ($0.type == Kind.rstStream && $0.stream == 1 && $0.word(at: 0) != 0) })
            await h2.close()
        }
    }

    @Test func trailersWithAPseudoHeaderResetTheStream() async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            try await h2.headers(stream: 1, RawHTTP2.post("/echo"), endStream: false)
            try await h2.headers(stream: 1, [(":path", "/elsewhere")], endStream: true)
            let reset = await h2.next { $0.type == Kind.rstStream && $0.stream == 1 }
            #expect(reset?.word(at: 0) == 0x1)
            await h2.close()
        }
    }

    @Test func streamsBeyondTheConcurrencyLimitAreRefusedAndTheOthersAnswered() async throws {
        let gate = Gate()
        try await TestGateway.with(body: Self.routes, services: TestServices.registry(gate: gate)) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            var bytes: [UInt8] = []
            for index in 0...128 {
                bytes += RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders | Flag.endStream, stream: UInt32(2 * index + 1), h2.block(RawHTTP2.get("/slow")))
            }
            try await h2.send(bytes)
            let refused = await h2.next { $0.type == Kind.rstStream }
            #expect(refused?.stream == 257)
            #expect(refused?.word(at: 0) == 0x7)
            gate.open()
            for index in 0..<128 {
                let stream = UInt32(2 * index + 1)
                let answer = await h2.next { $0.type == Kind.headers && $0.stream == stream }
                #expect(answer?.status == "200")
            }
            await h2.close()
        }
    }

    /// CVE-2023-44487: a client opening and cancelling streams as fast as it can is sent away
    /// (by nghttp2's limit on resets, whose GOAWAY says INTERNAL_ERROR).
    @Test func rapidResetIsSentAway() async throws {
        let gate = Gate()
        try await TestGateway.with(body: Self.routes, services: TestServices.registry(gate: gate)) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            let bytes = h2.rapidResets(250, path: "/slow")
            try await h2.send(bytes)
            let goAway = await h2.goAway()
            #expect(goAway?.code == 0x2)
            gate.open()
        }
    }

    @Test func aFloodOfEmptyDataFramesIsSentAway() async throws {
        try await TestGateway.with(body: Self.routes) { gw in
            let h2 = try await RawHTTP2.connect(port: try await gw.port(.console))
            var bytes = RawHTTP2.frame(Kind.headers, flags: Flag.endHeaders, stream: 1, h2.block(RawHTTP2.post("/echo")))
            for _ in 0..<1_100 { bytes += RawHTTP2.frame(Kind.data, stream: 1) }
            try await h2.send(bytes)
            let goAway = await h2.goAway()
            #expect(goAway?.code == 0xB)
        }
    }
}
