package dev.vmoe.core

import org.json.JSONObject
import java.io.File
import java.security.MessageDigest

class ManifestException(message: String) : RuntimeException(message)

data class TensorSpec(val name: String, val shape: List<Int>)

data class GraphEntry(val name: String, val path: String, val sha256: String, val sizeBytes: Long, val role: String,
                      val layer: Int?, val expert: Int?, val inputs: List<TensorSpec>, val outputs: List<TensorSpec>)

/** polarity "dark-background": an image whose border ring is brighter than mid-grey is inverted first (Routing.preprocess). */
data class Preprocessing(val imageSize: Int, val channels: Int, val mean: FloatArray, val std: FloatArray, val polarity: String = "as-is")

val POLARITIES = setOf("as-is", "dark-background")

data class ExpertInfo(val id: Int, val superclass: List<String>, val graphs: List<String>, val sizeBytes: Long)

/** A fused bundle's weights every expert path holds alike, stored once in [path] (vmoe_export/shared_weights.py);
 *  the [graphs] that read it. LiteRT maps it itself, beside the path that names it, so it is checked before each
 *  of those graphs is handed out. */
data class SharedWeights(val path: String, val sha256: String, val sizeBytes: Long, val graphs: List<String>)

/** One step of the routed schedule stored in the manifest (vmoe_export/schedule.py). The app
 *  executes these steps; it never builds a graph name itself. */
sealed class Step {
    /** graph: inputs -> outputs (trunk, router, head). */
    data class Run(val graph: String, val role: String, val inputs: List<String>, val outputs: List<String>) : Step()
    /** experts = top-k of softmax(logits), gates = their probabilities. */
    data class Route(val logits: String, val k: Int) : Step()
    /** tokens_out, hidden = attention(tokens); tokens = tokens_out + sum_j gates[j] * experts[ids[j]](hidden). */
    data class MoELayer(val layer: Int, val attention: String, val experts: List<String>) : Step()
    /** The fused schedule (k=1): tokens = experts[ids[0]](tokens, gate = [gates[0]]), every MoE layer in one graph. */
    data class ExpertPath(val moeLayers: Int, val experts: List<String>) : Step()
}

val SCHEDULE_KINDS = setOf("per-layer", "fused")

/** The bundle's manifest.json, validated like vmoe_export/manifest.py: strict types and bounds, then every
 *  field that follows from the embedded model config cross-checked against it (E, L, k, the schedule, each
 *  graph's role, place and tensor shapes, preprocessing, the expert table, a completed parity). */
