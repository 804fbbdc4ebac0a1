import Foundation
import XCTest
@testable import VMoECore

/// The routing rule's tie cases, shared with the Python and Kotlin tests (tests/data/routing_ties.json in the
/// vmoe-export repository); needs no bundle. VMOE_ROUTING_TIES overrides the file's path.
final class RoutingTieTests: XCTestCase {
    struct Case: Decodable {
        let why: String
        let logits: [Float]
        let k: Int
        let experts: [Int]
    }
    struct Cases: Decodable {
        let cases: [Case]
    }

    func testTiesGoToTheLowerExpertId() throws {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = ProcessInfo.processInfo.environment["VMOE_ROUTING_TIES"]
            ?? repo.appendingPathComponent("tests/data/routing_ties.json").path
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("no routing_ties.json at \(path): set VMOE_ROUTING_TIES")
        }
        let cases = try JSONDecoder().decode(Cases.self, from: Data(contentsOf: URL(fileURLWithPath: path))).cases
        XCTAssertFalse(cases.isEmpty)
        for c in cases {
            XCTAssertEqual(Routing.selectExperts(c.logits, k: c.k).experts, c.experts, c.why)
        }
    }
}
