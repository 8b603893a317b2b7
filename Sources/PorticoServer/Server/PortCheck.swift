#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// Whether an address is free to listen on, asked before a listener binds one socket per
/// event loop with `SO_REUSEPORT`.
///
/// `SO_REUSEPORT` lets sockets of the same user share a port, so a second Portico started by
/// mistake would quietly take half of the first one's connections instead of failing. A socket
/// bound without it fails on a port anyone listens on, with or without the option: that is the
/// check, made just before the listener's own sockets bind.
package enum PortCheck {
    /// Binds and closes a socket on `host:port`.
    /// - Throws: NIO's `IOError` with the OS reason (``ListenerError/bind(role:address:port:error:)`` words it).
    package static func ensureFree(host: String, port: Int) throws {
        let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        let fd = socket(address.protocol.rawValue, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        defer { close(fd) }
        var one: CInt = 1
        guard setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size)) == 0,
              address.withSockAddr({ bind(fd, $0, socklen_t($1)) }) == 0
        else { throw IOError(errnoCode: errno, reason: "bind") }
    }
}