class Manifest(val target: String, val numExperts: Int, val moeLayers: Int, val topK: Int,
               val classNames: List<String>, val preprocessing: Preprocessing,
               val graphs: Map<String, GraphEntry>, val experts: List<ExpertInfo>, val steps: List<Step>,
               val golden: String = GOLDEN, val goldenSha256: String = "", val sharedWeights: SharedWeights? = null) {


    /** Graphs every image runs, loaded up front. */
    val sharedGraphs: List<String>
        get() = steps.flatMap { s -> when (s) { is Step.Run -> listOf(s.graph); is Step.MoELayer -> listOf(s.attention); else -> emptyList() } }

    /** Expert [expert]'s graphs (one per MoE layer, or its one fused path): loaded and evicted as one unit. */
    fun expertGraphs(expert: Int): List<String> = steps.flatMap { s ->
        when (s) { is Step.MoELayer -> listOf(s.experts[expert]); is Step.ExpertPath -> listOf(s.experts[expert]); else -> emptyList() }
    }

    companion object {
        const val SCHEMA = "vmoe-export/bundle"
        const val SCHEMA_VERSION = 3
        /** Every bundle's golden vectors, pinned by the manifest's golden_sha256 (vmoe_export/manifest.py). */
        const val GOLDEN = "golden/golden.json"
        /** Where a fused bundle stores its expert paths' common weights (vmoe_export/shared_weights.FILE). */
        const val SHARED_WEIGHTS = "experts/shared.bin"
        val SUFFIX = mapOf("executorch" to ".pte", "coreml" to ".mlpackage", "tflite" to ".tflite", "onnx" to ".onnx")

        fun parse(text: String): Manifest {
            val root = Json.parse(text, "manifest")
            if (root.opt("schema") != SCHEMA) throw ManifestException("not a vmoe-export manifest (schema is not '$SCHEMA')")
            val version = root.int("schema_version", "manifest")
            if (version < SCHEMA_VERSION) throw ManifestException("bundle written by an older vmoe-export (schema_version $version): re-export it")
            if (version != SCHEMA_VERSION) throw ManifestException("manifest schema_version $version, this app reads $SCHEMA_VERSION: update the app")
            val target = root.str("target", "manifest")
            val suffix = SUFFIX[target] ?: throw ManifestException("manifest target '$target' is not one of ${SUFFIX.keys}")

            // The model config is the source of truth; everything else must follow from it.
            val model = root.obj("model", "manifest")
            val cfg = model.obj("config", "model")
            val e = cfg.int("num_experts", "config", 1, 256)
            val l = cfg.int("moe_layers", "config", 1, 64)
            val k = cfg.int("top_k", "config", 1, e)
            val classes = cfg.int("num_classes", "config", 2, 100_000)
            val size = cfg.int("image_size", "config", 1, 4096)
            val chans = cfg.int("in_chans", "config", 1, 4)
            val patch = cfg.int("patch_size", "config", 1, size)
            val dim = cfg.int("embed_dim", "config", 1, 4096)
            val mean = cfg.arr("mean", "config").floats("config.mean")
            val std = cfg.arr("std", "config").floats("config.std")
            // Absent in bundles from before the rule existed: those are "as-is".
            val polarity = if (cfg.has("polarity")) cfg.str("polarity", "config") else "as-is"
            if (polarity !in POLARITIES) throw ManifestException("manifest model.config.polarity '$polarity' is not one of $POLARITIES: update the app")
            if (size % patch != 0 || mean.size != chans || std.size != chans || std.any { !(it > 0f) || it.isInfinite() } || mean.any { it.isNaN() || it.isInfinite() })
                throw ManifestException("manifest model.config is inconsistent (image/patch size, mean/std per channel, std > 0)")
            val patches = (size / patch) * (size / patch)
            for ((key, want) in listOf("num_experts" to e, "moe_layers" to l, "top_k" to k, "num_classes" to classes)) {
                val got = model.int(key, "model")
                if (got != want) throw ManifestException("manifest model.$key is $got but its config says $want: the manifest was edited; re-export the bundle")
            }
            val shapes = mapOf("images" to listOf(1, chans, size, size), "tokens" to listOf(1, patches, dim),
                "tokens_out" to listOf(1, patches, dim), "hidden" to listOf(1, patches, dim), "expert_out" to listOf(1, patches, dim),
                "router_logits" to listOf(1, e), "logits" to listOf(1, classes), "gate" to listOf(1, 1))

            val schedule = root.obj("schedule", "manifest")
            val kind = schedule.str("kind", "schedule")
            if (kind !in SCHEDULE_KINDS) throw ManifestException("manifest schedule kind '$kind' is not one of $SCHEDULE_KINDS: update the app")
            val steps = schedule.arr("steps", "schedule").objects("schedule.steps").map { step(it) }
            if (kind == "fused") checkFusedSchedule(steps, e, l, k) else checkSchedule(steps, e, l, k)
            // Every scheduled graph, with the role, layer, expert and tensors its place in the schedule implies.
            val expected = LinkedHashMap<String, Triple<String, Pair<Int?, Int?>, Pair<List<String>, List<String>>>>()
            for (s in steps) when (s) {
                is Step.Run -> expected[s.graph] = Triple(s.role, Pair(null, null), Pair(s.inputs, s.outputs))
                is Step.MoELayer -> {
                    expected[s.attention] = Triple("attention", Pair(s.layer, null), Pair(listOf("tokens"), listOf("tokens_out", "hidden")))
                    s.experts.forEachIndexed { x, g -> expected[g] = Triple("expert", Pair(s.layer, x), Pair(listOf("hidden"), listOf("expert_out"))) }
                }
                is Step.ExpertPath -> s.experts.forEachIndexed { x, g ->
                    expected[g] = Triple("expert", Pair(null, x), Pair(listOf("tokens", "gate"), listOf("tokens_out")))
                }
                is Step.Route -> {}
            }
            val rawGraphs = root.obj("graphs", "manifest")
            val names = rawGraphs.keys().asSequence().toSet()
            val missing = expected.keys.filter { it !in names }
            if (missing.isNotEmpty()) throw ManifestException("manifest lacks graphs ${missing.joinToString(", ")} (E=$e, L=$l)")
            if (names.size != expected.size) throw ManifestException("manifest lists graphs the schedule never runs: ${(names - expected.keys).sorted()}")
            val graphs = LinkedHashMap<String, GraphEntry>()
            val paths = HashSet<String>()
            for ((name, want) in expected) {
                val g = rawGraphs.obj(name, "graphs")
                val path = g.str("path", "graph $name")
                checkRelative(path)
                if (!path.endsWith(suffix) || !paths.add(path))
                    throw ManifestException("graph $name: path '$path' is shared with another graph or is not a $target artifact: re-export the bundle")
                val layer = if (g.isNull("layer")) null else g.int("layer", "graph $name")
                val expert = if (g.isNull("expert")) null else g.int("expert", "graph $name")
                val role = g.str("role", "graph $name")
                if (role != want.first || Pair(layer, expert) != want.second)
                    throw ManifestException("graph $name: role/layer/expert ($role, $layer, $expert) should be (${want.first}, ${want.second.first}, ${want.second.second})")
                val sha = g.str("sha256", "graph $name")
                if (!Regex("[0-9a-f]{64}").matches(sha)) throw ManifestException("graph $name has no valid sha256")
                val inputs = specs(g, "inputs", name)
                val outputs = specs(g, "outputs", name)
                val wantIo = want.third
                if (inputs != wantIo.first.map { TensorSpec(it, shapes.getValue(it)) } || outputs != wantIo.second.map { TensorSpec(it, shapes.getValue(it)) })
                    throw ManifestException("graph $name: inputs/outputs do not follow from the model config")
                graphs[name] = GraphEntry(name, path, sha, g.int("size_bytes", "graph $name", 1).toLong(), role, layer, expert, inputs, outputs)
            }

            val pre = root.obj("preprocessing", "manifest")
            val preMean = pre.arr("mean", "preprocessing").floats("preprocessing.mean")
            val preStd = pre.arr("std", "preprocessing").floats("preprocessing.std")
            if (pre.int("image_size", "preprocessing") != size || pre.int("channels", "preprocessing") != chans ||
                !preMean.contentEquals(mean) || !preStd.contentEquals(std) || pre.double("scale", "preprocessing") != 1.0 / 255 ||
                (if (pre.has("polarity")) pre.str("polarity", "preprocessing") else "as-is") != polarity)
                throw ManifestException("manifest preprocessing does not follow from the model config: the manifest was edited; re-export the bundle")
            val classNames = root.arr("class_names", "manifest").strings("class_names")
            if (classNames.size != classes || classNames.toSet().size != classes) throw ManifestException("manifest class_names must be $classes distinct names")
            val experts = root.arr("experts", "manifest").objects("experts").map {
                ExpertInfo(it.int("id", "expert"), it.arr("superclass", "expert").strings("superclass"),
                    it.arr("graphs", "expert").strings("expert graphs"), it.int("size_bytes", "expert").toLong())
            }
            if (root.opt("golden") != GOLDEN) throw ManifestException("manifest golden must be '$GOLDEN': re-export the bundle")
            val goldenSha = root.str("golden_sha256", "manifest")
            if (!Regex("[0-9a-f]{64}").matches(goldenSha)) throw ManifestException("manifest golden_sha256 is not a sha256")
            val manifest = Manifest(target, e, l, k, classNames, Preprocessing(size, chans, mean, std, polarity), graphs, experts, steps,
                GOLDEN, goldenSha, sharedWeights(root, steps))
            if (experts.size != e || experts.withIndex().any { (i, x) -> x.id != i || x.graphs != manifest.expertGraphs(i) })
                throw ManifestException("manifest experts table does not follow from the schedule")
            checkParity(root, graphs.size)
            return manifest
        }

        private fun step(s: JSONObject): Step = when (val op = s.str("op", "schedule step")) {
            "run" -> Step.Run(s.str("graph", "step"), s.str("role", "step"), s.arr("inputs", "step").strings("inputs"),
                s.arr("outputs", "step").strings("outputs"))
            "route" -> Step.Route(s.str("logits", "step"), s.int("k", "step", 1, 256))
            "moe_layer" -> Step.MoELayer(s.int("layer", "step", 0, 64), s.str("attention", "step"),
                s.arr("experts", "step").strings("experts"))
            "expert_path" -> Step.ExpertPath(s.int("moe_layers", "step", 1, 64), s.arr("experts", "step").strings("experts"))
            else -> throw ManifestException("unknown schedule step '$op': update the app")
        }

        /** trunk, router, route(k), L MoE layers of E experts each in order, head: the schedule export writes. */
        private fun checkSchedule(steps: List<Step>, e: Int, l: Int, k: Int) {
            val bad = ManifestException("manifest schedule does not match its model (E=$e, L=$l, k=$k): re-export the bundle")
            if (steps.size != 4 + l) throw bad
            val (trunk, router, route) = Triple(steps[0], steps[1], steps[2])
            val head = steps.last()
            if (trunk !is Step.Run || trunk.role != "trunk" || trunk.inputs != listOf("images") || trunk.outputs != listOf("tokens")) throw bad
            if (router !is Step.Run || router.role != "router" || router.inputs != listOf("tokens") || router.outputs != listOf("router_logits")) throw bad
            if (route !is Step.Route || route.k != k || route.logits != "router_logits") throw bad
            if (head !is Step.Run || head.role != "head" || head.inputs != listOf("tokens") || head.outputs != listOf("logits")) throw bad
            val moe = steps.subList(3, 3 + l)
            if (moe.withIndex().any { (i, s) -> s !is Step.MoELayer || s.layer != i || s.experts.size != e }) throw bad
            val names = listOf(trunk.graph, router.graph, head.graph) + moe.flatMap { (it as Step.MoELayer).let { m -> listOf(m.attention) + m.experts } }
            if (names.toSet().size != names.size) throw ManifestException("manifest schedule names one graph twice: re-export the bundle")
        }

        /** trunk (with the router as its second output, or followed by a router graph of its own where an int8
         *  bundle keeps the router fp32), route(k=1), one path per expert, head. */
        private fun checkFusedSchedule(steps: List<Step>, e: Int, l: Int, k: Int) {
            val bad = ManifestException("manifest schedule does not match its model (E=$e, L=$l, k=$k, fused): re-export the bundle")
            val apart = steps.size == 5
            if ((steps.size != 4 && !apart) || k != 1) throw bad
            val trunk = steps[0]
            val trunkOut = if (apart) listOf("tokens") else listOf("tokens", "router_logits")
            if (trunk !is Step.Run || trunk.role != "trunk" || trunk.inputs != listOf("images") || trunk.outputs != trunkOut) throw bad
            val router = if (apart) steps[1] else null
            if (router != null && (router !is Step.Run || router.role != "router" || router.inputs != listOf("tokens") ||
                    router.outputs != listOf("router_logits"))) throw bad
            val (route, path, head) = Triple(steps[steps.size - 3], steps[steps.size - 2], steps[steps.size - 1])
            if (route !is Step.Route || route.k != 1 || route.logits != "router_logits") throw bad
            if (path !is Step.ExpertPath || path.moeLayers != l || path.experts.size != e) throw bad
            if (head !is Step.Run || head.role != "head" || head.inputs != listOf("tokens") || head.outputs != listOf("logits")) throw bad
            val names = listOfNotNull(trunk.graph, (router as Step.Run?)?.graph, head.graph) + path.experts
            if (names.toSet().size != names.size) throw ManifestException("manifest schedule names one graph twice: re-export the bundle")
        }

        /** The optional shared_weights block: only a fused bundle's expert paths, all of them, read the one file. */
        private fun sharedWeights(root: JSONObject, steps: List<Step>): SharedWeights? {
            if (!root.has("shared_weights") || root.isNull("shared_weights")) return null
            val s = root.obj("shared_weights", "manifest")
            val path = s.str("path", "shared_weights")
            if (path != SHARED_WEIGHTS) throw ManifestException("manifest shared_weights.path '$path' is not $SHARED_WEIGHTS: re-export the bundle")
            val sha = s.str("sha256", "shared_weights")
            if (!Regex("[0-9a-f]{64}").matches(sha)) throw ManifestException("manifest shared_weights has no valid sha256")
            val graphs = s.arr("graphs", "shared_weights").strings("shared_weights.graphs")
            val paths = steps.filterIsInstance<Step.ExpertPath>().flatMap { it.experts }
            if (paths.isEmpty() || graphs != paths)
                throw ManifestException("manifest shared_weights names graphs $graphs, but only a fused bundle's expert paths ($paths) share weights: re-export the bundle")
            return SharedWeights(path, sha, s.int("size_bytes", "shared_weights", 1).toLong(), graphs)
        }

        private fun checkParity(root: JSONObject, graphCount: Int) {
            val parity = root.optJSONObject("parity")
                ?: throw ManifestException("the manifest has no parity result: an unfinished export, not a bundle; export it again")
            when (parity.opt("status")) {
                "pass" -> {}
                "skipped" -> if (parity.opt("spec_verified_graphs") != graphCount)
                    throw ManifestException("this bundle's parity was skipped without every graph spec-verified; export it again")
                else -> throw ManifestException("this bundle failed its parity check and was kept only for inspection; do not run it")
            }
        }

        private fun specs(g: JSONObject, key: String, graph: String): List<TensorSpec> =
            g.arr(key, "graph $graph").objects("graph $graph $key").map { t ->
                if (t.opt("dtype") != "float32") throw ManifestException("graph $graph: only float32 tensors are supported")
                TensorSpec(t.str("name", "tensor"), t.arr("shape", "tensor").ints("shape", 1))
            }

        /** Refuse absolute paths, backslashes and any '..' segment before touching the file system. */
        fun checkRelative(path: String) {
            if (path.isEmpty() || path.startsWith("/") || path.contains('\\') || path.split('/').any { it == ".." })
                throw ManifestException("manifest path '$path' escapes the bundle directory")
        }
    }
}

