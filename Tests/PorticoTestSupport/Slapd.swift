import Foundation
import PorticoGateway
import Testing

/// OpenLDAP's slapd (Debian's `slapd` package) on loopback: LDAP (StartTLS) and LDAPS ports,
/// a generated certificate, and a seeded directory under `dc=example,dc=test` with users,
/// groups and a password policy (ppolicy: at least 10 characters, the last 3 not reused).
public final class Slapd {
    public static let slapd = ["/usr/sbin/slapd"].first { FileManager.default.isExecutableFile(atPath: $0) }
    public static let slapadd = ["/usr/sbin/slapadd"].first { FileManager.default.isExecutableFile(atPath: $0) }
    public static let usable = slapd != nil && slapadd != nil && Tools.path(of: "ldapmodify") != nil
    public static let required = ProcessInfo.processInfo.environment["PORTICO_REQUIRE_TOOLS"] != nil

    public static let baseDN = "dc=example,dc=test"
    public static let adminDN = "cn=admin,dc=example,dc=test"
    public static let adminPassword = "directory admin 1"
    /// The seeded users: uid, password, and the groups they are in.
    public static let users: [(uid: String, password: String, groups: [String])] = [
        ("alice", "alice password 1", ["laptop-users", "portico-admins"]),
        ("bob", "bob password 22", ["laptop-users"]),
        ("carol", "carol password 333", []),
    ]

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    let process: Process
    let directory: String
    public let ldapPort: Int
    public let ldapsPort: Int
    /// The server's certificate, self-signed: the CA to verify it with.
    public let certificate: String
    public var ldapURL: String { "ldap://127.0.0.1:\(ldapPort)" }
    public var ldapsURL: String { "ldaps://127.0.0.1:\(ldapsPort)" }

    public init(in dir: TemporaryDirectory) async throws {
        let slapd = try #require(Self.slapd, "slapd is not installed (apt-get install slapd)")
        let slapadd = try #require(Self.slapadd, "slapadd is not installed (apt-get install slapd)")
        directory = dir.file("slapd")
        try FileManager.default.createDirectory(atPath: directory + "/db", withIntermediateDirectories: true)
        let generated = try IdentityGenerator.generate(keyType: .ecdsaP256, commonName: "directory.test")
        certificate = directory + "/server.crt"
        try IdentityGenerator.write(generated, certificatePath: certificate, privateKeyPath: directory + "/server.key")
        let config = """
            include /etc/ldap/schema/core.schema
            include /etc/ldap/schema/cosine.schema
            include /etc/ldap/schema/inetorgperson.schema
            include /etc/ldap/schema/nis.schema
            modulepath /usr/lib/ldap
            moduleload back_mdb
            moduleload ppolicy
            pidfile \(directory)/slapd.pid
            TLSCertificateFile \(certificate)
            TLSCertificateKeyFile \(directory)/server.key
            database mdb
            maxsize 10485760
            suffix "\(Self.baseDN)"
            rootdn "\(Self.adminDN)"
            rootpw "\(Self.adminPassword)"
            directory \(directory)/db
            overlay ppolicy
            ppolicy_default "cn=default,ou=policies,\(Self.baseDN)"
            ppolicy_use_lockout
            access to attrs=userPassword by self write by dn.exact="uid=portico,ou=people,\(Self.baseDN)" write by anonymous auth by * none
            access to * by users read by * none

            """
        try config.write(toFile: directory + "/slapd.conf", atomically: true, encoding: .utf8)
        var seed = """
            dn: \(Self.baseDN)
            objectClass: dcObject
            objectClass: organization
            o: Example
            dc: example

            dn: ou=people,\(Self.baseDN)
            objectClass: organizationalUnit
            ou: people

            dn: ou=groups,\(Self.baseDN)
            objectClass: organizationalUnit
            ou: groups

            dn: ou=policies,\(Self.baseDN)
            objectClass: organizationalUnit
            ou: policies

            dn: cn=default,ou=policies,\(Self.baseDN)
            objectClass: pwdPolicy
            objectClass: person
            cn: default
            sn: default
            pwdAttribute: userPassword
            pwdMinLength: 10
            pwdCheckQuality: 2
            pwdInHistory: 3

            dn: uid=portico,ou=people,\(Self.baseDN)
            objectClass: inetOrgPerson
            uid: portico
            cn: Portico
            sn: Portico
            userPassword: portico search 1


            """
        for user in Self.users {
            seed += """
                dn: uid=\(user.uid),ou=people,\(Self.baseDN)
                objectClass: inetOrgPerson
                uid: \(user.uid)
                cn: \(user.uid.capitalized) Example
                sn: Example
                mail: \(user.uid)@example.test
                userPassword: \(user.password)


                """
        }
        for group in Set(Self.users.flatMap(\.groups)).sorted() {
            seed += "dn: cn=\(group),ou=groups,\(Self.baseDN)\nobjectClass: groupOfNames\ncn: \(group)\n"
            for user in Self.users where user.groups.contains(group) { seed += "member: uid=\(user.uid),ou=people,\(Self.baseDN)\n" }
            seed += "\n"
        }
        try seed.write(toFile: directory + "/seed.ldif", atomically: true, encoding: .utf8)
        let add = try await Tools.run(slapadd, ["-f", directory + "/slapd.conf", "-l", directory + "/seed.ldif"])
        guard add.status == 0 else { throw Failure(description: "slapadd failed: \(add.output)") }
        ldapPort = LoopbackPort.free()
        ldapsPort = LoopbackPort.free()
        process = Process()
        process.executableURL = URL(fileURLWithPath: slapd)
        // -d 0: in the foreground, logging nothing.
        process.arguments = ["-f", directory + "/slapd.conf", "-h", "ldap://127.0.0.1:\(ldapPort)/ ldaps://127.0.0.1:\(ldapsPort)/", "-d", "0"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let (plain, secure) = (ldapPort, ldapsPort)
        try await eventually("slapd listens on \(plain) and \(secure)", within: .seconds(20)) { LoopbackPort.accepts(plain) && LoopbackPort.accepts(secure) }
    }

    /// The search account the manager binds as.
    public static let searchDN = "uid=portico,ou=people,\(baseDN)"
    public static let searchPassword = "portico search 1"

    /// Changes the directory as its administrator would, with OpenLDAP's `ldapmodify`
    /// (Debian's `ldap-utils`): `ldif` holds changetype records (add, modify, delete).
    public func change(_ ldif: String) async throws {
        let result = try await Tools.run("ldapmodify", ["-x", "-H", ldapURL, "-D", Self.adminDN, "-w", Self.adminPassword], input: ldif)
        guard result.status == 0 else { throw Failure(description: "ldapmodify failed: \(result.output)") }
    }

    public func stop() {
        // Its data is the test's to throw away; Foundation's wait after SIGTERM hangs here.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
