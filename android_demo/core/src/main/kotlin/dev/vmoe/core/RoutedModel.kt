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

/** Executes the manifest's schedule: shared graphs loaded up front, only the routed experts
 *  loaded (lazily, LRU-cached), mixed by their gates in every MoE layer (per-layer schedule) or run
 *  as one path with its gate (fused schedule, k=1). */
class RoutedModel(val bundle: Bundle, private val loader: GraphLoader,
                  maxExperts: Int? = null, maxBytes: Long? = null) {
    val manifest = bundle.manifest
    private val shared: Map<String, GraphRunner> = manifest.sharedGraphs.associate { it to open(it) }
    val experts = ExpertCache<Map<String, GraphRunner>>(
        load = { e -> manifest.expertGraphs(e).associate { it to open(it) } },
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
        val env = HashMap<String, FloatArray>()
        env["images"] = input
        var ids = IntArray(0)
        var gates = FloatArray(0)
        var routed: List<Map<String, GraphRunner>> = emptyList()
        for (step in manifest.steps) when (step) {
            is Step.Run -> {
                val outs = timed(step.graph) { shared.getValue(step.graph).run(step.inputs.map { env.getValue(it) }) }
                step.outputs.zip(outs).forEach { (name, value) -> env[name] = value }
            }
            is Step.Route -> {
                val sel = Routing.selectExperts(env.getValue(step.logits), step.k)
                ids = sel.first
                gates = sel.second
                val pinned = ids.toSet()
                routed = timed("expert_load") { ids.map { experts.get(it, pinned) } }
            }
            is Step.MoELayer -> {
                val (attnOut, hidden) = timed("attention") { shared.getValue(step.attention).run(listOf(env.getValue("tokens"))) }
                    .let { it[0] to it[1] }
                val outs = timed("experts") { ids.indices.map { j -> routed[j].getValue(step.experts[ids[j]]).run(listOf(hidden))[0] } }
                env["tokens"] = Routing.combine(attnOut, outs, gates)
            }
            is Step.ExpertPath -> env["tokens"] = timed("experts") {
                routed[0].getValue(step.experts[ids[0]]).run(listOf(env.getValue("tokens"), floatArrayOf(gates[0])))[0]
            }
        }
        t["total"] = (System.nanoTime() - start) / 1e6
        val logits = env.getValue("logits")
        return Result(Routing.argmax(logits), logits, ids, gates, t)
    }
}
