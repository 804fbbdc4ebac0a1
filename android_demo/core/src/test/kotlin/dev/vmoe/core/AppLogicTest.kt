package dev.vmoe.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File

/** The app logic moved out of the Android sources: statistics, pins, sample inputs and pixel arithmetic. */
class AppLogicTest {
    private val bundleDir = File(System.getProperty("vmoe.bundle") ?: error("set -Dvmoe.bundle=<exported bundle dir>"))

    /** The same numbers NumPy gives (np.median, np.percentile(..., 90), mean) for vmoe-bench's reports. */
    @Test fun statsMatchNumPy() {
        val s = Stats.summarize(listOf(4.0, 1.0, 3.0, 2.0))
        assertEquals(2.5, s.medianMs, 1e-12)
        assertEquals(3.7, s.p90Ms, 1e-12)
        assertEquals(2.5, s.meanMs, 1e-12)
        assertEquals(4, s.n)
        assertEquals(setOf("median_ms", "p90_ms", "mean_ms", "n"), s.toJson().keySet())
        assertEquals(7.0, Stats.percentile(listOf(7.0), 90.0), 0.0)
        expectFailure<IllegalArgumentException>("no values") { Stats.summarize(emptyList()) }
    }

    @Test fun pinsParseAndChooseATarget() {
        val a = "a".repeat(64)
        val pins = BundlePins.parse("tflite=$a, executorch=${"B".repeat(64)}")
        assertEquals(mapOf("tflite" to a, "executorch" to "b".repeat(64)), pins)
        assertEquals(emptyMap<String, String>(), BundlePins.parse(""))
        expectFailure<ManifestException>("not target=") { BundlePins.parse("executorch=1234") }
        expectFailure<ManifestException>("assets/bundles/onnx") { BundlePins.require(pins, "onnx") }
        assertEquals(listOf("executorch", "tflite"), BundlePins.runnable(listOf("onnx", "tflite", "executorch", "coreml")))
        assertEquals("tflite", BundlePins.defaultTarget(listOf("tflite", "onnx")))
        assertEquals(null, BundlePins.defaultTarget(listOf("coreml")))
    }

    @Test fun samplesAreTheGoldenInputs() {
        val bundle = Bundle(bundleDir)
        val samples = Samples.golden(bundle)
        val cases = Json.parse(File(bundleDir, "golden/golden.json").readText(), "golden").arr("cases", "golden").objects("cases")
        assertEquals(cases.size, samples.size)
        samples.zip(cases).forEach { (s, c) ->
            assertEquals(c.int("label", "case"), s.label)
            assertArrayEquals(c.arr("input", "case").floats("input"), s.input, 1e-5f)
        }
    }

    /** Crop geometry of vmoe_export.preprocess.load_image, Python's round() (halves to even) included. */
    @Test fun centreCropMatchesTheToolkit() {
        assertEquals(Pixels.Crop(37, 28, 4, 0, 28), Pixels.centreCrop(640, 480, 28))
        assertEquals(Pixels.Crop(28, 37, 0, 4, 28), Pixels.centreCrop(480, 640, 28))
        assertEquals(Pixels.Crop(2, 1, 0, 0, 1), Pixels.centreCrop(5, 2, 1))  // round(2.5) == 2
        assertEquals(Pixels.Crop(2, 1, 0, 0, 1), Pixels.centreCrop(3, 2, 1))  // round(1.5) == 2
        assertEquals(Pixels.Crop(224, 224, 0, 0, 224), Pixels.centreCrop(10, 10, 224))
        expectFailure<IllegalArgumentException>("empty") { Pixels.centreCrop(0, 10, 28) }
    }

    /** PIL's RGB -> "L" values, read from Pillow for these colours. */
    @Test fun grayscaleIsPilsLuma() {
        val expected = mapOf(Triple(255, 0, 0) to 76, Triple(0, 255, 0) to 150, Triple(0, 0, 255) to 29,
            Triple(12, 200, 99) to 132, Triple(255, 255, 255) to 255, Triple(128, 64, 32) to 79)
        for ((rgb, l) in expected) assertEquals("$rgb", l, Pixels.luma(rgb.first, rgb.second, rgb.third))
        val argb = expected.keys.map { (r, g, b) -> (0xff shl 24) or (r shl 16) or (g shl 8) or b }.toIntArray()
        assertArrayEquals(expected.values.map { it.toByte() }.toByteArray(), Pixels.channelBytes(argb, 1))
        val planar = Pixels.channelBytes(intArrayOf(0xff102030.toInt(), 0xff405060.toInt()), 3)
        assertArrayEquals(byteArrayOf(0x10, 0x40, 0x20, 0x50, 0x30, 0x60), planar)
    }

    /** Gray pixels through the app's path (ARGB -> channel bytes -> preprocessing) give the golden input. */
    @Test fun argbPathReproducesGoldenInputs() {
        val bundle = Bundle(bundleDir)
        val pre = bundle.manifest.preprocessing
        for (s in Samples.golden(bundle).filter { pre.channels == 1 }) {
            val argb = s.pixels.map { val v = it.toInt() and 0xff; (0xff shl 24) or (v shl 16) or (v shl 8) or v }.toIntArray()
            assertArrayEquals(s.input, Routing.preprocess(Pixels.channelBytes(argb, 1), pre), 1e-6f)
        }
    }

    /** Every EXIF orientation against its definition on a 3x2 image (values are their own row-major index). */
    @Test fun exifOrientationIsApplied() {
        val w = 3
        val h = 2
        val px = IntArray(w * h) { it }
        fun at(img: Pixels.Image, r: Int, c: Int) = img.argb[r * img.width + c]
        fun src(r: Int, c: Int) = r * w + c
        val cases: Map<Int, (Int, Int) -> Int> = mapOf(  // output (row, col) -> source pixel
            1 to { r, c -> src(r, c) },
            2 to { r, c -> src(r, w - 1 - c) },
            3 to { r, c -> src(h - 1 - r, w - 1 - c) },
            4 to { r, c -> src(h - 1 - r, c) },
            5 to { r, c -> src(c, r) },                  // transpose
            6 to { r, c -> src(h - 1 - c, r) },          // rotate 90 clockwise
            7 to { r, c -> src(h - 1 - c, w - 1 - r) },  // transverse
            8 to { r, c -> src(c, w - 1 - r) })          // rotate 270 clockwise
        for ((o, expected) in cases) {
            val img = Pixels.orient(px, w, h, o)
            val (ew, eh) = if (o >= 5) h to w else w to h
            assertEquals("orientation $o width", ew, img.width)
            assertEquals("orientation $o height", eh, img.height)
            for (r in 0 until img.height) for (c in 0 until img.width) assertEquals("orientation $o at ($r,$c)", expected(r, c), at(img, r, c))
        }
        assertArrayEquals(px, Pixels.orient(px, w, h, 0).argb)  // unknown tag: as stored
    }

    private inline fun <reified T : Throwable> expectFailure(fragment: String, block: () -> Unit) {
        try {
            block()
            fail("expected ${T::class.simpleName} containing '$fragment'")
        } catch (e: Throwable) {
            if (e !is T) throw e
            assertTrue("'${e.message}' should contain '$fragment'", e.message!!.contains(fragment))
        }
    }
}
