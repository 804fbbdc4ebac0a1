package dev.vmoe.demo

import android.content.Context
import dev.vmoe.core.Bundle
import dev.vmoe.core.BundlePins
import java.io.File

/** Copies the bundles embedded under assets/bundles/<target>/ to app storage (the runtimes load from file
 *  paths), then opens them with the core's manifest validation, checksums and the digest pinned at build time
 *  (BuildConfig.BUNDLE_DIGESTS, read from each bundle's manifest.sha256). Call off the main thread: the first
 *  open copies and hashes the whole bundle. */
object BundleStore {
    private val pins: Map<String, String> by lazy { BundlePins.parse(BuildConfig.BUNDLE_DIGESTS) }

    /** Embedded bundles this app can run, preferred first. */
    fun targets(context: Context): List<String> = BundlePins.runnable(context.assets.list("bundles")?.toList() ?: emptyList())

    fun open(context: Context, target: String): Bundle {
        val pin = BundlePins.require(pins, target)
        val dst = File(context.filesDir, "bundles/$target")
        val installed = File(dst, "manifest.sha256").takeIf { it.isFile }?.readText()?.trim()
        if (installed != pin) {  // first start, or the app now embeds another export: install it again
            val tmp = File(context.filesDir, "bundles/.$target.partial").apply { deleteRecursively() }
            copyAssetDir(context, "bundles/$target", tmp)
            dst.deleteRecursively()
            if (!tmp.renameTo(dst)) throw IllegalStateException("cannot install bundle $target into ${dst.path}")
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
