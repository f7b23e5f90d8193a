import XCTest
@testable import GoxelPoolCore

// MARK: - Shared harness (BackoffTests and HealthTrackerTests use it too)

/// The manual clock: every instant in these tests is a number of milliseconds since the start.
func at(_ ms: Int64) -> Instant { .milliseconds(ms) }
func cid(_ n: Int) -> ConnectionID { ConnectionID(n) }
func wid(_ n: UInt64) -> WaiterID { WaiterID(n) }

/// The connection numbers of the `.open` actions in a batch.
func opens(_ actions: [PoolAction]) -> [Int] {
    actions.compactMap { if case .open(let id) = $0 { id.value } else { nil } }
}

/// The connection numbers of the `.checkHealth` actions in a batch.
func checks(_ actions: [PoolAction]) -> [Int] {
    actions.compactMap { if case .checkHealth(let id) = $0 { id.value } else { nil } }
}

/// The `.close` actions of a batch.
func closes(_ actions: [PoolAction]) -> [CloseReason] {
    actions.compactMap { if case .close(_, let reason) = $0 { reason } else { nil } }
}

extension PoolStateMachine.Settings {
    /// Repeatable settings: no health checks, no idle expiry, backoff without jitter; `tweak` adds
    /// what a test is about.
    static func test(min: Int = 2, max: Int = 10, _ tweak: (inout Self) -> Void = { _ in }) -> Self {
        var settings = Self()
        settings.minConnections = min
        settings.maxConnections = max
        settings.idleTimeout = .zero
        settings.healthInterval = .zero
        settings.backoff = .init(initial: .milliseconds(1000), multiplier: 1.6, jitter: 0,
                                 maximum: .milliseconds(120_000))
        tweak(&settings)
        return settings
    }
}

extension PoolStateMachine {
    /// A started pool whose `min` connections opened, the i-th at `openedAt[i]` ms (default 0).
    static func ready(_ settings: Settings = .test(), openedAt: [Int64] = [], seed: UInt64 = 0x5EED) -> Self {
        var machine = Self(settings: settings, now: at(0), seed: seed)
        for (index, id) in opens(machine.start(now: at(0))).enumerated() {
            _ = machine.connectionOpened(cid(id), now: at(index < openedAt.count ? openedAt[index] : 0))
        }
        return machine
    }

    /// requestLease that must hand a connection over at once, with no side effect.
    mutating func take(_ waiter: UInt64 = 0, at ms: Int64, file: StaticString = #filePath,
                       line: UInt = #line) -> ConnectionID {
        let (decision, actions) = requestLease(wid(waiter), now: at(ms))
        XCTAssertEqual(actions, [], file: file, line: line)
        guard case .leased(let id) = decision else {
            XCTFail("expected an immediate lease, got \(decision)", file: file, line: line)
            return cid(-1)
        }
        return id
    }

    /// requestLease that must queue; returns the actions.
    mutating func queue(_ waiter: UInt64, at ms: Int64, file: StaticString = #filePath,
                        line: UInt = #line) -> [PoolAction] {
        let (decision, actions) = requestLease(wid(waiter), now: at(ms))
        XCTAssertEqual(decision, .queued, file: file, line: line)
        return actions
    }

    /// Releases a connection whose request was answered after `latency` ms.
    mutating func answer(_ id: ConnectionID, at ms: Int64, latency: Int = 10) -> [PoolAction] {
        release(id, now: at(ms), outcome: .answered(latency: .milliseconds(latency)))
    }

    /// Reports a health check: answered after `latency` ms, or failed (nil).
    mutating func checked(_ id: ConnectionID, at ms: Int64, latency: Int? = 5) -> [PoolAction] {
        healthCheckFinished(id, now: at(ms), success: latency != nil, latency: .milliseconds(latency ?? 0),
                            error: latency == nil ? "timeout" : nil)
    }

    /// `take` then `answer` at the same instant; returns the connection used.
    mutating func roundTrip(at ms: Int64, latency: Int = 10) -> ConnectionID {
        let id = take(at: ms)
        _ = answer(id, at: ms, latency: latency)
        return id
    }
}

// MARK: - Pool state machine

final class PoolStateMachineTests: XCTestCase {
    typealias Machine = PoolStateMachine

    // MARK: Start and growth

    func testStartOpensExactlyMinConnectionsAndReportsThemAdded() {
        var m = Machine(settings: .test(min: 2, max: 5), now: at(0))
        XCTAssertEqual(m.start(now: at(0)), [.open(cid(1)), .open(cid(2))])
        XCTAssertEqual(m.count(.opening), 2)
        XCTAssertEqual(m.poolState, .unhealthy)
        XCTAssertEqual(m.connectionOpened(cid(1), now: at(5)),
                       [.event(.connectionAdded(cid(1))), .event(.poolStateChanged(from: .unhealthy, to: .ready))])
        XCTAssertEqual(m.connectionOpened(cid(2), now: at(6)), [.event(.connectionAdded(cid(2)))])
        XCTAssertEqual(m.connectionOpened(cid(2), now: at(7)), [], "a second report for the same id is ignored")
        XCTAssertEqual(m.connectionOpened(cid(9), now: at(7)), [], "an unknown id is ignored")
        XCTAssertEqual(m.count(.idle), 2)
        XCTAssertEqual(m.poolState, .ready)
        XCTAssertEqual(m.openedAt(cid(1)), at(5))
        XCTAssertEqual(m.statistics.connectionAttempts, 2)
        XCTAssertEqual(m.statistics.connectionsCreated, 2)
        XCTAssertEqual(m.statistics.reconnectionAttempts, 0)
    }

