import Foundation
import PorticoTestSupport
import Testing

@testable import PorticoGateway
@testable import PorticoServer

/// The access log: its two formats, escaping, rotation by reopening, reloads, and nothing lost
/// when the gateway stops.
@Suite(.timeLimit(.minutes(1))) struct AccessLogTests {
    static func lines(_ path: String) throws -> [String] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
    }

    static func config(_ file: String, format: String) -> String {
        "access_log: {file: \(file), format: \(format)}"
    }

    @Test func textLinesNameTheRequestOverHTTP1AndHTTP2() async throws {
        let dir = try TemporaryDirectory()
        let file = dir.file("access.log")
        try await TestGateway.with(listeners: [.console: "access_log: true", .clientPlain: "access_log: true"], body: Self.config(file, format: "text")) { gw in
            try await TestClient.with(trusting: gw.identity.certificate, http2: true) { client in
                let answer = try await TestClient.get(client, try await gw.url(.console, "/healthz?probe=1"))
                #expect(answer.status == 200)
            }
            try await TestClient.with(http2: false) { client in
                let answer = try await TestClient.get(client, try await gw.url(.clientPlain, "/missing"))
                #expect(answer.status == 404)
            }
            // A listener with the log off writes nothing.
            try await TestClient.with(trusting: gw.identity.certificate, http2: false) { client in
                let answer = try await TestClient.get(client, try await gw.url(.reporting, "/healthz"))
                #expect(answer.status == 200)
            }
            await gw.gateway.flushAccessLog()
            let lines = try Self.lines(file)
            #expect(lines.count == 2, "\(lines)")
            let pattern = #/^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z][a-z]/\d{4}:\d\d:\d\d:\d\d \+0000\] "(\S+) (\S+) (HTTP/[0-9.]+)" (\d+) (\d+) (\S+) (\d+\.\d{6})$/#
            // Lines of different loops are written in no fixed order: each is found by its listener.
            let first = try #require(lines.first { $0.contains(" console ") }.flatMap { try? pattern.wholeMatch(in: $0) }, "\(lines)")
            #expect(first.output.1 == "GET" && first.output.2 == "/healthz?probe=1" && first.output.3 == "HTTP/2")
            #expect(first.output.4 == "200" && Int(first.output.5)! > 0 && first.output.6 == "console")
            let second = try #require(lines.first { $0.contains(" client_plain ") }.flatMap { try? pattern.wholeMatch(in: $0) }, "\(lines)")
            #expect(second.output.2 == "/missing" && second.output.3 == "HTTP/1.1" && second.output.4 == "404" && second.output.6 == "client_plain")
            #expect(Int(second.output.5)! > 0)
        }
    }

    @Test func jsonLinesParseAndEveryRequestIsWrittenByTheTimeTheGatewayStops() async throws {
        let dir = try TemporaryDirectory()
        let file = dir.file("access.json")
        let count = 300
        try await TestGateway.with(listeners: [.clientPlain: "access_log: true"], body: Self.config(file, format: "json")) { gw in
            let port = try await gw.port(.clientPlain)
            let requests = (0..<count).map { "GET /healthz?n=\($0) HTTP/1.1\r\nHost: x\r\n\($0 == count - 1 ? "Connection: close\r\n" : "")\r\n" }.joined()
            let answers = try await RawTCP.exchange(port: port, requests)
            #expect(answers.components(separatedBy: "HTTP/1.1 200 OK").count == count + 1)
        }
        // No flush asked for: stopping wrote them.
        let lines = try Self.lines(file)
        #expect(lines.count == count)
        for (index, line) in lines.enumerated() {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
            #expect(object["uri"] as? String == "/healthz?n=\(index)")
            #expect(object["method"] as? String == "GET" && object["status"] as? Int == 200 && (object["bytes"] as? Int ?? 0) > 2)
            #expect(object["listener"] as? String == "client_plain" && object["client"] as? String == "127.0.0.1")
            #expect(object["protocol"] as? String == "HTTP/1.1" && (object["duration_us"] as? Int ?? -1) >= 0)
            #expect((object["time"] as? String)?.wholeMatch(of: #/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/#) != nil)
        }
    }

    /// After a rotation moved the file away, reopening writes to a new file at the path; lines
    /// formatted before go to the old one.
    @Test func reopeningAfterARotationStartsANewFile() async throws {
        let dir = try TemporaryDirectory()
        let file = dir.file("access.log")
        try await TestGateway.with(listeners: [.clientPlain: "access_log: true"], body: Self.config(file, format: "text")) { gw in
            let port = try await gw.port(.clientPlain)
            _ = try await RawTCP.exchange(port: port, "GET /healthz?before HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await gw.gateway.flushAccessLog()
            try FileManager.default.moveItem(atPath: file, toPath: file + ".1")
            await gw.gateway.reopenAccessLog()
            _ = try await RawTCP.exchange(port: port, "GET /healthz?after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await gw.gateway.flushAccessLog()
            #expect(try Self.lines(file + ".1").map { $0.contains("/healthz?before") } == [true])
            #expect(try Self.lines(file).map { $0.contains("/healthz?after") } == [true])
            let mode = try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int
            #expect(mode == 0o640)
        }
    }

    /// A reload that changes the format or the file applies to the next request.
    @Test func aReloadChangesTheFormatAndTheFile() async throws {
        let dir = try TemporaryDirectory()
        let first = dir.file("first.log")
        let second = dir.file("second.log")
        try await TestGateway.with(listeners: [.clientPlain: "access_log: true"], body: Self.config(first, format: "text")) { gw in
            let port = try await gw.port(.clientPlain)
            _ = try await RawTCP.exchange(port: port, "GET /healthz?one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            let configurationFile = gw.dir.file("portico.yaml")
            let yaml = try String(contentsOfFile: configurationFile, encoding: .utf8)
            try yaml.replacingOccurrences(of: Self.config(first, format: "text"), with: Self.config(second, format: "json"))
                .write(toFile: configurationFile, atomically: true, encoding: .utf8)
            #expect(await gw.gateway.reload() == nil)
            _ = try await RawTCP.exchange(port: port, "GET /healthz?two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await gw.gateway.flushAccessLog()
            #expect(try Self.lines(first).count == 1)
            #expect(try Self.lines(first).first?.contains("\"GET /healthz?one HTTP/1.1\" 200 ") == true)
            #expect(try Self.lines(second).count == 1)
            #expect(try Self.lines(second).first?.hasPrefix("{\"time\":") == true)
        }
    }

    /// What a client sends cannot break a line or forge one, in either format.
    @Test func fieldsAreEscaped() async throws {
        let dir = try TemporaryDirectory()
        for format in AccessLogConfiguration.Format.allCases {
            var configuration = AccessLogConfiguration()
            configuration.file = dir.file("\(format).log")
            configuration.format = format
            let log = try AccessLog(configuration)
            let loop = try TestGateway.serverLoops().loops[0]
            let buffer = log.buffer(on: loop)
            try await loop.submit {
                buffer.record(listener: "console", client: nil, method: "GET", uri: "/a\"b\\c\u{1}\nd é", http: "1.1", status: 400, bytes: 12, microseconds: 1_234_567)
            }.get()
            await log.flush()
            let lines = try Self.lines(configuration.file)
            #expect(lines.count == 1)
            switch format {
            case .text:
                #expect(lines.first?.hasSuffix(#""GET /a\x22b\x5cc\x01\x0ad \xc3\xa9 HTTP/1.1" 400 12 console 1.234567"#) == true, "\(lines)")
                #expect(lines.first?.hasPrefix("- - - [") == true)
            case .json:
                let object = try #require(try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
                #expect(object["uri"] as? String == "/a\"b\\c\u{1}\nd é")
                #expect(object["client"] is NSNull)
                #expect(object["duration_us"] as? Int == 1_234_567)
            }
        }
    }

    @Test func aBadFormatOrAnUnwritableFileIsAConfigurationError() throws {
        let dir = try TemporaryDirectory()
        let loader = ConfigurationLoader(knownServices: BuiltinServices.names, kinds: TestListeners.kinds)
        do {
            _ = try loader.load(yaml: "access_log:\n  format: xml\n", file: dir.file("p.yaml"))
            Issue.record("a bad format was accepted")
        } catch {
            #expect(error.diagnostics.map(\.message) == ["access_log.format must be text or json, not 'xml'"])
            #expect(error.diagnostics.first?.location?.line == 2)
        }
        let config = try loader.load(yaml: "access_log:\n  file: no/such/folder/access.log\n", file: dir.file("p.yaml"))
        #expect(config.accessLog.file == dir.file("no/such/folder/access.log"))
        do {
            _ = try ConfigurationCheck.prepare(config, generateMissing: false)
            Issue.record("an unwritable access log was accepted")
        } catch {
            #expect(error.diagnostics.first?.message == "access_log.file: cannot open \(dir.file("no/such/folder/access.log")) for appending: No such file or directory")
            #expect(error.diagnostics.first?.location?.line == 2)
        }
    }
}
