import CryptoKit
import Foundation

public enum ManifestError: Error, CustomStringConvertible, Equatable {
    case invalid(String)
    public var description: String { if case .invalid(let m) = self { return m }; return "" }
}

public struct TensorSpec: Decodable, Equatable {
    public let name: String
    public let shape: [Int]
}

public struct GraphEntry: Decodable {
    public let path: String
    public let sha256: String
    public let size_bytes: Int
    public let inputs: [TensorSpec]
    public let outputs: [TensorSpec]
}

public struct Preprocessing: Decodable {
    public let image_size: Int
    public let channels: Int
    public let mean: [Float]
    public let std: [Float]
}

public struct ExpertInfo: Decodable {
    public let id: Int
    public let superclass: [String]
    public let graphs: [String]
    public let size_bytes: Int
}

/// One step of the routed schedule stored in the manifest (vmoe_export/schedule.py). The app
/// executes these steps; it never builds a graph name itself.
public enum Step: Equatable {
    /// graph: inputs -> outputs (trunk, router, head).
    case run(graph: String, inputs: [String], outputs: [String])
    /// experts = top-k of softmax(logits), gates = their probabilities.
    case route(logits: String, k: Int)
    /// tokens_out, hidden = attention(tokens); tokens = tokens_out + sum_j gates[j] * experts[ids[j]](hidden).
    case moeLayer(layer: Int, attention: String, experts: [String])
}

struct StepJSON: Decodable {
    let op: String
    let graph: String?
    let inputs: [String]?
    let outputs: [String]?
    let logits: String?
    let k: Int?
    let layer: Int?
    let attention: String?
    let experts: [String]?

    func step() throws -> Step {
        switch op {
        case "run":
            guard let g = graph, let i = inputs, let o = outputs else { throw ManifestError.invalid("run step lacks graph/inputs/outputs") }
            return .run(graph: g, inputs: i, outputs: o)
        case "route":
            guard let l = logits, let k = k else { throw ManifestError.invalid("route step lacks logits/k") }
            return .route(logits: l, k: k)
        case "moe_layer":
            guard let l = layer, let a = attention, let e = experts else { throw ManifestError.invalid("moe_layer step lacks layer/attention/experts") }
            return .moeLayer(layer: l, attention: a, experts: e)
        default:
            throw ManifestError.invalid("unknown schedule step '\(op)': update the app")
        }
    }
}

public struct ScheduleInfo: Decodable {
    let steps: [StepJSON]
}

public struct ModelInfo: Decodable {
    public let num_experts: Int
    public let moe_layers: Int
    public let top_k: Int
}

/// The bundle's manifest.json, validated like vmoe_export.bundle.
public struct Manifest: Decodable {
    public static let schema = "vmoe-export/bundle"
    public static let schemaVersion = 2

    public let schema: String
    public let schema_version: Int
    public let target: String
    public let model: ModelInfo
    public let preprocessing: Preprocessing
    public let class_names: [String]
    public let graphs: [String: GraphEntry]
    public let experts: [ExpertInfo]
    let schedule: ScheduleInfo
    public private(set) var steps: [Step] = []

    enum CodingKeys: String, CodingKey {
        case schema, schema_version, target, model, preprocessing, class_names, graphs, experts, schedule
    }

    /// Graphs every image runs, loaded up front.
    public var sharedGraphs: [String] {
        steps.flatMap { step -> [String] in
            switch step {
            case .run(let g, _, _): return [g]
            case .moeLayer(_, let a, _): return [a]
            case .route: return []
            }
        }
    }

    /// Expert `expert`'s graphs, one per MoE layer: loaded and evicted as one unit.
    public func expertGraphs(_ expert: Int) -> [String] {
        steps.compactMap { step -> String? in
            if case .moeLayer(_, _, let experts) = step { return experts[expert] }
            return nil
        }
    }

