package dev.vmoe.core

/** The manifest digests an app was built with ("target=sha256,target=sha256", the build's BUNDLE_DIGESTS
 *  field), and which embedded bundle the app opens first. */
object BundlePins {
    /** Backends this app runs, in the order it prefers them. */
    val SUPPORTED = listOf("executorch", "tflite")

    fun parse(pins: String): Map<String, String> = pins.split(",").map { it.trim() }.filter { it.isNotEmpty() }.associate {
        val target = it.substringBefore("=", "")
        val digest = it.substringAfter("=", "").lowercase()
        if (target.isEmpty() || !digest.matches(Regex("[0-9a-f]{64}")))
            throw ManifestException("bundle pin '$it' is not target=<64 hex sha256>: rebuild the app (the build reads each bundle's manifest.sha256)")
        target to digest
    }

    /** The pin for [target], or an error naming the fix. */
    fun require(pins: Map<String, String>, target: String): String = pins[target]
        ?: throw ManifestException("bundle $target has no manifest.sha256 pinned at build time: copy the whole bundle " +
            "(manifest.sha256 included) to assets/bundles/$target and rebuild the app")

    /** Embedded bundles this app can run, preferred first; bundles of other backends (onnx, coreml) are left out. */
    fun runnable(embedded: List<String>): List<String> = SUPPORTED.filter { it in embedded }

    fun defaultTarget(embedded: List<String>): String? = runnable(embedded).firstOrNull()
}
