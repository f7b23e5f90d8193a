import XCTest
@testable import GoxelPoolCore

/// The fast path (PoolClient takes and gives back a thread's last connection without the lock)
/// must not change a single pool decision. These tests run the same random sequence of calls
/// through two state machines: one gets every lease and release (the lock path), the other only
/// what PoolClient gives it when the fast path is on: calls admitted by `FastReleaseTerms` are
/// buffered and their connection parked, and every operation first records the buffered calls in
/// order and takes parked connections back (`recordFastCall`, `returnParked`). While callers
/// wait, a release admitted by `admitsKeep` keeps the connection in its lane for its caller's next
/// call; operations give the state machine the kept ones whose grace passed (`adoptKept`), and it
/// hands them over with its own. After every step
/// both must have produced the same actions and handed out the same connections; at the end the
/// same statistics, health, breaker and connections.
final class FastPathModelTests: XCTestCase {
    enum Parked { case no, yes, kept(until: Instant) }

    /// PoolClient's lane for one connection, as a value.
    struct Lane {
        var buffered: [(at: Instant, latency: Span, lease: PoolStateMachine.FastLease?)] = []
        var parked = Parked.no
        var terms: PoolStateMachine.FastReleaseTerms?
        var lease: PoolStateMachine.FastLease?
        /// Taken when the lane is made and kept, as PoolClient keeps it from the open: its calls are
        /// recorded through it.
        var handle: PoolStateMachine.ConnectionHandle?

        var isParked: Bool { if case .no = parked { false } else { true } }
        var keptUntil: Instant? { if case .kept(let until) = parked { until } else { nil } }
    }

    struct Caller {
        var holding: ConnectionID?
        var waiting: WaiterID?
        var last: ConnectionID?
        var tookWithoutPool = false
    }

    /// The machine behind the fast path, with PoolClient's rules around it.
    struct FastWorld {
        var machine: PoolStateMachine
        var lanes: [ConnectionID: Lane] = [:]
        var fastCalls = 0

        /// PoolClient's gate: shut while anyone waits, the pool is closed, or the circuit is not
        /// closed or a success could open it.
        var gateOpen: Bool { machine.waitingCount == 0 && !gateShut }
        /// The gate's shut weight alone.
        var gateShut: Bool { machine.isClosed || !machine.breaker.successesCannotOpen }
        /// PoolClient's `earliestKept`: no fast operation passes a kept connection that is overdue
        /// (in a lane, or in the state machine: kept by a release through the lock).
        var earliestKept: Instant? { (lanes.values.compactMap(\.keptUntil) + [machine.keptExpiry].compactMap { $0 }).min() }

        func noKeptOverdue(at now: Instant) -> Bool { earliestKept.map { now < $0 } ?? true }

        /// collectFastCalls: buffered calls recorded in the order they were made, parked ones back;
        /// kept ones only when overdue or nobody waits.
        mutating func collect(now: Instant) -> [PoolAction] {
            var actions: [PoolAction] = []
            var calls: [(handle: PoolStateMachine.ConnectionHandle, at: Instant, latency: Span, lease: PoolStateMachine.FastLease?)] = []
            for id in lanes.keys.sorted() {
                guard let handle = lanes[id]!.handle else { continue }
                calls += lanes[id]!.buffered.map { (handle, $0.at, $0.latency, $0.lease) }
                lanes[id]!.buffered.removeAll()
            }
            for call in calls.sorted(by: { $0.at < $1.at }) {
                actions += machine.recordFastCall(call.handle, at: call.at, latency: call.latency, lease: call.lease)
            }
            for id in lanes.keys.sorted() {
                switch lanes[id]!.parked {
                case .no: break
                case .yes:
                    lanes[id]!.parked = .no
                    lanes[id]!.terms = nil
                    actions += machine.returnParked(id, now: now, byItsCaller: false)
                case .kept(let until):
                    guard machine.waitingCount == 0 || machine.isClosed || until <= now else { continue }
                    lanes[id]!.parked = .no
                    lanes[id]!.terms = nil
                    // The state machine hands it over with its own kept ones, first in the event.
                    if machine.isClosed { actions += machine.returnParked(id, now: now, byItsCaller: false) }
                    else { machine.adoptKept(id, until: until) }
                }
            }
            return actions
        }

