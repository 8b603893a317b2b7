import CPorticoLDAP
import Foundation
import NIOConcurrencyHelpers
import NIOPosix
import PorticoStore

/// `directory`: the LDAP server (OpenLDAP, Active Directory) operators and endpoint users
/// sign in against.
public struct DirectorySettings: Sendable, Equatable {
    /// How the connection is protected.
    public enum Security: String, Sendable, CaseIterable {
        /// `ldaps://`: TLS from the first byte.
        case ldaps
        /// `ldap://` and StartTLS, required before any bind.
        case starttls
        /// Neither: passwords cross the network in the clear. Only when the config says so, for a lab.
        case none
    }

    /// `ldap://host:389` or `ldaps://host:636`.
    public var url: String
    public var security: Security = .ldaps
    /// PEM certificates the server is verified against (its CA).
    public var trust: String?
    /// The account the manager searches with, and its password (from a 0600 file).
    public var bindDN: String?
    public var bindPassword: String?
    /// Where users and groups are looked for.
    public var baseDN: String
    /// Seconds to connect, and for each operation.
    public var timeoutSeconds = 10
    /// The attribute a sign-in name is looked up by: `uid`, or `sAMAccountName` on Active Directory.
    public var userAttribute = "uid"
    /// Which entries the sync takes for users (RFC 4515).
    public var userFilter = "(objectClass=inetOrgPerson)"
    /// What an account must also match to sign in (and to stay an operator): the directory's
    /// way of saying it is enabled. Empty: every account found.
    public var accountFilter = ""
    /// The groups a user is in: `{dn}` stands for the user's entry name, `{user}` for its
    /// sign-in name.
    public var groupFilter = "(|(member={dn})(uniqueMember={dn})(memberUid={user}))"
    /// The attribute that names a group (what grants and the role mapping say).
    public var groupAttribute = "cn"
    /// Active Directory: passwords are changed through `unicodePwd`, not RFC 3062.
    public var activeDirectory = false
    /// How many idle connections the manager keeps open.
    public var poolSize = 4
    /// How often the users are synced from the directory, in seconds; 0: never (users are
    /// then known from their first sign-in).
    public var syncIntervalSeconds = 3600
    /// Operators from the directory: the role each directory group gives, the first that
    /// matches in this order. Empty: operators are local only.
    public var operatorRoles: [RoleMapping] = []

    /// The role of the first mapping whose group is among `groups`.
    public func role(forGroups groups: [String]) -> OperatorRole? {
        operatorRoles.first { mapping in groups.contains { $0.caseInsensitiveCompare(mapping.group) == .orderedSame } }?.role
    }

    /// A directory group and the operator role its members get.
    public struct RoleMapping: Sendable, Equatable {
        public var group: String
        public var role: OperatorRole

        public init(group: String, role: OperatorRole) {
            self.group = group
            self.role = role
        }
    }

    public init(url: String, baseDN: String) {
        self.url = url
        self.baseDN = baseDN
    }
}

/// Why the directory refused or could not be reached, in words an operator acts on.
public struct DirectoryError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable {
        /// The name or password is wrong (LDAP 49), or the account may not sign in.
        case invalidCredentials
        /// The server cannot be reached, or did not answer in time.
        case unreachable
        /// TLS failed: the certificate is not trusted, or the name does not match.
        case tls
        /// The directory's own policy refused (a password too short, reused, ...).
        case refused
        /// Anything else the server answered.
        case other
    }

    public var kind: Kind
    public var description: String
}

/// One connection to the directory with OpenLDAP's libldap: TLS (LDAPS, or StartTLS before
/// any bind) verified against the configured CA, timeouts, simple binds, searches and the
/// password modify extended operation (RFC 3062). libldap blocks: calls run on the client's
/// own threads, never on an event loop or the cooperative pool.
final class DirectoryConnection {
    private var handle: OpaquePointer?
    let settings: DirectorySettings
    /// Whom the connection is bound as now (nil: anonymous, or after a failed bind).
    private(set) var boundAs: String?