    func testIdleConnectionIsLeasedImmediately() {
        var m = Machine.ready()
        let id = m.take(1, at: 10)
        XCTAssertTrue([cid(1), cid(2)].contains(id))
        XCTAssertEqual(m.count(.busy), 1)
        XCTAssertEqual(m.count(.idle), 1)
    }

    func testNoIdleConnectionQueuesAndOpensOnlyWhileBelowMax() {
        var m = Machine.ready(.test(min: 1, max: 2))
        XCTAssertEqual(m.take(1, at: 0), cid(1))
        XCTAssertEqual(m.queue(2, at: 1), [.open(cid(2))])
        XCTAssertEqual(m.queue(3, at: 2), [], "max reached: the opening connection counts")
        XCTAssertEqual(m.waitingCount, 2)
        XCTAssertEqual(m.connectionCount, 2)
    }

    func testBurstOfThousandRequestsNeverOpensMoreThanMax() {
        var m = Machine(settings: .test(min: 0, max: 2), now: at(0))
        XCTAssertEqual(m.start(now: at(0)), [])
        var opened: [Int] = []
        for n in 1...1000 { opened += opens(m.queue(UInt64(n), at: 0)) }
        XCTAssertEqual(opened, [1, 2])
        XCTAssertEqual(m.count(.opening), 2)
        XCTAssertEqual(m.statistics.maxWaitingSeen, 1000)
        // Each open serves the longest waiter; releases then serve the rest in order, never opening more.
        XCTAssertEqual(m.connectionOpened(cid(2), now: at(1)),
                       [.event(.connectionAdded(cid(2))), .lease(wid(1), cid(2)),
                        .event(.poolStateChanged(from: .unhealthy, to: .ready))])
        XCTAssertEqual(m.connectionOpened(cid(1), now: at(1)), [.event(.connectionAdded(cid(1))), .lease(wid(2), cid(1))])
        for n in 3...1000 {
            let id = cid(n % 2 + 1)
            XCTAssertEqual(m.answer(id, at: 2), [.lease(wid(UInt64(n)), id)])
        }
        XCTAssertEqual(m.connectionCount, 2)
        XCTAssertEqual(m.statistics.connectionAttempts, 2)
    }

    func testFullWaitQueueFailsBusy() {
        var m = Machine.ready(.test(min: 1, max: 1) { $0.maxWaiters = 2 })
        _ = m.take(1, at: 0)
        XCTAssertEqual(m.queue(2, at: 0), [])
        XCTAssertEqual(m.queue(3, at: 0), [.event(.queueSaturated(waiting: 2, limit: 2))])
        XCTAssertEqual(m.requestLease(wid(4), now: at(0)).0, .failed(.busy))
        XCTAssertEqual(m.waitingCount, 2)
        XCTAssertEqual(m.statistics.rejectedBusy, 1)

        var noQueue = Machine.ready(.test(min: 1, max: 1) { $0.maxWaiters = 0 })
        _ = noQueue.take(1, at: 0)
        XCTAssertEqual(noQueue.requestLease(wid(2), now: at(0)).0, .failed(.busy))
    }

    func testNoWaitQueueStillLetsThePoolGrowFromZero() throws {
        var m = Machine.ready(.test(min: 0, max: 2) { $0.maxWaiters = 0 })
        let (_, actions) = m.requestLease(wid(1), now: at(0))
        XCTAssertEqual(opens(actions), [1], "a caller that finds nothing must at least start an open")
    }

    func testRequestAfterCloseFailsClosed() {
        var m = Machine.ready()
        _ = m.close(now: at(1))
        let (decision, actions) = m.requestLease(wid(1), now: at(2))
        XCTAssertEqual(decision, .failed(.closed))
        XCTAssertEqual(actions, [])
    }

    func testGrowthOpensOneConnectionPerWaiterNotMore() throws {
        var m = Machine.ready(.test(min: 1, max: 10))
        _ = m.take(1, at: 0)
        XCTAssertEqual(m.queue(2, at: 0), [.open(cid(2))])
        XCTAssertEqual(m.queue(3, at: 0), [.open(cid(3))], "two waiters need two new connections")
        XCTAssertEqual(m.connectionCount, 3)
    }

    // MARK: FIFO

    func testWaitersAreServedInArrivalOrderOnRelease() {
        var m = Machine.ready(.test(min: 1, max: 1))
        let id = m.take(1, at: 0)
        for n in 2...4 { XCTAssertEqual(m.queue(UInt64(n), at: Int64(n)), []) }
        for n in 2...4 { XCTAssertEqual(m.answer(id, at: 10 + Int64(n)), [.lease(wid(UInt64(n)), id)]) }
        XCTAssertEqual(m.answer(id, at: 20), [])
        XCTAssertEqual(m.count(.idle), 1)
    }

    func testWaitersAreServedInArrivalOrderAsConnectionsOpen() {
        var m = Machine(settings: .test(min: 0, max: 3), now: at(0))
        _ = m.start(now: at(0))
        XCTAssertEqual((1...3).flatMap { opens(m.queue(UInt64($0), at: 0)) }, [1, 2, 3])
        for (n, id) in [3, 1, 2].enumerated() {
            XCTAssertTrue(m.connectionOpened(cid(id), now: at(5)).contains(.lease(wid(UInt64(n + 1)), cid(id))))
        }
        XCTAssertEqual(m.waitingCount, 0)
        XCTAssertEqual(m.count(.busy), 3)
    }

    // MARK: Races

    func testLeaseThenTimeoutAtTheSameInstantKeepsTheLease() {
        var m = Machine.ready(.test(min: 1, max: 1))
        let id = m.take(1, at: 0)
        _ = m.queue(2, at: 0)
        XCTAssertEqual(m.answer(id, at: 100), [.lease(wid(2), id)])
        XCTAssertEqual(m.waiterTimedOut(wid(2), now: at(100)), [])
        XCTAssertEqual(m.count(.busy), 1, "the waiter owns the connection and must release it")
        XCTAssertEqual(m.release(id, now: at(100), outcome: .unused), [])
        XCTAssertEqual(m.count(.idle), 1)
    }

