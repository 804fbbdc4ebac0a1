package dev.vmoe.core

/** A small strict JSON reader (objects -> Map, arrays -> List, numbers -> Double), so the core has
 *  no dependency beyond the Kotlin stdlib and runs unchanged on Android and on a plain JVM. */
class JsonException(message: String) : RuntimeException(message)

object Json {
    fun parse(text: String): Any? {
        val p = Parser(text)
        val value = p.value()
        p.skipWs()
        if (!p.atEnd()) throw JsonException("trailing characters at ${p.pos}")
        return value
    }

    private class Parser(val s: String) {
        var pos = 0
        fun atEnd() = pos >= s.length
        fun skipWs() { while (!atEnd() && s[pos].isWhitespace()) pos++ }
        fun expect(c: Char) {
            skipWs()
            if (atEnd() || s[pos] != c) throw JsonException("expected '$c' at $pos")
            pos++
        }

        fun value(): Any? {
            skipWs()
            if (atEnd()) throw JsonException("unexpected end of JSON")
            return when (s[pos]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> num()
            }
        }

        fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, pos)) throw JsonException("bad literal at $pos")
            pos += word.length
            return v
        }

        fun obj(): Map<String, Any?> {
            expect('{')
            val out = LinkedHashMap<String, Any?>()
            skipWs()
            if (s[pos] == '}') { pos++; return out }
            while (true) {
                skipWs()
                val key = str()
                expect(':')
                out[key] = value()
                skipWs()
                if (atEnd()) throw JsonException("unterminated object")
                if (s[pos] == ',') { pos++; continue }
                expect('}')
                return out
            }
        }

        fun arr(): List<Any?> {
            expect('[')
            val out = ArrayList<Any?>()
            skipWs()
            if (s[pos] == ']') { pos++; return out }
            while (true) {
                out.add(value())
                skipWs()
                if (atEnd()) throw JsonException("unterminated array")
                if (s[pos] == ',') { pos++; continue }
                expect(']')
                return out
            }
        }

        fun str(): String {
            if (atEnd() || s[pos] != '"') throw JsonException("expected string at $pos")
            pos++
            val sb = StringBuilder()
            while (true) {
                if (atEnd()) throw JsonException("unterminated string")
                val c = s[pos++]
                when (c) {
                    '"' -> return sb.toString()
                    '\\' -> {
                        val e = s[pos++]
                        when (e) {
                            'n' -> sb.append('\n'); 't' -> sb.append('\t'); 'r' -> sb.append('\r')
                            'b' -> sb.append('\b'); 'f' -> sb.append('\u000C')
                            'u' -> { sb.append(s.substring(pos, pos + 4).toInt(16).toChar()); pos += 4 }
                            else -> sb.append(e)
                        }
                    }
                    else -> sb.append(c)
                }
            }
        }

        fun num(): Double {
            val start = pos
            while (!atEnd() && (s[pos].isDigit() || s[pos] in "+-.eE")) pos++
            return s.substring(start, pos).toDoubleOrNull() ?: throw JsonException("bad number at $start")
        }
    }
}

@Suppress("UNCHECKED_CAST")
fun Any?.obj(what: String): Map<String, Any?> =
    this as? Map<String, Any?> ?: throw ManifestException("$what must be a JSON object")

@Suppress("UNCHECKED_CAST")
fun Any?.list(what: String): List<Any?> = this as? List<Any?> ?: throw ManifestException("$what must be a JSON array")

fun Any?.int(what: String): Int = (this as? Double)?.toInt() ?: throw ManifestException("$what must be a number")

fun Any?.str(what: String): String = this as? String ?: throw ManifestException("$what must be a string")

fun Any?.floats(what: String): FloatArray = list(what).map { (it as? Double ?: throw ManifestException("$what must hold numbers")).toFloat() }.toFloatArray()
