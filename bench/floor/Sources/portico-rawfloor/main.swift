// The floor without SwiftNIO: what a server costs on this machine when it drives epoll and
// BoringSSL itself, with no event-loop framework, channel pipeline or buffer objects between
// the socket and the bytes. Measured beside nginx, Portico and bench/floor (bench/run.sh,
// RAWFLOOR=1), it says what a server core of Portico's own could buy.
//
//   portico-rawfloor CERT KEY PORT UPSTREAM_PORT [CERT2 KEY2 PORT2]
//
// The same contract as bench/floor (portico-floor): TLS 1.2+ with the given pair on PORT
// (the second pair on PORT2), one thread per CPU the process may run on (each with its own
// epoll instance and its own SO_REUSEPORT listening socket), and, for the benchmark's clients
// only (whole requests per read, one at a time per connection when proxying):
// - a request whose target starts with `/proxied` is relayed byte for byte over one plain
//   connection per client connection to 127.0.0.1:UPSTREAM_PORT, and the upstream's bytes
//   back, with no parsing either way;
// - any other request is answered with Portico's /healthz bytes, one per "\r\n\r\n", all in
//   one write; if a request holds "HTTP/1.0" or "lose\r\n" (`Connection: close`), the
//   connection is closed after the answer.
// Each readiness event is one read from the socket (handed to BoringSSL in a memory BIO) and
// the records it holds are decrypted into the connection's buffer; answers are written with
// one SSL_write (one record) straight to the socket.
import CNIOBoringSSL
import CNIOLinux
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 5 || arguments.count == 8, UInt16(arguments[3]) != nil, UInt16(arguments[4]) != nil,
      arguments.count == 5 || UInt16(arguments[7]) != nil
else {
    print("usage: portico-rawfloor CERT KEY PORT UPSTREAM_PORT [CERT2 KEY2 PORT2]")
    exit(2)
}
let upstreamPort = UInt16(arguments[4])!

/// A server context with the pair, TLS 1.2 and later (BoringSSL's defaults otherwise, as
/// NIOSSL leaves them: session cache and tickets on).
func makeContext(certificate: String, key: String) -> OpaquePointer {
    guard let context = SSL_CTX_new(TLS_server_method()) else { fatalError("SSL_CTX_new") }
    _ = SSL_CTX_set_min_proto_version(context, UInt16(TLS1_2_VERSION))
    guard SSL_CTX_use_certificate_chain_file(context, certificate) == 1,
          SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1
    else {
        print("portico-rawfloor: cannot load \(certificate) / \(key)")
        exit(1)
    }
    return context
}

// Raw pointers to contexts that live for the whole process and are only used through
// BoringSSL's thread-safe calls (SSL_new).
nonisolated(unsafe) let contexts: [OpaquePointer] = {
    var made = [makeContext(certificate: arguments[1], key: arguments[2])]
    if arguments.count == 8 { made.append(makeContext(certificate: arguments[5], key: arguments[6])) }
    return made
}()
let ports: [UInt16] = arguments.count == 8 ? [UInt16(arguments[3])!, UInt16(arguments[7])!] : [UInt16(arguments[3])!]