        mutating func lend(_ id: ConnectionID) {
            if lanes[id]?.handle == nil { lanes[id, default: Lane()].handle = machine.connectionHandle(id) }
            lanes[id, default: Lane()].terms = machine.fastReleaseTerms(for: id)
            lanes[id]!.lease = nil
        }

        /// After actions: leases to waiters get their terms, closed connections lose their lane.
        mutating func absorb(_ actions: [PoolAction]) {
            for action in actions {
                switch action {
                case .lease(_, let id): lend(id)
                case .close(let id, _): lanes[id] = nil
                default: break
                }
            }
        }
    }

    enum Step { case acquire, release, open, tick, timeout }

    func testTheFastPathMakesTheSameDecisionsAsTheLockPath() {
        var fastCallsSeen = 0
        var returnedByCaller = 0
        var releases = 0, gateShut = 0, notAdmitted = 0
        var keptInLane = 0, takenBackKept = 0, takenBackFresh = 0, adopted = 0
        for seed in 1...200 {
            var rng = SplitMix64(seed: UInt64(seed))
            let settings = PoolStateMachine.Settings.test(min: 1, max: 3) { s in
                s.maxRequestsPerConnection = [0, 0, 7, 25][Int(rng.next() % 4)]
                s.maxLifetime = rng.next() % 3 == 0 ? .milliseconds(400) : .zero
                s.idleTimeout = .milliseconds(300)
                s.healthInterval = rng.next() % 2 == 0 ? .milliseconds(150) : .zero
                s.maxWaiters = 4
                s.reuseWhileWaiting = Int(rng.next() % 4)
                // Steps are up to 3 ms apart: a longer window and grace let callers come back in time.
                s.reuseWindow = [.milliseconds(1), .milliseconds(8), .milliseconds(30)][Int(rng.next() % 3)]
                s.reuseGrace = [Span(nanoseconds: 200_000), .milliseconds(2), .milliseconds(6)][Int(rng.next() % 3)]
                s.health = HealthTracker.Policy(healthyLatency: .milliseconds(20), degradedLatency: .milliseconds(60),
                                                failureThreshold: 2, successThreshold: 2, trendAnalysis: true, sampleSize: 5)
                s.circuitBreaker.windowSize = 8
                s.circuitBreaker.minimumCalls = 4
                s.circuitBreaker.cooldown = .milliseconds(100)
            }
            var lockPath = PoolStateMachine(settings: settings, now: at(0), seed: UInt64(seed))
            var fast = FastWorld(machine: PoolStateMachine(settings: settings, now: at(0), seed: UInt64(seed)))
            var pendingOpens: [ConnectionID] = []
            func track(_ actions: [PoolAction]) {
                for case .open(let id) in actions { pendingOpens.append(id) }
                for case .checkHealth(let id) in actions { checking.append(id) }
            }
            var checking: [ConnectionID] = []
            let started = lockPath.start(now: at(0))
            XCTAssertEqual(started, fast.machine.start(now: at(0)))
            track(started)
            // Two or three callers rarely wait for the three connections; four to six often do.
            var callers = Array(repeating: Caller(), count: 2 + Int(rng.next() % 5))
            // Steps up to 3 ms apart, or 0.3 ms: then callers come back within the grace.
            let stepScale = rng.next() % 2 == 0 ? UInt64(3_000_000) : 300_000
            var nextWaiter: UInt64 = 1
            var now = at(0)
            for step in 0..<1000 {
                // Strictly later: PoolClient orders buffered calls by their instants.
                now = now + Span(nanoseconds: 1 + Int64(rng.next() % stepScale))
                let context = "seed \(seed) step \(step)"
                var lockActions: [PoolAction] = []
                var fastActions: [PoolAction] = []
                let roll = rng.next() % 20
                let kind: Step = roll < 8 ? .acquire : roll < 16 ? .release : roll < 18 ? .open : roll < 19 ? .tick : .timeout
                switch kind {
                case .acquire:
                    guard let index = callers.indices.first(where: { callers[$0].holding == nil && callers[$0].waiting == nil && rng.next() % 2 == 0 })
                    else { continue }
                    let waiter = WaiterID(nextWaiter); nextWaiter += 1
                    let preferred = callers[index].last
                    let (lockDecision, a) = lockPath.requestLease(waiter, now: now, preferred: preferred)
                    lockActions = a
                    // PoolClient.takeParked: the thread's last connection, parked, with the gate open
                    // (a new lease), or kept for it while callers wait (one more in its streak).
                    if let id = preferred, let lane = fast.lanes[id], lane.isParked, fast.gateOpen {
                        fast.lanes[id]!.parked = .no
                        fast.lanes[id]!.lease = .fresh(at: now)
                        fast.lanes[id]!.terms?.takenBackFresh(now: now)
                        callers[index].tookWithoutPool = true
                        takenBackFresh += 1
                        XCTAssertEqual(lockDecision, .leased(id), "\(context): the lock path gave another connection")
                    } else if let id = preferred, let until = fast.lanes[id]?.keptUntil, fast.machine.waitingCount > 0,
                              !fast.gateShut, now < until, fast.noKeptOverdue(at: now),
                              // One in eight goes through the lock anyway (the caller's own kept
                              // connection is adopted there): either way, the same decisions.
                              rng.next() % 8 != 0 {
                        fast.lanes[id]!.parked = .no
                        fast.lanes[id]!.lease = .kept
                        fast.lanes[id]!.terms?.takenBackKept()
                        callers[index].tookWithoutPool = true
                        takenBackKept += 1
                        XCTAssertEqual(lockDecision, .leased(id), "\(context): the lock path gave another connection")
                    } else {
                        fastActions = fast.collect(now: now)
                        // The caller's own kept connection, not overdue: the state machine keeps it
                        // for this request (PoolClient.acquire under the lock).
                        if let id = preferred, let until = fast.lanes[id]?.keptUntil {
                            fast.lanes[id]!.parked = .no
                            fast.lanes[id]!.terms = nil
                            fast.machine.adoptKept(id, until: until)
                            adopted += 1
                        }
                        let (fastDecision, b) = fast.machine.requestLease(waiter, now: now, preferred: preferred)
                        fastActions += b
                        XCTAssertEqual(lockDecision, fastDecision, context)
                        if case .leased(let id) = fastDecision { fast.lend(id) }
                    }
                    switch lockDecision {
                    case .leased(let id): callers[index].holding = id
                        if fast.lanes[id]?.lease == nil { callers[index].tookWithoutPool = false }
                    case .queued: callers[index].waiting = waiter
                    case .failed: break
                    }
                case .release:
                    guard let index = callers.indices.first(where: { callers[$0].holding != nil && rng.next() % 2 == 0 }) else { continue }
                    let id = callers[index].holding!
                    callers[index].holding = nil
                    callers[index].last = id
                    let dice = rng.next() % 20
                    let outcome: ReleaseOutcome = dice == 0 ? .broken(reason: "reset") : dice == 1 ? .unused
                        : .answered(latency: Span(nanoseconds: [100_000, 400_000, 2_000_000, 9_000_000, 35_000_000][Int(rng.next() % 5)]))
                    lockActions = lockPath.release(id, now: now, outcome: outcome)
                    releases += 1
                    if !fast.gateOpen { gateShut += 1 } else if case .answered(let l) = outcome, let terms = fast.lanes[id]?.terms, !terms.admits(latency: l, now: now) { notAdmitted += 1 }
                    if case .answered(let latency) = outcome, fast.gateOpen, let terms = fast.lanes[id]?.terms,
                       terms.admits(latency: latency, now: now) {
                        fast.lanes[id]!.buffered.append((now, latency, fast.lanes[id]!.lease))
                        fast.lanes[id]!.lease = nil
                        fast.lanes[id]!.terms!.callsLeft -= 1
                        fast.lanes[id]!.parked = .yes
                        fast.fastCalls += 1
                        // One in five: a caller reached the lock as it parked, so it returns it itself.
                        if rng.next() % 5 == 0 {
                            fast.lanes[id]!.parked = .no
                            fast.lanes[id]!.terms = nil
                            fastActions = fast.collect(now: now) + fast.machine.returnParked(id, now: now, byItsCaller: true, lastLatency: latency)
                            returnedByCaller += 1
                        }
                    } else if case .answered(let latency) = outcome, fast.machine.waitingCount > 0, !fast.gateShut,
                              let terms = fast.lanes[id]?.terms, terms.admitsKeep(latency: latency, now: now),
                              fast.noKeptOverdue(at: now) {
                        // Callers wait: kept in its lane for this caller's next call.
                        fast.lanes[id]!.buffered.append((now, latency, fast.lanes[id]!.lease))
                        fast.lanes[id]!.lease = nil
                        fast.lanes[id]!.terms!.callsLeft -= 1
                        fast.lanes[id]!.parked = .kept(until: now + terms.reuseGrace)
                        fast.fastCalls += 1
                        keptInLane += 1
                    } else {
                        fast.lanes[id]?.terms = nil
                        fastActions = fast.collect(now: now)
                        if let lease = fast.lanes[id]?.lease { fast.machine.recordLeaseWithoutPool(id, lease) }
                        fastActions += fast.machine.release(id, now: now, outcome: outcome)
                    }
                case .open:
                    guard !pendingOpens.isEmpty || !checking.isEmpty else { continue }
                    fastActions = fast.collect(now: now)
                    if !checking.isEmpty {
                        let id = checking.removeFirst()
                        let ok = rng.next() % 6 != 0
                        lockActions = lockPath.healthCheckFinished(id, now: now, success: ok, latency: .milliseconds(1), error: ok ? nil : "no")
                        fastActions += fast.machine.healthCheckFinished(id, now: now, success: ok, latency: .milliseconds(1), error: ok ? nil : "no")
                    } else {
                        let id = pendingOpens.removeFirst()
                        if rng.next() % 5 == 0 {
                            lockActions = lockPath.connectionOpenFailed(id, now: now, reason: "refused")
                            fastActions += fast.machine.connectionOpenFailed(id, now: now, reason: "refused")
                        } else {
                            lockActions = lockPath.connectionOpened(id, now: now)
                            fastActions += fast.machine.connectionOpened(id, now: now)
                        }
                    }
                case .tick:
                    lockActions = lockPath.tick(now: now)
                    fastActions = fast.collect(now: now) + fast.machine.tick(now: now)
                case .timeout:
                    guard let index = callers.indices.first(where: { callers[$0].waiting != nil }) else { continue }
                    let waiter = callers[index].waiting!
                    lockActions = lockPath.waiterTimedOut(waiter, now: now)
                    fastActions = fast.collect(now: now) + fast.machine.waiterTimedOut(waiter, now: now)
                }
                XCTAssertEqual(lockActions, fastActions, context)
                if lockActions != fastActions { return }
                fast.absorb(fastActions)
                track(lockActions)
                for action in lockActions {
                    switch action {
                    case .lease(let waiter, let id):
                        if let index = callers.firstIndex(where: { $0.waiting == waiter }) {
                            callers[index].waiting = nil
                            callers[index].holding = id
                            callers[index].tookWithoutPool = false
                        }
                    case .failWaiter(let waiter, _):
                        if let index = callers.firstIndex(where: { $0.waiting == waiter }) { callers[index].waiting = nil }
                    case .close(let id, _):
                        checking.removeAll { $0 == id }
                    default: break
                    }
                }
            }
            // Both hand over what they keep (the grace passed) and age alike.
            let end = now + .milliseconds(10)
            XCTAssertEqual(lockPath.tick(now: end), fast.collect(now: end) + fast.machine.tick(now: end), "seed \(seed) end")
            // A lease without the pool is counted when its call ends: callers still holding one are
            // the only difference allowed.
            let unreleased = callers.filter { $0.holding != nil && $0.tookWithoutPool }.count
            assertSameState(lockPath, fast.machine, "seed \(seed)", leasesNotYetCounted: unreleased)
            fastCallsSeen += fast.fastCalls
        }
        // The comparison means something only if many calls took the fast path, some returned by
        // their caller because another one arrived.
        print("fast path model: \(fastCallsSeen) fast calls, \(returnedByCaller) returned by their caller, \(releases) releases, gate shut \(gateShut), not admitted \(notAdmitted); kept in a lane \(keptInLane), taken back kept \(takenBackKept), fresh \(takenBackFresh), adopted under the lock \(adopted)")
        XCTAssertGreaterThan(fastCallsSeen, 1500)
        XCTAssertGreaterThan(returnedByCaller, 250)
        XCTAssertGreaterThan(keptInLane, 300)
        XCTAssertGreaterThan(takenBackKept, 100)
        XCTAssertGreaterThan(adopted, 10)
    }

