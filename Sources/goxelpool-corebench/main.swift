// goxelpool-corebench: what acquire + release cost inside the library, without I/O.
//
// A call leases a connection and gives it back: two turns of the pool's lock, each asking the
// pool state machine (requestLease, then release with the answer's latency: statistics,
// histogram, health, circuit breaker). This runs exactly that, with the library's own
// PthreadMutex and PoolStateMachine (8 open connections), uncontended and from 8 threads, and
// prints ns per acquire + release, one readable line and one JSON line each. Run by `make bench`.

import Glibc
import GoxelPoolCore
import GoxelPoolIO

let iterations = Int(CommandLine.arguments.dropFirst().first ?? "") ?? 1_000_000

final class Pool: @unchecked Sendable {
    let lock = PthreadMutex()
    var machine: PoolStateMachine
    var nextWaiter: UInt64 = 1

    init(connections: Int) {
        var settings = PoolStateMachine.Settings()
        settings.minConnections = connections
        settings.maxConnections = connections
        machine = PoolStateMachine(settings: settings, now: Clock.now())
        for action in machine.start(now: Clock.now()) {
            if case .open(let id) = action { _ = machine.connectionOpened(id, now: Clock.now()) }
        }
    }

    /// One acquire + release as PoolClient does them. Returns false when no connection was free.
    @inline(never)
    func cycle() -> Bool {
        lock.lock()
        let waiter = WaiterID(nextWaiter)
        nextWaiter &+= 1
        let (decision, _) = machine.requestLease(waiter, now: Clock.now())
        lock.unlock()
        guard case .leased(let id) = decision else {
            lock.withLock { _ = machine.waiterTimedOut(waiter, now: Clock.now()) }
            return false
        }
        lock.lock()
        _ = machine.release(id, now: Clock.now(), outcome: .answered(latency: Span(nanoseconds: 20_000)))
        lock.unlock()
        return true
    }
}

final class Misses: @unchecked Sendable {
    private let lock = PthreadMutex()
    private var count = 0
    func add(_ n: Int) { lock.withLock { count += n } }
    var total: Int { lock.withLock { count } }
}

func measure(threads: Int, connections: Int) -> (nsPerCycle: Double, misses: Int) {
    let pool = Pool(connections: connections)
    for _ in 0..<10_000 { _ = pool.cycle() }  // warm-up
    let perThread = iterations / threads
    let misses = Misses()
    let began = Clock.now()
    let workers = (0..<threads).map { _ in
        LibraryThread {
            var local = 0
            for _ in 0..<perThread where !pool.cycle() { local += 1 }
            misses.add(local)
        }
    }
    workers.forEach { $0.join() }
    let elapsed = Double((Clock.now() - began).nanoseconds)
    return (elapsed / Double(perThread * threads), misses.total)
}

for (threads, connections) in [(1, 8), (8, 8)] {
    let result = measure(threads: threads, connections: connections)
    let label = threads == 1 ? "uncontended" : "\(threads) threads"
    print("acquire + release (state machine + lock, no I/O), \(label), \(connections) connections: "
          + "\(Int(result.nsPerCycle)) ns per cycle (wall, all threads together), \(result.misses) without a free connection")
    print(#"{"bench": "core_acquire_release", "threads": \#(threads), "connections": \#(connections), "ns": \#(Int(result.nsPerCycle)), "misses": \#(result.misses)}"#)
}
