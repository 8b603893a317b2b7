import Foundation
import Testing

/// A local SMTP server that keeps each message in a maildir: Python's aiosmtpd.
public final class MailSink {
    public static let python: String? = {
        guard let python = Tools.path(of: "python3") else { return nil }
        let check = Process()
        check.executableURL = URL(fileURLWithPath: python)
        check.arguments = ["-c", "import aiosmtpd"]
        check.standardError = FileHandle.nullDevice
        guard (try? check.run()) != nil else { return nil }
        check.waitUntilExit()
        return check.terminationStatus == 0 ? python : nil
    }()
    public static let usable = python != nil
    public static let required = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil

    let process: Process
    public let port: Int
    public let maildir: String

    /// - Parameter tls: a certificate and key (PEM files) to offer STARTTLS with, which the
    ///   sink then requires before mail.
    public init(directory: String, tls: (certificate: String, key: String)? = nil) async throws {
        let python = try #require(Self.python, "python3 on PATH has no aiosmtpd (pip install aiosmtpd)")
        maildir = directory + "/maildir"
        port = LoopbackPort.free()
        process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-m", "aiosmtpd", "-n", "-l", "127.0.0.1:\(port)"] + (tls.map { ["--tlscert", $0.certificate, "--tlskey", $0.key] } ?? [])
            + ["-c", "aiosmtpd.handlers.Mailbox", maildir]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let port = self.port
        try await eventually("the SMTP sink listens on \(port)", within: .seconds(20)) { LoopbackPort.accepts(port) }
    }

    /// The messages received so far.
    public var messages: [String] {
        let folder = maildir + "/new"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return names.sorted().compactMap { FileManager.default.contents(atPath: folder + "/" + $0).map { String(decoding: $0, as: UTF8.self) } }
    }

    public func stop() {
        // aiosmtpd's loop does not end on SIGTERM.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

