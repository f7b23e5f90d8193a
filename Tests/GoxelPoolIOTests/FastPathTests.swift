import Glibc
import GoxelPoolCore
import XCTest
@testable import GoxelPoolIO

/// The fast path against a real daemon: a thread's last connection is taken and given back
/// without the pool's lock, and nothing the pool promises changes (FastPathModelTests checks the
/// state machine's side; these check PoolClient's).
final class FastPathTests: XCTestCase {
    var daemon: RefDaemon!

    override func setUpWithError() throws { daemon = try RefDaemon() }
    override func tearDown() { daemon?.stop(); daemon = nil }

    /// A lone caller's calls go around the lock; with `fast_path: false` every one takes it.
    func testALoneCallersCallsGoAroundTheLock() throws {
        for fastPath in [true, false] {
            let client = try PoolClient.forTest(daemon.socketPath, #""pool": {"min_connections": 2, "max_connections": 10, "fast_path": \#(fastPath)}"#)
            defer { client.close(drain: .zero) }
            for _ in 0..<500 { XCTAssertEqual(client.run("ping").status, .ok) }
            let locked = client.lockedAcquireCount
            if fastPath {
                // The first call, one after each maintenance pass took the parked connection back,
                // and one after any call slower than 10 ms (a loaded machine): a few, not 500.
                XCTAssertLessThan(locked, 50, "fast path on")
            } else {
                XCTAssertEqual(locked, 500, "fast path off")
            }
        }
    }

    /// The statistics count calls made without the lock exactly as calls made with it: the same
    /// workload gives the same counts, bytes and per-connection totals either way.
    func testStatisticsAreTheSameWithAndWithoutTheFastPath() throws {
        var seen: [[Int]] = []
        for fastPath in [true, false] {
            let client = try PoolClient.forTest(daemon.socketPath, #""pool": {"min_connections": 4, "max_connections": 4, "fast_path": \#(fastPath)}"#)
            defer { client.close(drain: .zero) }
            concurrently(3) { _ in for _ in 0..<400 { XCTAssertEqual(client.run("echo", "[1, 2, 3]").status, .ok) } }
            let snapshot = client.snapshot()
            let s = snapshot.statistics
            XCTAssertEqual(snapshot.busy, 0, "parked connections count as idle")
            XCTAssertEqual(snapshot.idle, 4)
            seen.append([s.totalRequestsServed, Int(s.requestLatency.totalCount), Int(s.acquireWait.totalCount), s.bytesSent, s.bytesReceived,
                         snapshot.connections.reduce(0) { $0 + $1.requests }, snapshot.poolHealth.totalObservations])
        }
        XCTAssertEqual(seen[0], seen[1])
        XCTAssertEqual(seen[0][0], 1200)
        XCTAssertEqual(seen[0][2], 1200, "every call counted its lease")
    }

    /// A waiter is never starved by callers on the fast path: two threads call without pause on
    /// the pool's two connections (each takes its own back without the lock). A caller from a
    /// new thread (nothing parked for it) must wait; once it does, the gate sends every release
    /// through the lock, which hands the connection over (`reuse_while_waiting` 0: at once). So
    /// while it waits and makes its call, the two complete only a few calls. Without the gate
    /// they would go on for a whole buffer (256 calls) before a release went through the lock.
    func testAWaiterIsServedWhileOthersTakeTheFastPath() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""timeout_ms": 5000, "pool": {"min_connections": 2, "max_connections": 2, "acquire_timeout_ms": 2000, "reuse_while_waiting": 0}"#)
        defer { client.close(drain: .zero) }
        let stop = Counter()   // 1: stop
        let hammerCalls = Counter()
        let hammers = (0..<2).map { _ in
            LibraryThread {
                while stop.value == 0 {
                    XCTAssertEqual(client.run("ping").status, .ok)
                    hammerCalls.add()
                }
            }
        }
        XCTAssertTrue(eventually { hammerCalls.value > 2000 }, "the hammers are running")
        let overtaken = OrderLog()
        for _ in 0..<60 {
            LibraryThread {
                let before = hammerCalls.value
                XCTAssertEqual(client.run("ping").status, .ok)
                overtaken.append(hammerCalls.value - before)
            }.join()
        }
        stop.add()
        hammers.forEach { $0.join() }
        let sorted = overtaken.values.sorted()
        let median = sorted[sorted.count / 2]
        print("fast path: calls the two fast-path callers completed during a new caller's call: median \(median), max \(sorted.last ?? 0)")
        XCTAssertLessThanOrEqual(median, 24)
    }

    /// The race the gate closes: a caller is queued (no connection free), and the connection's
    /// holder parks it on the fast path before the queued caller shuts the gate. The waiter then
    /// looks at the lanes again, so it gets the connection at once, instead of sleeping beside it
    /// until the maintenance pass (up to a second) or its deadline. The hook holds the waiter in
    /// that window until the holder's release (on the fast path: it needs no lock) is done. A
    /// round where the holder's call was too slow for the fast path (its release then needs the
    /// lock the hook holds) does not set the race up and is not counted.
    func testAWaiterQueuedAsTheConnectionIsParkedGetsIt() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""timeout_ms": 5000, "pool": {"min_connections": 1, "max_connections": 1, "acquire_timeout_ms": 3000}"#)
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("ping").status, .ok)
        // Well under 10 ms, so the holder's release is admitted to the fast path.
        try daemon.setFaults(#"{"latency_ms": 3}"#)
        var raced = 0
        for _ in 0..<12 where raced < 3 {
            let holderDone = Counter()
            let parkedInWindow = Counter()
            client.waiterQueuedHook = {
                // The holder's call ends and its connection is parked while this caller waits here.
                let until = Clock.now() + .milliseconds(100)
                while holderDone.value == 0 && Clock.now() < until { usleep(100) }
                if holderDone.value > 0 { parkedInWindow.add() }
            }
            let holder = LibraryThread {
                XCTAssertEqual(client.run("ping").status, .ok)
                holderDone.add()
            }
            // Until the holder has the connection (no sleep: its call lasts 3 ms).
            while client.snapshot().busy == 0 && holderDone.value == 0 {}
            let began = Clock.now()
            XCTAssertEqual(client.run("ping").status, .ok)
            let waited = Clock.now() - began
            holder.join()
            client.waiterQueuedHook = nil
            guard parkedInWindow.value > 0 else { continue }  // no race this round
            raced += 1
            XCTAssertLessThan(waited, .milliseconds(300), "the waiter slept beside the parked connection")
        }
        XCTAssertGreaterThan(raced, 0, "the race was never set up")
    }