    func testTimeoutThenReleaseAtTheSameInstantLeavesTheConnectionIdle() {
        var m = Machine.ready(.test(min: 1, max: 1))
        let id = m.take(1, at: 0)
        _ = m.queue(2, at: 0)
        XCTAssertEqual(m.waiterTimedOut(wid(2), now: at(100)), [.failWaiter(wid(2), .timedOut)])
        XCTAssertEqual(m.waiterTimedOut(wid(2), now: at(100)), [], "a second timeout is a no-op")
        XCTAssertEqual(m.answer(id, at: 100), [])
        XCTAssertEqual(m.count(.idle), 1)
        XCTAssertEqual(m.waitingCount, 0)
    }

    func testConnectionOpenedAfterItsOnlyWaiterTimedOutGoesIdle() {
        var m = Machine.ready(.test(min: 1, max: 2))
        _ = m.take(1, at: 0)
        XCTAssertEqual(m.queue(2, at: 0), [.open(cid(2))])
        XCTAssertEqual(m.waiterTimedOut(wid(2), now: at(50)), [.failWaiter(wid(2), .timedOut)])
        XCTAssertEqual(m.connectionOpened(cid(2), now: at(60)), [.event(.connectionAdded(cid(2)))])
        XCTAssertEqual(m.count(.idle), 1)
        XCTAssertEqual(m.take(3, at: 70), cid(2))
    }

    func testConnectionOpenedAfterCloseIsClosedAtOnce() {
        var m = Machine(settings: .test(), now: at(0))
        XCTAssertEqual(m.start(now: at(0)), [.open(cid(1)), .open(cid(2))])
        XCTAssertEqual(m.close(now: at(1)), [.event(.poolStateChanged(from: .unhealthy, to: .closed))])
        XCTAssertEqual(m.connectionOpened(cid(1), now: at(2)), [.close(cid(1), .shutdown)])
        XCTAssertEqual(m.connectionOpenFailed(cid(2), now: at(2), reason: "refused"), [], "no backoff after close")
        XCTAssertEqual(m.connectionCount, 0)
        XCTAssertEqual(m.tick(now: at(10_000)), [])
        XCTAssertEqual(m.statistics.connectionsClosed[.shutdown], 1)
    }

    // MARK: Rotation, lifetime, idle scale-down

    func testRotationClosesAfterTheLimitReachingRequestNotAtHandOut() {
        var m = Machine.ready(.test(min: 1, max: 1) { $0.maxRequestsPerConnection = 3 })
        for n in 1...2 { XCTAssertEqual(m.roundTrip(at: Int64(n)), cid(1)) }
        let id = m.take(at: 3) // the 3rd lease: handed out normally, no close
        XCTAssertEqual(m.queue(9, at: 3), [])
        XCTAssertEqual(m.answer(id, at: 4), [.close(cid(1), .rotation), .event(.connectionRemoved(cid(1), .rotation)),
                                              .open(cid(2)), .event(.poolStateChanged(from: .ready, to: .unhealthy))])
        XCTAssertEqual(m.statistics.totalRequestsServed, 3, "the request that hit the limit succeeded")
        XCTAssertEqual(m.statistics.connectionsClosed[.rotation], 1)
        XCTAssertEqual(m.statistics.reconnectionAttempts, 0, "a planned rotation is no reconnection")
        XCTAssertTrue(m.connectionOpened(cid(2), now: at(5)).contains(.lease(wid(9), cid(2))))
    }

    func testRotationAboveMinOpensNoReplacement() {
        var m = Machine.ready(.test(min: 1, max: 2) { $0.maxRequestsPerConnection = 1 })
        let first = m.take(1, at: 0)
        _ = m.queue(2, at: 0)
        XCTAssertTrue(m.connectionOpened(cid(2), now: at(1)).contains(.lease(wid(2), cid(2))))
        XCTAssertEqual(m.answer(first, at: 2), [.close(first, .rotation), .event(.connectionRemoved(first, .rotation))])
        XCTAssertEqual(m.connectionIDs, [cid(2)])
    }

    func testConnectionAttemptLimitIsNeverExceededAndCallersWait() {
        // A managed daemon's lifetime budget: 3 connections in all.
        var m = Machine.ready(.test(min: 2, max: 4) { $0.maxRequestsPerConnection = 1; $0.maxConnectionAttempts = 3 })
        XCTAssertEqual(m.openBudget, 1)
        let a = m.take(1, at: 0), b = m.take(2, at: 0)
        // A third caller waits: one more open is allowed, and only one.
        XCTAssertEqual(opens(m.queue(3, at: 1)), [3])
        XCTAssertEqual(opens(m.queue(4, at: 1)), [], "the budget is used up")
        XCTAssertEqual(m.openBudget, 0)
        XCTAssertTrue(m.connectionOpened(cid(3), now: at(2)).contains(.lease(wid(3), cid(3))))
        // Rotation closes a and b; nothing replaces them, and the waiter is neither failed nor
        // served: it waits (for its deadline, or for the daemon's replacement).
        let closing = m.answer(a, at: 3) + m.answer(b, at: 3)
        XCTAssertEqual(opens(closing), [])
        XCTAssertFalse(closing.contains { if case .failWaiter = $0 { true } else { false } })
        XCTAssertEqual(m.waitingCount, 1)
        XCTAssertEqual(opens(m.tick(now: at(60_000))), [])
        XCTAssertEqual(m.statistics.connectionAttempts, 3)
        XCTAssertEqual(m.waiterTimedOut(wid(4), now: at(60_000)), [.failWaiter(wid(4), .timedOut)])
        // With max_waiters 0 the busy path does not open past the budget either.
        var busy = Machine.ready(.test(min: 1, max: 4) { $0.maxWaiters = 0; $0.maxConnectionAttempts = 1 })
        _ = busy.take(at: 0)
        let (decision, actions) = busy.requestLease(wid(9), now: at(1))
        XCTAssertEqual(decision, .failed(.busy))
        XCTAssertEqual(opens(actions), [])
        // 0 is unlimited.
        XCTAssertEqual(Machine.ready(.test()).openBudget, .max)
    }

