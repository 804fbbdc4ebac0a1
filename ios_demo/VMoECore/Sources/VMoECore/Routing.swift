import Foundation

/// Preprocessing, expert selection and gate mixing, mirrored from vmoe_export.runtime.
public enum Routing {
    /// uint8 pixels (C*H*W, channel-major) -> (p / 255 - mean[c]) / std[c], after the polarity rule.
    public static func preprocess(_ pixels: [UInt8], _ pre: Preprocessing) -> [Float] {
        let plane = pre.imageSize * pre.imageSize
        precondition(pixels.count == plane * pre.channels, "expected \(plane * pre.channels) pixels")
        let invert = pre.polarity == "dark-background" && brightBorder(pixels, size: pre.imageSize, channels: pre.channels)
        return pixels.enumerated().map { i, p in
            let c = i / plane
            return (Float(invert ? 255 - p : p) / 255 - pre.mean[c]) / pre.std[c]
        }
    }

    /// Is the mean of the outermost pixel ring (all channels) above mid-grey? In integers, exactly as
    /// vmoe_export.data.bright_border decides it.
    public static func brightBorder(_ pixels: [UInt8], size: Int, channels: Int) -> Bool {
        var sum = 0, count = 0
        for c in 0..<channels {
            for y in 0..<size {
                for x in 0..<size where y == 0 || y == size - 1 || x == 0 || x == size - 1 {
                    sum += Int(pixels[(c * size + y) * size + x])
                    count += 1
                }
            }
        }
        return 2 * sum > 255 * count
    }

    public static func softmax(_ logits: [Float]) -> [Double] {
        let m = Double(logits.max() ?? 0)
        let e = logits.map { exp(Double($0) - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    /// The experts of the k largest router logits, highest first, ties to the lower id (chosen on the float32
    /// logits, as vmoe_export.model.route); gates are their softmax probabilities, not renormalised (V-MoE).
    public static func selectExperts(_ routerLogits: [Float], k: Int) -> (experts: [Int], gates: [Float]) {
        let p = softmax(routerLogits)
        let x = routerLogits
        let order = x.indices.sorted { x[$0] != x[$1] ? x[$0] > x[$1] : $0 < $1 }.prefix(k)
        return (Array(order), order.map { Float(p[$0]) })
    }

    /// tokens = attentionOut + sum_j gates[j] * expertOuts[j], in that order, in float32.
    public static func combine(_ attentionOut: [Float], _ expertOuts: [[Float]], _ gates: [Float]) -> [Float] {
        var out = attentionOut
        for (j, y) in expertOuts.enumerated() {
            for i in out.indices { out[i] += gates[j] * y[i] }
        }
        return out
    }

    public static func argmax(_ x: [Float]) -> Int { x.indices.max { x[$0] < x[$1] } ?? -1 }
}
