package dev.vmoe.core

import java.io.File
import java.security.MessageDigest

class ManifestException(message: String) : RuntimeException(message)

data class TensorSpec(val name: String, val shape: List<Int>)

data class GraphEntry(val name: String, val path: String, val sha256: String, val sizeBytes: Long,
                      val inputs: List<TensorSpec>, val outputs: List<TensorSpec>)

data class Preprocessing(val imageSize: Int, val channels: Int, val mean: FloatArray, val std: FloatArray)

data class ExpertInfo(val id: Int, val superclass: List<String>, val graphs: List<String>, val sizeBytes: Long)

/** One step of the routed schedule stored in the manifest (vmoe_export/schedule.py). The app
 *  executes these steps; it never builds a graph name itself. */
sealed class Step {
    /** graph: inputs -> outputs (trunk, router, head). */
    data class Run(val graph: String, val inputs: List<String>, val outputs: List<String>) : Step()
    /** experts = top-k of softmax(logits), gates = their probabilities. */
    data class Route(val logits: String, val k: Int) : Step()
    /** tokens_out, hidden = attention(tokens); tokens = tokens_out + sum_j gates[j] * experts[ids[j]](hidden). */
    data class MoELayer(val layer: Int, val attention: String, val experts: List<String>) : Step()
}

/** The bundle's manifest.json, validated like vmoe_export.bundle: schema, schedule against E/L/k,
 *  every scheduled graph present, paths inside the bundle. */
class Manifest(val target: String, val numExperts: Int, val moeLayers: Int, val topK: Int,
               val classNames: List<String>, val preprocessing: Preprocessing,
               val graphs: Map<String, GraphEntry>, val experts: List<ExpertInfo>, val steps: List<Step>) {

    private val moeSteps get() = steps.filterIsInstance<Step.MoELayer>()

    /** Graphs every image runs, loaded up front. */
    val sharedGraphs: List<String>
        get() = steps.flatMap { s -> when (s) { is Step.Run -> listOf(s.graph); is Step.MoELayer -> listOf(s.attention); else -> emptyList() } }

    /** Expert [expert]'s graphs, one per MoE layer: loaded and evicted as one unit. */
    fun expertGraphs(expert: Int): List<String> = moeSteps.map { it.experts[expert] }

    companion object {
        const val SCHEMA = "vmoe-export/bundle"
        const val SCHEMA_VERSION = 2

        fun parse(text: String): Manifest {
            val root = try { Json.parse(text) } catch (e: JsonException) { throw ManifestException("manifest is not valid JSON: ${e.message}") }
                .obj("manifest")
            if (root["schema"] != SCHEMA) throw ManifestException("not a vmoe-export manifest (schema is not '$SCHEMA')")
            val version = root["schema_version"].int("schema_version")
            if (version < SCHEMA_VERSION)
                throw ManifestException("bundle written by an older vmoe-export (schema_version $version): re-export it")
            if (version != SCHEMA_VERSION)
                throw ManifestException("manifest schema_version $version, this app reads $SCHEMA_VERSION: update the app")
            val model = root["model"].obj("model")
            val e = model["num_experts"].int("num_experts")
            val l = model["moe_layers"].int("moe_layers")
            val k = model["top_k"].int("top_k")
            if (k < 1 || k > e) throw ManifestException("top_k $k is not between 1 and num_experts $e")
            val pre = root["preprocessing"].obj("preprocessing")
            val graphs = LinkedHashMap<String, GraphEntry>()
            for ((name, raw) in root["graphs"].obj("graphs")) {
                val g = raw.obj("graph $name")
                val path = g["path"].str("graph $name path")
                checkRelative(path)
                graphs[name] = GraphEntry(name, path, g["sha256"].str("graph $name sha256"),
                    (g["size_bytes"] as? Double)?.toLong() ?: 0L, specs(g["inputs"], name), specs(g["outputs"], name))
            }
            val steps = root["schedule"].obj("schedule")["steps"].list("schedule steps").map { step(it) }
            val moe = steps.filterIsInstance<Step.MoELayer>()
            val routes = steps.filterIsInstance<Step.Route>()
            if (moe.size != l || moe.any { it.experts.size != e } || routes.size != 1 || routes[0].k != k)
                throw ManifestException("manifest schedule does not match its model (E=$e, L=$l, k=$k): re-export the bundle")
            val required = steps.flatMap { s ->
                when (s) { is Step.Run -> listOf(s.graph); is Step.MoELayer -> listOf(s.attention) + s.experts; else -> emptyList() }
            }
            val missing = required.filter { it !in graphs }
            if (missing.isNotEmpty()) throw ManifestException("manifest lacks graphs ${missing.joinToString(", ")} (E=$e, L=$l)")
            val experts = root["experts"].list("experts").map {
                val x = it.obj("expert")
                ExpertInfo(x["id"].int("expert id"), x["superclass"].list("superclass").map { s -> s.str("class") },
                    x["graphs"].list("expert graphs").map { s -> s.str("graph") }, (x["size_bytes"] as? Double)?.toLong() ?: 0L)
            }
            return Manifest(root["target"].str("target"), e, l, k, root["class_names"].list("class_names").map { it.str("class") },
                Preprocessing(pre["image_size"].int("image_size"), pre["channels"].int("channels"),
                    pre["mean"].floats("mean"), pre["std"].floats("std")), graphs, experts, steps)
        }

        private fun step(raw: Any?): Step {
            val s = raw.obj("schedule step")
            return when (val op = s["op"].str("step op")) {
                "run" -> Step.Run(s["graph"].str("graph"), s["inputs"].list("inputs").map { it.str("input") },
                    s["outputs"].list("outputs").map { it.str("output") })
                "route" -> Step.Route(s["logits"].str("logits"), s["k"].int("k"))
                "moe_layer" -> Step.MoELayer(s["layer"].int("layer"), s["attention"].str("attention"),
                    s["experts"].list("experts").map { it.str("expert graph") })
                else -> throw ManifestException("unknown schedule step '$op': update the app")
            }
        }

        private fun specs(raw: Any?, graph: String): List<TensorSpec> = raw.list("graph $graph tensors").map {
            val t = it.obj("tensor")
            TensorSpec(t["name"].str("tensor name"), t["shape"].list("shape").map { d -> d.int("dim") })
        }

        /** Refuse absolute paths, backslashes and any '..' segment before touching the file system. */
        fun checkRelative(path: String) {
            if (path.isEmpty() || path.startsWith("/") || path.contains('\\') || path.split('/').any { it == ".." })
                throw ManifestException("manifest path '$path' escapes the bundle directory")
        }
    }
}

