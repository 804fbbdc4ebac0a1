package dev.vmoe.demo

import android.content.Context
import dev.vmoe.core.Bundle
import java.io.File

/** Copies the bundles embedded under assets/bundles/<target>/ to app storage (the runtimes load from
 *  file paths), then opens them with the core's manifest validation, checksums and the digest pinned
 *  at build time (BuildConfig.BUNDLE_DIGESTS, read from each bundle's manifest.sha256). */
object BundleStore {
    fun targets(context: Context): List<String> = context.assets.list("bundles")?.sorted() ?: emptyList()

    private val pins: Map<String, String> = BuildConfig.BUNDLE_DIGESTS.split(",").filter { it.contains("=") }
        .associate { it.substringBefore("=") to it.substringAfter("=") }

    fun open(context: Context, target: String): Bundle {
        val pin = pins[target] ?: throw IllegalStateException("bundle $target has no manifest.sha256 pinned at build time: rebuild the app")
        val dst = File(context.filesDir, "bundles/$target")
        val installed = File(dst, "manifest.sha256").takeIf { it.isFile }?.readText()?.trim()
        if (installed != pin) {  // first start, or the app now embeds another export: install it again
            val tmp = File(context.filesDir, "bundles/.$target.partial").apply { deleteRecursively() }
            copyAssetDir(context, "bundles/$target", tmp)
            dst.deleteRecursively()
            if (!tmp.renameTo(dst)) throw IllegalStateException("cannot install bundle $target")
        }
        return Bundle(dst, pin)
    }

    private fun copyAssetDir(context: Context, path: String, dst: File) {
        val children = context.assets.list(path) ?: emptyArray()
        if (children.isEmpty()) {
            dst.parentFile?.mkdirs()
            context.assets.open(path).use { input -> dst.outputStream().use { input.copyTo(it) } }
            return
        }
        dst.mkdirs()
        for (child in children) copyAssetDir(context, "$path/$child", File(dst, child))
    }
}
