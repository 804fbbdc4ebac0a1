import Foundation

/// One loaded graph of a backend: float32 inputs in manifest order -> outputs in manifest order.
public protocol GraphRunner {
    func run(_ inputs: [[Float]]) throws -> [[Float]]
}

public typealias GraphLoader = (_ name: String, _ entry: GraphEntry, _ url: URL) throws -> GraphRunner

public struct Prediction {
    public let classId: Int
    public let logits: [Float]
    public let experts: [Int]
    public let gates: [Float]
    public let stageMillis: [String: Double]
}

/// trunk -> router -> per MoE layer: shared attention + only the routed experts (lazy, LRU) -> head.
public final class RoutedModel {
    public let bundle: Bundle
    private let shared: [String: GraphRunner]
    public let experts: ExpertCache<[Int: GraphRunner]>

    public init(bundle: Bundle, loader: @escaping GraphLoader, maxExperts: Int? = nil, maxBytes: Int? = nil) throws {
        let m = bundle.manifest
        if let n = maxExperts, n < m.model.top_k { throw ManifestError.invalid("expert budget \(n) is below top_k=\(m.model.top_k)") }
        self.bundle = bundle
        func open(_ g: String) throws -> GraphRunner { try loader(g, m.graphs[g]!, try bundle.verifiedArtifact(g)) }
        var s: [String: GraphRunner] = [:]
        for g in m.sharedGraphs { s[g] = try open(g) }
        shared = s
        experts = ExpertCache(
            load: { e in
                var byLayer: [Int: GraphRunner] = [:]
                for layer in 0..<m.model.moe_layers { byLayer[layer] = try open(m.expertGraph(layer: layer, expert: e)) }
                return byLayer
            },
            sizeOf: { bundle.expertBytes($0) }, maxExperts: maxExperts, maxBytes: maxBytes)
    }

    public func classify(_ input: [Float]) throws -> Prediction {
        var t: [String: Double] = [:]
        func timed<R>(_ stage: String, _ f: () throws -> R) rethrows -> R {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let r = try f()
            t[stage, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
            return r
        }
        let m = bundle.manifest
        let start = DispatchTime.now().uptimeNanoseconds
        var tokens = try timed("trunk") { try shared["trunk"]!.run([input])[0] }
        let routerLogits = try timed("router") { try shared["router"]!.run([tokens])[0] }
        let (ids, gates) = Routing.selectExperts(routerLogits, k: m.model.top_k)
        let loaded = try timed("expert_load") { try ids.map { try experts.get($0, pinned: Set(ids)) } }
        for layer in 0..<m.model.moe_layers {
            let a = try timed("attention") { try shared["moe\(layer)_attn"]!.run([tokens]) }
            let outs = try timed("experts") { try loaded.map { try $0[layer]!.run([a[1]])[0] } }
            tokens = Routing.combine(a[0], outs, gates)
        }
        let logits = try timed("head") { try shared["head"]!.run([tokens])[0] }
        t["total"] = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        return Prediction(classId: Routing.argmax(logits), logits: logits, experts: ids, gates: gates, stageMillis: t)
    }
}
