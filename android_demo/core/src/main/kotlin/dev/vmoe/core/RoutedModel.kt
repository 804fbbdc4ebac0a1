package dev.vmoe.core

/** One loaded graph of a backend (ExecuTorch Module, LiteRT CompiledModel, Core ML model...):
 *  float32 inputs in manifest order -> float32 outputs in manifest order. close() frees the runtime's
 *  native memory, which the JVM's garbage collector neither sees nor frees in time. */
interface GraphRunner : AutoCloseable {
    fun run(inputs: List<FloatArray>): List<FloatArray>
    override fun close() {}
}

/** Backend adapter: loads one verified artifact file. */
typealias GraphLoader = (graph: GraphEntry, file: java.io.File) -> GraphRunner

data class Result(val classId: Int, val logits: FloatArray, val experts: IntArray, val gates: FloatArray,
                  val stageMillis: Map<String, Double>)

/** Executes the manifest's schedule: shared graphs loaded up front, only the routed experts
 *  loaded (lazily, LRU-cached), mixed by their gates in every MoE layer (per-layer schedule) or run
 *  as one path with its gate (fused schedule, k=1). */
class RoutedModel(val bundle: Bundle, private val loader: GraphLoader,
                  maxExperts: Int? = null, maxBytes: Long? = null) : AutoCloseable {
    val manifest = bundle.manifest
    /** Time the shared graphs took to verify and load (what opening the bundle costs before any image). */
    var sharedLoadMillis = 0.0
        private set
    private var closed = false
    init {  // before any graph is loaded, so a refusal leaks nothing
        if (maxExperts != null && maxExperts < manifest.topK)
            throw IllegalArgumentException("expert budget $maxExperts is below top_k=${manifest.topK}")
    }
    // Declared after the two fields above: Kotlin runs initializers in order, and openShared() sets them.
    private val shared: Map<String, GraphRunner> = openShared()
    val experts = ExpertCache<Map<String, GraphRunner>>(
        load = { e -> openAll(manifest.expertGraphs(e)) },
        sizeOf = { bundle.expertBytes(it) }, maxExperts = maxExperts, maxBytes = maxBytes,
        close = { m -> m.values.forEach { it.close() } })

    private fun open(graph: String) = loader(manifest.graphs.getValue(graph), bundle.verifiedArtifact(graph))

    /** Loads graphs as one unit: when one fails (a checksum, the runtime), those already loaded are freed. */
    private fun openAll(graphs: List<String>): Map<String, GraphRunner> {
        val opened = LinkedHashMap<String, GraphRunner>()
        try {
            for (g in graphs) opened[g] = open(g)
        } catch (e: Throwable) {
            opened.values.forEach { it.close() }
            throw e
        }
        return opened
    }

    private fun openShared(): Map<String, GraphRunner> {
        val t0 = System.nanoTime()
        return openAll(manifest.sharedGraphs).also { sharedLoadMillis = (System.nanoTime() - t0) / 1e6 }
    }

    /** Frees every loaded graph (shared and experts). Idempotent; classify() after close() is an error. */
    override fun close() {
        if (closed) return
        closed = true
        experts.clear()
        shared.values.forEach { it.close() }
    }

    fun classify(input: FloatArray): Result {
        check(!closed) { "this RoutedModel was closed: open the bundle again" }
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
