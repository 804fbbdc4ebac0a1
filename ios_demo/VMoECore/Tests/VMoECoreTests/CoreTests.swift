import Foundation
import XCTest
@testable import VMoECore

/// Runs against a real bundle exported by vmoe-export: VMOE_BUNDLE=/path/to/bundles/coreml swift test
final class CoreTests: XCTestCase {
    struct Case: Decodable {
        let pixels_u8: [UInt8]
        let input: [Float]
        let inverted: Bool?
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
        let combine: Combine?  // null for a fused bundle (the default at k=1): it mixes inside its expert paths
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
            assertClose(x, c.input, accuracy: 1e-5)
        }
    }

    /// A dark-background model's golden vectors end with an inverted copy of the first image: the polarity
    /// rule must give back the first image's input.
    func testPolarityRuleInvertsPhotoLikeImagesBack() {
        let inverted = golden.cases.filter { $0.inverted ?? false }
        XCTAssertEqual(inverted.count, manifest.preprocessing.polarity == "dark-background" ? 1 : 0)
        for c in inverted {
            assertClose(Routing.preprocess(c.pixels_u8, manifest.preprocessing), golden.cases[0].input, accuracy: 1e-5)
        }
        XCTAssertTrue(Routing.brightBorder([200, 200, 200, 200, 0, 200, 200, 200, 200], size: 3, channels: 1))
        XCTAssertFalse(Routing.brightBorder([127, 127, 127, 127, 255, 127, 127, 127, 127], size: 3, channels: 1))
    }

    func testExpertSelectionMatchesToolkit() {
        for c in golden.cases {
            let (ids, gates) = Routing.selectExperts(c.router_logits, k: manifest.model.topK)
            XCTAssertEqual(ids, c.experts)
            assertClose(gates, c.gates, accuracy: 1e-6)
        }
    }

    func testGateMixingMatchesPyTorch() throws {
        guard let v = golden.combine else { throw XCTSkip("a fused bundle mixes inside its expert paths (golden.combine is null)") }
        let mixed = Routing.combine(v.attention_out, v.expert_outs, v.gates)
        assertClose(mixed, v.expected, accuracy: 1e-4)
    }

    func testEveryArtifactVerifies() throws {
        let bundle = try Bundle(dir: bundleDir)
        for g in manifest.graphs.keys { XCTAssertNoThrow(try bundle.verifiedArtifact(g)) }
    }

    func testEscapingPathAndMissingExpertAreRejected() throws {
        let text = try String(contentsOf: bundleDir.appendingPathComponent("manifest.json"))
        let path = manifest.graphs[manifest.expertGraphs(0)[0]]!.path
        XCTAssertThrowsError(try Manifest.parse(Data(text.replacingOccurrences(of: "\"\(path)\"", with: "\"../../etc/passwd\"").utf8)))
        let last = manifest.expertGraphs(manifest.model.numExperts - 1).last!
        XCTAssertThrowsError(try Manifest.parse(Data(text.replacingOccurrences(of: "\"\(last)\":", with: "\"renamed\":").utf8)))
    }

    /// The four one-field edits that printed a wrong class with exit 0 before manifests were cross-checked.
    func testWrongAnswerEditsAreRejected() throws {
        let edits: [(inout [String: Any]) -> Void] = [
            { m in var model = m["model"] as! [String: Any]; model["moe_layers"] = 0; m["model"] = model },
            { m in var model = m["model"] as! [String: Any]; model["top_k"] = 2; m["model"] = model },
            { m in var pre = m["preprocessing"] as! [String: Any]; pre["std"] = [0.0]; m["preprocessing"] = pre },
            { m in
                var graphs = m["graphs"] as! [String: Any]
                for (a, b) in zip(self.manifest.expertGraphs(0), self.manifest.expertGraphs(2)) { graphs[b] = graphs[a] }
                m["graphs"] = graphs
            },
        ]
        let text = try Data(contentsOf: bundleDir.appendingPathComponent("manifest.json"))
        for edit in edits {
            var m = try JSONSerialization.jsonObject(with: text) as! [String: Any]
            edit(&m)
            XCTAssertThrowsError(try Manifest.parse(try JSONSerialization.data(withJSONObject: m)))
        }
    }

    func testPinnedDigestIsEnforced() throws {
        let digest = try String(contentsOf: bundleDir.appendingPathComponent("manifest.sha256")).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(try Bundle(dir: bundleDir, expectedDigest: digest).digest, digest)
        XCTAssertThrowsError(try Bundle(dir: bundleDir, expectedDigest: String(repeating: "0", count: 64)))
    }

    func testScheduleThatDisagreesWithTheModelIsRejected() throws {
        let text = try String(contentsOf: bundleDir.appendingPathComponent("manifest.json"))
        let k = manifest.model.topK
        XCTAssertThrowsError(try Manifest.parse(Data(text.replacingOccurrences(of: "\"top_k\": \(k)", with: "\"top_k\": \(k + 1)").utf8)))
        XCTAssertEqual(Set(manifest.graphs.keys), Set(manifest.sharedGraphs + (0..<manifest.model.numExperts).flatMap { manifest.expertGraphs($0) }))
    }

    /// Lengths first: zip stops at the shorter array, so a truncated output would otherwise pass.
    private func assertClose(_ a: [Float], _ b: [Float], accuracy: Float, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, "lengths differ", file: file, line: line)
        for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: accuracy, file: file, line: line) }
    }

    func testLruRespectsBudget() throws {
        let cache = ExpertCache<String>(load: { "e\($0)" }, sizeOf: { _ in 10 }, maxExperts: 2)
        for e in [0, 1, 0, 2] { _ = try cache.get(e) }
        XCTAssertEqual(cache.loaded, [0, 2])
        XCTAssertEqual(cache.loads, 3)
    }
}
