package dev.vmoe.core

import java.io.File
import java.security.MessageDigest

class ManifestException(message: String) : RuntimeException(message)

data class TensorSpec(val name: String, val shape: List<Int>)

data class GraphEntry(val name: String, val path: String, val sha256: String, val sizeBytes: Long,
                      val inputs: List<TensorSpec>, val outputs: List<TensorSpec>)

data class Preprocessing(val imageSize: Int, val channels: Int, val mean: FloatArray, val std: FloatArray)

data class ExpertInfo(val id: Int, val superclass: List<String>, val graphs: List<String>, val sizeBytes: Long)

/** The bundle's manifest.json, validated like vmoe_export.bundle: schema, required graphs, paths inside the bundle. */
class Manifest(val target: String, val numExperts: Int, val moeLayers: Int, val topK: Int,
               val classNames: List<String>, val preprocessing: Preprocessing,
               val graphs: Map<String, GraphEntry>, val experts: List<ExpertInfo>) {

    val sharedGraphs: List<String>
        get() = listOf("trunk", "router") + (0 until moeLayers).map { "moe${it}_attn" } + listOf("head")

    fun expertGraph(layer: Int, expert: Int) = "moe${layer}_e$expert"

    companion object {
        const val SCHEMA = "vmoe-export/bundle"
        const val SCHEMA_VERSION = 1

        fun parse(text: String): Manifest {
            val root = try { Json.parse(text) } catch (e: JsonException) { throw ManifestException("manifest is not valid JSON: ${e.message}") }
                .obj("manifest")
            if (root["schema"] != SCHEMA) throw ManifestException("not a vmoe-export manifest (schema is not '$SCHEMA')")
            if (root["schema_version"].int("schema_version") != SCHEMA_VERSION)
                throw ManifestException("manifest schema_version ${root["schema_version"]}, this app reads $SCHEMA_VERSION")
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
            val required = listOf("trunk", "router", "head") + (0 until l).map { "moe${it}_attn" } +
                (0 until l).flatMap { layer -> (0 until e).map { "moe${layer}_e$it" } }
            val missing = required.filter { it !in graphs }
            if (missing.isNotEmpty()) throw ManifestException("manifest lacks graphs ${missing.joinToString(", ")} (E=$e, L=$l)")
            val experts = root["experts"].list("experts").map {
                val x = it.obj("expert")
                ExpertInfo(x["id"].int("expert id"), x["superclass"].list("superclass").map { s -> s.str("class") },
                    x["graphs"].list("expert graphs").map { s -> s.str("graph") }, (x["size_bytes"] as? Double)?.toLong() ?: 0L)
            }
            return Manifest(root["target"].str("target"), e, l, k, root["class_names"].list("class_names").map { it.str("class") },
                Preprocessing(pre["image_size"].int("image_size"), pre["channels"].int("channels"),
                    pre["mean"].floats("mean"), pre["std"].floats("std")), graphs, experts)
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

    fun expertBytes(expert: Int): Long = (0 until manifest.moeLayers).map { manifest.graphs.getValue(manifest.expertGraph(it, expert)).sizeBytes }.sum()
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