    /// Many callers on few connections (waiters come and go all the time): a caller that queues
    /// while a connection is being parked must not sleep beside it. Every call finishes well
    /// within the acquire timeout and every one is counted.
    func testCallersComingAndGoingLoseNoConnection() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""timeout_ms": 5000, "pool": {"min_connections": 3, "max_connections": 3, "acquire_timeout_ms": 1000}"#)
        defer { client.close(drain: .zero) }
        let failures = Counter()
        concurrently(6) { index in
            for call in 0..<600 {
                // Bursts and pauses: the gate opens and shuts thousands of times.
                if (call + index) % 50 == 0 { usleep(UInt32(200 + index * 100)) }
                if client.run("ping").status != .ok { failures.add() }
            }
        }
        XCTAssertEqual(failures.value, 0)
        XCTAssertEqual(client.snapshot().statistics.totalRequestsServed, 3600)
    }

    /// A connection parked by a caller that stopped calling is still housekeeping's: it is
    /// health-checked and closed when idle above min, within the maintenance pass's second.
    func testAParkedConnectionIsClosedWhenIdle() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""pool": {"min_connections": 1, "max_connections": 3, "idle_timeout_ms": 200}"#)
        defer { client.close(drain: .zero) }
        try daemon.setFaults(#"{"latency_ms": 20}"#)
        concurrently(3) { _ in for _ in 0..<5 { XCTAssertEqual(client.run("ping").status, .ok) } }
        XCTAssertGreaterThan(client.snapshot().statistics.connectionsCreated, 1)
        // Each of those threads parked its connection: none is touched again. Asked of the daemon,
        // not of snapshot() (which takes parked connections back itself).
        XCTAssertTrue(eventually(3) { (try? RefDaemon.intField("open", in: daemon.stats())) == 1 }, "idle connections closed")
    }

    /// More callers than connections, each coming straight back: a release while callers wait
    /// keeps the connection in its lane for its thread (reuse while waiting, without the lock),
    /// and nothing of what the pool counts or promises changes. Every call succeeds within a 2 s
    /// acquire timeout (nobody starves), and the counts equal the lock path's for the same work.
    func testCallersBeyondMaxKeepConnectionsWithoutTheLock() throws {
        var seen: [[Int]] = []
        for fastPath in [true, false] {
            let client = try PoolClient.forTest(daemon.socketPath, #""pool": {"min_connections": 2, "max_connections": 2, "max_waiters": 100, "acquire_timeout_ms": 2000, "fast_path": \#(fastPath)}"#)
            defer { client.close(drain: .zero) }
            let failures = Counter()
            concurrently(6) { index in
                for call in 0..<300 where client.run("goxel.get_voxel", "[\(index), \(call), 0]").status != .ok { failures.add() }
            }
            XCTAssertEqual(failures.value, 0, "fast path \(fastPath)")
            let snapshot = client.snapshot()
            let s = snapshot.statistics
            XCTAssertGreaterThan(s.maxWaitingSeen, 0, "callers did wait")
            XCTAssertEqual(s.connectionsCreated, 2)
            // Not the bytes: request ids count per connection, so their digits vary with which
            // connection served which call.
            seen.append([s.totalRequestsServed, Int(s.requestLatency.totalCount), Int(s.acquireWait.totalCount),
                         snapshot.connections.reduce(0) { $0 + $1.requests }, snapshot.poolHealth.totalObservations])
            let kept = client.keptInLaneCount, locked = client.lockedAcquireCount
            print("fast path \(fastPath), 6 threads on 2 connections: \(kept) releases kept in their lane, \(locked) of 1800 acquires took the lock")
            if fastPath {
                XCTAssertGreaterThan(kept, 100, "releases kept their connection without the lock")
                XCTAssertLessThan(locked, 1500)
            } else {
                XCTAssertEqual(kept, 0)
            }
        }
        XCTAssertEqual(seen[0], seen[1])
        XCTAssertEqual(seen[0][0], 1800)
        XCTAssertEqual(seen[0][2], 1800, "every call counted its lease")
    }

    /// A connection kept in its lane for a thread that never calls again reaches the waiter
    /// within the grace (200 ms here: longer than the maintenance thread goes on checking every
    /// 2 ms after it last saw a kept connection) plus that thread's check, not at its
    /// once-a-second housekeeping nor at the waiter's deadline. The holder's first call (300 ms,
    /// so the waiter queues meanwhile) is kept by the state machine; its second (fast) is kept
    /// in the lane; then it stops.
    func testAConnectionKeptInItsLaneReachesTheWaiterWhenItsCallerStops() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""timeout_ms": 5000, "pool": {"min_connections": 1, "max_connections": 1, "reuse_window_us": 1000000, "reuse_grace_us": 200000, "acquire_timeout_ms": 3000}"#)
        defer { client.close(drain: .zero) }
        guard let gapMs = try handOverGapAfterTheHolderStops(client, daemon, holderCalls: 2) else { return }
        XCTAssertEqual(client.keptInLaneCount, 1, "the holder's second release kept the connection in its lane")
        print("fast path: the waiter got the connection kept in a lane \(gapMs) ms after its holder released it (grace 200 ms)")
        XCTAssertGreaterThan(gapMs, 180, "kept for its holder during the grace")
        XCTAssertLessThan(gapMs, 400, "the waiter got the kept connection \(gapMs) ms after the holder released it")
    }
    /// A connection kept in its lane for a thread that has not called again is counted as the
    /// state machine's kept ones are: idle (a waiter waits beside it, within the grace).
    func testASnapshotCountsAConnectionKeptInItsLaneAsIdle() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""timeout_ms": 5000, "pool": {"min_connections": 1, "max_connections": 1, "reuse_window_us": 2000000, "reuse_grace_us": 1000000, "acquire_timeout_ms": 4000}"#)
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("ping").status, .ok)
        try daemon.setFaults(#"{"latency_ms": 300}"#)
        let holderDone = OrderLog()
        // Its first release (300 ms) keeps the connection through the lock, its second (0 ms)
        // in the lane; then it stops, for the 1 s grace.
        let holder = LibraryThread {
            for _ in 0..<2 { XCTAssertEqual(client.run("ping").status, .ok) }
            holderDone.append(1)
        }
        XCTAssertTrue(eventually { client.snapshot().busy == 1 })
        let waiter = LibraryThread { XCTAssertEqual(client.run("ping").status, .ok) }
        XCTAssertTrue(eventually { client.snapshot().waiting == 1 })
        try daemon.setFaults(#"{"latency_ms": 0}"#)
        XCTAssertTrue(eventually { holderDone.values.count == 1 })
        let snapshot = client.snapshot()
        XCTAssertEqual(client.keptInLaneCount, 1, "the holder's second release kept the connection in its lane")
        XCTAssertEqual(snapshot.waiting, 1, "checked within the grace")
        XCTAssertEqual(snapshot.idle, 1)
        XCTAssertEqual(snapshot.busy, 0)
        XCTAssertEqual(snapshot.total, 1)
        waiter.join()
        holder.join()
        XCTAssertEqual(client.snapshot().idle, 1, "idle once the waiter is done")
    }
}
