package dev.vmoe.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Assume.assumeTrue
import org.json.JSONObject
import org.junit.Test
import java.io.File

/** Runs against a real bundle exported by vmoe-export: -Dvmoe.bundle=DIR (its golden/golden.json). */
class CoreTest {
    private val bundleDir = File(System.getProperty("vmoe.bundle") ?: error("set -Dvmoe.bundle=<exported bundle dir>"))
    private val golden = Json.parse(File(bundleDir, "golden/golden.json").readText(), "golden")
    private val cases = golden.arr("cases", "golden").objects("cases")
    private val manifestText = File(bundleDir, "manifest.json").readText()
    private val manifest = Bundle(bundleDir).manifest
    /** The bundle the default export writes at k=1 is fused; the per-layer-only checks skip on it. */
    private val perLayer = manifest.steps.none { it is Step.ExpertPath }
    /** -Dvmoe.fusedBundle, or the main bundle when it is itself fused. */
    private val fusedBundleDir = System.getProperty("vmoe.fusedBundle").orEmpty().ifEmpty { if (perLayer) "" else bundleDir.path }

    @Test fun preprocessingMatchesToolkit() {
        for (c in cases) {
            val pixels = c.arr("pixels_u8", "case").ints("pixels", 0, 255).map { it.toByte() }.toByteArray()
            assertArrayEquals(c.arr("input", "case").floats("input"), Routing.preprocess(pixels, manifest.preprocessing), 1e-5f)
        }
    }

    /** A dark-background model's golden vectors end with an inverted copy of the first image (a photo-like
     *  dark object on light ground): the polarity rule must give back the first image's input exactly. */
    @Test fun polarityRuleInvertsPhotoLikeImagesBack() {
        val inverted = cases.filter { it.optBoolean("inverted", false) }
        assertEquals(if (manifest.preprocessing.polarity == "dark-background") 1 else 0, inverted.size)
        for (c in inverted) {
            val pixels = c.arr("pixels_u8", "case").ints("pixels", 0, 255).map { it.toByte() }.toByteArray()
            assertArrayEquals(cases[0].arr("input", "case").floats("input"), Routing.preprocess(pixels, manifest.preprocessing), 1e-5f)
        }
        val ring = ByteArray(9) { if (it == 4) 0 else 200.toByte() }  // 3x3, bright border, dark centre
        assertTrue(Routing.brightBorder(ring, 3, 1))
        assertEquals(false, Routing.brightBorder(ByteArray(9) { if (it == 4) 255.toByte() else 127 }, 3, 1))
        expectManifestError("preprocessing does not follow") {
            Manifest.parse(edited { it.getJSONObject("preprocessing").put("polarity", if (manifest.preprocessing.polarity == "as-is") "dark-background" else "as-is") })
        }
    }

    @Test fun expertSelectionAndGatesMatchToolkit() {
        for (c in cases) {
            val (ids, gates) = Routing.selectExperts(c.arr("router_logits", "case").floats("router_logits"), manifest.topK)
            assertArrayEquals(c.arr("experts", "case").ints("experts").toIntArray(), ids)
            assertArrayEquals(c.arr("gates", "case").floats("gates"), gates, 1e-6f)
        }
    }

    @Test fun gateMixingMatchesPyTorch() {
        assumeTrue("a fused bundle mixes inside its paths (golden.combine is null)", perLayer)
        val v = golden.obj("combine", "golden")
        val raw = v.arr("expert_outs", "combine")
        val outs = (0 until raw.length()).map { raw.getJSONArray(it).floats("expert_out") }
        val mixed = Routing.combine(v.arr("attention_out", "combine").floats("attention_out"), outs, v.arr("gates", "combine").floats("gates"))
        assertArrayEquals(v.arr("expected", "combine").floats("expected"), mixed, 1e-4f)
    }

    /** The routing rule's tie cases, shared with the Python and Swift tests: -Dvmoe.routingTies=FILE
     *  (tests/data/routing_ties.json in the vmoe-export repository; run_tests.sh passes it). */
    @Test fun tieBreaksToLowerExpertId() {
        assertArrayEquals(intArrayOf(1, 2), Routing.selectExperts(floatArrayOf(0f, 2f, 2f, 1f), 2).first)
        val path = System.getProperty("vmoe.routingTies") ?: ""
        assumeTrue("set -Dvmoe.routingTies to tests/data/routing_ties.json", path.isNotEmpty())
        val cases = Json.parse(File(path).readText(), "routing ties").arr("cases", "routing ties").objects("cases")
        assertTrue(cases.isNotEmpty())
        for (c in cases) {
            val got = Routing.selectExperts(c.arr("logits", "case").floats("logits"), c.int("k", "case", 1)).first
            assertArrayEquals(c.str("why", "case"), c.arr("experts", "case").ints("experts").toIntArray(), got)
        }
    }

