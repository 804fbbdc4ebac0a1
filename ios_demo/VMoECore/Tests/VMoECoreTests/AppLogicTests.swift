import XCTest
@testable import VMoECore

/// The app logic kept in the core (statistics, crop geometry, PIL's grayscale rule, strided reads, closing),
/// with the same expected values as the Kotlin core's AppLogicTest. Needs no bundle.
final class AppLogicTests: XCTestCase {
    func testStatsMatchNumPy() {
        let s = Stats.summarize([4, 1, 3, 2])
        XCTAssertEqual(s.medianMs, 2.5, accuracy: 1e-12)
        XCTAssertEqual(s.p90Ms, 3.7, accuracy: 1e-12)
        XCTAssertEqual(s.meanMs, 2.5, accuracy: 1e-12)
        XCTAssertEqual(s.n, 4)
    }

    func testCentreCropMatchesTheToolkit() {
        XCTAssertEqual(Pixels.centreCrop(width: 640, height: 480, size: 28), Pixels.Crop(scaledWidth: 37, scaledHeight: 28, left: 4, top: 0, size: 28))
        XCTAssertEqual(Pixels.centreCrop(width: 5, height: 2, size: 1).scaledWidth, 2)  // round(2.5) == 2
        XCTAssertEqual(Pixels.centreCrop(width: 3, height: 2, size: 1).scaledWidth, 2)  // round(1.5) == 2
    }

    func testGrayscaleIsPilsLuma() {
        let expected: [([UInt8], UInt8)] = [([255, 0, 0], 76), ([0, 255, 0], 150), ([0, 0, 255], 29), ([12, 200, 99], 132),
                                            ([255, 255, 255], 255), ([128, 64, 32], 79)]
        for (rgb, l) in expected { XCTAssertEqual(Pixels.luma(rgb[0], rgb[1], rgb[2]), l) }
        XCTAssertEqual(Pixels.channelBytes(rgba: [0x10, 0x20, 0x30, 0, 0x40, 0x50, 0x60, 0], channels: 3), [0x10, 0x40, 0x20, 0x50, 0x30, 0x60])
    }

    /// A 2x3 array whose rows are padded to 4 elements: the offsets skip the padding.
    func testStridedOffsetsSkipPadding() {
        XCTAssertEqual(Pixels.stridedOffsets(shape: [2, 3], strides: [4, 1]), [0, 1, 2, 4, 5, 6])
        XCTAssertEqual(Pixels.stridedOffsets(shape: [1, 2, 2], strides: [8, 4, 1]), [0, 1, 4, 5])
    }

    func testCacheClearClosesEveryExpert() throws {
        var closed: [Int] = []
        let cache = ExpertCache<Int>(load: { $0 }, sizeOf: { _ in 1 }, maxExperts: 2, close: { closed.append($0) })
        _ = try cache.get(0); _ = try cache.get(1); _ = try cache.get(2)  // evicts 0
        XCTAssertEqual(closed, [0])
        cache.clear()
        XCTAssertEqual(closed.sorted(), [0, 1, 2])
        XCTAssertEqual(cache.loaded, [])
    }
}
