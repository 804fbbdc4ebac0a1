package dev.vmoe.core

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject

/** Strict reads on org.json (built into Android; Debian's libandroid-json-java on a JVM). org.json's own
 *  getInt turns "1" and 1.5 into 1; these refuse anything but the JSON type the manifest schema names. */
object Json {
    fun parse(text: String, what: String): JSONObject = try {
        JSONObject(text)
    } catch (e: JSONException) {
        throw ManifestException("$what is not valid JSON: ${e.message}")
    } catch (e: StackOverflowError) {
        throw ManifestException("$what is nested too deeply to be a vmoe-export file")
    }
}

fun JSONObject.field(key: String, what: String): Any =
    opt(key)?.takeIf { it != JSONObject.NULL } ?: throw ManifestException("$what.$key is missing")

fun JSONObject.obj(key: String, what: String): JSONObject =
    field(key, what) as? JSONObject ?: throw ManifestException("$what.$key must be a JSON object")

fun JSONObject.arr(key: String, what: String): JSONArray =
    field(key, what) as? JSONArray ?: throw ManifestException("$what.$key must be a JSON array")

fun JSONObject.str(key: String, what: String): String =
    field(key, what) as? String ?: throw ManifestException("$what.$key must be a string")

/** An integer within [lo, hi]: a JSON number without a fraction, not a string, not 1.0. */
fun JSONObject.int(key: String, what: String, lo: Int = 0, hi: Int = Int.MAX_VALUE): Int =
    checkInt(field(key, what), "$what.$key", lo, hi)

fun JSONObject.double(key: String, what: String): Double {
    val v = field(key, what)
    if (v !is Number) throw ManifestException("$what.$key must be a number")
    return v.toDouble()
}

fun checkInt(v: Any?, what: String, lo: Int = 0, hi: Int = Int.MAX_VALUE): Int {
    if (v !is Int && v !is Long) throw ManifestException("$what must be an integer, got $v")
    val n = (v as Number).toLong()
    if (n < lo || n > hi) throw ManifestException("$what $n must be between $lo and $hi")
    return n.toInt()
}

fun JSONArray.strings(what: String): List<String> =
    (0 until length()).map { opt(it) as? String ?: throw ManifestException("$what must hold strings") }

fun JSONArray.ints(what: String, lo: Int = Int.MIN_VALUE, hi: Int = Int.MAX_VALUE): List<Int> =
    (0 until length()).map { checkInt(opt(it), what, lo, hi) }

fun JSONArray.floats(what: String): FloatArray =
    (0 until length()).map { (opt(it) as? Number ?: throw ManifestException("$what must hold numbers")).toFloat() }.toFloatArray()

fun JSONArray.objects(what: String): List<JSONObject> =
    (0 until length()).map { opt(it) as? JSONObject ?: throw ManifestException("$what must hold objects") }
