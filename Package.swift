// swift-tools-version:6.0
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

// Linux only: the server core is built on epoll, accept4 and Linux's socket options, and
// the image and the service unit are for Linux (no Apple platform is declared).
let package = Package(
    name: "portico",
    products: [
        .executable(name: "portico", targets: ["portico"]),
        .executable(name: "portico-agent", targets: ["portico-agent"]),
        .library(name: "PorticoServer", targets: ["PorticoServer"]),
        .library(name: "PorticoGateway", targets: ["PorticoGateway"]),
        .library(name: "PorticoStore", targets: ["PorticoStore"]),
        .library(name: "PorticoProtocol", targets: ["PorticoProtocol"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/vapor/sql-kit.git", from: "3.36.0"),
        .package(url: "https://github.com/vapor/sqlite-kit.git", from: "4.5.2"),
        .package(url: "https://github.com/vapor/postgres-kit.git", from: "2.17.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.2"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
    ],
    targets: [
        // The Linux calls the server core makes that Swift's Glibc module leaves out.
        .target(name: "CPorticoSystem"),
        // The system's OpenSSL (libssl-dev), found with pkg-config: the listeners' TLS.
        .systemLibrary(name: "CPorticoOpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // The system's libnghttp2 (libnghttp2-dev), found with pkg-config: the listeners' HTTP/2.
        .systemLibrary(name: "CNGHTTP2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        // The system's libcurl (libcurl4-openssl-dev): mail to an SMTP server, for notifications.
        .systemLibrary(name: "CPorticoCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // OpenLDAP's libldap (libldap-dev): the directory, for operators and endpoint users.
        .systemLibrary(name: "CPorticoLDAP", pkgConfig: "ldap", providers: [.apt(["libldap-dev"])]),
        // The server engine: the core's epoll loops, TLS on the system's OpenSSL, HTTP/1.1 and
        // HTTP/2 (libnghttp2), routing and upstreams: what serves a request once it is configured.
        .target(
            name: "PorticoServer",
            dependencies: [
                "CPorticoSystem",
                "CPorticoOpenSSL",
                "CNGHTTP2",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // The control plane: configuration files, the server identity's lifecycle, reloads and
        // the built-in services, driving the engine.
        .target(
            name: "PorticoGateway",
            dependencies: [
                "PorticoServer",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "PorticoProtocol",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "PorticoStore",
            dependencies: [
                .product(name: "SQLKit", package: "sql-kit"),
                .product(name: "SQLiteKit", package: "sqlite-kit"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "PostgresKit", package: "postgres-kit"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "PorticoManager",
            dependencies: [
                "PorticoGateway",
                "PorticoServer",
                "PorticoStore",
                "PorticoProtocol",
                "CPorticoCurl",
                "CPorticoLDAP",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Mustache", package: "swift-mustache"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Yams", package: "Yams"),
            ],
            resources: [
                .embedInCode("API/openapi.yaml"),
                .embedInCode("Console/templates/layout.mustache"),
                .embedInCode("Console/templates/login.mustache"),
                .embedInCode("Console/templates/dashboard.mustache"),
                .embedInCode("Console/templates/devices.mustache"),
                .embedInCode("Console/templates/device.mustache"),
                .embedInCode("Console/templates/message.mustache"),
                .embedInCode("Console/templates/audit.mustache"),
                .embedInCode("Console/templates/report.mustache"),
                .embedInCode("Console/templates/groups.mustache"),
                .embedInCode("Console/templates/account.mustache"),
                .embedInCode("Console/templates/confirm.mustache"),
                .embedInCode("Console/templates/events.mustache"),
                .embedInCode("Console/templates/commands.mustache"),
                .embedInCode("Console/templates/notifications.mustache"),
                .embedInCode("Console/templates/reports.mustache"),
                .embedInCode("Console/templates/policies.mustache"),
                .embedInCode("Console/templates/policy.mustache"),
                .embedInCode("Console/templates/tokens.mustache"),
                .embedInCode("Console/templates/operators.mustache"),
                .embedInCode("Console/templates/peers.mustache"),
                .embedInCode("Console/templates/users.mustache"),
                .embedInCode("Console/templates/user.mustache"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "PorticoAgent",
            dependencies: [
                "PorticoProtocol",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "portico",
            dependencies: [
                "PorticoGateway",
                "PorticoServer",
                "PorticoStore",
                "PorticoManager",
                "PorticoProtocol",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        // Loads for the benchmarks and the crash test; not part of the operator's CLI.
        .executableTarget(
            name: "portico-bench",
            dependencies: [
                "PorticoAgent",
                "PorticoGateway",
                "PorticoServer",
                "PorticoManager",
                "PorticoProtocol",
                "PorticoStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "portico-agent",
            dependencies: [
                "PorticoAgent",
                "PorticoProtocol",
                "CPorticoOpenSSL",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // What the test targets share: temporary folders, identities, outside programs, child
        // processes, HTTP clients and probes, and a gateway started from YAML.
        .target(
            name: "PorticoTestSupport",
            dependencies: [
                "PorticoGateway",
                "PorticoServer",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/PorticoTestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PorticoGatewayTests",
            dependencies: [
                "PorticoGateway",
                "PorticoServer",
                "PorticoStore",
                "PorticoTestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "X509", package: "swift-certificates"),
            ],
            swiftSettings: swiftSettings
        ),
        // The real executables as an operator runs them: processes, signals, a browser, two
        // sites of managers, crashes.
        .testTarget(
            name: "PorticoEndToEndTests",
            dependencies: [
                "PorticoAgent",
                "PorticoGateway",
                "PorticoServer",
                "PorticoManager",
                "PorticoProtocol",
                "PorticoStore",
                "PorticoTestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PorticoManagerTests",
            dependencies: [
                "PorticoManager",
                "PorticoTestSupport",
                "PorticoAgent",
                "PorticoProtocol",
                "PorticoGateway",
                "PorticoServer",
                "PorticoStore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PorticoAgentTests",
            dependencies: [
                "PorticoAgent",
                "PorticoProtocol",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PorticoProtocolTests",
            dependencies: [
                "PorticoProtocol",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PorticoStoreTests",
            dependencies: [
                "PorticoStore",
                .product(name: "SQLKit", package: "sql-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)

// The fuzz targets (fuzz/): one executable with no main of its own, linked with libFuzzer's.
// It is part of the package only when fuzz/run.sh builds it (PORTICO_FUZZ set, with
// `-sanitize=fuzzer` in a scratch path of its own), so that `swift build` and `swift test`
// never try to link it.
if Context.environment["PORTICO_FUZZ"] != nil {
    package.targets.append(.target(name: "CPorticoFuzz", path: "fuzz/Sources/CPorticoFuzz"))
    package.targets.append(
        .executableTarget(
            name: "PorticoFuzz",
            dependencies: [
                "CPorticoFuzz",
                "PorticoGateway",
                "PorticoServer",
                "PorticoManager",
                "PorticoProtocol",
                "PorticoStore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "fuzz/Sources/PorticoFuzz",
            swiftSettings: swiftSettings + [.unsafeFlags(["-parse-as-library"])]
        )
    )
}