    /// Connects and secures the connection (nothing is sent in the clear unless `security` is none).
    init(_ settings: DirectorySettings) throws {
        self.settings = settings
        guard settings.security != .none || !settings.url.lowercased().hasPrefix("ldaps://") else {
            throw DirectoryError(kind: .other, description: "directory.url is ldaps:// but directory.security is none")
        }
        var ld: OpaquePointer?
        let initialized = ldap_initialize(&ld, settings.url)
        guard initialized == LDAP_SUCCESS, let ld else {
            throw DirectoryError(kind: .other, description: "directory.url \(settings.url) is not an LDAP URL: \(String(cString: ldap_err2string(initialized)))")
        }
        handle = ld
        _ = portico_ldap_set_int(ld, LDAP_OPT_PROTOCOL_VERSION, LDAP_VERSION3)
        _ = portico_ldap_set_timeout(ld, LDAP_OPT_NETWORK_TIMEOUT, settings.timeoutSeconds)
        _ = portico_ldap_set_timeout(ld, LDAP_OPT_TIMEOUT, settings.timeoutSeconds)
        _ = portico_ldap_set_int(ld, LDAP_OPT_REFERRALS, 0)
        if settings.security != .none {
            // The handle's own TLS context: the CA, a verified certificate and name, TLS 1.2 at least.
            if let trust = settings.trust { _ = portico_ldap_set_string(ld, LDAP_OPT_X_TLS_CACERTFILE, trust) }
            _ = portico_ldap_set_int(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, LDAP_OPT_X_TLS_DEMAND)
            _ = portico_ldap_tls_minimum_1_2(ld)
            _ = portico_ldap_set_int(ld, LDAP_OPT_X_TLS_NEWCTX, 0)
        }
        if settings.security == .starttls {
            let started = ldap_start_tls_s(ld, nil, nil)
            if started != LDAP_SUCCESS { throw failure(started, doing: "StartTLS with \(settings.url)") }
        }
    }

    deinit {
        if let handle { ldap_unbind_ext_s(handle, nil, nil) }
    }

    /// The error for a libldap result, in words.
    private func failure(_ code: Int32, doing what: String) -> DirectoryError {
        let reason = String(cString: ldap_err2string(code))
        var detail = ""
        if let handle, let diagnostic = portico_ldap_diagnostic(handle) {
            detail = String(cString: diagnostic)
            ldap_memfree(diagnostic)
        }
        let text = "\(what): \(reason)" + (detail.isEmpty ? "" : " (\(detail))")
        switch code {
        case LDAP_INVALID_CREDENTIALS: return DirectoryError(kind: .invalidCredentials, description: text)
        case LDAP_SERVER_DOWN, LDAP_TIMEOUT, LDAP_TIMELIMIT_EXCEEDED, LDAP_UNAVAILABLE, LDAP_BUSY:
            // libldap says "Can't contact LDAP server" for a failed TLS handshake too: a server
            // that takes a TCP connection was reached, and it is TLS that failed.
            if settings.security != .none, code == LDAP_SERVER_DOWN, Self.accepts(url: settings.url, timeoutSeconds: settings.timeoutSeconds) {
                return DirectoryError(kind: .tls, description: "\(what): the secure connection to \(settings.url) failed: its certificate is not one directory.trust verifies, or it does not speak TLS there")
            }
            return DirectoryError(kind: .unreachable, description: text)
        case LDAP_CONNECT_ERROR:
            return DirectoryError(kind: .tls, description: "\(what): the secure connection failed (\(detail.isEmpty ? reason : detail)); directory.trust names the CA to verify it with")
        case LDAP_CONSTRAINT_VIOLATION, LDAP_UNWILLING_TO_PERFORM, LDAP_INSUFFICIENT_ACCESS:
            return DirectoryError(kind: .refused, description: detail.isEmpty ? text : "the directory refused: \(detail)")
        default: return DirectoryError(kind: .other, description: text)
        }
    }