    func testLifetimeExpiryClosesAnIdleConnectionInTick() {
        var m = Machine.ready(.test(min: 1, max: 1) { $0.maxLifetime = .milliseconds(10_000) })
        let expiry = m.connections[cid(1)]?.expiresAt ?? at(0)
        XCTAssertGreaterThan(expiry, at(9000), "at most 10 % early")
        XCTAssertLessThanOrEqual(expiry, at(10_000))
        XCTAssertEqual(m.nextDeadline(), expiry)
        XCTAssertEqual(m.tick(now: at(9000)), [])
        XCTAssertEqual(m.tick(now: at(10_000)), [.close(cid(1), .lifetime), .event(.connectionRemoved(cid(1), .lifetime)),
                                                .open(cid(2)), .event(.poolStateChanged(from: .ready, to: .unhealthy))])
    }

    func testLifetimeExpiryClosesALeasedConnectionAtItsRelease() {
        var m = Machine.ready(.test(min: 1, max: 1) { $0.maxLifetime = .milliseconds(10_000) })
        let id = m.take(at: 0)
        XCTAssertEqual(m.tick(now: at(20_000)), [], "never closed while leased")
        XCTAssertEqual(m.answer(id, at: 20_000), [.close(id, .lifetime), .event(.connectionRemoved(id, .lifetime)),
                                                   .open(cid(2)), .event(.poolStateChanged(from: .ready, to: .unhealthy))])
        XCTAssertEqual(m.statistics.totalRequestsServed, 1)
    }

    func testLifetimeJitterSpreadsExpiriesOfConnectionsOpenedTogether() {
        let m = Machine.ready(.test(min: 10, max: 10) { $0.maxLifetime = .milliseconds(10_000) })
        let expiries = m.connections.values.compactMap(\.expiresAt)
        XCTAssertEqual(expiries.count, 10)
        XCTAssertTrue(expiries.allSatisfy { $0 > at(9000) && $0 <= at(10_000) })
        XCTAssertGreaterThan(Set(expiries).count, 1)
    }

    func testIdleConnectionAboveMinIsClosedAfterIdleTimeout() {
        var m = Machine.ready(.test(min: 1, max: 2) { $0.idleTimeout = .milliseconds(1000) })
        let first = m.take(1, at: 0)
        _ = m.queue(2, at: 0)
        _ = m.connectionOpened(cid(2), now: at(0))
        XCTAssertEqual(m.answer(first, at: 100), [])
        XCTAssertEqual(m.answer(cid(2), at: 200), [])
        XCTAssertEqual(m.nextDeadline(), at(1100))
        XCTAssertEqual(m.tick(now: at(1099)), [])
        XCTAssertEqual(m.tick(now: at(1100)), [.close(first, .idle), .event(.connectionRemoved(first, .idle))])
        XCTAssertEqual(m.tick(now: at(100_000)), [], "at min the last connection is kept")
        XCTAssertEqual(m.connectionIDs, [cid(2)])
        XCTAssertNil(m.nextDeadline())
        XCTAssertEqual(m.statistics.connectionsClosed[.idle], 1)
    }

    func testIdleConnectionsAtMinAreKept() {
        var m = Machine.ready(.test(min: 2, max: 4) { $0.idleTimeout = .milliseconds(1000) })
        XCTAssertEqual(m.tick(now: at(1_000_000)), [])
        XCTAssertEqual(m.count(.idle), 2)
    }

    // MARK: Load balancing

    func testLeastUsedPicksTheConnectionWithFewestRecentRequests() {
        var m = Machine.ready(.test(min: 3, max: 3), openedAt: [0, 1, 2])
        // All unused: ties go to the most recently active.
        let firstRound = (0..<3).map { _ in m.take(at: 10) }
        XCTAssertEqual(firstRound, [cid(3), cid(2), cid(1)])
        for (n, id) in firstRound.reversed().enumerated() { _ = m.answer(id, at: 20 + Int64(n)) } // 1 request each
        // #3 is the most recent but, once it has served 2, the ones with 1 win.
        XCTAssertEqual((0..<3).map { m.roundTrip(at: 30 + Int64($0)) }, [cid(3), cid(2), cid(1)])
    }

    func testRoundRobinCyclesThroughIdleConnections() {
        var m = Machine.ready(.test(min: 3, max: 3) { $0.loadBalancing = .roundRobin })
        XCTAssertEqual((0..<7).map { m.roundTrip(at: Int64($0)) }.map(\.value), [1, 2, 3, 1, 2, 3, 1])
        let held = m.take(at: 10) // #2, then the cycle skips it
        XCTAssertEqual(held, cid(2))
        XCTAssertEqual((0..<4).map { m.roundTrip(at: 11 + Int64($0)) }.map(\.value), [3, 1, 3, 1])
    }

