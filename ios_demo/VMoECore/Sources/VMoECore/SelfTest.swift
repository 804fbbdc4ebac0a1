import Foundation

/// What the self-test measured on this device; `failures` is empty when the bundle reproduced its golden vectors.
public struct SelfTestReport {
    public let cases: Int
    public let inputMaxAbsDiff: Double
    public let logitsMaxAbsDiff: Double
    public let logitsSnrDb: Double
    public let routingAgreement: Double
    public let top1Agreement: Double
    public let failures: [String]
    public var passed: Bool { failures.isEmpty }
}

/// The bundle self-test, mirrored from vmoe_export/verify.py and the Kotlin core's SelfTest: the golden images from
/// raw pixels, through the manifest's preprocessing and the routed model on this device, compared with fp32 PyTorch
/// within the tolerances the export recorded (golden.self_test.stages). An edited preprocessing block fails at the
/// input; kernels that change the numbers fail at the logits. The demo app runs it when it opens a bundle.
public enum SelfTest {
    /// The stored input is rounded to 7 decimals; preprocessing must reproduce it.
    public static let inputTolerance = 1e-5

    struct Tolerance: Decodable { let min_snr_db: Double?; let max_abs_diff: Double? }
    struct Reference: Decodable { let logits: [Float]; let experts: [Int] }
    struct Case: Decodable {
        let pixels_u8: [Int]
        let input: [Float]
        let logits: [Float]
        let experts: [Int]
        let reference: Reference?
    }
    struct Block: Decodable { let stages: [String: Tolerance] }
    struct Golden: Decodable { let cases: [Case]; let self_test: Block }

    public static func run(_ model: RoutedModel) throws -> SelfTestReport {
        let golden: Golden
        do { golden = try JSONDecoder().decode(Golden.self, from: try model.bundle.goldenData()) } catch let e as ManifestError {
            throw e
        } catch {
            throw ManifestError.invalid("golden/golden.json is not a golden file this app reads (\(error)): re-export the bundle")
        }
        let pre = model.bundle.manifest.preprocessing
        var inputDiff = 0.0, logitsDiff = 0.0, signal = 0.0, noise = 0.0
        var routed = 0, top1 = 0
        for c in golden.cases {
            guard c.pixels_u8.allSatisfy({ (0...255).contains($0) }) else { throw ManifestError.invalid("golden pixels out of range") }
            let input = Routing.preprocess(c.pixels_u8.map { UInt8($0) }, pre)
            inputDiff = max(inputDiff, maxAbsDiff(c.input, input))
            let p = try model.classify(input)
            // Quantized bundles keep fp32 PyTorch's values apart; an fp32 bundle's cases are PyTorch's own.
            let refLogits = c.reference?.logits ?? c.logits
            let refExperts = c.reference?.experts ?? c.experts
            if p.classId == Routing.argmax(refLogits) { top1 += 1 }
            guard p.experts.sorted() == refExperts.sorted() else { continue }  // later stages not comparable
            routed += 1
            logitsDiff = max(logitsDiff, maxAbsDiff(refLogits, p.logits))
            for (a, b) in zip(refLogits, p.logits) {
                signal += Double(a) * Double(a)
                noise += (Double(a) - Double(b)) * (Double(a) - Double(b))
            }
        }
        let snr = noise <= 0 ? 200.0 : min(200.0, 10 * log10(max(signal, 1e-30) / noise))
        var failures: [String] = []
        if inputDiff > inputTolerance {
            failures.append("stage input: the manifest's preprocessing gives inputs \(inputDiff) away from the ones the bundle was "
                            + "exported with (was the preprocessing block edited?): re-export the bundle")
        }
        if routed > 0, let tol = golden.self_test.stages["logits"] {
            if let floor = tol.min_snr_db, snr < floor {
                failures.append("stage logits: SNR \(String(format: "%.1f", snr)) dB against fp32, below the \(String(format: "%.1f", floor)) dB "
                                + "this bundle was measured to meet: this device's kernels change its numbers")
            } else if let bound = tol.max_abs_diff, logitsDiff > bound {
                failures.append("stage logits: max abs diff \(logitsDiff) > \(bound) recorded at export")
            }
        }
        let n = Double(golden.cases.count)
        return SelfTestReport(cases: golden.cases.count, inputMaxAbsDiff: inputDiff, logitsMaxAbsDiff: logitsDiff, logitsSnrDb: snr,
                              routingAgreement: Double(routed) / n, top1Agreement: Double(top1) / n, failures: failures)
    }

    /// Runs the self-test and throws naming the failing stage (what the app does when it opens a bundle).
    @discardableResult
    public static func require(_ model: RoutedModel) throws -> SelfTestReport {
        let report = try run(model)
        guard report.passed else { throw ManifestError.invalid("self-test failed on this device: " + report.failures.joined(separator: "; ")) }
        return report
    }

    static func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Double {
        guard a.count == b.count else { return .infinity }
        return zip(a, b).reduce(0.0) { max($0, abs(Double($1.0) - Double($1.1))) }
    }
}
