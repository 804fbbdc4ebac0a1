package dev.vmoe.core

import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import java.text.SimpleDateFormat
import java.util.Date
import java.util.Locale
import java.util.TimeZone

/** What the platform says about the phone (android.os.Build on Android). */
data class DeviceInfo(val manufacturer: String, val model: String, val androidRelease: String, val sdkInt: Int,
                      val abis: List<String>) {
    fun toJson(): JSONObject = JSONObject().put("manufacturer", manufacturer).put("model", model)
        .put("android_release", androidRelease).put("sdk_int", sdkInt).put("abis", JSONArray(abis))
}

/** The process's proportional set size in kB (android.os.Debug.getPss() on Android): resident pages, shared
 *  ones divided among the processes mapping them, which is what the system's memory accounting charges. */
fun interface MemoryProbe {
    fun pssKb(): Long
}

data class BenchSettings(val warmup: Int = 20, val runs: Int = 300, val threads: Int = 1, val coldTrials: Int = 3) {
    init {
        require(warmup >= 0 && runs >= 1 && threads >= 1 && coldTrials >= 1) {
            "benchmark settings need warmup >= 0, runs >= 1, threads >= 1, cold trials >= 1 (got $this)"
        }
    }
}

/** The phone's twin of vmoe-bench's routed measurements (vmoe_export.bench.measure.bench_bundle), written as
 *  JSON that vmoe_export.bench.device.parse_device_report reads and merges beside the host's figures. Runs the
 *  bundle's routed schedule through whatever runtime [openModel]'s loader wraps: resident memory as PSS after the
 *  shared graphs, after the first image and with every expert loaded; warm end-to-end and per-stage latency with
 *  every expert resident; cold (verify + read + runtime init) and warm expert loads; the self-test at open; and,
 *  when [dense] is given, the dense twin of equal active FLOPs on the same runtime, for the on-device ratio. */
object DeviceBench {
    const val SCHEMA = "vmoe-export/device-bench"
    const val SCHEMA_VERSION = 1

    fun run(openModel: () -> RoutedModel, inputs: List<FloatArray>, settings: BenchSettings, device: DeviceInfo,
            memory: MemoryProbe, dense: (() -> GraphRunner)? = null, progress: (String) -> Unit = {}): JSONObject {
        require(inputs.isNotEmpty()) { "the benchmark needs at least one input image" }
        val pssBefore = memory.pssKb()
        val openedAt = System.nanoTime()
        val report = JSONObject()
        openModel().use { model ->
            val openMs = (System.nanoTime() - openedAt) / 1e6
            val m = model.manifest
            val pssShared = memory.pssKb()
            model.classify(inputs[0])
            val routedBytes = model.experts.residentBytes
            val pssFirst = memory.pssKb()
            for (e in 0 until m.numExperts) model.experts.get(e)
            val pssAll = memory.pssKb()
            val furtherBytes = model.experts.residentBytes - routedBytes

            progress("warm-up ${settings.warmup}, timed ${settings.runs} runs")
            repeat(settings.warmup) { model.classify(inputs[it % inputs.size]) }
            val stages = LinkedHashMap<String, MutableList<Double>>()
            val routed = IntArray(m.numExperts)
            repeat(settings.runs) {
                val r = model.classify(inputs[it % inputs.size])
                r.experts.forEach { e -> routed[e]++ }
                r.stageMillis.forEach { (k, v) -> stages.getOrPut(k) { ArrayList() }.add(v) }
            }
            progress("cold and warm expert loads, ${settings.coldTrials} trial(s)")
            val cold = ArrayList<Double>()
            val warm = ArrayList<Double>()
            repeat(settings.coldTrials) {
                model.experts.clear()
                for (e in 0 until m.numExperts) {
                    cold.add(millis { model.experts.get(e) })
                    warm.add(millis { model.experts.get(e) })
                }
            }
            // As the apps open a bundle: golden images through it, the routed experts' cold loads included.
            model.experts.clear()
            val selfTestMs = millis { SelfTest.require(model) }

            report.put("split", JSONObject()
                .put("end_to_end", Stats.summarize(stages.remove("total") ?: error("no total stage")).toJson())
                .put("stages", JSONObject().also { o -> stages.forEach { (k, v) -> o.put(k, Stats.summarize(v).toJson()) } })
                .put("open_ms", openMs)
                .put("shared_load_ms", model.sharedLoadMillis)
                .put("self_test_ms", selfTestMs)
                .put("expert_cold_load", Stats.summarize(cold).toJson())
                .put("expert_warm_lookup", Stats.summarize(warm).toJson())
                .put("expert_bytes", JSONArray((0 until m.numExperts).map { model.bundle.expertBytes(it) }))
                .put("routed_histogram", JSONArray(routed.toList())))
            report.put("memory", JSONObject()
                .put("pss_kb", JSONObject().put("before_open", pssBefore).put("shared_graphs", pssShared)
                    .put("first_image", pssFirst).put("all_experts", pssAll))
                .put("shared_graphs_mb", (pssShared - pssBefore) / 1024.0)
                .put("routed_resident_mb", (pssFirst - pssBefore) / 1024.0)
                .put("all_experts_mb", (pssAll - pssBefore) / 1024.0)
                .put("further_expert_bytes", furtherBytes)
                // PSS growth per byte of the experts loaded after the first image: 1.0 = one copy of their weights.
                .put("expert_pss_over_bytes", if (furtherBytes > 0) (pssAll - pssFirst) * 1024.0 / furtherBytes else JSONObject.NULL))
            report.put("bundle", JSONObject().put("target", m.target).put("digest", model.bundle.digest)
                .put("schedule", if (m.steps.any { it is Step.ExpertPath }) "fused" else "per-layer")
                .put("num_experts", m.numExperts).put("moe_layers", m.moeLayers).put("top_k", m.topK))
        }
        report.put("dense_twin", if (dense == null) JSONObject.NULL else {
            progress("dense twin")
            dense().use { g ->
                val x = listOf(inputs[0])
                repeat(settings.warmup) { g.run(x) }
                Stats.summarize((0 until settings.runs).map { millis { g.run(x) } }).toJson()
            }
        })
        return report.put("schema", SCHEMA).put("schema_version", SCHEMA_VERSION).put("created_at", utcNow())
            .put("device", device.toJson())
            .put("settings", JSONObject().put("warmup", settings.warmup).put("runs", settings.runs)
                .put("threads", settings.threads).put("cold_trials", settings.coldTrials))
    }

    /** Writes [report] to [file] whole or not at all (temp file in the same directory, then rename), so a run
     *  killed midway never leaves a truncated report for vmoe-bench to pull. */
    fun write(report: JSONObject, file: File) {
        val dir = file.absoluteFile.parentFile ?: throw IllegalArgumentException("$file has no directory")
        dir.mkdirs()
        val tmp = File.createTempFile(".${file.name}.", ".partial", dir)
        try {
            tmp.writeText(report.toString(2))
            if (!tmp.renameTo(file)) throw java.io.IOException("cannot move $tmp to $file")
        } finally {
            tmp.delete()
        }
    }

    private inline fun millis(f: () -> Unit): Double {
        val t0 = System.nanoTime()
        f()
        return (System.nanoTime() - t0) / 1e6
    }

    private fun utcNow(): String = SimpleDateFormat("yyyy-MM-dd'T'HH:mm:ss'Z'", Locale.US)
        .apply { timeZone = TimeZone.getTimeZone("UTC") }.format(Date())
}
