import Foundation

/// One loaded graph of a backend: float32 inputs in manifest order -> outputs in manifest order. close() frees
/// the runtime's memory now rather than whenever the last reference goes.
public protocol GraphRunner: AnyObject {
    func run(_ inputs: [[Float]]) throws -> [[Float]]
    func close()
}

public extension GraphRunner {
    func close() {}
}

public typealias GraphLoader = (_ name: String, _ entry: GraphEntry, _ url: URL) throws -> GraphRunner

public struct Prediction {
    public let classId: Int
    public let logits: [Float]
    public let experts: [Int]
    public let gates: [Float]
    public let stageMillis: [String: Double]
}

/// Executes the manifest's schedule: shared graphs loaded up front, only the routed experts
/// loaded (lazily, LRU-cached), mixed by their gates in every MoE layer.
public final class RoutedModel {
    public let bundle: Bundle
    private var shared: [String: GraphRunner]
    private var closed = false
    public let experts: ExpertCache<[String: GraphRunner]>

    public init(bundle: Bundle, loader: @escaping GraphLoader, maxExperts: Int? = nil, maxBytes: Int? = nil) throws {
        let m = bundle.manifest
        if let n = maxExperts, n < m.model.topK { throw ManifestError.invalid("expert budget \(n) is below top_k=\(m.model.topK)") }
        self.bundle = bundle
        func open(_ g: String) throws -> GraphRunner { try loader(g, m.graphs[g]!, try bundle.verifiedArtifact(g)) }
        // Graphs load as one unit: when one fails (a checksum, the runtime), those already loaded are closed.
        func openAll(_ names: [String]) throws -> [String: GraphRunner] {
            var graphs: [String: GraphRunner] = [:]
            do {
                for g in names { graphs[g] = try open(g) }
            } catch {
                graphs.values.forEach { $0.close() }
                throw error
            }
            return graphs
        }
        shared = try openAll(m.sharedGraphs)
        experts = ExpertCache(load: { e in try openAll(m.expertGraphs(e)) }, sizeOf: { bundle.expertBytes($0) },
                              maxExperts: maxExperts, maxBytes: maxBytes, close: { $0.values.forEach { $0.close() } })
    }

    /// Frees every loaded graph (shared and experts). Idempotent; classify() afterwards throws.
    public func close() {
        if closed { return }
        closed = true
        experts.clear()
        shared.values.forEach { $0.close() }
        shared = [:]
    }

    deinit { close() }

    public func classify(_ input: [Float]) throws -> Prediction {
        if closed { throw ManifestError.invalid("this RoutedModel was closed: open the bundle again") }
        var t: [String: Double] = [:]
        func timed<R>(_ stage: String, _ f: () throws -> R) rethrows -> R {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let r = try f()
            t[stage, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
            return r
        }
        let start = DispatchTime.now().uptimeNanoseconds
        var env: [String: [Float]] = ["images": input]
        var ids: [Int] = [], gates: [Float] = []
        var routed: [[String: GraphRunner]] = []
        for step in bundle.manifest.steps {
            switch step {
            case .run(let graph, _, let inputs, let outputs):
                let outs = try timed(graph) { try shared[graph]!.run(inputs.map { env[$0]! }) }
                guard outs.count == outputs.count else { throw ManifestError.invalid("graph \(graph) returned \(outs.count) outputs, the manifest lists \(outputs.count)") }
                for (name, value) in zip(outputs, outs) { env[name] = value }
            case .route(let logits, let k):
                (ids, gates) = Routing.selectExperts(env[logits]!, k: k)
                let pinned = Set(ids)
                routed = try timed("expert_load") { try ids.map { try experts.get($0, pinned: pinned) } }
            case .moeLayer(_, let attention, let expertGraphs):
                let a = try timed("attention") { try shared[attention]!.run([env["tokens"]!]) }
                let outs = try timed("experts") { try ids.indices.map { j in try routed[j][expertGraphs[ids[j]]]!.run([a[1]])[0] } }
                env["tokens"] = Routing.combine(a[0], outs, gates)
            case .expertPath(_, let paths):
                env["tokens"] = try timed("experts") { try routed[0][paths[ids[0]]]!.run([env["tokens"]!, [gates[0]]])[0] }
            }
        }
        t["total"] = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        let logits = env["logits"]!
        return Prediction(classId: Routing.argmax(logits), logits: logits, experts: ids, gates: gates, stageMillis: t)
    }
}
