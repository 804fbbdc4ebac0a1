package dev.vmoe.core

/** LRU of loaded experts bounded by a count and/or a byte budget. Experts the current image needs are
 *  pinned and never evicted to make room for each other, so the budget must hold top_k experts. */
class ExpertCache<T>(private val load: (Int) -> T, private val sizeOf: (Int) -> Long,
                     val maxExperts: Int? = null, val maxBytes: Long? = null,
                     private val close: (T) -> Unit = {}) {
    private val entries = LinkedHashMap<Int, T>(16, 0.75f, true)  // access order = LRU order
    var loads = 0
        private set
    var evictions = 0
        private set
    val loaded: List<Int> get() = entries.keys.toList()
    val residentBytes: Long get() = entries.keys.map(sizeOf).sum()

    fun get(expert: Int, pinned: Set<Int> = emptySet()): T {
        entries[expert]?.let { return it }
        makeRoom(sizeOf(expert), pinned + expert)
        val value = load(expert)
        entries[expert] = value
        loads++
        return value
    }

    /** Unloads every expert (closing each), e.g. when the model is closed or to measure cold loads again. */
    fun clear() {
        val all = entries.values.toList()
        entries.clear()
        all.forEach(close)
    }

    private fun over(incoming: Long): Boolean =
        (maxExperts != null && entries.size + 1 > maxExperts) || (maxBytes != null && residentBytes + incoming > maxBytes)

    private fun makeRoom(incoming: Long, pinned: Set<Int>) {
        while (over(incoming)) {
            val victim = entries.keys.firstOrNull { it !in pinned } ?: return
            entries.remove(victim)?.let(close)
            evictions++
        }
    }
}
