package dev.vmoe.demo

import android.content.Context
import dev.vmoe.core.Bundle
import java.io.File

/** Copies the bundles embedded under assets/bundles/<target>/ to app storage once (the runtimes
 *  load from file paths), then opens them with the core's manifest validation and checksums. */
object BundleStore {
    fun targets(context: Context): List<String> = context.assets.list("bundles")?.sorted() ?: emptyList()

    fun open(context: Context, target: String): Bundle {
        val dst = File(context.filesDir, "bundles/$target")
        if (!File(dst, "manifest.json").exists()) {
            val tmp = File(context.filesDir, "bundles/.$target.partial").apply { deleteRecursively() }
            copyAssetDir(context, "bundles/$target", tmp)
            dst.deleteRecursively()
            if (!tmp.renameTo(dst)) throw IllegalStateException("cannot install bundle $target")
        }
        return Bundle(dst)
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