    @Test fun everyArtifactVerifies() {
        val bundle = Bundle(bundleDir)
        val perImage = if (perLayer) 3 + manifest.moeLayers * (1 + manifest.numExperts) else manifest.sharedGraphs.size + manifest.numExperts
        assertEquals(perImage, manifest.graphs.size)
        assertEquals(manifest.graphs.keys, (manifest.sharedGraphs + (0 until manifest.numExperts).flatMap { manifest.expertGraphs(it) }).toSet())
        for (g in manifest.graphs.keys) assertTrue(bundle.verifiedArtifact(g).exists())
    }

    @Test fun tamperedArtifactIsRejected() {
        val copy = copyBundle()
        val expertGraph = manifest.expertGraphs(0)[0]
        val victim = File(copy, manifest.graphs.getValue(expertGraph).path)
        val bytes = victim.readBytes()
        bytes[bytes.size / 2] = (bytes[bytes.size / 2] + 1).toByte()
        victim.writeBytes(bytes)
        expectManifestError("fails its checksum") { Bundle(copy).verifiedArtifact(expertGraph) }
    }

    @Test fun missingExpertIsRejected() {
        val last = manifest.expertGraphs(manifest.numExperts - 1).last()
        expectManifestError("lacks graphs $last") { Manifest.parse(manifestText.replace("\"$last\":", "\"renamed\":")) }
    }

    /** The four one-field edits that printed a wrong class with exit 0 before manifests were cross-checked. */
    @Test fun wrongAnswerEditsAreRejected() {
        expectManifestError("model.moe_layers is 0") { Manifest.parse(edited { it.getJSONObject("model").put("moe_layers", 0) }) }
        expectManifestError("model.top_k is 2") { Manifest.parse(edited { it.getJSONObject("model").put("top_k", 2) }) }
        expectManifestError("preprocessing does not follow") {
            Manifest.parse(edited { it.getJSONObject("preprocessing").put("std", org.json.JSONArray(listOf(0.0))) })
        }
        val (e0, e2) = Pair(manifest.expertGraphs(0), manifest.expertGraphs(2))
        expectManifestError("graph ${e2[0]}") {
            Manifest.parse(edited { m -> val g = m.getJSONObject("graphs"); e0.zip(e2).forEach { (a, b) -> g.put(b, JSONObject(g.getJSONObject(a).toString())) } })
        }
    }

    @Test fun wrongTypesAreRejected() {
        expectManifestError("must be an integer") { Manifest.parse(edited { it.getJSONObject("model").getJSONObject("config").put("top_k", "1") }) }
        expectManifestError("must be an integer") { Manifest.parse(edited { it.getJSONObject("model").put("top_k", 1.5) }) }
        expectManifestError("between 1 and 256") { Manifest.parse(edited { it.getJSONObject("model").getJSONObject("config").put("num_experts", 1_000_000_000) }) }
        expectManifestError("unfinished export") { Manifest.parse(edited { it.remove("parity") }) }
        expectManifestError("nested too deeply") { Manifest.parse("{\"a\": " + "[".repeat(200_000) + "]".repeat(200_000) + "}") }
    }

    @Test fun pinnedDigestIsEnforced() {
        val digest = File(bundleDir, "manifest.sha256").readText().trim()
        assertEquals(digest, Bundle(bundleDir, digest).digest)
        expectManifestError("not the pinned") { Bundle(bundleDir, "0".repeat(64)) }
        val copy = copyBundle()
        File(copy, "manifest.json").writeText(manifestText.replace("\"created_at\"", "\"created_at\" "))
        expectManifestError("does not match manifest.sha256") { Bundle(copy) }
    }

    @Test fun escapingPathIsRejected() {
        val text = manifestText
        val path = manifest.graphs.getValue(manifest.expertGraphs(0)[0]).path
        for (evil in listOf("../../etc/passwd", "/etc/passwd", "experts/../../x")) {
            expectManifestError("escapes") { Manifest.parse(text.replace("\"$path\"", "\"$evil\"")) }
        }
    }

