package dev.vmoe.core

import org.json.JSONObject

/** What the self-test measured on this device. [failures] is empty when the bundle reproduced its golden vectors. */
class SelfTestReport(val cases: Int, val inputMaxAbsDiff: Double, val logitsMaxAbsDiff: Double, val logitsSnrDb: Double,
                     val routingAgreement: Double, val top1Agreement: Double, val millis: Double, val failures: List<String>) {
    val passed: Boolean get() = failures.isEmpty()
}

/** The bundle self-test, mirrored from vmoe_export/verify.py: the golden images from raw pixels, through the
 *  manifest's preprocessing and the routed model on this device, compared with fp32 PyTorch within the tolerances
 *  the export recorded for this bundle (golden.self_test.stages). A manifest whose preprocessing was edited
 *  coherently fails at the input; a runtime or CPU whose kernels change the numbers fails at the logits. The
 *  demo apps run it when they open a bundle and refuse the bundle when it fails. */
object SelfTest {
    /** The stored input is rounded to 7 decimals; preprocessing must reproduce it. */
    const val INPUT_TOLERANCE = 1e-5

    fun run(model: RoutedModel): SelfTestReport {
        val t0 = System.nanoTime()
        val golden = model.bundle.golden()
        val cases = golden.arr("cases", "golden").objects("golden.cases")
        val tolerances = golden.obj("self_test", "golden").obj("stages", "golden.self_test")
        val pre = model.manifest.preprocessing
        var inputDiff = 0.0
        var logitsDiff = 0.0
        var signal = 0.0
        var noise = 0.0
        var routed = 0
        var top1 = 0
        for (c in cases) {
            val input = Routing.preprocess(Samples.pixels(c), pre)
            inputDiff = maxOf(inputDiff, maxAbsDiff(c.arr("input", "case").floats("input"), input))
            val result = model.classify(input)
            // Quantized bundles keep fp32 PyTorch's values apart; an fp32 bundle's cases are PyTorch's own.
            val ref = if (c.has("reference")) c.obj("reference", "case") else c
            val refLogits = ref.arr("logits", "case").floats("logits")
            val refExperts = ref.arr("experts", "case").ints("experts")
            top1 += if (result.classId == Routing.argmax(refLogits)) 1 else 0
            if (result.experts.sorted() != refExperts.sorted()) continue  // later stages not comparable
            routed++
            logitsDiff = maxOf(logitsDiff, maxAbsDiff(refLogits, result.logits))
            for (i in refLogits.indices) {
                signal += refLogits[i].toDouble() * refLogits[i]
                val d = refLogits[i].toDouble() - result.logits[i]
                noise += d * d
            }
        }
        val snr = if (noise <= 0.0) 200.0 else minOf(200.0, 10 * Math.log10(maxOf(signal, 1e-30) / noise))
        val failures = ArrayList<String>()
        if (inputDiff > INPUT_TOLERANCE)
            failures.add("stage input: the manifest's preprocessing gives inputs ${"%.3g".format(inputDiff)} away from the ones " +
                "the bundle was exported with (was the preprocessing block edited?): re-export the bundle")
        val tol = tolerances.optJSONObject("logits")
        if (tol != null && routed > 0) {
            val minSnr = tol.opt("min_snr_db") as? Number
            val maxDiff = tol.opt("max_abs_diff") as? Number
            if (minSnr != null && snr < minSnr.toDouble())
                failures.add("stage logits: SNR ${"%.1f".format(snr)} dB against fp32, below the ${"%.1f".format(minSnr.toDouble())} dB this " +
                    "bundle was measured to meet: this device's kernels change its numbers")
            else if (maxDiff != null && logitsDiff > maxDiff.toDouble())
                failures.add("stage logits: max abs diff ${"%.3g".format(logitsDiff)} > ${"%.3g".format(maxDiff.toDouble())} recorded at export")
        }
        return SelfTestReport(cases.size, inputDiff, logitsDiff, snr, routed.toDouble() / cases.size, top1.toDouble() / cases.size,
            (System.nanoTime() - t0) / 1e6, failures)
    }

    /** Runs the self-test and throws ManifestException naming the failing stage (what an app does at open). */
    fun require(model: RoutedModel): SelfTestReport {
        val report = run(model)
        if (!report.passed) throw ManifestException("self-test failed on this device: " + report.failures.joinToString("; "))
        return report
    }

    private fun maxAbsDiff(a: FloatArray, b: FloatArray): Double {
        if (a.size != b.size) return Double.POSITIVE_INFINITY
        var m = 0.0
        for (i in a.indices) m = maxOf(m, Math.abs(a[i].toDouble() - b[i]))
        return m
    }
}
