package dev.vmoe.demo

import android.graphics.Bitmap
import android.graphics.ImageDecoder
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
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import dev.vmoe.core.Json
import dev.vmoe.core.arr
import dev.vmoe.core.int
import dev.vmoe.core.ints
import dev.vmoe.core.objects
import dev.vmoe.core.Preprocessing
import dev.vmoe.core.RoutedModel
import dev.vmoe.core.SelfTest
import dev.vmoe.core.Routing
import dev.vmoe.core.int
import dev.vmoe.core.list
import dev.vmoe.core.obj
import java.io.File
import kotlin.concurrent.thread

class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val targets = BundleStore.targets(this)
        setContent { MaterialTheme { DemoScreen(targets) } }
    }

    @androidx.compose.runtime.Composable
    private fun DemoScreen(targets: List<String>) {
        var target by remember { mutableStateOf(targets.firstOrNull() ?: "") }
        var model by remember { mutableStateOf<RoutedModel?>(null) }
        var output by remember { mutableStateOf(if (targets.isEmpty()) "No bundle in assets/bundles: see android_demo/README.md" else "") }
        // The bundle runs its golden vectors on this device before it is used (SelfTest): a bundle whose numbers
        // this phone's kernels change, or whose manifest was edited, is refused with the failing stage.
        fun ensureModel(): RoutedModel = model ?: RoutedModel(BundleStore.open(this, target), loaderFor(target))
            .also { SelfTest.require(it) }.also { model = it }
        fun classify(input: FloatArray, label: String) = thread {
            output = try {
                val m = ensureModel()
                val r = m.classify(input)
                val mf = m.manifest
                val shared = mf.sharedGraphs.map { mf.graphs.getValue(it).sizeBytes }.sum()
                "$label\nclass: ${mf.classNames[r.classId]}\n" +
                    r.experts.indices.joinToString("\n") { j ->
                        "expert ${r.experts[j]} (gate %.2f): %s".format(r.gates[j], mf.experts[r.experts[j]].superclass.joinToString(", "))
                    } +
                    "\nstages ms: " + r.stageMillis.entries.joinToString(" ") { "%s=%.2f".format(it.key, it.value) } +
                    "\nresident model: %.2f MB (experts loaded: %s)".format((shared + m.experts.residentBytes) / 1e6, m.experts.loaded)
            } catch (e: Exception) { "error: ${e.message}" }
        }
        val picker = rememberLauncherForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
            if (uri != null) {
                val bmp = ImageDecoder.decodeBitmap(ImageDecoder.createSource(contentResolver, uri)) { d, _, _ ->
                    d.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
                }
                classify(toInput(bmp, ensureModel().manifest.preprocessing), "gallery image")
            }
        }
        // The system camera app takes the photo, so the demo needs no CAMERA permission.
        val camera = rememberLauncherForActivityResult(ActivityResultContracts.TakePicturePreview()) { bmp ->
            if (bmp != null) classify(toInput(bmp, ensureModel().manifest.preprocessing), "camera photo")
        }
        Column(Modifier.padding(16.dp).verticalScroll(rememberScrollState())) {
            Row { targets.forEach { t -> Button(onClick = { target = t; model = null }, Modifier.padding(4.dp)) { Text(t) } } }
            Text("backend: $target")
            Row {
                Button(onClick = { sampleInputs().firstOrNull()?.let { classify(it.second, "sample (label ${it.first})") } }, Modifier.padding(4.dp)) { Text("Sample") }
                Button(onClick = { picker.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly)) }, Modifier.padding(4.dp)) { Text("Gallery") }
                Button(onClick = { camera.launch(null) }, Modifier.padding(4.dp)) { Text("Camera") }
                Button(onClick = {
                    thread {
                        output = try {
                            val b = Benchmark.run(BundleStore.open(this@MainActivity, target), sampleInputs().map { it.second }, 200)
                            "benchmark ($target, ${b.runs} runs): median %.3f ms, p90 %.3f ms\ncold expert load ms: %s\nwarm stage medians: %s\nresident model %.2f MB"
                                .format(b.medianMs, b.p90Ms, b.coldExpertLoadMs.joinToString { "%.2f".format(it) },
                                    b.warmStageMs.entries.joinToString { "%s=%.3f".format(it.key, it.value) }, b.residentModelBytes / 1e6)
                        } catch (e: Exception) { "error: ${e.message}" }
                    }
                }, Modifier.padding(4.dp)) { Text("Benchmark") }
            }
            Text(output)
        }
    }

    /** Bundled samples: the golden test images that vmoe-export writes into every bundle. */
    private fun sampleInputs(): List<Pair<Int, FloatArray>> {
        val bundle = BundleStore.open(this, BundleStore.targets(this).first())
        val golden = Json.parse(File(bundle.dir, "golden/golden.json").readText(), "golden.json")
        return golden.arr("cases", "golden").objects("cases").map { c ->
            val px = c.arr("pixels_u8", "case").ints("pixels", 0, 255).map { it.toByte() }.toByteArray()
            c.int("label", "case") to Routing.preprocess(px, bundle.manifest.preprocessing)
        }
    }

    /** Resize (shorter side, then centre crop) and convert to the bundle's channels, like vmoe_export.data.load_image. */
    private fun toInput(src: Bitmap, pre: Preprocessing): FloatArray {
        val s = pre.imageSize
        val scale = s.toFloat() / minOf(src.width, src.height)
        val scaled = Bitmap.createScaledBitmap(src, maxOf(s, Math.round(src.width * scale)), maxOf(s, Math.round(src.height * scale)), true)
        val crop = Bitmap.createBitmap(scaled, (scaled.width - s) / 2, (scaled.height - s) / 2, s, s)
        val px = IntArray(s * s).also { crop.getPixels(it, 0, s, 0, 0, s, s) }
        val bytes = ByteArray(pre.channels * s * s)
        for (i in px.indices) {
            val r = (px[i] shr 16) and 0xff; val g = (px[i] shr 8) and 0xff; val b = px[i] and 0xff
            if (pre.channels == 1) {
                bytes[i] = Math.round(0.299f * r + 0.587f * g + 0.114f * b).toByte()  // PIL's "L" conversion
            } else {
                bytes[i] = r.toByte(); bytes[s * s + i] = g.toByte(); bytes[2 * s * s + i] = b.toByte()
            }
        }
        return Routing.preprocess(bytes, pre)
    }
}