    func testRandomPicksAmongIdleConnectionsOnly() {
        var m = Machine.ready(.test(min: 3, max: 3) { $0.loadBalancing = .random }, seed: 42)
        let held = m.take(at: 0)
        var picks: [ConnectionID: Int] = [:]
        for n in 1...300 { picks[m.roundTrip(at: Int64(n)), default: 0] += 1 }
        XCTAssertNil(picks[held])
        XCTAssertEqual(picks.count, 2)
        XCTAssertTrue(picks.values.allSatisfy { $0 > 100 }, "roughly even: \(picks)")
    }

    func testDegradedConnectionIsUsedOnlyWhenNoHealthyOneIsIdle() {
        var m = Machine.ready(.test(min: 2, max: 2), openedAt: [0, 1])
        let slow = m.take(at: 10), fast = m.take(at: 10)
        XCTAssertEqual([slow, fast], [cid(2), cid(1)])
        for n in 0..<3 { XCTAssertEqual(m.answer(fast, at: 11 + Int64(n)), []); XCTAssertEqual(m.take(at: 11 + Int64(n)), fast) }
        XCTAssertEqual(m.answer(fast, at: 20), [])
        // `slow` comes back degraded, the most recent and the least used: the healthy one still wins.
        let slowAnswer = m.answer(slow, at: 21, latency: 1500)
        XCTAssertTrue(slowAnswer.contains(.event(.latencySpike(slow, latency: .milliseconds(1500), average: .milliseconds(10)))))
        XCTAssertTrue(slowAnswer.contains(.event(.healthChanged(slow, from: .healthy, to: .degraded))))
        XCTAssertEqual(m.take(at: 22), fast)
        XCTAssertEqual(m.take(at: 23), slow, "degraded, but the only idle one")
        XCTAssertEqual(m.queue(5, at: 24), [])
    }

    // MARK: close()

    func testCloseFailsWaitersAndRetiresWhatIsOut() {
        var m = Machine.ready(.test(min: 1, max: 2))
        let leased = m.take(1, at: 0)
        XCTAssertEqual(m.queue(2, at: 0), [.open(cid(2))])
        XCTAssertEqual(m.close(now: at(5)), [.failWaiter(wid(2), .closed), .event(.poolStateChanged(from: .ready, to: .closed))])
        XCTAssertEqual(m.close(now: at(6)), [])
        XCTAssertEqual(m.connectionOpened(cid(2), now: at(7)), [.close(cid(2), .shutdown)])
        XCTAssertEqual(m.answer(leased, at: 8), [.close(leased, .shutdown), .event(.connectionRemoved(leased, .shutdown))])
        XCTAssertEqual(m.tick(now: at(1_000_000)), [])
        XCTAssertNil(m.nextDeadline())
        XCTAssertEqual(m.statistics.closedAt, at(5))
        XCTAssertEqual(m.poolState, .closed)
    }

    func testCloseShutsIdleConnectionsAtOnceAndLeasedOnesAtRelease() {
        var m = Machine.ready(.test(min: 2, max: 2))
        let leased = m.take(at: 0)
        let idle = m.connectionIDs.first { $0 != leased }!
        XCTAssertEqual(m.close(now: at(1)), [.close(idle, .shutdown), .event(.connectionRemoved(idle, .shutdown)),
                                             .event(.poolStateChanged(from: .ready, to: .closed))])
        XCTAssertEqual(m.tick(now: at(1000)), [], "tick does nothing after close")
        XCTAssertEqual(m.release(leased, now: at(2), outcome: .unused),
                       [.close(leased, .shutdown), .event(.connectionRemoved(leased, .shutdown))])
        XCTAssertEqual(m.release(leased, now: at(3), outcome: .unused), [])
        XCTAssertEqual(m.connectionCount, 0)
    }
}

/// Thread affinity: a caller gets back the connection it released last when that one is idle and
/// healthy; otherwise the balancing policy decides, as before.
final class PoolAffinityTests: XCTestCase {
    private func pool(_ count: Int, reuse: Int = 0, window: Span = .milliseconds(1000),
                      healthInterval: Span = .zero) -> (PoolStateMachine, [ConnectionID]) {
        var settings = PoolStateMachine.Settings()
        settings.reuseWhileWaiting = reuse
        settings.reuseWindow = window
        settings.minConnections = count
        settings.maxConnections = count
        settings.healthInterval = healthInterval
        var m = PoolStateMachine(settings: settings, now: .milliseconds(0))
        let ids = m.start(now: .milliseconds(0)).compactMap { action -> ConnectionID? in
            if case .open(let id) = action { return id } else { return nil }
        }
        for id in ids { _ = m.connectionOpened(id, now: .milliseconds(1)) }
        return (m, ids)
    }

    func testALoneCallerKeepsItsConnectionWhereLeastUsedWouldRotate() {
        var (m, ids) = pool(4)
        var rotated = Set<ConnectionID>(), kept = Set<ConnectionID>()
        var last: ConnectionID?
        for n in 0..<8 {
            let now = Instant.milliseconds(Int64(10 + n))
            guard case (.leased(let plain), _) = m.requestLease(WaiterID(UInt64(n)), now: now) else { return XCTFail() }
            rotated.insert(plain)
            _ = m.release(plain, now: now, outcome: .answered(latency: .milliseconds(1)))
            guard case (.leased(let sticky), _) = m.requestLease(WaiterID(UInt64(100 + n)), now: now, preferred: last) else { return XCTFail() }
            if last != nil { XCTAssertEqual(sticky, last, "the preferred idle connection is taken") }
            kept.insert(sticky)
            last = sticky
            _ = m.release(sticky, now: now, outcome: .answered(latency: .milliseconds(1)))
        }
        XCTAssertGreaterThan(rotated.count, 1, "least_used spreads a lone caller over \(ids.count) connections")
        XCTAssertEqual(kept.count, 1, "with affinity: the first pick, then always the same one")
    }

