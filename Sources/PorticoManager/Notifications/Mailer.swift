import CPorticoCurl
import Foundation

/// `notifications.smtp`: the mail server notifications and scheduled reports are sent through.
public struct SMTPSettings: Sendable, Equatable {
    /// How the connection is protected.
    public enum Security: String, Sendable, CaseIterable {
        /// STARTTLS, required: the mail is not sent if the server does not offer it.
        case starttls
        /// TLS from the first byte (port 465).
        case tls
        /// None: for a lab's sink only, and said so in the config.
        case none
    }

    public var host: String
    public var port: Int = 587
    public var security: Security = .starttls
    public var username: String?
    /// Read from `password_file` (0600), never from the config itself.
    public var password: String?
    /// PEM certificates the server is verified against, instead of the system's roots.
    public var trust: String?
    public var from: String
    public var timeoutSeconds = 30

    public init(host: String, from: String) {
        self.host = host
        self.from = from
    }
}

/// Sends one message through the configured SMTP server with the system's libcurl (its SMTP
/// client: STARTTLS, authentication, the server's replies as errors). Blocking; callers run
/// it off the event loops.
struct Mailer: Sendable {
    let settings: SMTPSettings

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// An RFC 5322 message: text, and an optional attachment (a report's CSV).
    static func message(from: String, to: String, subject: String, text: String, attachment: (name: String, contentType: String, body: String)? = nil,
                        date: Date = Date()) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss '+0000'"
        let domain = from.split(separator: "@").last.map(String.init) ?? "portico"
        var headers = [
            "From: \(from)", "To: \(to)", "Subject: \(headerText(subject))", "Date: \(formatter.string(from: date))",
            "Message-ID: <\(UUID().uuidString.lowercased())@\(domain)>", "MIME-Version: 1.0",
        ]
        var body: String
        if let attachment {
            let boundary = "portico-" + UUID().uuidString.lowercased()
            headers.append("Content-Type: multipart/mixed; boundary=\"\(boundary)\"")
            let encoded = Data(attachment.body.utf8).base64EncodedString(options: [.lineLength76Characters, .endLineWithCarriageReturn, .endLineWithLineFeed])
            body = """
                --\(boundary)\r
                Content-Type: text/plain; charset=utf-8\r
                Content-Transfer-Encoding: 8bit\r
                \r
                \(crlf(text))\r
                --\(boundary)\r
                Content-Type: \(attachment.contentType); charset=utf-8\r
                Content-Disposition: attachment; filename="\(attachment.name)"\r
                Content-Transfer-Encoding: base64\r
                \r
                \(encoded)\r
                --\(boundary)--\r

                """
        } else {
            headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
            body = crlf(text) + "\r\n"
        }
        return headers.joined(separator: "\r\n") + "\r\n\r\n" + body
    }

    /// A header value: ASCII as it is, else an RFC 2047 encoded word.
    static func headerText(_ text: String) -> String {
        let single = text.replacingOccurrences(of: "\r", with: " ").replacingOccurrences(of: "\n", with: " ")
        if single.allSatisfy(\.isASCII) { return single }
        return "=?utf-8?b?" + Data(single.utf8).base64EncodedString() + "?="
    }

    static func crlf(_ text: String) -> String {
        text.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\n", with: "\r\n")
    }

    /// Sends `message` to `recipient`.
    /// - Throws: ``Failure`` with curl's reason and the server's last reply code.
    func send(_ message: String, to recipient: String) throws {
        guard let curl = curl_easy_init() else { throw Failure(description: "libcurl could not start") }
        defer { curl_easy_cleanup(curl) }
        let scheme = settings.security == .tls ? "smtps" : "smtp"
        let host = settings.host.contains(":") ? "[\(settings.host)]" : settings.host
        let recipients: UnsafeMutablePointer<curl_slist>? = curl_slist_append(nil, "<\(recipient)>")
        defer { curl_slist_free_all(recipients) }
        final class Reader {
            let bytes: [UInt8]
            var offset = 0
            init(_ text: String) { bytes = Array(text.utf8) }
        }
        let reader = Reader(message)
        let context = Unmanaged.passRetained(reader)
        defer { context.release() }
        var checks: [CURLcode] = [
            portico_curl_set_string(curl, CURLOPT_URL, "\(scheme)://\(host):\(settings.port)"),
            portico_curl_set_string(curl, CURLOPT_MAIL_FROM, "<\(settings.from)>"),
            portico_curl_set_list(curl, CURLOPT_MAIL_RCPT, recipients),
            portico_curl_set_long(curl, CURLOPT_UPLOAD, 1),
            portico_curl_set_long(curl, CURLOPT_TIMEOUT, settings.timeoutSeconds),
            portico_curl_set_long(curl, CURLOPT_CONNECTTIMEOUT, min(10, settings.timeoutSeconds)),
            portico_curl_set_long(curl, CURLOPT_NOSIGNAL, 1),
            portico_curl_set_long(curl, CURLOPT_USE_SSL, settings.security == .none ? Int(CURLUSESSL_NONE.rawValue) : Int(CURLUSESSL_ALL.rawValue)),
            portico_curl_set_long(curl, CURLOPT_SSLVERSION, Int(CURL_SSLVERSION_TLSv1_2)),
            portico_curl_set_pointer(curl, CURLOPT_READDATA, context.toOpaque()),
            portico_curl_set_reader(curl) { buffer, size, count, opaque in
                guard let buffer, let opaque else { return 0 }
                let reader = Unmanaged<Reader>.fromOpaque(opaque).takeUnretainedValue()
                let length = min(size * count, reader.bytes.count - reader.offset)
                reader.bytes.withUnsafeBufferPointer { source in
                    UnsafeMutableRawPointer(buffer).copyMemory(from: source.baseAddress! + reader.offset, byteCount: length)
                }
                reader.offset += length
                return length
            },
        ]
        if let trust = settings.trust { checks.append(portico_curl_set_string(curl, CURLOPT_CAINFO, trust)) }
        if let username = settings.username {
            checks.append(portico_curl_set_string(curl, CURLOPT_USERNAME, username))
            checks.append(portico_curl_set_string(curl, CURLOPT_PASSWORD, settings.password ?? ""))
        }
        if let failed = checks.first(where: { $0 != CURLE_OK }) {
            throw Failure(description: "libcurl refused a setting: \(String(cString: curl_easy_strerror(failed)))")
        }
        let result = curl_easy_perform(curl)
        guard result == CURLE_OK else {
            var code = 0
            _ = portico_curl_response_code(curl, &code)
            throw Failure(description: "\(String(cString: curl_easy_strerror(result)))" + (code > 0 ? " (the server's last reply was \(code))" : "")
                          + " sending to \(settings.host):\(settings.port)")
        }
    }
}