    /// Whether the host and port of an LDAP URL take a TCP connection.
    static func accepts(url: String, timeoutSeconds: Int) -> Bool {
        guard let components = URLComponents(string: url), let host = components.host else { return false }
        let port = components.port ?? (components.scheme?.lowercased() == "ldaps" ? 636 : 389)
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")), "\(port)", &hints, &found) == 0, let first = found else { return false }
        defer { freeaddrinfo(found) }
        let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0
    }

    /// A simple bind: the directory checks the name and password.
    func bind(dn: String, password: String) throws {
        guard let handle else { throw DirectoryError(kind: .other, description: "the connection is closed") }
        // An empty password is an unauthenticated bind that servers accept: never a sign-in.
        guard !password.isEmpty else { throw DirectoryError(kind: .invalidCredentials, description: "binding as \(dn): an empty password") }
        boundAs = nil
        let code = password.withCString { portico_ldap_simple_bind(handle, dn, $0, strlen($0), nil) }
        if code != LDAP_SUCCESS { throw failure(code, doing: "binding as \(dn)") }
        boundAs = dn
    }

    /// Entries under `base` matching `filter` (RFC 4515), with the named attributes.
    func search(base: String, filter: String, attributes: [String], limit: Int = 1000) throws -> [(dn: String, attributes: [String: [String]])] {
        guard let handle else { throw DirectoryError(kind: .other, description: "the connection is closed") }
        var cAttributes: [UnsafeMutablePointer<CChar>?] = attributes.map { strdup($0) } + [nil]
        defer { for pointer in cAttributes { free(pointer) } }
        var result: OpaquePointer?
        var timeout = timeval(tv_sec: settings.timeoutSeconds, tv_usec: 0)
        let code = ldap_search_ext_s(handle, base, LDAP_SCOPE_SUBTREE, filter, &cAttributes, 0, nil, nil, &timeout, Int32(limit), &result)
        defer { if let result { ldap_msgfree(result) } }
        guard code == LDAP_SUCCESS || code == LDAP_SIZELIMIT_EXCEEDED else { throw failure(code, doing: "searching \(base) for \(filter)") }
        return entries(of: result, attributes: attributes)
    }

    /// Searches a page at a time (RFC 2696's paged results), handing each page to `page`.
    func pagedSearch(base: String, filter: String, attributes: [String], pageSize: Int, _ page: ([(dn: String, attributes: [String: [String]])]) throws -> Void) throws {
        guard let handle else { throw DirectoryError(kind: .other, description: "the connection is closed") }
        var cAttributes: [UnsafeMutablePointer<CChar>?] = attributes.map { strdup($0) } + [nil]
        defer { for pointer in cAttributes { free(pointer) } }
        var cookie = berval(bv_len: 0, bv_val: nil)
        defer { if cookie.bv_val != nil { ber_memfree(cookie.bv_val) } }
        repeat {
            var result: OpaquePointer?
            let code = portico_ldap_search_page(handle, base, filter, &cAttributes, Int32(pageSize), settings.timeoutSeconds, &cookie, &result)
            defer { if let result { ldap_msgfree(result) } }
            guard code == LDAP_SUCCESS else { throw failure(code, doing: "searching \(base) for \(filter), a page at a time") }
            try page(entries(of: result, attributes: attributes))
        } while cookie.bv_len > 0
    }

    private func entries(of result: OpaquePointer?, attributes: [String]) -> [(dn: String, attributes: [String: [String]])] {
        guard let handle else { return [] }
        var entries: [(String, [String: [String]])] = []
        var entry = ldap_first_entry(handle, result)
        while let current = entry {
            var dn = ""
            if let text = ldap_get_dn(handle, current) {
                dn = String(cString: text)
                ldap_memfree(text)
            }
            var values: [String: [String]] = [:]
            for name in attributes {
                guard let found = ldap_get_values_len(handle, current, name) else { continue }
                var index = 0
                while let value = found[index] {
                    values[name, default: []].append(String(decoding: UnsafeRawBufferPointer(start: value.pointee.bv_val, count: Int(value.pointee.bv_len)), as: UTF8.self))
                    index += 1
                }
                ldap_value_free_len(found)
            }
            entries.append((dn, values))
            entry = ldap_next_entry(handle, current)
        }
        return entries
    }

