// swift-tools-version: 6.1
import PackageDescription

// Layout (see README "Architecture"):
//   CJansson       the system's jansson (JSON at the C boundary and on the wire)
//   CLinux         Linux calls Swift's Glibc module lacks (eventfd, futex)
//   COpenSSL       the system's OpenSSL (tls: and dnstls: endpoints)
//   CGoxelPool     include/goxelpool.h as a C module: the contract the shim is checked against
//   GoxelPoolCore  pure decisions: configuration, pool and health state machines, backoff (no I/O)
//   CDaemonSpawn   starting and reaping managed daemons (clone + prctl + execve; only raw system
//                  calls in the child), which Swift and posix_spawn cannot do
//   GoxelPoolIO    sockets, framing, JSON-RPC codec, threads, processes: runs the core's actions
//   GoxelPool      the C ABI shim (@c @implementation), built into libgoxelpool.so
//   goxel-refd     the reference daemon used by the demo, the tests and the benchmarks
//   goxelpool-corebench  acquire + release cost without I/O (make bench)
let package = Package(
    name: "goxelpool",
    products: [
        .library(name: "goxelpool", type: .dynamic, targets: ["GoxelPool"]),
        .executable(name: "goxel-refd", targets: ["goxel-refd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-numerics", from: "1.1.1"),
    ],
    targets: [
        .systemLibrary(name: "CJansson", path: "Sources/CJansson", pkgConfig: "jansson",
                       providers: [.apt(["libjansson-dev"])]),
        .systemLibrary(name: "CLinux", path: "Sources/CLinux"),
        // TLS endpoints (libssl-dev), linked dynamically: security fixes come with the system's updates.
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .target(name: "CGoxelPool", dependencies: ["CJansson"], path: ".",
                sources: ["Sources/CGoxelPool/header_stub.c"], publicHeadersPath: "include"),
        .target(name: "GoxelPoolCore", dependencies: [
            .product(name: "DequeModule", package: "swift-collections"),
            .product(name: "Histogram", package: "hdrhistogram-swift"),
            .product(name: "RealModule", package: "swift-numerics"),
        ]),
        .target(name: "CDaemonSpawn"),
        .target(name: "GoxelPoolIO", dependencies: [
            "GoxelPoolCore", "CJansson", "CLinux", "CDaemonSpawn", "COpenSSL",
            .product(name: "DequeModule", package: "swift-collections"),
        ]),
        .target(name: "GoxelPool", dependencies: ["GoxelPoolIO", "GoxelPoolCore", "CGoxelPool", "CJansson"]),
        .executableTarget(name: "goxel-refd", dependencies: ["CJansson"]),
        // `make bench`: the cost of acquire + release inside the library (no I/O).
        .executableTarget(name: "goxelpool-corebench", dependencies: ["GoxelPoolCore", "GoxelPoolIO"]),
        .testTarget(name: "GoxelPoolCoreTests", dependencies: ["GoxelPoolCore"]),
        // Against a real goxel-refd process: the I/O layer (framing, client, pool) and the C ABI
        // called as a C program would (statuses, ownership, listeners, alerts). One target, so
        // the reference daemon's test driver is compiled once.
        .testTarget(name: "GoxelPoolIntegrationTests",
                    dependencies: ["GoxelPool", "GoxelPoolIO", "GoxelPoolCore", "CGoxelPool", "CJansson"],
                    path: "Tests",
                    exclude: ["GoxelPoolCoreTests", "bench", "cli", "faults", "fuzz", "metrics", "packaging", "reliability", "setup", "spawn", "tls"],
                    sources: ["GoxelPoolIOTests", "GoxelPoolABITests", "RefDaemonSupport"]),
    ]
)
