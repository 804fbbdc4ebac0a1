package dev.vmoe.core

/** One loaded graph of a backend (ExecuTorch Module, LiteRT Interpreter, Core ML model...):
 *  float32 inputs in manifest order -> float32 outputs in manifest order. */
interface GraphRunner {
    fun run(inputs: List<FloatArray>): List<FloatArray>
    fun close() {}
}

/** Backend adapter: loads one verified artifact file. */
typealias GraphLoader = (graph: GraphEntry, file: java.io.File) -> GraphRunner

data class Result(val classId: Int, val logits: FloatArray, val experts: IntArray, val gates: FloatArray,
                  val stageMillis: Map<String, Double>)

/** trunk -> router -> per MoE layer: shared attention + only the routed experts (lazy, LRU) -> head. */
class RoutedModel(val bundle: Bundle, private val loader: GraphLoader,
                  maxExperts: Int? = null, maxBytes: Long? = null) {
    val manifest = bundle.manifest
    private val shared: Map<String, GraphRunner> = manifest.sharedGraphs.associate { it to open(it) }
    val experts = ExpertCache<Map<Int, GraphRunner>>(
        load = { e -> (0 until manifest.moeLayers).associate { layer -> layer to open(manifest.expertGraph(layer, e)) } },
        sizeOf = { bundle.expertBytes(it) }, maxExperts = maxExperts, maxBytes = maxBytes,
        close = { m -> m.values.forEach { it.close() } })

    init {
        if (maxExperts != null && maxExperts < manifest.topK)
            throw IllegalArgumentException("expert budget $maxExperts is below top_k=${manifest.topK}")
    }

    private fun open(graph: String) = loader(manifest.graphs.getValue(graph), bundle.verifiedArtifact(graph))

    fun classify(input: FloatArray): Result {
        val t = LinkedHashMap<String, Double>()
        fun <R> timed(stage: String, f: () -> R): R {
            val t0 = System.nanoTime()
            val r = f()
            t[stage] = (t[stage] ?: 0.0) + (System.nanoTime() - t0) / 1e6
            return r
        }
        val start = System.nanoTime()
        val tokens0 = timed("trunk") { shared.getValue("trunk").run(listOf(input))[0] }
        val routerLogits = timed("router") { shared.getValue("router").run(listOf(tokens0))[0] }
        val (ids, gates) = Routing.selectExperts(routerLogits, manifest.topK)
        val pinned = ids.toSet()
        val loaded = timed("expert_load") { ids.map { experts.get(it, pinned) } }
        var tokens = tokens0
        for (layer in 0 until manifest.moeLayers) {
            val (attnOut, hidden) = timed("attention") { shared.getValue("moe${layer}_attn").run(listOf(tokens)) }
                .let { it[0] to it[1] }
            val outs = timed("experts") { loaded.map { it.getValue(layer).run(listOf(hidden))[0] } }
            tokens = Routing.combine(attnOut, outs, gates)
        }
        val logits = timed("head") { shared.getValue("head").run(listOf(tokens))[0] }
        t["total"] = (System.nanoTime() - start) / 1e6
        return Result(Routing.argmax(logits), logits, ids, gates, t)
    }
}
