package dev.vmoe.core

/** Preprocessing, expert selection and gate mixing: the numeric core mirrored from vmoe_export.runtime. */
object Routing {
    /** uint8 pixels (C*H*W, channel-major) -> (p / 255 - mean[c]) / std[c]. */
    fun preprocess(pixels: ByteArray, pre: Preprocessing): FloatArray {
        val plane = pre.imageSize * pre.imageSize
        require(pixels.size == plane * pre.channels) { "expected ${plane * pre.channels} pixels, got ${pixels.size}" }
        return FloatArray(pixels.size) { i ->
            val c = i / plane
            ((pixels[i].toInt() and 0xff) / 255f - pre.mean[c]) / pre.std[c]
        }
    }

    fun softmax(logits: FloatArray): DoubleArray {
        val max = logits.max() ?: 0f
        val exps = logits.map { Math.exp((it - max).toDouble()) }
        val sum = exps.sum()
        return exps.map { it / sum }.toDoubleArray()
    }

    /** Top-k experts of softmax(router logits), highest first, ties to the lower id; gates are the
     *  selected probabilities, not renormalised (V-MoE). */
    fun selectExperts(routerLogits: FloatArray, k: Int): Pair<IntArray, FloatArray> {
        require(k in 1..routerLogits.size) { "k=$k outside 1..${routerLogits.size}" }
        val probs = softmax(routerLogits)
        val order = probs.indices.sortedWith(compareBy<Int>({ -probs[it] }, { it })).take(k)
        return order.toIntArray() to FloatArray(k) { probs[order[it]].toFloat() }
    }

    /** tokens = attentionOut + sum_j gates[j] * expertOut[j], in that order (float32, like the Python runtime). */
    fun combine(attentionOut: FloatArray, expertOuts: List<FloatArray>, gates: FloatArray): FloatArray {
        require(expertOuts.size == gates.size) { "${expertOuts.size} expert outputs for ${gates.size} gates" }
        val out = attentionOut.copyOf()
        for ((j, y) in expertOuts.withIndex()) {
            require(y.size == out.size) { "expert output size ${y.size} != ${out.size}" }
            for (i in out.indices) out[i] += gates[j] * y[i]
        }
        return out
    }

    fun argmax(x: FloatArray): Int = x.indices.maxBy { x[it] } ?: -1
}