    /// Sets a new password for `dn` with the password modify extended operation (RFC 3062),
    /// as the bound identity (the user, with the old password; or an account allowed to).
    /// The directory's own policy may refuse it; its reason is in the error.
    func changePassword(dn: String, old: String?, new: String) throws {
        guard let handle else { throw DirectoryError(kind: .other, description: "the connection is closed") }
        var user = berval(bv_len: ber_len_t(dn.utf8.count), bv_val: strdup(dn))
        var newValue = berval(bv_len: ber_len_t(new.utf8.count), bv_val: strdup(new))
        var oldValue = berval(bv_len: ber_len_t(old?.utf8.count ?? 0), bv_val: old.map { strdup($0) } ?? nil)
        defer {
            free(user.bv_val)
            // The passwords are wiped before they are freed.
            if let value = newValue.bv_val { memset(value, 0, Int(newValue.bv_len)); free(value) }
            if let value = oldValue.bv_val { memset(value, 0, Int(oldValue.bv_len)); free(value) }
        }
        var generated = berval(bv_len: 0, bv_val: nil)
        let code = withUnsafeMutablePointer(to: &oldValue) { oldPointer in
            ldap_passwd_s(handle, &user, old == nil ? nil : oldPointer, &newValue, &generated, nil, nil)
        }
        if generated.bv_val != nil { ber_memfree(generated.bv_val) }
        if code != LDAP_SUCCESS { throw failure(code, doing: "changing the password of \(dn)") }
    }

    /// Active Directory's reset by an account allowed to: `unicodePwd` replaced.
    func replaceActiveDirectoryPassword(dn: String, new: String) throws {
        guard let handle else { throw DirectoryError(kind: .other, description: "the connection is closed") }
        var newValue = Array(("\"" + new + "\"").utf16).flatMap { [UInt8($0 & 0xff), UInt8($0 >> 8)] }.map { CChar(bitPattern: $0) }
        defer { for index in newValue.indices { newValue[index] = 0 } }
        let count = newValue.count
        let code = newValue.withUnsafeMutableBufferPointer { portico_ldap_replace_unicode_pwd(handle, dn, $0.baseAddress, count) }
        if code != LDAP_SUCCESS { throw failure(code, doing: "setting the password of \(dn)") }
    }

    /// Active Directory's password change by the user: the old and the new `unicodePwd`
    /// (quoted, UTF-16LE) in one modify, which the domain's policy decides on.
    func changeActiveDirectoryPassword(dn: String, old: String, new: String) throws {
        guard let handle else { throw DirectoryError(kind: .other, description: "the connection is closed") }
        var oldValue = Array(("\"" + old + "\"").utf16).flatMap { [UInt8($0 & 0xff), UInt8($0 >> 8)] }.map { CChar(bitPattern: $0) }
        var newValue = Array(("\"" + new + "\"").utf16).flatMap { [UInt8($0 & 0xff), UInt8($0 >> 8)] }.map { CChar(bitPattern: $0) }
        defer {
            for index in oldValue.indices { oldValue[index] = 0 }
            for index in newValue.indices { newValue[index] = 0 }
        }
        let (oldCount, newCount) = (oldValue.count, newValue.count)
        let code = oldValue.withUnsafeMutableBufferPointer { oldBytes in
            newValue.withUnsafeMutableBufferPointer { newBytes in
                portico_ldap_modify_unicode_pwd(handle, dn, oldBytes.baseAddress, oldCount, newBytes.baseAddress, newCount)
            }
        }
        if code != LDAP_SUCCESS { throw failure(code, doing: "changing the password of \(dn)") }
    }
}

