import XCTest
@testable import VMoEDemo
import VMoECore

/// The routed model on the phone under XCTest's own metrics: `xcodebuild test -scheme VMoEDemo -destination
/// 'platform=iOS,name=<your iPhone>' -only-testing:VMoEDemoBenchmarks` (see ios_demo/README.md). Xcode records
/// wall-clock time and physical memory per iteration and keeps baselines per device.
final class RoutedModelBenchmarks: XCTestCase {
    private var bundle: VMoECore.Bundle!
    private var inputs: [[Float]] = []

    override func setUpWithError() throws {
        bundle = try ModelWorker.openBundle()
        let golden = try JSONDecoder().decode(GoldenFile.self, from: try bundle.goldenData())
        inputs = golden.cases.map { Routing.preprocess($0.pixels_u8, bundle.manifest.preprocessing) }
        XCTAssertFalse(inputs.isEmpty)
    }

    private func options(_ iterations: Int) -> XCTMeasureOptions {
        let o = XCTMeasureOptions()
        o.iterationCount = iterations
        return o
    }

    /// Warm routed inference: 50 images per iteration, every expert resident; the self-test runs first, as when
    /// the app opens the bundle.
    func testWarmRoutedInference() throws {
        let model = try ModelWorker.coreML(bundle)
        defer { model.close() }
        try SelfTest.require(model)
        for e in 0..<bundle.manifest.model.numExperts { _ = try model.experts.get(e) }
        measure(metrics: [XCTClockMetric(), XCTMemoryMetric()], options: options(10)) {
            for i in 0..<50 { _ = try? model.classify(inputs[i % inputs.count]) }
        }
    }

    /// Opening the bundle and the first image: shared graphs verified and loaded, the routed expert's cold load
    /// (Core ML compiles each .mlpackage once per install; later iterations load the cached .mlmodelc).
    func testOpenAndFirstImage() throws {
        measure(metrics: [XCTClockMetric(), XCTMemoryMetric()], options: options(5)) {
            guard let model = try? ModelWorker.coreML(bundle) else { return XCTFail("the bundle did not open") }
            _ = try? model.classify(inputs[0])
            model.close()
        }
    }

    /// Every expert's cold load in turn (verify + load), the cost of an expert switch on this phone.
    func testExpertSwitches() throws {
        let model = try ModelWorker.coreML(bundle)
        defer { model.close() }
        measure(metrics: [XCTClockMetric(), XCTMemoryMetric()], options: options(5)) {
            model.experts.clear()
            for e in 0..<bundle.manifest.model.numExperts { _ = try? model.experts.get(e) }
        }
    }
}
