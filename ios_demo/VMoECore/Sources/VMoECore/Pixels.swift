import Foundation

/// Image-to-tensor arithmetic on raw pixels, shared by the app (which draws with Core Graphics) and the tests:
/// the crop geometry of vmoe_export.preprocess.load_image (Python's round(), halves to even), PIL's grayscale
/// rule, and strided reads of Core ML's MLMultiArray outputs. Mirrors the Kotlin core's Pixels.
public enum Pixels {
    public struct Crop: Equatable {
        public let scaledWidth: Int, scaledHeight: Int, left: Int, top: Int, size: Int
    }

    public static func centreCrop(width: Int, height: Int, size: Int) -> Crop {
        let scale = Double(size) / Double(min(width, height))
        let w = max(size, Int((Double(width) * scale).rounded(.toNearestOrEven)))
        let h = max(size, Int((Double(height) * scale).rounded(.toNearestOrEven)))
        return Crop(scaledWidth: w, scaledHeight: h, left: (w - size) / 2, top: (h - size) / 2, size: size)
    }

    /// PIL's RGB -> "L" (ITU-R 601-2 luma in 16-bit fixed point, rounded), bit for bit.
    public static func luma(_ r: UInt8, _ g: UInt8, _ b: UInt8) -> UInt8 {
        UInt8((Int(r) * 19595 + Int(g) * 38470 + Int(b) * 7471 + 0x8000) >> 16)
    }

    /// RGBA bytes (4 per pixel, as a CGContext draws them) -> uint8 channel planes (C,H,W) for `channels`.
    public static func channelBytes(rgba: [UInt8], channels: Int) -> [UInt8] {
        let n = rgba.count / 4
        var out = [UInt8](repeating: 0, count: channels * n)
        for i in 0..<n {
            let r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2]
            if channels == 1 {
                out[i] = luma(r, g, b)
            } else {
                out[i] = r; out[n + i] = g; out[2 * n + i] = b
            }
        }
        return out
    }

    /// Linear element offsets, in row-major (C) order of `shape`, of an array laid out with `strides` (in
    /// elements): an MLMultiArray's rows may be padded, so its buffer is not `count` contiguous values.
    public static func stridedOffsets(shape: [Int], strides: [Int]) -> [Int] {
        precondition(shape.count == strides.count, "shape and strides differ in rank")
        var offsets = [0]
        for (dim, stride) in zip(shape, strides) {
            offsets = offsets.flatMap { base in (0..<dim).map { base + $0 * stride } }
        }
        return offsets
    }
}
