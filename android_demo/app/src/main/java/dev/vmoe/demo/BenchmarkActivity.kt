package dev.vmoe.demo

import android.app.Activity
import android.os.Bundle
import android.util.Log
import dev.vmoe.core.BenchSettings
import dev.vmoe.core.Bundle as VmoeBundle
import dev.vmoe.core.DeviceBench
import dev.vmoe.core.ManifestException
import dev.vmoe.core.RoutedModel
import dev.vmoe.core.Samples
import dev.vmoe.core.Sha256
import java.io.File
import java.util.concurrent.Executors

/** Headless routed benchmark, started over adb by `vmoe-bench --device adb` (in the spirit of ExecuTorch's
 *  Minibench): runs a pushed bundle's routed schedule through the real runtime and writes the core's
 *  DeviceBench JSON to files/bench/<name>.json (or the failure to <name>.error), then finishes.
 *
 *  adb shell am start -W -n dev.vmoe.demo/.BenchmarkActivity --es bundle_dir bench/executorch --es name executorch \
 *      --es digest <manifest sha256> --ei warmup 20 --ei runs 300 --ei threads 1 [--es dense_graph bench/dense.pte \
 *      --es dense_sha256 <sha256>]
 *
 *  Paths are relative to the app's files directory (vmoe-bench copies the bundle there with run-as). */
class BenchmarkActivity : Activity() {
    private val worker = Executors.newSingleThreadExecutor()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val name = intent.getStringExtra("name") ?: "bench"
        val out = File(filesDir, "bench/$name.json")
        val err = File(filesDir, "bench/$name.error")
        out.delete()
        err.delete()
        worker.execute {
            try {
                DeviceBench.write(run(), out)
                Log.i(TAG, "wrote ${out.path}")
            } catch (e: Throwable) {  // the report is the channel back to vmoe-bench: every failure goes there
                Log.e(TAG, "benchmark failed", e)
                err.parentFile?.mkdirs()
                err.writeText("${e.javaClass.simpleName}: ${e.message}\n")
            }
            runOnUiThread { finish() }
        }
    }

    override fun onDestroy() {
        worker.shutdown()
        super.onDestroy()
    }

    private fun run(): org.json.JSONObject {
        val dir = resolve(intent.getStringExtra("bundle_dir") ?: throw ManifestException("missing extra bundle_dir"))
        val digest = intent.getStringExtra("digest") ?: throw ManifestException("missing extra digest (the manifest's sha256)")
        val settings = BenchSettings(warmup = intent.getIntExtra("warmup", 20), runs = intent.getIntExtra("runs", 300),
            threads = intent.getIntExtra("threads", 1), coldTrials = intent.getIntExtra("cold_trials", 3))
        val bundle = VmoeBundle(dir, digest)
        val target = bundle.manifest.target
        val open = { RoutedModel(bundle, loaderFor(target, settings.threads)) }
        val inputs = Samples.golden(bundle).map { it.input }
        val dense = intent.getStringExtra("dense_graph")?.let { path ->
            val file = resolve(path)
            val sha = intent.getStringExtra("dense_sha256") ?: throw ManifestException("dense_graph needs dense_sha256")
            if (Sha256.of(file) != sha) throw ManifestException("${file.path} fails its checksum: push it again")
            val p = bundle.manifest.preprocessing
            val shape = longArrayOf(1, p.channels.toLong(), p.imageSize.toLong(), p.imageSize.toLong())
            ({ singleGraph(target, file, shape, settings.threads) })
        }
        return DeviceBench.run(open, inputs, settings, Platform.device, Platform.pss, dense) { Log.i(TAG, it) }
    }

    /** A path inside the app's files directory; anything that escapes it is refused. */
    private fun resolve(path: String): File {
        val root = filesDir.canonicalFile
        val f = File(root, path).canonicalFile
        if (!f.path.startsWith(root.path + File.separator)) throw ManifestException("$path escapes the app's files directory")
        return f
    }

    private companion object {
        const val TAG = "vmoe-bench"
    }
}
