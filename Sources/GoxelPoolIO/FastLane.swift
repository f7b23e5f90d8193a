import GoxelPoolCore
import Synchronization

/// One connection's fast path (see PoolClient, "The fast path"): whether it is parked for its
/// caller's next call, and the calls made on it without the pool's lock, buffered until the state
/// machine records them (`PoolStateMachine.recordFastCall`), in order, under the lock.
///
/// The buffer has one writer at a time (whoever holds the connection; a new holder gets it through
/// the pool's lock or through `parked`, which orders it after the previous one) and one reader
/// (the pool, under its lock): a single-producer, single-consumer ring.
final class FastLane: @unchecked Sendable {
    struct Call {
        var at: Instant
        var latency: Span
        var bytesSent: Int
        var bytesReceived: Int
        /// How its caller took the connection back without the pool (nil: from the pool).
        var lease: PoolStateMachine.FastLease?
    }

    /// `parked`: nobody parked it (the pool or a caller has it).
    static let notParked = 0
    /// `parked`: released with nobody waiting, free for its thread's next call or the pool.
    static let parkedFree = 1
    /// `parked`: kept for its thread's next call while callers wait, until `keptUntil`.
    static let parkedKept = 2

    /// A power of two. When full, the release goes through the pool (which empties it).
    static let capacity = 256

    /// Keeps another lane's fields (written by another thread on every call) off this lane's
    /// cache lines: lanes are allocated one after another.
    private let paddingBefore: CacheLinePadding = (0, 0, 0, 0, 0, 0, 0, 0)
    /// The lane's place in the pool's fixed array (remembered per thread by ThreadAffinity).
    let index: Int
    /// `parkedFree` or `parkedKept`: released on the fast path; its thread's next call, or the
    /// pool under its lock, takes it with a compare-and-swap to `notParked`.
    let parked = Atomic<Int>(FastLane.notParked)
    /// While `parkedKept`: when its grace ends (nanoseconds); then the pool hands it over.
    let keptUntil = Atomic<Int64>(0)
    /// The connection in this lane. Changed only under the pool's lock while nobody holds it.
    var connection: DaemonConnection?
    /// The state machine's handle of that connection, which its buffered calls are recorded
    /// against (set and read under the pool's lock).
    var recorder: PoolStateMachine.ConnectionHandle?
    /// Set under the pool's lock when the connection is leased; then its holder's until it goes
    /// back to the pool (a parked connection's terms pass to whoever takes it). nil: no fast release.
    var terms: PoolStateMachine.FastReleaseTerms?
    /// How the holder took it back without the pool (nil: from the pool).
    var lease: PoolStateMachine.FastLease?
    /// Releases that kept the connection here while callers waited (written by holders; tests).
    var keptReleases = 0

    /// Allocated when the lane first gets a connection (a pool of max 1024 that never opens
    /// that many does not pay for 1024 buffers).
    private var calls: UnsafeMutablePointer<Call>?
    /// Calls written by holders, and calls the pool has recorded: both only grow.
    private let written = Atomic<Int>(0)
    private let recorded = Atomic<Int>(0)
    private let paddingAfter: CacheLinePadding = (0, 0, 0, 0, 0, 0, 0, 0)

    init(index: Int) { self.index = index }

    deinit { calls?.deallocate() }

    /// Under the pool's lock, as a connection moves in (before anyone can hold it).
    func assign(_ connection: DaemonConnection, recorder: PoolStateMachine.ConnectionHandle?) {
        if calls == nil { calls = .allocate(capacity: Self.capacity) }
        self.connection = connection
        self.recorder = recorder
        connection.fastLane = self
    }

    /// The holder: whether one more call fits.
    var hasRoom: Bool {
        calls != nil && written.load(ordering: .relaxed) &- recorded.load(ordering: .acquiring) < Self.capacity
    }

    /// The holder: buffers one call (check `hasRoom` first; a full buffer drops nothing, it refuses).
    func append(_ call: Call) -> Bool {
        let next = written.load(ordering: .relaxed)
        guard let calls, next &- recorded.load(ordering: .acquiring) < Self.capacity else { return false }
        (calls + (next & (Self.capacity - 1))).initialize(to: call)
        written.store(next &+ 1, ordering: .releasing)
        return true
    }

    /// Under the pool's lock: every buffered call, oldest first.
    func drain(_ body: (Call) -> Void) {
        let first = recorded.load(ordering: .relaxed)
        let end = written.load(ordering: .acquiring)
        guard end != first, let calls else { return }
        var position = first
        while position != end {
            body(calls[position & (Self.capacity - 1)])
            position &+= 1
        }
        recorded.store(end, ordering: .releasing)
    }
}

/// 64 bytes.
typealias CacheLinePadding = (Int, Int, Int, Int, Int, Int, Int, Int)

/// The pool's fast-path gate and its dirty flag (see PoolClient), on cache lines of their own:
/// every call reads them outside the lock, so they must not share a line with the state the
/// lock's holder writes.
final class FastGate: @unchecked Sendable {
    private let paddingBefore: CacheLinePadding = (0, 0, 0, 0, 0, 0, 0, 0)
    /// Zero when calls may take and release connections without the lock.
    let count = Atomic<Int>(0)
    /// Set after a connection is parked; cleared by the collector that then looks at the lanes.
    let dirty = Atomic<Bool>(false)
    /// No lane's kept connection is due before this instant (nanoseconds; Int64.max: none kept).
    /// A parker lowers it; a collector that hands kept connections over raises it again. It may
    /// be early (its connection went back to its thread): `keptLanes` tells.
    let earliestKept = Atomic<Int64>(Int64.max)
    /// The state machine's own earliest kept expiry (nanoseconds; Int64.max: none), published
    /// under the lock after each operation, for callers without it.
    let machineKeptUntil = Atomic<Int64>(Int64.max)
    /// The fields above are read by every call and written rarely; `keptLanes` is written by
    /// every keep and every take-back while callers wait, so it has a line of its own (sharing
    /// one, each of those writes would cost every other CPU a miss on the fields above).
    private let paddingKept: CacheLinePadding = (0, 0, 0, 0, 0, 0, 0, 0)
    /// Bit i: lane i holds a kept connection (pools of up to 64 connections keep in lanes).
    let keptLanes = Atomic<UInt64>(0)

    func lowerEarliestKept(to until: Int64) {
        var current = earliestKept.load(ordering: .sequentiallyConsistent)
        while until < current {
            let (exchanged, original) = earliestKept.compareExchange(expected: current, desired: until, ordering: .sequentiallyConsistent)
            if exchanged { return }
            current = original
        }
    }
    private let paddingAfter: CacheLinePadding = (0, 0, 0, 0, 0, 0, 0, 0)
}