/** A bundle directory on disk. [expectedDigest], when given, pins the manifest: the sha256 of its exact bytes
 *  (what vmoe-export printed; the demo app is built with the digest of the bundle it embeds). Artifacts are
 *  resolved inside the bundle and their sha256 checked before use. */
class Bundle(val dir: File, expectedDigest: String? = null) {
    val digest: String
    val manifest: Manifest

    init {
        val file = File(dir, "manifest.json")
        if (!file.isFile) throw ManifestException("${dir.path} has no manifest.json: not a vmoe-export bundle")
        if (file.length() > 16L shl 20) throw ManifestException("${file.path} is too large to be a vmoe-export manifest")
        val bytes = file.readBytes()
        digest = Sha256.hex(MessageDigest.getInstance("SHA-256").digest(bytes))
        if (expectedDigest != null && digest != expectedDigest.trim().lowercase())
            throw ManifestException("manifest digest ${digest.take(16)}... is not the pinned ${expectedDigest.trim().take(16)}...: not the bundle this app was built with")
        val sidecar = File(dir, "manifest.sha256")
        if (sidecar.isFile && sidecar.readText().trim() != digest)
            throw ManifestException("manifest.json does not match manifest.sha256: the manifest was edited after export; re-export the bundle")
        manifest = Manifest.parse(String(bytes, Charsets.UTF_8))
    }