    /** The executor alone: stub graphs with known arithmetic, the real bundle's schedule. Checks the step
     *  order, that only routed experts load, and tokens = tokens_out + sum_j gate_j * expert_j(hidden). */
    @Test fun routedModelExecutesTheManifestSchedule() {
        assumeTrue("per-layer schedule (the fused one: fusedBundleRunsOnePathWithItsGate)", perLayer)
        val calls = ArrayList<String>()
        val expertOf = (0 until manifest.numExperts).flatMap { e -> manifest.expertGraphs(e).map { it to e } }.toMap()
        val routerLogits = FloatArray(manifest.numExperts) { if (it == 1) 3f else 0f }
        fun stub(f: (FloatArray) -> List<FloatArray>) = object : GraphRunner {
            override fun run(inputs: List<FloatArray>) = f(inputs[0])
        }
        val model = RoutedModel(Bundle(bundleDir), { g, _ ->
            val e = expertOf[g.name]
            stub { x ->
                calls.add(g.name)
                when {
                    e != null -> listOf(FloatArray(x.size) { x[it] * (e + 1) })
                    g.name == manifest.sharedGraphs.first() -> listOf(FloatArray(x.size) { x[it] + 1f })
                    g.outputs.any { it.name == "router_logits" } -> listOf(routerLogits)
                    g.outputs.size == 2 -> listOf(FloatArray(x.size) { 2 * x[it] }, x)
                    else -> listOf(x)
                }
            }
        })
        calls.clear()
        val result = model.classify(floatArrayOf(1f))
        val (ids, gates) = Routing.selectExperts(routerLogits, manifest.topK)
        assertArrayEquals(ids, result.experts)
        var x = 2f
        repeat(manifest.moeLayers) { x = 2 * x + ids.indices.map { j -> gates[j] * x * (ids[j] + 1) }.sum() }
        assertEquals(x, result.logits[0], 1e-4f)
        assertEquals(ids.toList(), model.experts.loaded)
        assertEquals(manifest.sharedGraphs.first(), calls.first())
        assertEquals(manifest.moeLayers * manifest.topK, calls.count { it in expertOf })
    }

    /** A fused (k=1) bundle of the same model (-Dvmoe.fusedBundle; fp32 with the router inside the trunk, or int8
     *  with the router a graph of its own): its schedule parses and checks, only the routed path loads, it gets the
     *  tokens and the gate, and an edited k is refused. */
    @Test fun fusedBundleRunsOnePathWithItsGate() {
        val fusedDir = fusedBundleDir
        assumeTrue("no fused bundle given (run_tests.sh BUNDLE FUSED_BUNDLE)", fusedDir.isNotEmpty())
        val dir = File(fusedDir)
        val fused = Bundle(dir).manifest
        assertEquals(manifest.numExperts, fused.numExperts)
        val routerLogits = FloatArray(fused.numExperts) { if (it == 2) 3f else 0f }
        val calls = ArrayList<String>()
        val model = RoutedModel(Bundle(dir), { g, _ ->
            object : GraphRunner {
                override fun run(inputs: List<FloatArray>): List<FloatArray> {
                    calls.add(g.name)
                    val x = inputs[0]
                    return when (g.role) {
                        "trunk" -> listOf(FloatArray(x.size) { x[it] + 1f }, routerLogits).take(g.outputs.size)
                        "router" -> listOf(routerLogits)
                        "expert" -> listOf(FloatArray(x.size) { x[it] + inputs[1][0] * (g.expert!! + 1) })
                        else -> listOf(x)
                    }
                }
            }
        })
        calls.clear()
        val result = model.classify(floatArrayOf(1f))
        val (_, gates) = Routing.selectExperts(routerLogits, 1)
        assertArrayEquals(intArrayOf(2), result.experts)
        assertEquals(2f + gates[0] * 3, result.logits[0], 1e-5f)
        assertEquals(fused.sharedGraphs.dropLast(1) + fused.expertGraphs(2).single() + fused.sharedGraphs.last(), calls)
        assertEquals(listOf(2), model.experts.loaded)
        val text = File(dir, "manifest.json").readText()
        val route = fused.steps.indexOfFirst { it is Step.Route }
        expectManifestError("does not match its model") {
            Manifest.parse(JSONObject(text).also { it.getJSONObject("schedule").getJSONArray("steps").getJSONObject(route).put("k", 2) }.toString())
        }
        expectManifestError("kind") { Manifest.parse(JSONObject(text).also { it.getJSONObject("schedule").put("kind", "grouped") }.toString()) }
    }

