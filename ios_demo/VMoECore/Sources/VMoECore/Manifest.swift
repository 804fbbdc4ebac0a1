import CryptoKit
import Foundation

public enum ManifestError: Error, CustomStringConvertible, Equatable {
    case invalid(String)
    public var description: String { if case .invalid(let m) = self { return m }; return "" }
}

// snake_case JSON keys map to camelCase properties through explicit CodingKeys rather than
// JSONDecoder.keyDecodingStrategy = .convertFromSnakeCase: that strategy would also rewrite the keys of
// decoded dictionaries (graph names like "moe0_e0"). No property has a default: a missing field fails.

public struct TensorSpec: Decodable, Equatable {
    public let name: String
    public let shape: [Int]
    public let dtype: String
}

public struct GraphEntry: Decodable {
    public let path: String
    public let role: String
    public let layer: Int?
    public let expert: Int?
    public let sha256: String
    public let sizeBytes: Int
    public let inputs: [TensorSpec]
    public let outputs: [TensorSpec]
    enum CodingKeys: String, CodingKey { case path, role, layer, expert, sha256, sizeBytes = "size_bytes", inputs, outputs }
}

public struct Preprocessing: Decodable {
    public let imageSize: Int
    public let channels: Int
    public let scale: Double
    public let mean: [Float]
    public let std: [Float]
    /// "dark-background": an image whose border ring is brighter than mid-grey is inverted first. Absent in
    /// bundles from before the rule existed: those are "as-is".
    public let polarityField: String?
    public var polarity: String { polarityField ?? "as-is" }
    enum CodingKeys: String, CodingKey { case imageSize = "image_size", channels, scale, mean, std, polarityField = "polarity" }
}

public let polarities: Set<String> = ["as-is", "dark-background"]

public struct ExpertInfo: Decodable {
    public let id: Int
    public let superclass: [String]
    public let graphs: [String]
    public let sizeBytes: Int
    enum CodingKeys: String, CodingKey { case id, superclass, graphs, sizeBytes = "size_bytes" }
}

/// The fields of the embedded model config that the rest of the manifest must follow from.
public struct ModelConfigInfo: Decodable {
    public let numExperts: Int
    public let moeLayers: Int
    public let topK: Int
    public let numClasses: Int
    public let imageSize: Int
    public let inChans: Int
    public let patchSize: Int
    public let embedDim: Int
    public let mean: [Float]
    public let std: [Float]
    public let polarityField: String?
    public var polarity: String { polarityField ?? "as-is" }
    enum CodingKeys: String, CodingKey {
        case numExperts = "num_experts", moeLayers = "moe_layers", topK = "top_k", numClasses = "num_classes"
        case imageSize = "image_size", inChans = "in_chans", patchSize = "patch_size", embedDim = "embed_dim", mean, std
        case polarityField = "polarity"
    }
}

public struct ModelInfo: Decodable {
    public let config: ModelConfigInfo
    public let numExperts: Int
    public let moeLayers: Int
    public let topK: Int
    public let numClasses: Int
    enum CodingKeys: String, CodingKey {
        case config, numExperts = "num_experts", moeLayers = "moe_layers", topK = "top_k", numClasses = "num_classes"
    }
}

struct ParityInfo: Decodable {
    let status: String
    let specVerifiedGraphs: Int?
    enum CodingKeys: String, CodingKey { case status, specVerifiedGraphs = "spec_verified_graphs" }
}

/// One step of the routed schedule stored in the manifest (vmoe_export/schedule.py). The app
/// executes these steps; it never builds a graph name itself.
public enum Step: Equatable {
    /// graph: inputs -> outputs (trunk, router, head).
    case run(graph: String, role: String, inputs: [String], outputs: [String])
    /// experts = top-k of softmax(logits), gates = their probabilities.
    case route(logits: String, k: Int)
    /// tokens_out, hidden = attention(tokens); tokens = tokens_out + sum_j gates[j] * experts[ids[j]](hidden).
    case moeLayer(layer: Int, attention: String, experts: [String])
    /// The fused schedule (k=1): tokens = experts[ids[0]](tokens, gate = [gates[0]]), every MoE layer in one graph.
    case expertPath(moeLayers: Int, experts: [String])
}

let scheduleKinds: Set<String> = ["per-layer", "fused"]

struct StepJSON: Decodable {
    let op: String
    let graph: String?
    let role: String?
    let inputs: [String]?
    let outputs: [String]?
    let logits: String?
    let k: Int?
    let layer: Int?
    let attention: String?
    let experts: [String]?
    let moeLayers: Int?

