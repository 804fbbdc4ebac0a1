// swift-tools-version:5.9
import PackageDescription

// Platform-neutral routing core (Foundation + CryptoKit only): manifest validation, preprocessing,
// top-k, gate mixing, LRU expert cache. Backend adapters (Core ML, ExecuTorch) live in the app.
let package = Package(
    name: "VMoECore",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [.library(name: "VMoECore", targets: ["VMoECore"])],
    targets: [
        .target(name: "VMoECore"),
        .testTarget(name: "VMoECoreTests", dependencies: ["VMoECore"]),
    ]
)
