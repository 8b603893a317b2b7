import Foundation

/// Loopback ports for servers a test starts on a port it names (and may start again on it),
/// or for a port nothing listens on.
public enum TestPorts {
    /// A loopback port free at the time of asking, below the range the kernel hands out for
    /// outgoing connections and `port: 0`, so that no other test's connection or listener
    /// takes it meanwhile (a server given it may be restarted on it).
    public static func unused() throws -> Int {
        let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))?
            .split(whereSeparator: \.isWhitespace).compactMap { Int($0) } ?? []
        let below = min(range.first ?? 32768, 32768)
        for _ in 0..<100 {
            let port = Int.random(in: 10_000..<below)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = UInt16(port).bigEndian
            let bound = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            if bound { return port }
        }
        throw TestPortError(description: "no free loopback port below \(below)")
    }

    struct TestPortError: Error, CustomStringConvertible {
        let description: String
    }
}