    enum CodingKeys: String, CodingKey { case op, graph, role, inputs, outputs, logits, k, layer, attention, experts, moeLayers = "moe_layers" }

    func step() throws -> Step {
        switch op {
        case "run":
            guard let g = graph, let r = role, let i = inputs, let o = outputs else { throw ManifestError.invalid("run step lacks graph/role/inputs/outputs") }
            return .run(graph: g, role: r, inputs: i, outputs: o)
        case "route":
            guard let l = logits, let k = k else { throw ManifestError.invalid("route step lacks logits/k") }
            return .route(logits: l, k: k)
        case "moe_layer":
            guard let l = layer, let a = attention, let e = experts else { throw ManifestError.invalid("moe_layer step lacks layer/attention/experts") }
            return .moeLayer(layer: l, attention: a, experts: e)
        case "expert_path":
            guard let l = moeLayers, let e = experts else { throw ManifestError.invalid("expert_path step lacks moe_layers/experts") }
            return .expertPath(moeLayers: l, experts: e)
        default:
            throw ManifestError.invalid("unknown schedule step '\(op)': update the app")
        }
    }
}

struct ScheduleInfo: Decodable {
    let kind: String
    let steps: [StepJSON]
}

/// The bundle's manifest.json, validated like vmoe_export/manifest.py: every field that follows from the
/// embedded model config is cross-checked against it (E, L, k, the schedule, each graph's role, place and
/// tensor shapes, preprocessing, the expert table, a completed parity).
public struct Manifest: Decodable {
    public static let schema = "vmoe-export/bundle"
    public static let schemaVersion = 3
    static let suffix = ["executorch": ".pte", "coreml": ".mlpackage", "tflite": ".tflite", "onnx": ".onnx"]

    public let schema: String
    public let schemaVersion: Int
    public let target: String
    public let model: ModelInfo
    public let preprocessing: Preprocessing
    public let classNames: [String]
    public let graphs: [String: GraphEntry]
    public let experts: [ExpertInfo]
    let schedule: ScheduleInfo
    let parity: ParityInfo?
    /// Every bundle's golden vectors (`golden/golden.json`), pinned by `goldenSha256`, for the self-test.
    public let golden: String
    public let goldenSha256: String
    public private(set) var steps: [Step] = []
    public static let goldenPath = "golden/golden.json"

    enum CodingKeys: String, CodingKey {
        case schema, schemaVersion = "schema_version", target, model, preprocessing, classNames = "class_names"
        case graphs, experts, schedule, parity, golden, goldenSha256 = "golden_sha256"
    }

    /// Graphs every image runs, loaded up front.
    public var sharedGraphs: [String] {
        steps.flatMap { step -> [String] in
            switch step {
            case .run(let g, _, _, _): return [g]
            case .moeLayer(_, let a, _): return [a]
            case .route, .expertPath: return []
            }
        }
    }