/// Portico's /healthz response, with the date fixed at start.
let answer: [UInt8] = {
    var date = time(nil)
    var parts = tm()
    gmtime_r(&date, &parts)
    var text = [CChar](repeating: 0, count: 64)
    let length = strftime(&text, text.count, "%a, %d %b %Y %H:%M:%S GMT", &parts)
    let stamp = String(decoding: text[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return Array("HTTP/1.1 200 OK\r\ndate: \(stamp)\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 3\r\n\r\nok\n".utf8)
}()

/// The CPUs this process may run on (so that `taskset` gives it as many threads): the
/// `Cpus_allowed` mask of /proc/self/status.
func allowedCPUs() -> Int {
    guard let file = fopen("/proc/self/status", "r") else { return Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 4096)
    while fgets(&line, Int32(line.count), file) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard text.hasPrefix("Cpus_allowed:") else { continue }
        return text.dropFirst("Cpus_allowed:".count).reduce(0) { count, character in
            count + (character.hexDigitValue.map { $0.nonzeroBitCount } ?? 0)
        }
    }
    return Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
}

/// `accept4` (a GNU extension the Swift Glibc module leaves out), looked up once.
typealias Accept4 = @convention(c) (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?, Int32) -> Int32
let accept4: Accept4 = unsafeBitCast(dlsym(nil, "accept4")!, to: Accept4.self)

/// What an epoll event is for: the high 32 bits of its data.
enum Kind: UInt64 {
    case listener = 0
    case client = 1
    case upstream = 2
}

func tag(_ kind: Kind, _ value: Int32) -> UInt64 { kind.rawValue << 32 | UInt64(UInt32(bitPattern: value)) }

func fail(_ what: String) -> Never {
    print("portico-rawfloor: \(what): \(String(cString: strerror(errno)))")
    exit(1)
}

let bufferSize = 64 * 1024

/// One client connection: its TLS state, the bytes of an incomplete request (usually none,
/// so an idle connection holds no buffer of its own), and its upstream connection once it
/// relayed a request.
final class Connection {
    let fd: Int32
    let ssl: OpaquePointer
    var partial: [UInt8] = []
    var upstream: Int32 = -1

    init(fd: Int32, ssl: OpaquePointer) {
        self.fd = fd
        self.ssl = ssl
    }
}

/// One thread's event loop.
final class Loop {
    let epoll: Int32
    /// Client connections by descriptor, and the client each upstream descriptor serves.
    var clients: [Connection?] = Array(repeating: nil, count: 1024)
    var upstreams: [Connection?] = Array(repeating: nil, count: 1024)
    let scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: bufferSize)
    /// What a connection's records decrypt to, shared by the loop's connections.
    let plain = UnsafeMutablePointer<UInt8>.allocate(capacity: bufferSize)
    var listeners: [(fd: Int32, context: OpaquePointer)] = []

    init() {
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        if epoll < 0 { fail("epoll_create1") }
        for (index, port) in ports.enumerated() {
            let fd = listen(port: port)
            listeners.append((fd, contexts[index]))
            add(fd, tag(.listener, Int32(index)))
        }
    }

    func listen(port: UInt16) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { fail("socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
        if withLoopback(port: port, { bind(fd, $0, $1) }) != 0 { fail("bind \(port)") }
        if Glibc.listen(fd, 4096) != 0 { fail("listen") }
        return fd
    }

    func add(_ fd: Int32, _ data: UInt64) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = data
        if epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) != 0 { fail("epoll_ctl") }
    }

    func run() -> Never {
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        while true {
            let ready = epoll_wait(epoll, &events, Int32(events.count), -1)
            if ready < 0 {
                if errno == EINTR { continue }
                fail("epoll_wait")
            }
            for index in 0..<Int(ready) {
                let data = events[index].data.u64
                let value = Int32(bitPattern: UInt32(truncatingIfNeeded: data))
                switch Kind(rawValue: data >> 32)! {
                case .listener: accept(listeners[Int(value)])
                case .client: if let connection = clients[Int(value)] { readClient(connection) }
                case .upstream: if let connection = upstreams[Int(value)] { readUpstream(connection) }
                }
            }
        }
    }

    func accept(_ listener: (fd: Int32, context: OpaquePointer)) {
        while true {
            let fd = accept4(listener.fd, nil, nil, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            if fd < 0 { return }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            guard let ssl = SSL_new(listener.context) else { fail("SSL_new") }
            // Records are read from the socket by one read per readiness event into a memory
            // BIO (a socket BIO reads each record's header and body separately, and once more
            // to find the socket empty: three reads per request); written straight to it.
            guard let input = BIO_new(BIO_s_mem()), let output = BIO_new_socket(fd, BIO_NOCLOSE) else { fail("BIO_new") }
            _ = BIO_set_mem_eof_return(input, -1)
            SSL_set_bio(ssl, input, output)
            SSL_set_accept_state(ssl)
            while clients.count <= Int(fd) { clients.append(contentsOf: repeatElement(nil, count: clients.count)) }
            clients[Int(fd)] = Connection(fd: fd, ssl: ssl)
            add(fd, tag(.client, fd))
        }
    }

    /// Reads every record the socket holds (the handshake first), then answers or relays each
    /// whole request read.
    func readClient(_ connection: Connection) {
        var ended = false
        let received = Glibc.read(connection.fd, scratch, bufferSize)
        if received > 0 {
            _ = BIO_write(SSL_get_rbio(connection.ssl), scratch, Int32(received))
        } else if received == 0 || (errno != EAGAIN && errno != EINTR) {
            ended = true
        }
        var count = connection.partial.count
        if count > 0 {
            connection.partial.withUnsafeBufferPointer { plain.update(from: $0.baseAddress!, count: count) }
            connection.partial = []
        }
        while count < bufferSize {
            let read = SSL_read(connection.ssl, plain + count, Int32(bufferSize - count))
            if read > 0 {
                count += Int(read)
                continue
            }
            let error = SSL_get_error(connection.ssl, read)
            if error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE { ended = true }
            break
        }
        var start = 0
        var answers = 0
        var closeAfter = false
        while let end = headEnd(plain, from: start, to: count) {
            let head = UnsafeRawBufferPointer(start: plain + start, count: end - start)
            if head.count > 12 && memcmp(head.baseAddress! + 4, "/proxied", 8) == 0 {
                relay(head, for: connection)
            } else {
                answers += 1
                if contains(head, "HTTP/1.0") || contains(head, "lose\r\n") { closeAfter = true }
            }
            start = end
        }
        if start < count { connection.partial = Array(UnsafeBufferPointer(start: plain + start, count: count - start)) }
        if answers > 0 {
            var length = 0
            for _ in 0..<answers {
                answer.withUnsafeBytes { (scratch + length).update(from: $0.bindMemory(to: UInt8.self).baseAddress!, count: $0.count) }
                length += answer.count
            }
            write(connection, scratch, length)
        }
        if ended || closeAfter || count == bufferSize { close(connection) }
    }

    func readUpstream(_ connection: Connection) {
        let read = Glibc.read(connection.upstream, scratch, bufferSize)
        if read > 0 {
            write(connection, scratch, read)
        } else if read == 0 || (errno != EAGAIN && errno != EINTR) {
            close(connection)
        }
    }

    func relay(_ head: UnsafeRawBufferPointer, for connection: Connection) {
        if connection.upstream < 0 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if withLoopback(port: upstreamPort, { connect(fd, $0, $1) }) != 0 { fail("connect to the upstream") }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            while upstreams.count <= Int(fd) { upstreams.append(contentsOf: repeatElement(nil, count: upstreams.count)) }
            upstreams[Int(fd)] = connection
            connection.upstream = fd
            add(fd, tag(.upstream, fd))
        }
        var offset = 0
        while offset < head.count {
            let written = Glibc.write(connection.upstream, head.baseAddress! + offset, head.count - offset)
            if written > 0 { offset += written } else if errno == EAGAIN { waitWritable(connection.upstream) } else { return }
        }
    }

    /// Writes `bytes` as one record (BoringSSL writes all of it or nothing).
    func write(_ connection: Connection, _ bytes: UnsafeMutablePointer<UInt8>, _ count: Int) {
        while true {
            let written = SSL_write(connection.ssl, bytes, Int32(count))
            if written > 0 { return }
            let error = SSL_get_error(connection.ssl, written)
            guard error == SSL_ERROR_WANT_WRITE else { return }
            waitWritable(connection.fd)
        }
    }

    /// Blocks until the socket takes more: only when its buffer is full, which the
    /// benchmark's small answers never fill.
    func waitWritable(_ fd: Int32) {
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        _ = poll(&entry, 1, 1000)
    }

    func close(_ connection: Connection) {
        guard clients[Int(connection.fd)] === connection else { return }
        _ = SSL_shutdown(connection.ssl)
        SSL_free(connection.ssl)
        Glibc.close(connection.fd)
        clients[Int(connection.fd)] = nil
        if connection.upstream >= 0 {
            Glibc.close(connection.upstream)
            upstreams[Int(connection.upstream)] = nil
        }
    }
}

