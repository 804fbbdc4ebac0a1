package dev.vmoe.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ImageDecoder
import android.media.ExifInterface
import android.net.Uri
import android.os.Build
import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.compose.setContent
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import dev.vmoe.core.BenchSettings
import dev.vmoe.core.DeviceBench
import dev.vmoe.core.Pixels
import dev.vmoe.core.Preprocessing
import dev.vmoe.core.RoutedModel
import dev.vmoe.core.Routing
import dev.vmoe.core.Samples
import dev.vmoe.core.SelfTest
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

class MainActivity : ComponentActivity() {
    // One worker thread owns the bundle and the model: copying, hashing, the self-test, inference and the
    // benchmark never run on the UI thread, and the runtimes are only ever touched from one thread.
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var model: RoutedModel? = null  // touched on the worker only
    private var modelTarget = ""

    private var target by mutableStateOf("")
    private var output by mutableStateOf("")
    private var busy by mutableStateOf(false)

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val targets = BundleStore.targets(this)
        target = targets.firstOrNull() ?: ""
        output = if (targets.isEmpty()) "No executorch or tflite bundle in assets/bundles: see android_demo/README.md" else ""
        setContent { MaterialTheme { DemoScreen(targets) } }
    }

    override fun onDestroy() {
        worker.execute { closeModel() }
        worker.shutdown()
        super.onDestroy()
    }

    /** Runs [job] on the worker and shows what it returns (or its error) when done. */
    private fun background(job: () -> String) {
        busy = true
        worker.execute {
            val text = try { job() } catch (e: Exception) { "error: ${e.message}" }
            runOnUiThread { output = text; busy = false }
        }
    }

    private fun closeModel() {
        model?.close()
        model = null
    }

    /** The open model for [t] (worker thread only). The bundle runs its golden vectors on this device before it is
     *  used (SelfTest): a bundle whose numbers this phone's kernels change, or whose manifest was edited, is refused. */
    private fun ensureModel(t: String): RoutedModel {
        model?.takeIf { modelTarget == t }?.let { return it }
        closeModel()  // switching backend: free the old runtime's native memory first
        val m = RoutedModel(BundleStore.open(this, t), loaderFor(t))
        try {
            SelfTest.require(m)
        } catch (e: Exception) {
            m.close()
            throw e
        }
        model = m
        modelTarget = t
        return m
    }

    private fun classify(t: String, label: String, input: (Preprocessing) -> FloatArray) = background {
        val m = ensureModel(t)
        val r = m.classify(input(m.manifest.preprocessing))
        val mf = m.manifest
        val shared = mf.sharedGraphs.sumOf { mf.graphs.getValue(it).sizeBytes }
        "$label\nclass: ${mf.classNames[r.classId]}\n" +
            r.experts.indices.joinToString("\n") { j ->
                "expert ${r.experts[j]} (gate %.2f): %s".format(r.gates[j], mf.experts[r.experts[j]].superclass.joinToString(", "))
            } +
            "\nstages ms: " + r.stageMillis.entries.joinToString(" ") { "%s=%.2f".format(it.key, it.value) } +
            "\nresident model: %.2f MB (experts loaded: %s)".format((shared + m.experts.residentBytes) / 1e6, m.experts.loaded)
    }

    private fun benchmark(t: String) = background {
        closeModel()  // the benchmark opens its own model; measure it alone
        val bundle = BundleStore.open(this, t)
        val r = DeviceBench.run({ RoutedModel(bundle, loaderFor(t)) }, Samples.golden(bundle).map { it.input },
            BenchSettings(warmup = 10, runs = 100, coldTrials = 1), Platform.device, Platform.pss)
        val split = r.getJSONObject("split")
        val e2e = split.getJSONObject("end_to_end")
        val mem = r.getJSONObject("memory")
        "benchmark ($t, 100 runs): median %.3f ms, p90 %.3f ms\ncold expert load median %.2f ms, self-test %.1f ms\nPSS: shared graphs %.1f MB, first image %.1f MB, all experts %.1f MB"
            .format(e2e.getDouble("median_ms"), e2e.getDouble("p90_ms"), split.getJSONObject("expert_cold_load").getDouble("median_ms"),
                split.getDouble("self_test_ms"), mem.getDouble("shared_graphs_mb"), mem.getDouble("routed_resident_mb"),
                mem.getDouble("all_experts_mb"))
    }

    @Composable
    private fun DemoScreen(targets: List<String>) {
        val picker = rememberLauncherForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
            if (uri != null) { val t = target; classify(t, "gallery image") { pre -> inputFromUri(uri, pre) } }
        }
        // The system camera app takes the photo, so the demo needs no CAMERA permission; the preview is upright.
        val camera = rememberLauncherForActivityResult(ActivityResultContracts.TakePicturePreview()) { bmp ->
            if (bmp != null) { val t = target; classify(t, "camera photo") { pre -> toInput(bmp, 1, pre) } }
        }
        Column(Modifier.padding(16.dp).verticalScroll(rememberScrollState())) {
            Row { targets.forEach { t -> Button(onClick = { target = t }, Modifier.padding(4.dp), enabled = !busy) { Text(t) } } }
            Text("backend: $target" + if (busy) " (working...)" else "")
            if (targets.isNotEmpty()) Row {
                Button(onClick = {
                    val t = target
                    background {
                        val m = ensureModel(t)
                        val s = Samples.golden(m.bundle).first()
                        val r = m.classify(s.input)
                        "sample (label ${m.manifest.classNames[s.label]}): ${m.manifest.classNames[r.classId]}, experts ${r.experts.toList()}"
                    }
                }, Modifier.padding(4.dp), enabled = !busy) { Text("Sample") }
                Button(onClick = { picker.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly)) },
                    Modifier.padding(4.dp), enabled = !busy) { Text("Gallery") }
                Button(onClick = { camera.launch(null) }, Modifier.padding(4.dp), enabled = !busy) { Text("Camera") }
                Button(onClick = { benchmark(target) }, Modifier.padding(4.dp), enabled = !busy) { Text("Benchmark") }
            }
            Text(output)
        }
    }

    /** Decodes a picked image (worker thread). ImageDecoder (API 28+) applies the EXIF orientation itself; below
     *  it, BitmapFactory does not, so the orientation tag is read and applied to the pixels. */
    private fun inputFromUri(uri: Uri, pre: Preprocessing): FloatArray {
        if (Build.VERSION.SDK_INT >= 28) {
            val bmp = ImageDecoder.decodeBitmap(ImageDecoder.createSource(contentResolver, uri)) { d, _, _ ->
                d.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
            }
            return toInput(bmp, 1, pre)
        }
        val orientation = contentResolver.openInputStream(uri)?.use {
            ExifInterface(it).getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
        } ?: ExifInterface.ORIENTATION_NORMAL
        val bmp = contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it) }
            ?: throw IllegalArgumentException("cannot decode $uri as an image")
        return toInput(bmp, orientation, pre)
    }

    /** Resize (shorter side, then centre crop) with Android's bilinear filter, then the core's pixel arithmetic
     *  (EXIF orientation, PIL's grayscale rule, planar channels) and the bundle's preprocessing. */
    private fun toInput(src: Bitmap, orientation: Int, pre: Preprocessing): FloatArray {
        val c = Pixels.centreCrop(src.width, src.height, pre.imageSize)
        val scaled = Bitmap.createScaledBitmap(src, c.scaledWidth, c.scaledHeight, true)
        val crop = Bitmap.createBitmap(scaled, c.left, c.top, c.size, c.size)
        val px = IntArray(c.size * c.size).also { crop.getPixels(it, 0, c.size, 0, 0, c.size, c.size) }
        val upright = Pixels.orient(px, c.size, c.size, orientation)
        return Routing.preprocess(Pixels.channelBytes(upright.argb, pre.channels), pre)
    }
}
