package dev.vmoe.demo

import dev.vmoe.core.Bundle
import dev.vmoe.core.RoutedModel

data class BenchResult(val runs: Int, val medianMs: Double, val p90Ms: Double, val coldExpertLoadMs: List<Double>,
                       val warmStageMs: Map<String, Double>, val residentModelBytes: Long)

/** The on-device twin of vmoe-bench's routed measurements: warm end-to-end latency over N runs
 *  (median/p90) and the cold load of every expert in a fresh model. */
object Benchmark {
    fun run(bundle: Bundle, inputs: List<FloatArray>, runs: Int): BenchResult {
        val model = RoutedModel(bundle, loaderFor(bundle.manifest.target))
        val cold = (0 until bundle.manifest.numExperts).map { e ->
            val t0 = System.nanoTime()
            model.experts.get(e)
            (System.nanoTime() - t0) / 1e6
        }
        repeat(10) { model.classify(inputs[it % inputs.size]) }
        val totals = ArrayList<Double>()
        val stages = HashMap<String, MutableList<Double>>()
        repeat(runs) {
            val r = model.classify(inputs[it % inputs.size])
            totals.add(r.stageMillis.getValue("total"))
            r.stageMillis.forEach { (k, v) -> stages.getOrPut(k) { ArrayList() }.add(v) }
        }
        val shared = bundle.manifest.sharedGraphs.map { bundle.manifest.graphs.getValue(it).sizeBytes }.sum()
        return BenchResult(runs, percentile(totals, 50.0), percentile(totals, 90.0), cold,
            stages.mapValues { percentile(it.value, 50.0) }, shared + model.experts.residentBytes)
    }

    fun percentile(values: List<Double>, p: Double): Double {
        val s = values.sorted()
        val rank = (p / 100.0) * (s.size - 1)
        val lo = Math.floor(rank).toInt()
        val hi = Math.ceil(rank).toInt()
        return s[lo] + (s[hi] - s[lo]) * (rank - lo)
    }
}
