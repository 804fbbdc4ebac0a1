import Foundation
import XCTest
@testable import VMoECore

/// Runs against a real bundle exported by vmoe-export: VMOE_BUNDLE=/path/to/bundles/coreml swift test
final class CoreTests: XCTestCase {
    struct Case: Decodable {
        let pixels_u8: [UInt8]
        let input: [Float]
        let router_logits: [Float]
        let experts: [Int]
        let gates: [Float]
    }
    struct Combine: Decodable {
        let gates: [Float]
        let attention_out: [Float]
        let expert_outs: [[Float]]
        let expected: [Float]
    }
    struct Golden: Decodable {
        let cases: [Case]
        let combine: Combine
    }

    var bundleDir: URL!
    var golden: Golden!
    var manifest: Manifest!

    override func setUpWithError() throws {
        guard let path = ProcessInfo.processInfo.environment["VMOE_BUNDLE"] else {
            throw XCTSkip("set VMOE_BUNDLE to an exported bundle directory")
        }
        bundleDir = URL(fileURLWithPath: path)
        golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: bundleDir.appendingPathComponent("golden/golden.json")))
        manifest = try Bundle(dir: bundleDir).manifest
    }

    func testPreprocessingMatchesToolkit() {
        for c in golden.cases {
            let x = Routing.preprocess(c.pixels_u8, manifest.preprocessing)
            for (a, b) in zip(x, c.input) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        }
    }

    func testExpertSelectionMatchesToolkit() {
        for c in golden.cases {
            let (ids, gates) = Routing.selectExperts(c.router_logits, k: manifest.model.top_k)
            XCTAssertEqual(ids, c.experts)
            for (a, b) in zip(gates, c.gates) { XCTAssertEqual(a, b, accuracy: 1e-6) }
        }
    }

    func testGateMixingMatchesPyTorch() {
        let v = golden.combine
        let mixed = Routing.combine(v.attention_out, v.expert_outs, v.gates)
        for (a, b) in zip(mixed, v.expected) { XCTAssertEqual(a, b, accuracy: 1e-4) }
    }

    func testEveryArtifactVerifies() throws {
        let bundle = try Bundle(dir: bundleDir)
        for g in manifest.graphs.keys { XCTAssertNoThrow(try bundle.verifiedArtifact(g)) }
    }

    func testEscapingPathAndMissingExpertAreRejected() throws {
        let text = try String(contentsOf: bundleDir.appendingPathComponent("manifest.json"))
        let path = manifest.graphs["moe0_e0"]!.path
        XCTAssertThrowsError(try Manifest.parse(Data(text.replacingOccurrences(of: "\"\(path)\"", with: "\"../../etc/passwd\"").utf8)))
        let last = "moe\(manifest.model.moe_layers - 1)_e\(manifest.model.num_experts - 1)"
        XCTAssertThrowsError(try Manifest.parse(Data(text.replacingOccurrences(of: "\"\(last)\":", with: "\"renamed\":").utf8)))
    }

    func testLruRespectsBudget() throws {
        let cache = ExpertCache<String>(load: { "e\($0)" }, sizeOf: { _ in 10 }, maxExperts: 2)
        for e in [0, 1, 0, 2] { _ = try cache.get(e) }
        XCTAssertEqual(cache.loaded, [0, 2])
        XCTAssertEqual(cache.loads, 3)
    }
}
