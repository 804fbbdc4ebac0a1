import Foundation

/// LRU of loaded experts bounded by a count and/or bytes; experts the current image needs are pinned.
public final class ExpertCache<T> {
    private let load: (Int) throws -> T
    private let sizeOf: (Int) -> Int
    private let close: (T) -> Void
    public let maxExperts: Int?
    public let maxBytes: Int?
    private var values: [Int: T] = [:]
    private var order: [Int] = []  // least recently used first
    public private(set) var loads = 0
    public private(set) var evictions = 0

    public init(load: @escaping (Int) throws -> T, sizeOf: @escaping (Int) -> Int, maxExperts: Int? = nil, maxBytes: Int? = nil,
                close: @escaping (T) -> Void = { _ in }) {
        self.load = load
        self.sizeOf = sizeOf
        self.close = close
        self.maxExperts = maxExperts
        self.maxBytes = maxBytes
    }

    public var loaded: [Int] { order }
    public var residentBytes: Int { order.reduce(0) { $0 + sizeOf($1) } }

    public func get(_ expert: Int, pinned: Set<Int> = []) throws -> T {
        if let v = values[expert] {
            order.removeAll { $0 == expert }
            order.append(expert)
            return v
        }
        makeRoom(incoming: sizeOf(expert), pinned: pinned.union([expert]))
        let v = try load(expert)
        values[expert] = v
        order.append(expert)
        loads += 1
        return v
    }

    /// Unloads every expert (closing each): when the model closes, or to measure cold loads again.
    public func clear() {
        let all = order.compactMap { values[$0] }
        values = [:]
        order = []
        all.forEach(close)
    }

    private func over(_ incoming: Int) -> Bool {
        if let m = maxExperts, order.count + 1 > m { return true }
        if let b = maxBytes, residentBytes + incoming > b { return true }
        return false
    }

    private func makeRoom(incoming: Int, pinned: Set<Int>) {
        while over(incoming) {
            guard let victim = order.first(where: { !pinned.contains($0) }) else { return }
            order.removeAll { $0 == victim }
            if let v = values.removeValue(forKey: victim) { close(v) }
            evictions += 1
        }
    }
}