    func testAPreferredConnectionThatIsBusyOrNotHealthyIsNotTaken() {
        var (m, _) = pool(2)
        guard case (.leased(let a), _) = m.requestLease(WaiterID(1), now: .milliseconds(10)) else { return XCTFail() }
        guard case (.leased(let b), _) = m.requestLease(WaiterID(2), now: .milliseconds(10), preferred: a) else { return XCTFail() }
        XCTAssertNotEqual(a, b, "a is leased: the policy picks another")
        _ = m.release(b, now: .milliseconds(11), outcome: .broken(reason: "x"))
        _ = m.release(a, now: .milliseconds(11), outcome: .broken(reason: "y"))
        XCTAssertNil(m.health(of: b), "a broken connection is closed: preferring it finds nothing")
        XCTAssertEqual(m.requestLease(WaiterID(3), now: .milliseconds(12), preferred: b).0, .queued)
    }
}

extension PoolAffinityTests {
    /// With reuse_while_waiting 0 the affinity path never overtakes a waiter: a released
    /// connection goes to the oldest waiter first, so the thread that released it, asking again
    /// at once with it as preferred, queues behind (the bound on overtaking is zero).
    func testAffinityNeverOvertakesAWaiter() {
        var (m, _) = pool(1)
        guard case (.leased(let only), _) = m.requestLease(WaiterID(1), now: .milliseconds(10)) else { return XCTFail() }
        XCTAssertEqual(m.requestLease(WaiterID(2), now: .milliseconds(11)).0, .queued)
        XCTAssertEqual(m.requestLease(WaiterID(3), now: .milliseconds(12)).0, .queued)
        var order: [WaiterID] = []
        for step in 0..<6 {
            let now = Instant.milliseconds(Int64(20 + step))
            let actions = m.release(only, now: now, outcome: .answered(latency: .milliseconds(1)))
            let next = actions.compactMap { action -> WaiterID? in if case .lease(let w, _) = action { w } else { nil } }
            XCTAssertEqual(next.count, 1)
            order += next
            // The releasing caller comes straight back, preferring the connection it just had.
            let again = WaiterID(UInt64(100 + step))
            XCTAssertEqual(m.requestLease(again, now: now, preferred: only).0, .queued, "step \(step)")
        }
        XCTAssertEqual(order.prefix(2), [WaiterID(2), WaiterID(3)], "the waiters that were there first, in order")
        XCTAssertEqual(Array(order.dropFirst(2)), [100, 101, 102, 103].map { WaiterID(UInt64($0)) }, "then the returning callers, FIFO")
    }
}

/// reuse_while_waiting: while callers wait, a released connection is kept for its releaser's next
/// call, at most `reuse` calls in a row and at most `reuseGrace` long; then the longest waiter gets it.
extension PoolAffinityTests {
    private func leases(_ actions: [PoolAction]) -> [WaiterID] {
        actions.compactMap { action -> WaiterID? in if case .lease(let w, _) = action { w } else { nil } }
    }

    /// The bound: the releaser gets its connection back `reuse` times in a row, then the waiter
    /// gets it on the next release, and the releaser queues behind.
    func testAReleaserOvertakesAWaiterAtMostReuseTimes() {
        var (m, _) = pool(1, reuse: 3)
        guard case (.leased(let only), _) = m.requestLease(WaiterID(1), now: .milliseconds(10)) else { return XCTFail() }
        XCTAssertEqual(m.requestLease(WaiterID(2), now: .milliseconds(11)).0, .queued)
        var now = Instant.milliseconds(20)
        for step in 0..<3 {
            XCTAssertEqual(leases(m.release(only, now: now, outcome: .answered(latency: .milliseconds(1)))), [], "step \(step): kept")
            XCTAssertEqual(m.count(.idle), 1, "a kept connection counts as idle")
            XCTAssertEqual(m.requestLease(WaiterID(UInt64(100 + step)), now: now, preferred: only).0, .leased(only), "step \(step)")
            now = now + .milliseconds(1)
        }
        XCTAssertEqual(leases(m.release(only, now: now, outcome: .answered(latency: .milliseconds(1)))), [WaiterID(2)])
        XCTAssertEqual(m.requestLease(WaiterID(200), now: now, preferred: only).0, .queued, "the releaser now waits its turn")
        // The waiter that got it starts its own streak; the queued releaser is next after it.
        for step in 0..<3 {
            XCTAssertEqual(leases(m.release(only, now: now, outcome: .answered(latency: .milliseconds(1)))), [], "step \(step)")
            XCTAssertEqual(m.requestLease(WaiterID(UInt64(300 + step)), now: now, preferred: only).0, .leased(only))
        }
        XCTAssertEqual(leases(m.release(only, now: now, outcome: .answered(latency: .milliseconds(1)))), [WaiterID(200)])
    }

    /// reuseWindow: a caller keeps a connection while waiters wait only within the window since
    /// it got it; a slow call (longer than the window) hands the connection over at its release.
    func testAConnectionIsKeptOnlyWithinTheReuseWindow() {
        var (m, _) = pool(1, reuse: 8, window: .milliseconds(1))
        guard case (.leased(let only), _) = m.requestLease(WaiterID(1), now: .milliseconds(10)) else { return XCTFail() }
        XCTAssertEqual(m.requestLease(WaiterID(2), now: .milliseconds(10)).0, .queued)
        // Fast calls: kept twice inside the window (10.0 -> 10.4 -> 10.8 ms) ...
        var now = Instant.milliseconds(10)
        for step in 0..<2 {
            now = now + Span(nanoseconds: 400_000)
            XCTAssertEqual(leases(m.release(only, now: now, outcome: .answered(latency: .zero))), [], "step \(step)")
            XCTAssertEqual(m.requestLease(WaiterID(UInt64(100 + step)), now: now, preferred: only).0, .leased(only))
        }
        // ... and handed over once the window has passed (10 + 1.2 ms), well before 8 reuses.
        now = now + Span(nanoseconds: 400_000)
        XCTAssertEqual(leases(m.release(only, now: now, outcome: .answered(latency: .zero))), [WaiterID(2)])
        // The waiter's own run starts now: one slow call (2 ms) is handed over at its release.
        XCTAssertEqual(m.requestLease(WaiterID(3), now: now).0, .queued)
        XCTAssertEqual(leases(m.release(only, now: now + .milliseconds(2), outcome: .answered(latency: .milliseconds(2)))), [WaiterID(3)])
    }

