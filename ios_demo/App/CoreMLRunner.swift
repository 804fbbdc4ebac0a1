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
            // Written through the array's own strides: Core ML may pad rows, even of an array it allocates.
            let offsets = Pixels.stridedOffsets(shape: arr.shape.map(\.intValue), strides: arr.strides.map(\.intValue))
            guard offsets.count == x.count else { throw ManifestError.invalid("input \(spec.name) has \(x.count) values, not \(offsets.count)") }
            arr.withUnsafeMutableBytes { raw, _ in
                let dst = raw.bindMemory(to: Float.self)
                for (i, o) in offsets.enumerated() { dst[o] = x[i] }
            }
            features[spec.name] = MLFeatureValue(multiArray: arr)
        }
        let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: features))
        return try entry.outputs.map { spec in
            guard let arr = out.featureValue(for: spec.name)?.multiArrayValue else {
                throw ManifestError.invalid("Core ML output \(spec.name) missing")
            }
            let offsets = Pixels.stridedOffsets(shape: arr.shape.map(\.intValue), strides: arr.strides.map(\.intValue))
            switch arr.dataType {
            case .float32:
                return arr.withUnsafeBytes { raw in let src = raw.bindMemory(to: Float.self); return offsets.map { src[$0] } }
            case .float16:
                return arr.withUnsafeBytes { raw in let src = raw.bindMemory(to: Float16.self); return offsets.map { Float(src[$0]) } }
            case .double:
                return arr.withUnsafeBytes { raw in let src = raw.bindMemory(to: Double.self); return offsets.map { Float(src[$0]) } }
            case .int32:
                return arr.withUnsafeBytes { raw in let src = raw.bindMemory(to: Int32.self); return offsets.map { Float(src[$0]) } }
            @unknown default:
                throw ManifestError.invalid("Core ML output \(spec.name) has an unsupported data type")
            }
        }
    }

    /// The model's memory goes with its last reference; dropping ours is all Core ML offers.
    func close() {}
}