    /** The self-test on a fused bundle, with graphs that replay its golden stages (no runtime runs on a JVM): it
     *  passes; a coherent edit of the preprocessing (config and block, digest rewritten) is caught at the input; a
     *  runtime whose numbers drift is caught at the logits. */
    @Test fun selfTestCatchesEditedPreprocessingAndDriftingKernels() {
        val fusedDir = fusedBundleDir
        assumeTrue("no fused bundle given (run_tests.sh BUNDLE FUSED_BUNDLE)", fusedDir.isNotEmpty())
        val dir = File(fusedDir)
        assertTrue(SelfTest.run(replayModel(dir)).passed)
        // An fp32 bundle's golden logits are PyTorch's own; a quantized one's are its own, held against fp32 apart.
        val quantized = JSONObject(File(dir, "golden/golden.json").readText()).getJSONArray("cases").getJSONObject(0).has("reference")
        if (!quantized) assertTrue(SelfTest.require(replayModel(dir)).logitsSnrDb > 100)

        val copy = kotlin.io.path.createTempDirectory("vmoe-fused").toFile()
        dir.copyRecursively(copy, overwrite = true)
        val m = JSONObject(File(copy, "manifest.json").readText())
        m.getJSONObject("model").getJSONObject("config").put("std", org.json.JSONArray(listOf(0.5)))
        m.getJSONObject("preprocessing").put("std", org.json.JSONArray(listOf(0.5)))
        val bytes = m.toString().toByteArray(Charsets.UTF_8)
        File(copy, "manifest.json").writeBytes(bytes)
        File(copy, "manifest.sha256").writeText(Sha256.hex(java.security.MessageDigest.getInstance("SHA-256").digest(bytes)) + "\n")
        val edited = SelfTest.run(replayModel(copy))
        assertTrue(edited.failures.toString(), edited.failures.any { it.startsWith("stage input") })
        expectManifestError("self-test failed") { SelfTest.require(replayModel(copy)) }

        val drifting = SelfTest.run(replayModel(dir, logitsOffset = 0.5f))
        assertTrue(drifting.failures.toString(), drifting.failures.any { it.startsWith("stage logits") })
    }

    /** close() frees every graph the model loaded, shared and experts; a load that fails midway frees the graphs
     *  it had loaded; a closed model refuses to run. */
    @Test fun closeFreesEveryGraph() {
        val live = HashSet<String>()
        fun loader(failOn: String?): GraphLoader = { g, _ ->
            if (g.name == failOn) throw ManifestException("cannot load ${g.name}")
            live.add(g.name)
            object : GraphRunner {
                override fun run(inputs: List<FloatArray>) = listOf(inputs[0])
                override fun close() { live.remove(g.name) }
            }
        }
        val model = RoutedModel(Bundle(bundleDir), loader(null))
        for (e in 0 until manifest.numExperts) model.experts.get(e)
        assertEquals(manifest.graphs.size, live.size)
        model.close()
        model.close()
        assertEquals(emptySet<String>(), live)
        try {
            model.classify(floatArrayOf(0f))
            fail("a closed model ran")
        } catch (e: IllegalStateException) {
            assertTrue(e.message!!.contains("closed"))
        }
        expectManifestError("cannot load") { RoutedModel(Bundle(bundleDir), loader(manifest.sharedGraphs.last())) }
        assertEquals(emptySet<String>(), live)
        RoutedModel(Bundle(bundleDir), loader(manifest.expertGraphs(1).last())).use { m ->
            expectManifestError("cannot load") { m.experts.get(1) }
            assertEquals(manifest.sharedGraphs.toSet(), live)
        }
        assertEquals(emptySet<String>(), live)
    }

