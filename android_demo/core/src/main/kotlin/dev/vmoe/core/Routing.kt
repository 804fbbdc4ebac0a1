package dev.vmoe.core

/** Preprocessing, expert selection and gate mixing: the numeric core mirrored from vmoe_export.runtime. */
object Routing {
    /** uint8 pixels (C*H*W, channel-major) -> (p / 255 - mean[c]) / std[c], after the polarity rule. */
    fun preprocess(pixels: ByteArray, pre: Preprocessing): FloatArray {
        val plane = pre.imageSize * pre.imageSize
        require(pixels.size == plane * pre.channels) { "expected ${plane * pre.channels} pixels, got ${pixels.size}" }
        val invert = pre.polarity == "dark-background" && brightBorder(pixels, pre.imageSize, pre.channels)
        return FloatArray(pixels.size) { i ->
            val c = i / plane
            val p = pixels[i].toInt() and 0xff
            ((if (invert) 255 - p else p) / 255f - pre.mean[c]) / pre.std[c]
        }
    }

    /** Is the mean of the outermost pixel ring (all channels) above mid-grey? In integers, exactly as
     *  vmoe_export.data.bright_border decides it. */
    fun brightBorder(pixels: ByteArray, size: Int, channels: Int): Boolean {
        var sum = 0L
        var count = 0L
        for (c in 0 until channels) for (y in 0 until size) for (x in 0 until size) {
            if (y == 0 || y == size - 1 || x == 0 || x == size - 1) {
                sum += pixels[(c * size + y) * size + x].toInt() and 0xff
                count++
            }
        }
        return 2 * sum > 255 * count
    }

    fun softmax(logits: FloatArray): DoubleArray {
        val max = logits.maxOrNull() ?: 0f
        val exps = logits.map { Math.exp((it - max).toDouble()) }
        val sum = exps.sum()
        return exps.map { it / sum }.toDoubleArray()
    }

    /** The experts of the k largest router logits, highest first, ties to the lower id (chosen on the
     *  float32 logits, as vmoe_export.model.route); gates are their softmax probabilities, not renormalised
     *  (V-MoE). Primitive comparisons, so -0.0 and 0.0 tie as they do in Python. */
    fun selectExperts(routerLogits: FloatArray, k: Int): Pair<IntArray, FloatArray> {
        require(k in 1..routerLogits.size) { "k=$k outside 1..${routerLogits.size}" }
        val probs = softmax(routerLogits)
        val higherFirst = Comparator<Int> { a, b ->
            val x = routerLogits[a]
            val y = routerLogits[b]
            if (x > y) -1 else if (x < y) 1 else a - b
        }
        val order = routerLogits.indices.sortedWith(higherFirst).take(k)
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

    fun argmax(x: FloatArray): Int = x.indices.maxByOrNull { x[it] } ?: -1
}
