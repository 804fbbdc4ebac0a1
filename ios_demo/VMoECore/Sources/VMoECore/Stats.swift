import Foundation

/// Latency summary with the arithmetic of vmoe_export.bench.measure.stats and the Kotlin core's Stats (NumPy's
/// median and linear-interpolation percentile), so every platform's figures read the same way.
public struct Summary: Equatable {
    public let medianMs: Double
    public let p90Ms: Double
    public let meanMs: Double
    public let n: Int
}

public enum Stats {
    public static func percentile(_ values: [Double], _ p: Double) -> Double {
        precondition(!values.isEmpty && (0...100).contains(p), "percentile of no values, or p outside 0...100")
        let s = values.sorted()
        let rank = p / 100 * Double(s.count - 1)
        let lo = Int(rank.rounded(.down)), hi = Int(rank.rounded(.up))
        return s[lo] + (s[hi] - s[lo]) * (rank - Double(lo))
    }

    public static func summarize(_ ms: [Double]) -> Summary {
        Summary(medianMs: percentile(ms, 50), p90Ms: percentile(ms, 90), meanMs: ms.reduce(0, +) / Double(ms.count), n: ms.count)
    }
}