    /** The phone benchmark's report, produced by the same code the app runs (graphs replaying the fused bundle's
     *  golden stages stand in for a runtime): every field vmoe-bench reads is there. With -Dvmoe.benchOut=FILE it
     *  is written there, for tests/test_apps.py to parse with vmoe_export.bench.device. */
    @Test fun deviceBenchWritesItsReport() {
        val fusedDir = fusedBundleDir
        assumeTrue("no fused bundle given (run_tests.sh BUNDLE FUSED_BUNDLE)", fusedDir.isNotEmpty())
        val dir = File(fusedDir)
        val pss = MemoryProbe {
            File("/proc/self/smaps_rollup").takeIf { it.canRead() }?.readLines()
                ?.firstOrNull { it.startsWith("Pss:") }?.split(Regex("\\s+"))?.get(1)?.toLong() ?: 0L
        }
        var denseClosed = false
        val dense = {
            object : GraphRunner {
                override fun run(inputs: List<FloatArray>) = listOf(FloatArray(10))
                override fun close() { denseClosed = true }
            }
        }
        val inputs = Samples.golden(Bundle(dir)).map { it.input }
        val device = DeviceInfo("JVM", System.getProperty("java.vm.name"), System.getProperty("java.version"), 0,
            listOf(System.getProperty("os.arch")))
        val report = DeviceBench.run({ replayModel(dir) }, inputs, BenchSettings(warmup = 2, runs = 9, coldTrials = 2),
            device, pss, dense)
        assertTrue(denseClosed)
        assertEquals(DeviceBench.SCHEMA, report.getString("schema"))
        val split = report.getJSONObject("split")
        val fused = Bundle(dir).manifest
        assertEquals(9, split.getJSONObject("end_to_end").getInt("n"))
        assertEquals(2 * fused.numExperts, split.getJSONObject("expert_cold_load").getInt("n"))
        assertEquals(9, split.getJSONArray("routed_histogram").ints("h").sum())
        assertEquals(fused.numExperts, split.getJSONArray("expert_bytes").length())
        assertTrue(split.getDouble("self_test_ms") > 0)
        assertEquals("fused", report.getJSONObject("bundle").getString("schedule"))
        assertEquals(Bundle(dir).digest, report.getJSONObject("bundle").getString("digest"))
        assertEquals(9, report.getJSONObject("dense_twin").getInt("n"))
        assertEquals(setOf("before_open", "shared_graphs", "first_image", "all_experts"),
            report.getJSONObject("memory").getJSONObject("pss_kb").keySet())
        val out = System.getProperty("vmoe.benchOut").orEmpty().ifEmpty { File.createTempFile("vmoe-bench", ".json").path }
        DeviceBench.write(report, File(out))
        assertEquals(report.toString(), JSONObject(File(out).readText()).toString())
        assertEquals(listOf(File(out).name), File(out).absoluteFile.parentFile.list()!!.filter { it.contains(File(out).nameWithoutExtension) })
    }

    /** A RoutedModel over a fused bundle whose graphs return the golden stages of the case whose input they get
     *  (the trunk picks the case; a router graph of its own returns that case's router logits). */
    private fun replayModel(dir: File, logitsOffset: Float = 0f): RoutedModel {
        val bundle = Bundle(dir)
        val golden = JSONObject(File(dir, "golden/golden.json").readText())
        val all = golden.getJSONArray("cases").objects("cases")
        fun unpack(o: JSONObject): FloatArray {
            val b = java.nio.ByteBuffer.wrap(java.util.Base64.getDecoder().decode(o.getString("f32"))).order(java.nio.ByteOrder.LITTLE_ENDIAN)
            return FloatArray(b.remaining() / 4) { b.float }
        }
        var current = all[0]
        val last = "moe${bundle.manifest.moeLayers - 1}_out"
        return RoutedModel(bundle, { g, _ ->
            object : GraphRunner {
                override fun run(inputs: List<FloatArray>): List<FloatArray> = when (g.role) {
                    "trunk" -> {
                        current = all.minByOrNull { c -> c.arr("input", "case").floats("input").zip(inputs[0]).maxOfOrNull { (a, b) -> Math.abs(a - b) } ?: 0f }!!
                        listOf(unpack(current.getJSONObject("stages").getJSONObject("tokens")),
                            current.arr("router_logits", "case").floats("r")).take(g.outputs.size)
                    }
                    "router" -> listOf(current.arr("router_logits", "case").floats("r"))
                    "expert" -> listOf(unpack(current.getJSONObject("stages").getJSONObject(last)))
                    else -> listOf(current.arr("logits", "case").floats("logits").map { it + logitsOffset }.toFloatArray())
                }
            }
        })
    }

