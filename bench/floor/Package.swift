// swift-tools-version: 6.0
// The floor under Portico's numbers: SwiftNIO and NIOSSL with no HTTP layer at all, on the
// same certificate. bench/run.sh runs it beside Portico and nginx when FLOOR=1.
import PackageDescription

let package = Package(
    name: "portico-floor",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    ],
    targets: [
        .executableTarget(
            name: "portico-floor",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // The same without SwiftNIO: epoll and BoringSSL driven directly (RAWFLOOR=1).
        .executableTarget(
            name: "portico-rawfloor",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
    ]
)