    /// Expert `expert`'s graphs (one per MoE layer, or its one fused path): loaded and evicted as one unit.
    public func expertGraphs(_ expert: Int) -> [String] {
        steps.compactMap { step -> String? in
            switch step {
            case .moeLayer(_, _, let experts), .expertPath(_, let experts): return experts[expert]
            case .run, .route: return nil
            }
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
        guard m.schemaVersion == schemaVersion else { throw ManifestError.invalid("manifest schema_version \(m.schemaVersion), this app reads \(schemaVersion)") }
        guard let suffix = suffix[m.target] else { throw ManifestError.invalid("manifest target '\(m.target)' is unknown") }
        let c = m.model.config
        let (e, l, k) = (c.numExperts, c.moeLayers, c.topK)
        guard (1...256).contains(e), (1...64).contains(l), (1...e).contains(k), (2...100_000).contains(c.numClasses),
              (1...4096).contains(c.imageSize), (1...4).contains(c.inChans), (1...c.imageSize).contains(c.patchSize),
              c.imageSize % c.patchSize == 0, (1...4096).contains(c.embedDim),
              c.mean.count == c.inChans, c.std.count == c.inChans, c.std.allSatisfy({ $0 > 0 && $0.isFinite }),
              c.mean.allSatisfy({ $0.isFinite }), polarities.contains(c.polarity) else {
            throw ManifestError.invalid("manifest model.config is out of bounds or inconsistent")
        }
        for (name, got, want) in [("num_experts", m.model.numExperts, e), ("moe_layers", m.model.moeLayers, l),
                                  ("top_k", m.model.topK, k), ("num_classes", m.model.numClasses, c.numClasses)] where got != want {
            throw ManifestError.invalid("manifest model.\(name) is \(got) but its config says \(want): the manifest was edited; re-export the bundle")
        }
        guard scheduleKinds.contains(m.schedule.kind) else {
            throw ManifestError.invalid("manifest schedule kind '\(m.schedule.kind)' is not one of \(scheduleKinds.sorted()): update the app")
        }
        m.steps = try m.schedule.steps.map { try $0.step() }
        if m.schedule.kind == "fused" { try checkFusedSchedule(m.steps, e: e, l: l, k: k) } else { try checkSchedule(m.steps, e: e, l: l, k: k) }

        // Every scheduled graph, with the role, layer, expert and tensors its place in the schedule implies.
        let n = (c.imageSize / c.patchSize) * (c.imageSize / c.patchSize)
        let shapes: [String: [Int]] = ["images": [1, c.inChans, c.imageSize, c.imageSize], "tokens": [1, n, c.embedDim],
                                       "tokens_out": [1, n, c.embedDim], "hidden": [1, n, c.embedDim], "expert_out": [1, n, c.embedDim],
                                       "router_logits": [1, e], "logits": [1, c.numClasses], "gate": [1, 1]]
        var expected: [(String, String, Int?, Int?, [String], [String])] = []
        for step in m.steps {
            switch step {
            case .run(let g, let role, let i, let o): expected.append((g, role, nil, nil, i, o))
            case .moeLayer(let layer, let a, let experts):
                expected.append((a, "attention", layer, nil, ["tokens"], ["tokens_out", "hidden"]))
                for (x, g) in experts.enumerated() { expected.append((g, "expert", layer, x, ["hidden"], ["expert_out"])) }
            case .expertPath(_, let experts):
                for (x, g) in experts.enumerated() { expected.append((g, "expert", nil, x, ["tokens", "gate"], ["tokens_out"])) }
            case .route: break
            }
        }
        let missing = expected.map { $0.0 }.filter { m.graphs[$0] == nil }
        guard missing.isEmpty else { throw ManifestError.invalid("manifest lacks graphs \(missing.joined(separator: ", ")) (E=\(e), L=\(l))") }
        guard m.graphs.count == expected.count else { throw ManifestError.invalid("manifest lists graphs the schedule never runs") }
        var paths = Set<String>()
        for (name, role, layer, expert, ins, outs) in expected {
            let g = m.graphs[name]!
            try checkRelative(g.path)
            guard g.path.hasSuffix(suffix), paths.insert(g.path).inserted else {
                throw ManifestError.invalid("graph \(name): path '\(g.path)' is shared with another graph or is not a \(m.target) artifact: re-export the bundle")
            }
            guard g.role == role, g.layer == layer, g.expert == expert else {
                throw ManifestError.invalid("graph \(name): role/layer/expert do not match its place in the schedule")
            }
            let want = { (names: [String]) in names.map { TensorSpec(name: $0, shape: shapes[$0]!, dtype: "float32") } }
            guard g.inputs == want(ins), g.outputs == want(outs), g.sizeBytes > 0,
                  g.sha256.count == 64, g.sha256.allSatisfy({ "0123456789abcdef".contains($0) }) else {
                throw ManifestError.invalid("graph \(name): tensors, size or sha256 do not follow from the model config")
            }
        }
        let p = m.preprocessing
        guard p.imageSize == c.imageSize, p.channels == c.inChans, p.mean == c.mean, p.std == c.std, p.scale == 1.0 / 255, p.polarity == c.polarity else {
            throw ManifestError.invalid("manifest preprocessing does not follow from the model config: the manifest was edited; re-export the bundle")
        }
        guard m.classNames.count == c.numClasses, Set(m.classNames).count == c.numClasses else {
            throw ManifestError.invalid("manifest class_names must be \(c.numClasses) distinct names")
        }
        guard m.experts.count == e, m.experts.enumerated().allSatisfy({ $0.element.id == $0.offset && $0.element.graphs == m.expertGraphs($0.offset) }) else {
            throw ManifestError.invalid("manifest experts table does not follow from the schedule")
        }
        switch m.parity?.status {
        case "pass": break
        case "skipped" where m.parity?.specVerifiedGraphs == m.graphs.count: break
        case nil: throw ManifestError.invalid("the manifest has no parity result: an unfinished export, not a bundle; export it again")
        default: throw ManifestError.invalid("this bundle failed or skipped its parity check; do not run it")
        }
        return m
    }

    /// trunk, router, route(k), L MoE layers of E experts each in order, head: the schedule export writes.
    static func checkSchedule(_ steps: [Step], e: Int, l: Int, k: Int) throws {
        let bad = ManifestError.invalid("manifest schedule does not match its model (E=\(e), L=\(l), k=\(k)): re-export the bundle")
        guard steps.count == 4 + l else { throw bad }
        guard case .run(_, "trunk", ["images"], ["tokens"]) = steps[0],
              case .run(_, "router", ["tokens"], ["router_logits"]) = steps[1],
              case .route("router_logits", k) = steps[2],
              case .run(_, "head", ["tokens"], ["logits"]) = steps[steps.count - 1] else { throw bad }
        for i in 0..<l {
            guard case .moeLayer(i, _, let experts) = steps[3 + i], experts.count == e else { throw bad }
        }
    }

    /// trunk (with the router as its second output, or followed by a router graph of its own where an int8
    /// bundle keeps the router fp32), route(k=1), one path per expert, head.
    static func checkFusedSchedule(_ steps: [Step], e: Int, l: Int, k: Int) throws {
        let bad = ManifestError.invalid("manifest schedule does not match its model (E=\(e), L=\(l), k=\(k), fused): re-export the bundle")
        let apart = steps.count == 5
        guard k == 1, steps.count == 4 || apart else { throw bad }
        if apart {
            guard case .run(_, "trunk", ["images"], ["tokens"]) = steps[0],
                  case .run(_, "router", ["tokens"], ["router_logits"]) = steps[1] else { throw bad }
        } else {
            guard case .run(_, "trunk", ["images"], ["tokens", "router_logits"]) = steps[0] else { throw bad }
        }
        let n = steps.count
        guard case .route("router_logits", 1) = steps[n - 3],
              case .expertPath(l, let experts) = steps[n - 2], experts.count == e,
              case .run(_, "head", ["tokens"], ["logits"]) = steps[n - 1] else { throw bad }
    }

    /// Refuse absolute paths, backslashes and '..' segments before touching the file system.
    public static func checkRelative(_ path: String) throws {
        if path.isEmpty || path.hasPrefix("/") || path.contains("\\") || path.split(separator: "/").contains("..") {
            throw ManifestError.invalid("manifest path '\(path)' escapes the bundle directory")
        }
    }
}

/// A bundle directory. `expectedDigest`, when given, pins the manifest: the sha256 of its exact bytes (what
/// vmoe-export printed; the demo app is built with the digest of the bundle it embeds). Artifacts are
/// resolved inside the bundle and their sha256 checked before use.
public struct Bundle {
    public let dir: URL
    public let digest: String
    public let manifest: Manifest

