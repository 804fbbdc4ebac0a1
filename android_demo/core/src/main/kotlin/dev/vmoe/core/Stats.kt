package dev.vmoe.core

import org.json.JSONObject

/** Latency summary with the keys and arithmetic of vmoe_export.bench.measure.stats (NumPy's median and
 *  linear-interpolation percentile), so a phone's figures and the host's read the same way. */
data class Summary(val medianMs: Double, val p90Ms: Double, val meanMs: Double, val n: Int) {
    fun toJson(): JSONObject = JSONObject().put("median_ms", medianMs).put("p90_ms", p90Ms).put("mean_ms", meanMs).put("n", n)
}

object Stats {
    fun percentile(values: List<Double>, p: Double): Double {
        require(values.isNotEmpty()) { "no values to summarise" }
        require(p in 0.0..100.0) { "percentile $p is not within 0..100" }
        val s = values.sorted()
        val rank = (p / 100.0) * (s.size - 1)
        val lo = Math.floor(rank).toInt()
        val hi = Math.ceil(rank).toInt()
        return s[lo] + (s[hi] - s[lo]) * (rank - lo)
    }

    fun summarize(ms: List<Double>): Summary = Summary(percentile(ms, 50.0), percentile(ms, 90.0), ms.average(), ms.size)
}