/// A directory account as a sign-in finds it.
public struct DirectoryAccount: Sendable, Equatable {
    /// The entry's name.
    public var dn: String
    /// The sign-in name (the user attribute's value).
    public var name: String
    public var displayName: String
    /// The names of the groups the account is in.
    public var groups: [String]
}

/// The directory, for the manager: connections from a small pool, on threads of the
/// directory's own (libldap blocks), each bound as the search account for lookups and as the
/// user who signs in to check a password.
public final class DirectoryClient: Sendable {
    public let settings: DirectorySettings
    private let threads: NIOThreadPool
    private let idle: NIOLockedValueBox<[PooledConnection]>

    /// A connection waiting in the pool. Only one thread uses it at a time: it is taken out
    /// of the pool (under its lock) before use and put back after, so no two threads share it.
    private final class PooledConnection: @unchecked Sendable {
        let connection: DirectoryConnection
        init(_ connection: DirectoryConnection) { self.connection = connection }
    }

    public init(_ settings: DirectorySettings, threads: Int = 4) {
        // libldap writes with write(2) (through OpenSSL): on a connection the directory has
        // closed (restarted, or an idle connection of the pool timed out) that raises SIGPIPE,
        // which would end the manager. Ignored, the write fails with EPIPE, and the pool opens
        // a new connection.
        signal(SIGPIPE, SIG_IGN)
        self.settings = settings
        self.threads = NIOThreadPool(numberOfThreads: threads)
        self.idle = NIOLockedValueBox([])
        self.threads.start()
    }

    deinit { threads.shutdownGracefully { _ in } }

    /// Runs `body` with a connection from the pool (or a new one), on the directory's threads,
    /// and puts the connection back unless it failed. A pooled connection the server has
    /// closed since is replaced once.
    func withConnection<T: Sendable>(_ body: @escaping @Sendable (DirectoryConnection) throws -> T) async throws -> T {
        let settings = self.settings
        let idle = self.idle
        return try await threads.runIfActive {
            for attempt in 0..<2 {
                let pooled = attempt == 0 ? idle.withLockedValue { $0.popLast() } : nil
                let connection = try pooled?.connection ?? DirectoryConnection(settings)
                let keep = { idle.withLockedValue { if $0.count < settings.poolSize { $0.append(PooledConnection(connection)) } } }
                do {
                    let value = try body(connection)
                    keep()
                    return value
                } catch let error as DirectoryError where pooled != nil && error.kind == .unreachable {
                    continue
                } catch let error as DirectoryError where error.kind == .invalidCredentials || error.kind == .refused {
                    // A wrong password or a refused change leaves the connection as good as it
                    // was (unbound: the next use binds the search account again).
                    keep()
                    throw error
                }
            }
            throw DirectoryError(kind: .unreachable, description: "the directory at \(settings.url) closed two connections in a row")
        }
    }

    /// Binds a connection as the search account (when one is configured), unless it is already.
    static func bindForSearch(_ connection: DirectoryConnection, _ settings: DirectorySettings) throws {
        if let dn = settings.bindDN, connection.boundAs != dn { try connection.bind(dn: dn, password: settings.bindPassword ?? "") }
    }

    /// Looks a user up by sign-in name with the search account: its entry, name and groups.
    static func lookUp(_ user: String, on connection: DirectoryConnection, _ settings: DirectorySettings) throws -> DirectoryAccount {
        try bindForSearch(connection, settings)
        let byName = "(\(settings.userAttribute)=\(escapeFilter(user)))"
        let found = try connection.search(base: settings.baseDN, filter: settings.accountFilter.isEmpty ? byName : "(&\(byName)\(settings.accountFilter))",
                                          attributes: [settings.userAttribute, "displayName", "cn"], limit: 2)
        guard found.count == 1, let entry = found.first else {
            throw DirectoryError(kind: .invalidCredentials, description: found.isEmpty ? "no directory account \(user)" : "more than one directory account is named \(user)")
        }
        let filter = settings.groupFilter.replacingOccurrences(of: "{dn}", with: escapeFilter(entry.dn)).replacingOccurrences(of: "{user}", with: escapeFilter(user))
        let groups = try connection.search(base: settings.baseDN, filter: filter, attributes: [settings.groupAttribute], limit: 5000)
            .compactMap { $0.attributes[settings.groupAttribute]?.first }
        let name = entry.attributes[settings.userAttribute]?.first ?? user
        return DirectoryAccount(dn: entry.dn, name: name, displayName: entry.attributes["displayName"]?.first ?? entry.attributes["cn"]?.first ?? name, groups: groups.sorted())
    }