    @Test fun scheduleThatDisagreesWithTheModelIsRejected() {
        val route = manifest.steps.indexOfFirst { it is Step.Route }
        expectManifestError("does not match its model") {
            Manifest.parse(edited { it.getJSONObject("schedule").getJSONArray("steps").getJSONObject(route).put("k", manifest.topK + 1) })
        }
        expectManifestError("older vmoe-export") { Manifest.parse(edited { it.put("schema_version", 1) }) }
    }

    private fun edited(change: (JSONObject) -> Unit): String = JSONObject(manifestText).also(change).toString()

    @Test fun wrongSchemaIsRejected() {
        expectManifestError("not a vmoe-export manifest") { Manifest.parse("{\"schema\": \"other\"}") }
        expectManifestError("not valid JSON") { Manifest.parse("{\"schema\": ") }
    }

    @Test fun lruCacheRespectsCountAndBytes() {
        val byCount = ExpertCache<String>({ "e$it" }, { 10L }, maxExperts = 2)
        listOf(0, 1, 0, 2).forEach { byCount.get(it) }
        assertEquals(listOf(0, 2), byCount.loaded)  // 1 was least recently used
        assertEquals(3, byCount.loads)
        val sizes = mapOf(0 to 10L, 1 to 20L, 2 to 15L)
        val byBytes = ExpertCache<String>({ "e$it" }, { sizes.getValue(it) }, maxBytes = 35)
        listOf(0, 1, 2).forEach { byBytes.get(it); assertTrue(byBytes.residentBytes <= 35) }
        assertEquals(listOf(1, 2), byBytes.loaded)
        val pinned = ExpertCache<String>({ "e$it" }, { 10L }, maxExperts = 1)
        pinned.get(0)
        pinned.get(1, pinned = setOf(0, 1))  // both needed by one image: over budget rather than evict a needed one
        assertEquals(listOf(0, 1), pinned.loaded)
    }

    /** A fused bundle that keeps its expert paths' common weights in experts/shared.bin (the LiteRT one; its runtime
     *  maps the file itself): -Dvmoe.sharedBundle=DIR. The file is checked before each path that reads it. */
    @Test fun sharedWeightsAreCheckedBeforeEveryPathThatReadsThem() {
        val name = System.getProperty("vmoe.sharedBundle").orEmpty()
        assumeTrue("set -Dvmoe.sharedBundle to a fused bundle with shared weights (run_tests.sh's 4th argument)", name.isNotEmpty())
        val dir = File(name)
        val m = Bundle(dir).manifest
        val shared = m.sharedWeights ?: error("$dir has no shared_weights block")
        assertEquals((0 until m.numExperts).flatMap { m.expertGraphs(it) }, shared.graphs)
        val copy = copyBundle(dir)
        val bundle = Bundle(copy)
        for (g in m.graphs.keys) assertTrue(bundle.verifiedArtifact(g).exists())
        val data = File(copy, shared.path)
        val bytes = data.readBytes()
        bytes[bytes.size - 1] = (bytes[bytes.size - 1] + 1).toByte()
        data.writeBytes(bytes)
        expectManifestError("shared-weights file experts/shared.bin fails its checksum") { bundle.verifiedArtifact(shared.graphs[0]) }
        assertTrue(bundle.verifiedArtifact(m.sharedGraphs[0]).exists())  // the trunk does not read it
        data.delete()
        expectManifestError("experts/shared.bin is missing") { bundle.verifiedArtifact(shared.graphs.last()) }
        val text = File(dir, "manifest.json").readText()
        fun edit(change: (JSONObject) -> Unit) = Manifest.parse(JSONObject(text).also { change(it.getJSONObject("shared_weights")) }.toString())
        expectManifestError("is not experts/shared.bin") { edit { it.put("path", "../shared.bin") } }
        expectManifestError("only a fused bundle's expert paths") { edit { it.put("graphs", org.json.JSONArray(shared.graphs.drop(1))) } }
        expectManifestError("no valid sha256") { edit { it.put("sha256", "x") } }
    }

    private fun copyBundle(from: File = bundleDir): File {
        val dst = kotlin.io.path.createTempDirectory("vmoe-bundle").toFile()
        from.copyRecursively(dst, overwrite = true)
        return dst
    }

    private fun expectManifestError(fragment: String, block: () -> Unit) {
        try {
            block()
            fail("expected ManifestException containing '$fragment'")
        } catch (e: ManifestException) {
            assertTrue("'${e.message}' should contain '$fragment'", e.message!!.contains(fragment))
        }
    }
}