    /// A releaser that does not come back holds nothing past reuseGrace: the next tick (the
    /// runner's backstop) or any other call into the pool hands the connection to the waiter.
    func testAKeptConnectionGoesToTheWaiterWhenItsCallerDoesNotComeBack() {
        var (m, _) = pool(1, reuse: 8)
        guard case (.leased(let only), _) = m.requestLease(WaiterID(1), now: .milliseconds(10)) else { return XCTFail() }
        XCTAssertEqual(m.requestLease(WaiterID(2), now: .milliseconds(11)).0, .queued)
        let releasedAt = Instant.milliseconds(20)
        XCTAssertEqual(leases(m.release(only, now: releasedAt, outcome: .answered(latency: .milliseconds(1)))), [])
        let expiry = releasedAt + m.settings.reuseGrace
        XCTAssertEqual(m.keptExpiry, expiry)
        XCTAssertEqual(leases(m.tick(now: expiry + Span(nanoseconds: -1))), [], "not before reuseGrace")
        XCTAssertEqual(leases(m.tick(now: expiry)), [WaiterID(2)])
        XCTAssertNil(m.keptExpiry)

        // The same through another caller's request: it queues behind the waiter, which is served.
        XCTAssertEqual(leases(m.release(only, now: expiry, outcome: .answered(latency: .milliseconds(1)))), [], "nobody waits: it goes idle, no hand-off")
        XCTAssertEqual(m.requestLease(WaiterID(3), now: expiry, preferred: only).0, .leased(only))
        XCTAssertEqual(m.requestLease(WaiterID(4), now: expiry).0, .queued)
        let later = expiry + .milliseconds(1)
        XCTAssertEqual(leases(m.release(only, now: later, outcome: .answered(latency: .milliseconds(1)))), [], "kept for its releaser")
        let (decision, actions) = m.requestLease(WaiterID(5), now: later + m.settings.reuseGrace)
        XCTAssertEqual(decision, .queued, "a newcomer never takes a kept connection")
        XCTAssertEqual(leases(actions), [WaiterID(4)], "but its request hands the expired one to the longest waiter")
    }

    /// The maintenance thread's pass for kept connections alone (no deadline of `tick` due):
    /// the overdue one goes to the waiter as `tick` would hand it over; one within its grace
    /// stays kept; an idle connection's due health check is left to `tick`.
    func testHandingOverOverdueKeptConnectionsAloneDoesWhatTheTickDoesForThem() {
        var (m, ids) = pool(2, reuse: 8, healthInterval: .milliseconds(5))
        guard case (.leased(let a), _) = m.requestLease(WaiterID(1), now: .milliseconds(10)),
              case (.leased(let b), _) = m.requestLease(WaiterID(2), now: .milliseconds(10)) else { return XCTFail() }
        XCTAssertEqual(Set([a, b]), Set(ids))
        XCTAssertEqual(m.requestLease(WaiterID(3), now: .milliseconds(11)).0, .queued)
        let releasedAt = Instant.milliseconds(20)
        XCTAssertEqual(leases(m.release(a, now: releasedAt, outcome: .answered(latency: .milliseconds(1)))), [])
        let expiry = releasedAt + m.settings.reuseGrace
        XCTAssertEqual(m.handOverOverdueKept(now: expiry + Span(nanoseconds: -1)), [], "not before reuseGrace")
        XCTAssertEqual(m.keptExpiry, expiry)
        XCTAssertEqual(leases(m.handOverOverdueKept(now: expiry)), [WaiterID(3)])
        XCTAssertNil(m.keptExpiry)
        // Nobody waits now: b goes idle at its release; its health check falls due later, and
        // only the tick starts it.
        XCTAssertEqual(leases(m.release(b, now: expiry, outcome: .answered(latency: .milliseconds(1)))), [])
        let late = expiry + .milliseconds(10)
        XCTAssertEqual(m.handOverOverdueKept(now: late), [], "no health check from this pass")
        XCTAssertTrue(m.tick(now: late).contains(.checkHealth(b)), "the tick checks it")
    }

    /// A fast call is recorded through its connection's handle; once the connection left the
    /// pool (here abandoned after a drain), its handle records nothing.
    func testAFastCallThroughAHandleOfAConnectionNoLongerInThePoolIsNotRecorded() {
        var (m, _) = pool(1)
        guard case (.leased(let only), _) = m.requestLease(WaiterID(1), now: .milliseconds(10)),
              let handle = m.connectionHandle(only) else { return XCTFail() }
        XCTAssertEqual(handle.id, only)
        _ = m.recordFastCall(handle, at: .milliseconds(11), latency: .milliseconds(1), lease: nil)
        _ = m.recordFastCall(handle, at: .milliseconds(12), latency: .milliseconds(1), lease: nil)
        XCTAssertEqual(m.statistics.totalRequestsServed, 2)
        XCTAssertEqual(m.requestsServed(by: only), 2)
        XCTAssertEqual(m.abandonAll(), [only])
        XCTAssertNil(m.connectionHandle(only))
        XCTAssertEqual(m.recordFastCall(handle, at: .milliseconds(13), latency: .milliseconds(1), lease: nil), [])
        XCTAssertEqual(m.statistics.totalRequestsServed, 2, "not recorded: the connection left the pool")
    }