    /// Checks a user's password by binding as them, after finding them with the search account.
    public func authenticate(user: String, password: String) async throws -> DirectoryAccount {
        let settings = self.settings
        return try await withConnection { connection in
            let account = try Self.lookUp(user, on: connection, settings)
            try connection.bind(dn: account.dn, password: password)
            return account
        }
    }

    /// A user's entry and groups, without a password (to check an operator's standing).
    public func account(named user: String) async throws -> DirectoryAccount? {
        let settings = self.settings
        return try await withConnection { connection in
            do { return try Self.lookUp(user, on: connection, settings) } catch let error as DirectoryError where error.kind == .invalidCredentials { return nil }
        }
    }

    /// Changes a user's password in the directory, as the user (with the old password), under
    /// the directory's own policy: RFC 3062's password modify, or `unicodePwd` on Active
    /// Directory. The directory's refusal comes back in its own words.
    public func changePassword(user: String, old: String, new: String) async throws {
        let settings = self.settings
        try await withConnection { connection in
            let account = try Self.lookUp(user, on: connection, settings)
            try connection.bind(dn: account.dn, password: old)
            if settings.activeDirectory {
                try connection.changeActiveDirectoryPassword(dn: account.dn, old: old, new: new)
            } else {
                try connection.changePassword(dn: account.dn, old: old, new: new)
            }
        }
    }

    /// Sets a user's new password as the search account (an operator's reset: no old password),
    /// which the directory must allow to; its policy still decides, in its own words.
    public func resetPassword(user: String, new: String) async throws {
        let settings = self.settings
        try await withConnection { connection in
            let account = try Self.lookUp(user, on: connection, settings)
            if settings.activeDirectory {
                try connection.replaceActiveDirectoryPassword(dn: account.dn, new: new)
            } else {
                try connection.changePassword(dn: account.dn, old: nil, new: new)
            }
        }
    }

    /// Every user the sync takes, a page at a time (RFC 2696), handed to `page` as it arrives
    /// so that no more than a page is held. `page` runs on the directory's thread and may
    /// block (it waits for the page to be stored).
    public func eachUserPage(pageSize: Int = 500, _ page: @escaping @Sendable ([DirectoryAccount]) throws -> Void) async throws {
        let settings = self.settings
        // A connection of its own: a sync holds it for a long time.
        try await threads.runIfActive {
            let connection = try DirectoryConnection(settings)
            try Self.bindForSearch(connection, settings)
            try connection.pagedSearch(base: settings.baseDN, filter: settings.userFilter, attributes: [settings.userAttribute, "displayName", "cn"], pageSize: pageSize) { entries in
                try page(entries.compactMap { entry in
                    guard let name = entry.attributes[settings.userAttribute]?.first else { return nil }
                    return DirectoryAccount(dn: entry.dn, name: name, displayName: entry.attributes["displayName"]?.first ?? entry.attributes["cn"]?.first ?? name, groups: [])
                })
            }
        }
    }

    /// An RFC 4515 filter value: `*`, `(`, `)`, `\` and NUL escaped.
    static func escapeFilter(_ text: String) -> String {
        var escaped: [UInt8] = []
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "*"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "\\"), 0: escaped += Array(String(format: "\\%02x", byte).utf8)
            default: escaped.append(byte)
            }
        }
        return String(decoding: escaped, as: UTF8.self)
    }
}
