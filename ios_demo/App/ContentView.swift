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
                    Button("Sample") { demo.sample() }
                    PhotosPicker("Photo", selection: $photo, matching: .images)
                    Button("Benchmark") { demo.benchmark() }
                }
                .buttonStyle(.borderedProminent)
                .disabled(demo.busy)
                if demo.busy { ProgressView() }
                Text(demo.output).font(.system(.body, design: .monospaced))
            }
            .padding()
        }
        .onChange(of: photo) { _, item in
            Task {
                // UIImage(data:) keeps the EXIF orientation as imageOrientation; ImageInput draws it upright.
                if let data = try? await item?.loadTransferable(type: Data.self), let img = UIImage(data: data) {
                    demo.classify(image: img)
                } else if item != nil {
                    demo.output = "error: cannot read that photo"
                }
            }
        }
    }
}
