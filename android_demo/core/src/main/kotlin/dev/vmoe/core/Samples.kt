package dev.vmoe.core

/** One of the golden test images every bundle carries: its label, raw pixels (uint8 C,H,W) and model input. */
class Sample(val label: Int, val pixels: ByteArray, val input: FloatArray)

object Samples {
    /** The bundle's golden images (checksum-verified), preprocessed on this device as a photo would be. */
    fun golden(bundle: Bundle): List<Sample> =
        bundle.golden().arr("cases", "golden").objects("golden.cases").map { c ->
            val px = pixels(c)
            Sample(c.int("label", "case"), px, Routing.preprocess(px, bundle.manifest.preprocessing))
        }

    /** One golden case's raw pixels, each checked to be a byte value. */
    fun pixels(case: org.json.JSONObject): ByteArray =
        case.arr("pixels_u8", "case").ints("pixels_u8", 0, 255).map { it.toByte() }.toByteArray()
}
