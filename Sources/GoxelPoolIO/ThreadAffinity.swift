import Glibc
import GoxelPoolCore
import Synchronization

/// The connection each thread released last, per pool (HikariCP's thread-local list): the next
/// call of that thread asks the pool for it first (`PoolStateMachine.requestLease(preferred:)`).
/// A few slots per thread (a thread rarely uses more than a handful of pools), found by a linear
/// scan; no lock: only the owning thread touches its slots.
enum ThreadAffinity {
    private struct Slot {
        var pool: UInt64
        var connection: Int
        /// Its FastLane's index in the pool (-1: none).
        var lane: Int
    }

    struct Remembered {
        var connection: ConnectionID
        var lane: Int
    }

    private static let slotCount = 4
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()
    private static let serials = Atomic<UInt64>(0)

    /// A number no other pool of this process has (0 is never one).
    static func newPoolSerial() -> UInt64 { serials.add(1, ordering: .relaxed).newValue }

    static func lastConnection(of pool: UInt64) -> Remembered? {
        guard let raw = pthread_getspecific(key) else { return nil }
        let slots = raw.assumingMemoryBound(to: Slot.self)
        for index in 0..<slotCount where slots[index].pool == pool {
            return Remembered(connection: ConnectionID(slots[index].connection), lane: slots[index].lane)
        }
        return nil
    }

    static func remember(_ connection: ConnectionID, lane: Int, of pool: UInt64) {
        var raw = pthread_getspecific(key)
        if raw == nil {
            raw = calloc(slotCount, MemoryLayout<Slot>.stride)
            guard let fresh = raw else { return }
            pthread_setspecific(key, fresh)
        }
        guard let raw else { return }
        let slots = raw.assumingMemoryBound(to: Slot.self)
        // The usual case on the fast path: the same connection again.
        if slots[0].pool == pool && slots[0].connection == connection.value && slots[0].lane == lane { return }
        // The pool's slot, or else the least recently remembered one (slots are kept newest first).
        var index = slotCount - 1
        for candidate in 0..<slotCount where slots[candidate].pool == pool || slots[candidate].pool == 0 {
            index = candidate
            break
        }
        while index > 0 {
            slots[index] = slots[index - 1]
            index -= 1
        }
        slots[0] = Slot(pool: pool, connection: connection.value, lane: lane)
    }
}