/** A bundle directory on disk: resolves artifacts inside it and checks their sha256 before use. */
class Bundle(val dir: File) {
    val manifest: Manifest = Manifest.parse(File(dir, "manifest.json").also {
        if (!it.isFile) throw ManifestException("${dir.path} has no manifest.json: not a vmoe-export bundle")
    }.readText())

    fun verifiedArtifact(graph: String): File {
        val entry = manifest.graphs[graph] ?: throw ManifestException("graph '$graph' is not in the manifest")
        val root = dir.canonicalFile
        val file = File(root, entry.path).canonicalFile
        if (!file.path.startsWith(root.path + File.separator)) throw ManifestException("manifest path '${entry.path}' escapes the bundle directory")
        if (!file.exists()) throw ManifestException("artifact ${entry.path} is missing")
        val actual = Sha256.of(file)
        if (actual != entry.sha256) throw ManifestException("artifact ${entry.path} fails its checksum: re-export the bundle")
        return file
    }

    fun expertBytes(expert: Int): Long = manifest.expertGraphs(expert).map { manifest.graphs.getValue(it).sizeBytes }.sum()
}

/** Same digest as vmoe_export.bundle.sha256_of: a file's bytes, or for a directory (.mlpackage)
 *  the sorted relative paths each followed by NUL and the file's hex digest. */
object Sha256 {
    fun of(file: File): String {
        if (!file.isDirectory) return fileHex(file)
        val md = MessageDigest.getInstance("SHA-256")
        file.walkTopDown().filter { it.isFile }.map { it.relativeTo(file).invariantSeparatorsPath to it }
            .sortedBy { it.first }.forEach { (rel, f) ->
                md.update(rel.toByteArray(Charsets.UTF_8) + byteArrayOf(0))
                md.update(fileHex(f).toByteArray(Charsets.UTF_8))
            }
        return hex(md.digest())
    }

    private fun fileHex(f: File): String {
        val md = MessageDigest.getInstance("SHA-256")
        f.inputStream().use { input ->
            val buf = ByteArray(1 shl 16)
            while (true) {
                val n = input.read(buf)
                if (n < 0) break
                md.update(buf, 0, n)
            }
        }
        return hex(md.digest())
    }

    private fun hex(b: ByteArray) = b.joinToString("") { String.format("%02x", it.toInt() and 0xff) }
}
