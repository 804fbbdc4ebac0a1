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

@MainActor
final class DemoModel: ObservableObject {
    @Published var output = ""
    private var model: RoutedModel?

    /// The bundle ships inside the app as a folder reference named "bundle" (see ios_demo/README.md).
    private func routed() throws -> RoutedModel {
        if let m = model { return m }
        guard let dir = Foundation.Bundle.main.url(forResource: "bundle", withExtension: nil) else {
            throw ManifestError.invalid("no 'bundle' folder in the app: export one with vmoe-export --target coreml")
        }
        guard !pinnedBundleDigest.isEmpty else { throw ManifestError.invalid("no bundle digest was pinned at build time: see ios_demo/README.md step 2") }
        let m = try RoutedModel(bundle: try VMoECore.Bundle(dir: dir, expectedDigest: pinnedBundleDigest)) { name, entry, url in try CoreMLRunner(name: name, entry: entry, url: url) }
        // The golden vectors run on this device first: refused, naming the stage, if its numbers are not reproduced.
        try SelfTest.require(m)
        model = m
        return m
    }

    func samples() throws -> [(Int, [Float])] {
        let m = try routed()
        let url = m.bundle.dir.appendingPathComponent("golden/golden.json")
        let golden = try JSONDecoder().decode(GoldenFile.self, from: Data(contentsOf: url))
        return golden.cases.map { ($0.label, Routing.preprocess($0.pixels_u8, m.bundle.manifest.preprocessing)) }
    }

    func classify(_ input: [Float], label: String) {
        do {
            let m = try routed()
            let r = try m.classify(input)
            let mf = m.bundle.manifest
            let routedText = zip(r.experts, r.gates).map { e, g in
                String(format: "expert %d (gate %.2f): %@", e, g, mf.experts[e].superclass.joined(separator: ", "))
            }.joined(separator: "\n")
            let stages = r.stageMillis.sorted { $0.key < $1.key }.map { String(format: "%@=%.2f", $0.key, $0.value) }.joined(separator: " ")
            let shared = mf.sharedGraphs.reduce(0) { $0 + (mf.graphs[$1]?.sizeBytes ?? 0) }
            output = "\(label)\nclass: \(mf.classNames[r.classId])\n\(routedText)\nstages ms: \(stages)\n" +
                String(format: "resident model: %.2f MB, experts loaded: %@", Double(shared + m.experts.residentBytes) / 1e6, "\(m.experts.loaded)")
        } catch { output = "error: \(error)" }
    }

    func classify(image: UIImage) {
        do {
            let pre = try routed().bundle.manifest.preprocessing
            classify(ImageInput.pixels(image, pre), label: "photo")
        } catch { output = "error: \(error)" }
    }

    /// Warm latency over N runs (median/p90) and cold load of every expert in a fresh model.
    func benchmark(runs: Int = 200) {
        do {
            let inputs = try samples().map { $0.1 }
            let fresh = try RoutedModel(bundle: try routed().bundle) { n, e, u in try CoreMLRunner(name: n, entry: e, url: u) }
            var cold: [Double] = []
            for e in 0..<fresh.bundle.manifest.model.numExperts {
                let t0 = DispatchTime.now().uptimeNanoseconds
                _ = try fresh.experts.get(e)
                cold.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            }
            for i in 0..<10 { _ = try fresh.classify(inputs[i % inputs.count]) }
            var totals: [Double] = []
            for i in 0..<runs { totals.append(try fresh.classify(inputs[i % inputs.count]).stageMillis["total"]!) }
            totals.sort()
            let p = { (q: Double) in totals[Int(q * Double(totals.count - 1))] }
            output = String(format: "Core ML, %d runs: median %.3f ms, p90 %.3f ms\ncold expert load ms: %@", runs, p(0.5), p(0.9),
                            cold.map { String(format: "%.2f", $0) }.joined(separator: ", "))
        } catch { output = "error: \(error)" }
    }
}

enum ImageInput {
    /// Shorter side to image_size, centre crop, grayscale or RGB bytes, like vmoe_export.data.load_image.
    static func pixels(_ image: UIImage, _ pre: Preprocessing) -> [Float] {
        let s = pre.imageSize
        let scale = CGFloat(s) / min(image.size.width, image.size.height)
        let w = max(CGFloat(s), (image.size.width * scale).rounded()), h = max(CGFloat(s), (image.size.height * scale).rounded())
        var rgba = [UInt8](repeating: 0, count: s * s * 4)
        let ctx = CGContext(data: &rgba, width: s, height: s, bitsPerComponent: 8, bytesPerRow: s * 4,
                            space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)!
        ctx.draw(image.cgImage!, in: CGRect(x: -(w - CGFloat(s)) / 2, y: -(h - CGFloat(s)) / 2, width: w, height: h))
        var bytes = [UInt8](repeating: 0, count: pre.channels * s * s)
        for i in 0..<(s * s) {
            let r = Float(rgba[4 * i]), g = Float(rgba[4 * i + 1]), b = Float(rgba[4 * i + 2])
            if pre.channels == 1 {
                bytes[i] = UInt8((0.299 * r + 0.587 * g + 0.114 * b).rounded())
            } else {
                bytes[i] = rgba[4 * i]; bytes[s * s + i] = rgba[4 * i + 1]; bytes[2 * s * s + i] = rgba[4 * i + 2]
            }
        }
        return Routing.preprocess(bytes, pre)
    }
}