/// Calls `body` with 127.0.0.1:`port` as a socket address and its length.
func withLoopback(port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

/// The end of the first head from `start` ("\r\n\r\n" included), if one has all arrived.
func headEnd(_ bytes: UnsafeMutablePointer<UInt8>, from start: Int, to end: Int) -> Int? {
    var index = start
    while index + 3 < end {
        guard let found = memchr(bytes + index, 0x0D, end - index - 3) else { return nil }
        let at = UnsafeMutablePointer<UInt8>(found.assumingMemoryBound(to: UInt8.self)) - bytes
        if bytes[at + 1] == 0x0A && bytes[at + 2] == 0x0D && bytes[at + 3] == 0x0A { return at + 4 }
        index = at + 1
    }
    return nil
}

func contains(_ head: UnsafeRawBufferPointer, _ needle: StaticString) -> Bool {
    let count = needle.utf8CodeUnitCount
    guard head.count >= count else { return false }
    for start in 0...(head.count - count) where memcmp(head.baseAddress! + start, needle.utf8Start, count) == 0 { return true }
    return false
}

/// A loop thread's body: not the main actor's (a closure written in top-level code is, and
/// traps when it runs on another thread).
nonisolated func loopThread(_: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    Loop().run()
}

signal(SIGPIPE, SIG_IGN)
let threads = max(1, allowedCPUs())
for _ in 1..<threads {
    var thread = pthread_t()
    pthread_create(&thread, nil, loopThread, nil)
}
Loop().run()
