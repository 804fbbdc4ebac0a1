import CoreML
import Foundation
import VMoECore

/// Core ML adapter: compiles each .mlpackage once (cached in Application Support) and runs it on
/// the CPU and Neural Engine; inputs/outputs are matched by the manifest's tensor names.
final class CoreMLRunner: GraphRunner {
    private let model: MLModel
    private let entry: GraphEntry

    init(name: String, entry: GraphEntry, url: URL) throws {
        let support = try FileManager.default.url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        let compiled = support.appendingPathComponent("\(entry.sha256).mlmodelc")
        if !FileManager.default.fileExists(atPath: compiled.path) {
            let tmp = try MLModel.compileModel(at: url)
            try FileManager.default.moveItem(at: tmp, to: compiled)
        }
        let config = MLModelConfiguration()
        config.computeUnits = .cpuAndNeuralEngine
        model = try MLModel(contentsOf: compiled, configuration: config)
        self.entry = entry
    }

    func run(_ inputs: [[Float]]) throws -> [[Float]] {
        var features: [String: MLFeatureValue] = [:]
        for (spec, x) in zip(entry.inputs, inputs) {
            let arr = try MLMultiArray(shape: spec.shape.map { NSNumber(value: $0) }, dataType: .float32)
            x.withUnsafeBufferPointer { src in
                arr.dataPointer.bindMemory(to: Float.self, capacity: x.count).update(from: src.baseAddress!, count: x.count)
            }
            features[spec.name] = MLFeatureValue(multiArray: arr)
        }
        let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: features))
        return try entry.outputs.map { spec in
            guard let arr = out.featureValue(for: spec.name)?.multiArrayValue else {
                throw ManifestError.invalid("Core ML output \(spec.name) missing")
            }
            let n = arr.count
            if arr.dataType == .float32 {
                return Array(UnsafeBufferPointer(start: arr.dataPointer.bindMemory(to: Float.self, capacity: n), count: n))
            }
            return (0..<n).map { arr[$0].floatValue }
        }
    }
}