    /** A graph's artifact, inside the bundle and matching its sha256; for an expert path that reads the shared
     *  weights file, that file too, as the runtime will map it when it loads the path. */
    fun verifiedArtifact(graph: String): File {
        val entry = manifest.graphs[graph] ?: throw ManifestException("graph '$graph' is not in the manifest")
        manifest.sharedWeights?.takeIf { graph in it.graphs }?.let { verified(it.path, it.sha256, "shared-weights file") }
        return verified(entry.path, entry.sha256, "artifact")
    }

    private fun verified(path: String, sha256: String, what: String): File {
        val root = dir.canonicalFile
        val file = File(root, path).canonicalFile
        if (!file.path.startsWith(root.path + File.separator)) throw ManifestException("manifest path '$path' escapes the bundle directory")
        if (!file.exists()) throw ManifestException("$what $path is missing")
        if (Sha256.of(file) != sha256) throw ManifestException("$what $path fails its checksum: re-export the bundle")
        return file
    }

    fun expertBytes(expert: Int): Long = manifest.expertGraphs(expert).map { manifest.graphs.getValue(it).sizeBytes }.sum()

    /** golden/golden.json, after its sha256 matches the manifest's golden_sha256 (so a pinned digest pins it too). */
    fun golden(): JSONObject {
        val file = File(dir, manifest.golden)
        if (!file.isFile) throw ManifestException("${manifest.golden} is missing from the bundle: copy the whole bundle directory or re-export it")
        if (file.length() > 256L shl 20) throw ManifestException("${file.path} is too large to be a vmoe-export golden file")
        if (Sha256.of(file) != manifest.goldenSha256) throw ManifestException("${manifest.golden} fails its checksum: re-export the bundle")
        return Json.parse(file.readText(), "golden")
    }
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

    fun hex(b: ByteArray) = b.joinToString("") { String.format("%02x", it.toInt() and 0xff) }
}
