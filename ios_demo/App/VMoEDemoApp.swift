import SwiftUI
import UIKit
import VMoECore

@main
struct VMoEDemoApp: App {
    var body: some Scene { WindowGroup { ContentView() } }
}

struct GoldenFile: Decodable {
    struct Case: Decodable { let label: Int; let pixels_u8: [UInt8] }
    let cases: [Case]
}

/// Owns the bundle and the routed model off the main actor: compiling the .mlpackages, the self-test, inference
/// and the benchmark never block the UI, and the model is only touched from this actor.
actor ModelWorker {
    private var model: RoutedModel?

    /// The bundle ships inside the app as a folder reference named "bundle" (see ios_demo/README.md).
    static func openBundle() throws -> VMoECore.Bundle {
        guard let dir = Foundation.Bundle.main.url(forResource: "bundle", withExtension: nil) else {
            throw ManifestError.invalid("no 'bundle' folder in the app: export one with vmoe-export --target coreml")
        }
        guard !pinnedBundleDigest.isEmpty else { throw ManifestError.invalid("no bundle digest was pinned at build time: see ios_demo/README.md step 2") }
        return try VMoECore.Bundle(dir: dir, expectedDigest: pinnedBundleDigest)
    }

    static func coreML(_ bundle: VMoECore.Bundle) throws -> RoutedModel {
        try RoutedModel(bundle: bundle) { name, entry, url in try CoreMLRunner(name: name, entry: entry, url: url) }
    }

    private func routed() throws -> RoutedModel {
        if let m = model { return m }
        let m = try Self.coreML(try Self.openBundle())
        // The golden vectors run on this device first: refused, naming the stage, if its numbers are not reproduced.
        do { try SelfTest.require(m) } catch { m.close(); throw error }
        model = m
        return m
    }

    func samples() throws -> [(Int, [Float])] {
        let m = try routed()
        let golden = try JSONDecoder().decode(GoldenFile.self, from: try m.bundle.goldenData())
        return golden.cases.map { ($0.label, Routing.preprocess($0.pixels_u8, m.bundle.manifest.preprocessing)) }
    }

    func classify(_ input: [Float], label: String) throws -> String {
        let m = try routed()
        let r = try m.classify(input)
        let mf = m.bundle.manifest
        let routedText = zip(r.experts, r.gates).map { e, g in
            String(format: "expert %d (gate %.2f): %@", e, g, mf.experts[e].superclass.joined(separator: ", "))
        }.joined(separator: "\n")
        let stages = r.stageMillis.sorted { $0.key < $1.key }.map { String(format: "%@=%.2f", $0.key, $0.value) }.joined(separator: " ")
        let shared = mf.sharedGraphs.reduce(0) { $0 + (mf.graphs[$1]?.sizeBytes ?? 0) }
        return "\(label)\nclass: \(mf.classNames[r.classId])\n\(routedText)\nstages ms: \(stages)\n" +
            String(format: "resident model: %.2f MB, experts loaded: %@", Double(shared + m.experts.residentBytes) / 1e6, "\(m.experts.loaded)")
    }

    func classify(image: UIImage) throws -> String {
        let pre = try routed().bundle.manifest.preprocessing
        return try classify(try ImageInput.pixels(image, pre), label: "photo")
    }

    /// Warm latency over N runs (median/p90, every expert resident) and each expert's cold load (verify + compile
    /// on first use + load) in a fresh model, closed afterwards. The XCTest target measures the same with
    /// XCTClockMetric and XCTMemoryMetric (App/Benchmarks).
    func benchmark(runs: Int = 200) throws -> String {
        let inputs = try samples().map { $0.1 }
        let fresh = try Self.coreML(try routed().bundle)
        defer { fresh.close() }
        var cold: [Double] = []
        for e in 0..<fresh.bundle.manifest.model.numExperts {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try fresh.experts.get(e)
            cold.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
        }
        for i in 0..<10 { _ = try fresh.classify(inputs[i % inputs.count]) }
        var totals: [Double] = []
        for i in 0..<runs { totals.append(try fresh.classify(inputs[i % inputs.count]).stageMillis["total"] ?? 0) }
        let s = Stats.summarize(totals)
        return String(format: "Core ML, %d runs: median %.3f ms, p90 %.3f ms\ncold expert load ms: %@", runs, s.medianMs, s.p90Ms,
                      cold.map { String(format: "%.2f", $0) }.joined(separator: ", "))
    }

    func close() {
        model?.close()
        model = nil
    }
}

/// What the UI shows; every job runs on the worker actor and only its result comes back to the main actor.
@MainActor
final class DemoModel: ObservableObject {
    @Published var output = ""
    @Published var busy = false
    private let worker = ModelWorker()

    private func run(_ job: @escaping (ModelWorker) async throws -> String) {
        busy = true
        Task {
            let text: String
            do { text = try await job(worker) } catch { text = "error: \(error)" }
            output = text
            busy = false
        }
    }

    func sample() {
        run { w in
            guard let first = try await w.samples().first else { return "the bundle has no golden images" }
            return try await w.classify(first.1, label: "sample (label \(first.0))")
        }
    }

    func classify(image: UIImage) { run { try await $0.classify(image: image) } }
    func benchmark() { run { try await $0.benchmark() } }
}

enum ImageInput {
    /// Shorter side to image_size, centre crop, grayscale (PIL's rule) or RGB bytes, like
    /// vmoe_export.preprocess.load_image, with the photo upright: UIImage.draw applies its EXIF orientation
    /// (image.cgImage alone is the sensor's unrotated pixels).
    static func pixels(_ image: UIImage, _ pre: Preprocessing) throws -> [Float] {
        let s = pre.imageSize
        let c = Pixels.centreCrop(width: max(1, Int(image.size.width.rounded())), height: max(1, Int(image.size.height.rounded())), size: s)
        var rgba = [UInt8](repeating: 0, count: s * s * 4)
        // The context draws into rgba's storage: it must not outlive this closure, where the pointer is valid.
        let drawn = rgba.withUnsafeMutableBytes { buf -> Bool in
            guard let ctx = CGContext(data: buf.baseAddress, width: s, height: s, bitsPerComponent: 8, bytesPerRow: s * 4,
                                      space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
            ctx.translateBy(x: 0, y: CGFloat(s))  // UIKit draws top-down; Core Graphics' origin is bottom-left
            ctx.scaleBy(x: 1, y: -1)
            UIGraphicsPushContext(ctx)
            image.draw(in: CGRect(x: -CGFloat(c.left), y: -CGFloat(c.top), width: CGFloat(c.scaledWidth), height: CGFloat(c.scaledHeight)))
            UIGraphicsPopContext()
            return true
        }
        guard drawn else { throw ManifestError.invalid("cannot create a \(s)x\(s) drawing context") }
        return Routing.preprocess(Pixels.channelBytes(rgba: rgba, channels: pre.channels), pre)
    }
}