    /// With nobody waiting any more a kept connection is plain idle: anyone may take it, and
    /// close closes it.
    func testAKeptConnectionIsIdleOnceNobodyWaits() {
        var (m, ids) = pool(2, reuse: 8)
        guard case (.leased(let a), _) = m.requestLease(WaiterID(1), now: .milliseconds(10)),
              case (.leased(let b), _) = m.requestLease(WaiterID(2), now: .milliseconds(10)) else { return XCTFail() }
        XCTAssertEqual(Set([a, b]), Set(ids))
        XCTAssertEqual(m.requestLease(WaiterID(3), now: .milliseconds(11)).0, .queued)
        XCTAssertEqual(leases(m.release(a, now: .milliseconds(12), outcome: .answered(latency: .milliseconds(1)))), [])
        // Within the grace (after it, the timeout would hand the overdue connection to this very
        // waiter first: every event begins by handing over what is overdue).
        XCTAssertEqual(m.waiterTimedOut(WaiterID(3), now: .milliseconds(12) + Span(nanoseconds: 100_000)), [.failWaiter(WaiterID(3), .timedOut)])
        XCTAssertEqual(m.requestLease(WaiterID(4), now: .milliseconds(13)).0, .leased(a), "a newcomer takes it: nobody waits")
        XCTAssertEqual(m.requestLease(WaiterID(5), now: .milliseconds(14)).0, .queued)
        XCTAssertEqual(leases(m.release(b, now: .milliseconds(15), outcome: .answered(latency: .milliseconds(1)))), [])
        let closing = m.close(now: .milliseconds(16))
        XCTAssertTrue(closing.contains(.close(b, .shutdown)), "close closes a kept connection like an idle one")
        XCTAssertNil(m.keptExpiry)
    }

    /// A model check over random sequences: no connection is ever idle while callers wait, no
    /// streak exceeds the bound, and every waiter is served within a bounded number of releases
    /// of its connection pool (each connection overtakes at most `reuse` times per waiter).
    func testRandomSequencesKeepTheBoundAndLoseNoWaiter() {
        for seed in 1...40 {
            var rng = SplitMix64(seed: UInt64(seed))
            let reuse = Int(rng.next() % 4)
            var (m, _) = pool(3, reuse: reuse, window: rng.next() % 2 == 0 ? .milliseconds(1000) : Span(nanoseconds: 300_000))
            var now = Instant.milliseconds(10)
            var holders: [WaiterID: ConnectionID] = [:]        // caller -> leased connection
            var queued: [WaiterID: Int] = [:]                  // waiter -> releases seen while it waited
            var ahead: [WaiterID: Int] = [:]                   // waiter -> waiters ahead of it when it queued
            var nextCaller: UInt64 = 1
            var served = 0
            for _ in 0..<600 {
                now = now + Span(nanoseconds: Int64(rng.next() % 150_000))
                var actions: [PoolAction] = []
                // Contended: callers arrive until about 6 wait; holders mostly come straight back.
                var roll = rng.next() % 8
                if holders.isEmpty && roll < 4 { roll = 4 }
                if queued.count >= 6 && (4...6).contains(roll) { roll = holders.isEmpty ? 7 : 0 }
                switch roll {
                case 0...3:
                    // A holder releases; it comes straight back three times in four.
                    let caller = holders.keys.sorted { $0.value < $1.value }[Int(rng.next() % UInt64(holders.count))]
                    let connection = holders.removeValue(forKey: caller)!
                    actions = m.release(connection, now: now, outcome: .answered(latency: .milliseconds(1)))
                    for waiter in queued.keys { queued[waiter]! += 1 }
                    if rng.next() % 4 != 0 {
                        let (decision, more) = m.requestLease(caller, now: now, preferred: connection)
                        actions += more
                        switch decision {
                        case .leased(let id): holders[caller] = id
                        case .queued: ahead[caller] = queued.count; queued[caller] = 0
                        case .failed: XCTFail("seed \(seed): refused")
                        }
                    }
                case 4...6:
                    let caller = WaiterID(nextCaller); nextCaller += 1
                    let (decision, more) = m.requestLease(caller, now: now)
                    actions += more
                    switch decision {
                    case .leased(let id): holders[caller] = id
                    case .queued: ahead[caller] = queued.count; queued[caller] = 0
                    case .failed: XCTFail("seed \(seed): refused")
                    }
                default:
                    actions = m.tick(now: now)
                }
                for case .lease(let waiter, let id) in actions {
                    XCTAssertNotNil(queued.removeValue(forKey: waiter), "seed \(seed): lease to a caller that was not waiting")
                    holders[waiter] = id
                    served += 1
                }
                if !queued.isEmpty {
                    XCTAssertEqual(m.connections.values.filter { $0.state == .idle }.count, 0, "seed \(seed): an idle connection while callers wait")
                }
                for connection in m.connections.values {
                    XCTAssertLessThanOrEqual(connection.reuseStreak, reuse, "seed \(seed): streak past the bound")
                }
                // Each of the 3 connections is kept at most `reuse` releases in a row, so at least
                // every 3 * reuse + 1 releases one goes to the longest waiter: a waiter with n
                // callers ahead of it is served within (n + 1) * (3 * reuse + 1) releases.
                for (waiter, releases) in queued {
                    XCTAssertLessThanOrEqual(releases, (ahead[waiter]! + 1) * (3 * reuse + 1), "seed \(seed): a waiter starves")
                }
            }
            XCTAssertGreaterThan(served, 50, "seed \(seed): the sequence was contended")
        }
    }
}