    func assertSameState(_ a: PoolStateMachine, _ b: PoolStateMachine, _ context: String, leasesNotYetCounted: Int,
                         line: UInt = #line) {
        XCTAssertEqual(a.connectionIDs, b.connectionIDs, "\(context) connectionIDs", line: line)
        for id in a.connectionIDs {
            let x = a.connections[id]!, y = b.connections[id]!
            XCTAssertEqual(x.state, y.state, "\(context) \(id) state", line: line)
            XCTAssertEqual(x.requestsServed, y.requestsServed, "\(context) \(id) requestsServed", line: line)
            XCTAssertEqual(x.lastUsed, y.lastUsed, "\(context) \(id) lastUsed", line: line)
            XCTAssertEqual(x.nextHealthCheck, y.nextHealthCheck, "\(context) \(id) nextHealthCheck", line: line)
            XCTAssertEqual(x.windowRequests, y.windowRequests, "\(context) \(id) windowRequests", line: line)
            XCTAssertEqual(x.health.tier, y.health.tier, "\(context) \(id) health.tier", line: line)
            XCTAssertEqual(x.health.samples, y.health.samples, "\(context) \(id) health.samples", line: line)
            XCTAssertEqual(x.health.totalObservations, y.health.totalObservations, "\(context) \(id) health.totalObservations", line: line)
        }
        XCTAssertEqual(a.poolHealth.samples, b.poolHealth.samples, "\(context) poolHealth.samples", line: line)
        XCTAssertEqual(a.poolHealth.totalObservations, b.poolHealth.totalObservations, "\(context) poolHealth.totalObservations", line: line)
        XCTAssertEqual(a.breaker.state, b.breaker.state, "\(context) breaker.state", line: line)
        XCTAssertEqual(a.breaker.timesOpened, b.breaker.timesOpened, "\(context) breaker.timesOpened", line: line)
        XCTAssertEqual(a.poolState, b.poolState, "\(context) poolState", line: line)
        let s = a.statistics, t = b.statistics
        XCTAssertEqual(s.totalRequestsServed, t.totalRequestsServed, "\(context) totalRequestsServed", line: line)
        XCTAssertEqual(s.totalRequestTime, t.totalRequestTime, "\(context) totalRequestTime", line: line)
        XCTAssertEqual(s.requestLatency.totalCount, t.requestLatency.totalCount, "\(context) requestLatency.totalCount", line: line)
        XCTAssertEqual(s.requestLatency.max, t.requestLatency.max, "\(context) requestLatency.max", line: line)
        XCTAssertEqual(s.acquireWait.totalCount, t.acquireWait.totalCount + UInt64(leasesNotYetCounted), "\(context) acquireWait.totalCount", line: line)
        XCTAssertEqual(s.totalAcquireWait, t.totalAcquireWait, "\(context) totalAcquireWait", line: line)
        XCTAssertEqual(s.connectionsClosed, t.connectionsClosed, "\(context) connectionsClosed", line: line)
        XCTAssertEqual(s.maxWaitingSeen, t.maxWaitingSeen, "\(context) maxWaitingSeen", line: line)
        XCTAssertEqual(s.connectionAttempts, t.connectionAttempts, "\(context) connectionAttempts", line: line)
    }
}
