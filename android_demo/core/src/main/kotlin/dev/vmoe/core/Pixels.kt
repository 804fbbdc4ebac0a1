package dev.vmoe.core

/** Image-to-tensor steps on raw pixel arrays, the platform-neutral half of turning a photo into model input
 *  (the app decodes and resamples with Android's Bitmap; everything here is plain arithmetic, tested on a JVM).
 *  Mirrors vmoe_export.preprocess.load_image: shorter side to the model size, centre crop, then grayscale by
 *  PIL's "L" rule or planar RGB. */
object Pixels {
    /** Where to scale a [width] x [height] image and which [size] x [size] window to keep. */
    data class Crop(val scaledWidth: Int, val scaledHeight: Int, val left: Int, val top: Int, val size: Int)

    fun centreCrop(width: Int, height: Int, size: Int): Crop {
        require(width >= 1 && height >= 1 && size >= 1) { "image $width x $height (model size $size) is empty" }
        val scale = size.toDouble() / minOf(width, height)
        val w = maxOf(size, roundHalfEven(width * scale))
        val h = maxOf(size, roundHalfEven(height * scale))
        return Crop(w, h, (w - size) / 2, (h - size) / 2, size)
    }

    /** Python's round(): halves go to the even neighbour, so the crop window matches the toolkit's exactly. */
    fun roundHalfEven(x: Double): Int = Math.rint(x).toInt()

    /** Packed ARGB pixels (android.graphics.Bitmap.getPixels) -> uint8 channel planes (C,H,W) for [channels]. */
    fun channelBytes(argb: IntArray, channels: Int): ByteArray {
        require(channels == 1 || channels == 3) { "channels must be 1 or 3, not $channels" }
        val n = argb.size
        val out = ByteArray(channels * n)
        for (i in 0 until n) {
            val r = (argb[i] shr 16) and 0xff
            val g = (argb[i] shr 8) and 0xff
            val b = argb[i] and 0xff
            if (channels == 1) {
                out[i] = luma(r, g, b).toByte()
            } else {
                out[i] = r.toByte(); out[n + i] = g.toByte(); out[2 * n + i] = b.toByte()
            }
        }
        return out
    }

    /** PIL's RGB -> "L" conversion (ITU-R 601-2 luma in 16-bit fixed point, rounded), bit for bit. */
    fun luma(r: Int, g: Int, b: Int): Int = (r * 19595 + g * 38470 + b * 7471 + 0x8000) shr 16

    /** EXIF orientation tag (1..8) -> clockwise degrees to rotate after mirroring horizontally (when the flag is
     *  set), the order android.media.ExifInterface and the EXIF spec describe. Unknown values mean "as stored". */
    fun exifTransform(orientation: Int): Pair<Int, Boolean> = when (orientation) {
        2 -> 0 to true
        3 -> 180 to false
        4 -> 180 to true
        5 -> 270 to true  // transpose
        6 -> 90 to false
        7 -> 90 to true   // transverse
        8 -> 270 to false
        else -> 0 to false
    }

    class Image(val argb: IntArray, val width: Int, val height: Int)

    /** Applies the EXIF [orientation] to row-major [argb] pixels, so a phone photo is classified the way it is
     *  shown (a portrait photo is stored sideways with orientation 6). */
    fun orient(argb: IntArray, width: Int, height: Int, orientation: Int): Image {
        require(argb.size == width * height) { "${argb.size} pixels are not $width x $height" }
        val (degrees, mirror) = exifTransform(orientation)
        val src = if (!mirror) argb else IntArray(argb.size) { i -> argb[(i / width) * width + (width - 1 - i % width)] }
        if (degrees == 0) return Image(src, width, height)
        val (w, h) = if (degrees == 180) width to height else height to width
        val out = IntArray(argb.size)
        for (r in 0 until height) for (c in 0 until width) {
            val (r2, c2) = when (degrees) {
                90 -> c to (height - 1 - r)
                180 -> (height - 1 - r) to (width - 1 - c)
                else -> (width - 1 - c) to r
            }
            out[r2 * w + c2] = src[r * width + c]
        }
        return Image(out, w, h)
    }
}