    public init(dir: URL, expectedDigest: String? = nil) throws {
        self.dir = dir
        let url = dir.appendingPathComponent("manifest.json")
        guard let data = try? Data(contentsOf: url) else {
            throw ManifestError.invalid("\(dir.path) has no manifest.json: not a vmoe-export bundle")
        }
        digest = Sha256.hex(SHA256.hash(data: data))
        if let pin = expectedDigest, digest != pin.lowercased() {
            throw ManifestError.invalid("manifest digest \(digest.prefix(16))... is not the pinned \(pin.prefix(16))...: not the bundle this app was built with")
        }
        if let side = try? String(contentsOf: dir.appendingPathComponent("manifest.sha256")),
           side.trimmingCharacters(in: .whitespacesAndNewlines) != digest {
            throw ManifestError.invalid("manifest.json does not match manifest.sha256: the manifest was edited after export; re-export the bundle")
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
        manifest.expertGraphs(expert).reduce(0) { $0 + (manifest.graphs[$1]?.sizeBytes ?? 0) }
    }

    /// golden/golden.json, after its sha256 matches the manifest's golden_sha256 (a pinned digest pins it too).
    public func goldenData() throws -> Data {
        guard manifest.golden == Manifest.goldenPath else { throw ManifestError.invalid("manifest golden must be '\(Manifest.goldenPath)': re-export the bundle") }
        let url = dir.appendingPathComponent(manifest.golden)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw ManifestError.invalid("\(manifest.golden) is missing from the bundle: copy the whole bundle directory or re-export it")
        }
        guard try Sha256.of(url) == manifest.goldenSha256 else { throw ManifestError.invalid("\(manifest.golden) fails its checksum: re-export the bundle") }
        return try Data(contentsOf: url, options: .mappedIfSafe)
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

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}
