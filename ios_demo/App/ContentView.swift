import PhotosUI
import SwiftUI

struct ContentView: View {
    @StateObject private var demo = DemoModel()
    @State private var photo: PhotosPickerItem?

    var body: some View {
        ScrollView {
            VStack(alignment: .leading, spacing: 12) {
                Text("Mobile V-MoE (Core ML)").font(.title2)
                HStack {
                    Button("Sample") {
                        if let first = try? demo.samples().first { demo.classify(first.1, label: "sample (label \(first.0))") }
                    }
                    PhotosPicker("Photo", selection: $photo, matching: .images)
                    Button("Benchmark") { demo.benchmark() }
                }
                .buttonStyle(.borderedProminent)
                Text(demo.output).font(.system(.body, design: .monospaced))
            }
            .padding()
        }
        .onChange(of: photo) { _, item in
            Task {
                if let data = try? await item?.loadTransferable(type: Data.self), let img = UIImage(data: data) {
                    demo.classify(image: img)
                }
            }
        }
    }
}