    public static func parse(_ data: Data) throws -> Manifest {
        struct Header: Decodable { let schema: String?; let schema_version: Int? }
        if let h = try? JSONDecoder().decode(Header.self, from: data), h.schema == schema,
           let v = h.schema_version, v < schemaVersion {
            throw ManifestError.invalid("bundle written by an older vmoe-export (schema_version \(v)): re-export it")
        }
        var m: Manifest
        do { m = try JSONDecoder().decode(Manifest.self, from: data) } catch {
            throw ManifestError.invalid("not a vmoe-export manifest or not valid JSON: \(error)")
        }
        guard m.schema == schema else { throw ManifestError.invalid("not a vmoe-export manifest (schema is not '\(schema)')") }
        guard m.schema_version == schemaVersion else { throw ManifestError.invalid("manifest schema_version \(m.schema_version), this app reads \(schemaVersion)") }
        let e = m.model.num_experts, l = m.model.moe_layers, k = m.model.top_k
        guard e >= 1, (1...e).contains(k) else { throw ManifestError.invalid("top_k \(k) is not between 1 and num_experts \(e)") }
        m.steps = try m.schedule.steps.map { try $0.step() }
        let moe = m.steps.compactMap { step -> [String]? in
            if case .moeLayer(_, _, let experts) = step { return experts }
            return nil
        }
        let routes = m.steps.compactMap { step -> Int? in
            if case .route(_, let kk) = step { return kk }
            return nil
        }
        guard moe.count == l, moe.allSatisfy({ $0.count == e }), routes == [k] else {
            throw ManifestError.invalid("manifest schedule does not match its model (E=\(e), L=\(l), k=\(k)): re-export the bundle")
        }
        let required = m.sharedGraphs + moe.flatMap { $0 }
        let missing = required.filter { m.graphs[$0] == nil }
        guard missing.isEmpty else { throw ManifestError.invalid("manifest lacks graphs \(missing.joined(separator: ", ")) (E=\(e), L=\(l))") }
        for entry in m.graphs.values { try checkRelative(entry.path) }
        return m
    }

    /// Refuse absolute paths, backslashes and '..' segments before touching the file system.
    public static func checkRelative(_ path: String) throws {
        if path.isEmpty || path.hasPrefix("/") || path.contains("\\") || path.split(separator: "/").contains("..") {
            throw ManifestError.invalid("manifest path '\(path)' escapes the bundle directory")
        }
    }
}

/// A bundle directory: resolves artifacts inside it and checks their sha256 before use.
public struct Bundle {
    public let dir: URL
    public let manifest: Manifest

    public init(dir: URL) throws {
        self.dir = dir
        let url = dir.appendingPathComponent("manifest.json")
        guard let data = try? Data(contentsOf: url) else {
            throw ManifestError.invalid("\(dir.path) has no manifest.json: not a vmoe-export bundle")
        }
        manifest = try Manifest.parse(data)
    }

    public func verifiedArtifact(_ graph: String) throws -> URL {
        guard let entry = manifest.graphs[graph] else { throw ManifestError.invalid("graph '\(graph)' is not in the manifest") }
        let root = dir.standardizedFileURL.resolvingSymlinksInPath()
        let url = root.appendingPathComponent(entry.path).standardizedFileURL.resolvingSymlinksInPath()
        guard url.path.hasPrefix(root.path + "/") else { throw ManifestError.invalid("manifest path '\(entry.path)' escapes the bundle directory") }
        guard FileManager.default.fileExists(atPath: url.path) else { throw ManifestError.invalid("artifact \(entry.path) is missing") }
        guard try Sha256.of(url) == entry.sha256 else { throw ManifestError.invalid("artifact \(entry.path) fails its checksum: re-export the bundle") }
        return url
    }

    public func expertBytes(_ expert: Int) -> Int {
        manifest.expertGraphs(expert).reduce(0) { $0 + (manifest.graphs[$1]?.size_bytes ?? 0) }
    }
}

/// Same digest as vmoe_export.bundle.sha256_of (a directory, e.g. .mlpackage: sorted relative
/// paths, each followed by NUL and that file's hex digest).
public enum Sha256 {
    public static func of(_ url: URL) throws -> String {
        var isDir: ObjCBool = false
        FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir)
        if !isDir.boolValue { return hex(SHA256.hash(data: try Data(contentsOf: url, options: .mappedIfSafe))) }
        var files: [(String, URL)] = []
        let base = url.standardizedFileURL.path + "/"
        if let walker = FileManager.default.enumerator(at: url, includingPropertiesForKeys: [.isRegularFileKey]) {
            for case let f as URL in walker where (try? f.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true {
                files.append((String(f.standardizedFileURL.path.dropFirst(base.count)), f))
            }
        }
        var hasher = SHA256()
        for (rel, f) in files.sorted(by: { $0.0 < $1.0 }) {
            hasher.update(data: Data(rel.utf8) + Data([0]))
            hasher.update(data: Data(try of(f).utf8))
        }
        return hex(hasher.finalize())
    }

    private static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}
