import XCTest
@testable import GoxelPoolCore

/// The managed daemons' state machine, driven by a manual clock (`at(ms)`, shared with
/// PoolStateMachineTests): every action it asks for, in milliseconds, without a process.
final class DaemonSupervisionTests: XCTestCase {
    typealias Machine = DaemonSupervision

    func did(_ n: Int) -> DaemonID { DaemonID(n) }

    /// Repeatable policy: backoff without jitter (1000, 1600, 2560 ms ...), no age limit.
    func policy(instances: Int = 1, limit: Int = 40, poolMax: Int = 4, _ tweak: (inout Machine.Policy) -> Void = { _ in }) -> Machine.Policy {
        var p = Machine.Policy()
        p.instances = instances
        p.maxConnectionsPerProcess = limit
        p.poolMaxConnections = poolMax
        p.startTimeout = .milliseconds(5000)
        p.stopGrace = .milliseconds(2000)
        p.drainTimeout = .milliseconds(3000)
        p.backoff = .init(initial: .milliseconds(1000), multiplier: 1.6, jitter: 0, maximum: .milliseconds(120_000))
        tweak(&p)
        return p
    }

    func spawns(_ actions: [Machine.Action]) -> [Int] {
        actions.compactMap { if case .spawn(let id, _) = $0 { id.value } else { nil } }
    }

    func events(_ actions: [Machine.Action]) -> [Machine.Event] {
        actions.compactMap { if case .event(let event) = $0 { event } else { nil } }
    }

    /// Starts daemon `id` with pid 1000 + id and lets its first probe answer at `ms`.
    func makeReady(_ m: inout Machine, _ id: Int, spawnedAt: Int64, readyAt ms: Int64) -> [Machine.Action] {
        XCTAssertEqual(m.spawned(did(id), pid: Int32(1000 + id), now: at(spawnedAt)), [])
        let due = m.tick(now: at(spawnedAt + 5))
        XCTAssertEqual(due, [.probe(did(id), timeout: .milliseconds(1000))])
        return m.probeFinished(did(id), connected: true, answered: true, now: at(ms))
    }

    /// A machine whose `instances` daemons are all ready at 10 ms.
    func ready(_ p: Machine.Policy) -> Machine {
        var m = Machine(policy: p)
        XCTAssertEqual(spawns(m.start(now: at(0))), Array(1...p.instances))
        for id in 1...p.instances { _ = makeReady(&m, id, spawnedAt: 0, readyAt: 10) }
        return m
    }

    // MARK: Start

    func testStartSpawnsEveryInstanceAndAddsEachEndpointWhenItAnswers() {
        var m = Machine(policy: policy(instances: 2))
        XCTAssertEqual(m.start(now: at(0)), [.spawn(did(1), slot: 0), .spawn(did(2), slot: 1)])
        XCTAssertEqual(m.availability, .starting, "calls made now wait for a daemon")
        XCTAssertEqual(m.spawned(did(1), pid: 501, now: at(1)), [])
        XCTAssertEqual(m.nextDeadline(), at(6), "first probe 5 ms after the start")
        XCTAssertEqual(m.tick(now: at(6)), [.probe(did(1), timeout: .milliseconds(1000))])
        XCTAssertEqual(m.tick(now: at(7)), [], "one probe at a time")
        // Not listening yet: the next probe in 10 ms, then 20, 40, 80, 100, 100 ...
        XCTAssertEqual(m.probeFinished(did(1), connected: false, answered: false, now: at(8)), [])
        XCTAssertEqual(m.nextDeadline(), at(18))
        XCTAssertEqual(m.tick(now: at(18)), [.probe(did(1), timeout: .milliseconds(1000))])
        XCTAssertEqual(m.probeFinished(did(1), connected: true, answered: true, now: at(20)), [
            .addEndpoint(did(1), slot: 0, connectionBudget: 39),
            .event(.started(did(1), slot: 0, startup: .milliseconds(20), replaces: nil)),
        ])
        XCTAssertEqual(m.daemons[did(1)]?.state, .ready)
        XCTAssertEqual(m.daemons[did(1)]?.lifetimeConnections, 1, "the probe's connection counts")
        XCTAssertEqual(m.daemons[did(2)]?.state, .starting)
        XCTAssertEqual(m.daemonsStarted, 2)
    }

    func testProbeTimeoutNeverExceedsTheTimeLeftToStart() {
        var m = Machine(policy: policy { $0.startTimeout = .milliseconds(300) })
        _ = m.start(now: at(0))
        _ = m.spawned(did(1), pid: 7, now: at(0))
        XCTAssertEqual(m.tick(now: at(5)), [.probe(did(1), timeout: .milliseconds(295))])
    }

    // MARK: Start failures and backoff

    func testCommandThatCannotRunIsRetriedWithTheBackoffNotInALoop() {
        var m = Machine(policy: policy())
        _ = m.start(now: at(0))
        let failed = m.spawnFailed(did(1), reason: "no such file", now: at(0))
        XCTAssertEqual(failed, [.event(.startFailed(did(1), slot: 0, failure: .spawnFailed("no such file"),
                                                    consecutiveFailures: 1, retryIn: .milliseconds(1000)))])
        XCTAssertEqual(m.availability, .failing(did(1), slot: 0, .spawnFailed("no such file")), "calls fail fast with the reason")
        XCTAssertEqual(m.nextDeadline(), at(1000))
        XCTAssertEqual(m.tick(now: at(999)), [])
        // Over 10 s of failures: attempts at 0, 1000, 2600, 5160, 9256 ms and nothing between.
        var attempts: [Int64] = [0]
        while let next = m.nextDeadline(), next < at(10_000) {
            for id in spawns(m.tick(now: next)) {
                attempts.append(next.nanoseconds / 1_000_000)
                _ = m.spawnFailed(did(id), reason: "no such file", now: next)
            }
        }
        XCTAssertEqual(attempts, [0, 1000, 2600, 5160, 9256])
        XCTAssertEqual(m.slots[0].startFailures, 5)
        XCTAssertEqual(m.slots[0].restarts, 4)
    }

    func testDaemonThatExitsBeforeAnsweringIsAStartFailure() {
        var m = Machine(policy: policy())
        _ = m.start(now: at(0))
        _ = m.spawned(did(1), pid: 42, now: at(0))
        let actions = m.exited(did(1), status: .exited(3), now: at(12))
        XCTAssertEqual(events(actions), [
            .exited(did(1), slot: 0, status: .exited(3), expected: false, uptime: nil),
            .startFailed(did(1), slot: 0, failure: .exited(.exited(3), after: .milliseconds(12)), consecutiveFailures: 1,
                         retryIn: .milliseconds(1000)),
        ])
        XCTAssertFalse(actions.contains { if case .removeEndpoint = $0 { true } else { false } }, "it never had an endpoint")
        XCTAssertEqual(spawns(m.tick(now: at(1012))), [2])
    }

    func testDaemonThatNeverAnswersIsKilledAtTheStartTimeout() {
        var m = Machine(policy: policy())
        _ = m.start(now: at(0))
        _ = m.spawned(did(1), pid: 42, now: at(0))
        var now: Int64 = 0
        while let next = m.nextDeadline(), next < at(5000) {
            now = next.nanoseconds / 1_000_000
            for case .probe(let id, _) in m.tick(now: at(now)) {
                _ = m.probeFinished(id, connected: false, answered: false, now: at(now))
            }
        }
        XCTAssertEqual(m.tick(now: at(5000)), [
            .event(.startFailed(did(1), slot: 0, failure: .timedOut(.milliseconds(5000)), consecutiveFailures: 1,
                                retryIn: .milliseconds(1000))),
            .signal(did(1), .kill),
        ])
        // Reaped: an expected exit (it was killed), not a second failure.
        XCTAssertEqual(events(m.exited(did(1), status: .signaled(9), now: at(5001))),
                       [.exited(did(1), slot: 0, status: .signaled(9), expected: true, uptime: nil)])
        XCTAssertEqual(m.slots[0].startFailures, 1)
        XCTAssertEqual(spawns(m.tick(now: at(6000))), [2])
    }

    func testSuccessfulStartClearsTheFailureButKeepsTheBackoffUntilStable() {
        var m = Machine(policy: policy())
        _ = m.start(now: at(0))
        _ = m.spawnFailed(did(1), reason: "x", now: at(0))
        XCTAssertEqual(spawns(m.tick(now: at(1000))), [2])
        _ = makeReady(&m, 2, spawnedAt: 1000, readyAt: 1010)
        XCTAssertNil(m.slots[0].lastFailure)
        XCTAssertEqual(m.availability, .serving)
        // Up for the stable time: the backoff starts again from its initial delay.
        XCTAssertEqual(m.nextDeadline(), at(11_010))
        _ = m.tick(now: at(11_010))
        let crash = m.exited(did(2), status: .signaled(11), now: at(20_000))
        XCTAssertEqual(spawns(crash), [3], "restarted at once")
    }

    func testAvailabilityWithSomeSlotsFailing() {
        var m = Machine(policy: policy(instances: 2))
        _ = m.start(now: at(0))
        _ = m.spawnFailed(did(1), reason: "x", now: at(0))
        XCTAssertEqual(m.availability, .starting, "slot 1 is still starting")
        _ = m.spawnFailed(did(2), reason: "y", now: at(0))
        XCTAssertEqual(m.availability, .failing(did(1), slot: 0, .spawnFailed("x")))
        _ = m.tick(now: at(1000))
        _ = makeReady(&m, 3, spawnedAt: 1000, readyAt: 1010)
        XCTAssertEqual(m.availability, .serving, "slot 0 serves; slot 1 keeps failing")
    }

    // MARK: Crashes

    func testReadyDaemonThatIsKilledIsRemovedAndRestartedAtOnce() {
        var m = ready(policy(instances: 2))
        let actions = m.exited(did(1), status: .signaled(9), now: at(500))
        XCTAssertEqual(actions, [
            .removeEndpoint(did(1)),
            .event(.exited(did(1), slot: 0, status: .signaled(9), expected: false, uptime: .milliseconds(490))),
            .event(.crashed(did(1), slot: 0, status: .signaled(9), uptime: .milliseconds(490), restartIn: .zero)),
            .spawn(did(3), slot: 0),
        ])
        XCTAssertEqual(m.slots[0].crashes, 1)
        XCTAssertEqual(m.slots[0].restarts, 1)
        // The successor takes the slot (and with it the lost daemon's sessions) when it is ready.
        let back = makeReady(&m, 3, spawnedAt: 500, readyAt: 530)
        XCTAssertEqual(back, [
            .addEndpoint(did(3), slot: 0, connectionBudget: 39),
            .event(.started(did(3), slot: 0, startup: .milliseconds(30), replaces: nil)),
        ])
    }

    func testDaemonsThatKeepDyingAreRestartedWithBackoffAndOneCrashLoopAlert() {
        var m = ready(policy())
        // First quick death: at once. Second: after 1 s, with the alert. Third: after 1.6 s, no new alert.
        XCTAssertEqual(spawns(m.exited(did(1), status: .signaled(11), now: at(100))), [2])
        _ = makeReady(&m, 2, spawnedAt: 100, readyAt: 110)
        let second = m.exited(did(2), status: .signaled(11), now: at(200))
        XCTAssertEqual(spawns(second), [])
        XCTAssertEqual(events(second).last, .crashLoop(slot: 0, consecutiveExits: 2, retryIn: .milliseconds(1000)))
        XCTAssertEqual(m.availability, .starting, "a crash is not a start failure: calls wait for the restart")
        XCTAssertEqual(spawns(m.tick(now: at(1200))), [3])
        _ = makeReady(&m, 3, spawnedAt: 1200, readyAt: 1210)
        let third = m.exited(did(3), status: .signaled(11), now: at(1300))
        XCTAssertFalse(events(third).contains { if case .crashLoop = $0 { true } else { false } })
        XCTAssertEqual(m.nextDeadline(), at(2900))
        XCTAssertEqual(m.slots[0].restarts, 2, "the third restart is counted when it starts")
        _ = m.tick(now: at(2900))
        XCTAssertEqual(m.slots[0].restarts, 3)
    }

    func testDaemonThatDiedAfterRunningStablyIsRestartedAtOnce() {
        var m = ready(policy())
        _ = m.exited(did(1), status: .signaled(11), now: at(100))
        _ = makeReady(&m, 2, spawnedAt: 100, readyAt: 110)
        _ = m.tick(now: at(10_110))
        XCTAssertEqual(spawns(m.exited(did(2), status: .signaled(11), now: at(300_000))), [3])
    }

    // MARK: Recycling

    func testRecyclingStartsAReplacementBeforeTheLimitThenRetiresTheOldDaemon() {
        // Limit 40, pool of 4: headroom max(8, 5) = 8, so the replacement starts at 32.
        XCTAssertEqual(policy().recycleHeadroom, 8)
        XCTAssertEqual(policy().recycleThreshold, 32)
        var m = ready(policy())
        XCTAssertEqual(m.connectionsOpened(did(1), count: 30, now: at(100)), [])
        let recycling = m.connectionsOpened(did(1), count: 31, now: at(200))
        XCTAssertEqual(recycling, [
            .event(.recycling(did(1), slot: 0, reason: .connections, lifetimeConnections: 32, age: .milliseconds(190))),
            .spawn(did(2), slot: 0),
        ])
        XCTAssertEqual(m.connectionsOpened(did(1), count: 35, now: at(210)), [], "one replacement")
        // The old daemon keeps serving until its replacement answers.
        XCTAssertEqual(m.current(ofSlot: 0)?.id, did(1))
        let ready = makeReady(&m, 2, spawnedAt: 200, readyAt: 240)
        XCTAssertEqual(ready, [
            .addEndpoint(did(2), slot: 0, connectionBudget: 39),
            .event(.started(did(2), slot: 0, startup: .milliseconds(40), replaces: did(1))),
            .retire(did(1), replacement: did(2), drain: .milliseconds(3000)),
        ])
        XCTAssertEqual(m.current(ofSlot: 0)?.id, did(2))
        XCTAssertEqual(m.daemons[did(1)]?.state, .retiring)
        XCTAssertEqual(m.slots[0].recycles, 1)
        XCTAssertEqual(m.slots[0].restarts, 0, "a replacement is no restart")
        // Drained: SIGTERM, then SIGKILL after the grace time if it is still there.
        XCTAssertEqual(m.endpointRemoved(did(1), now: at(300)), [.signal(did(1), .terminate)])
        XCTAssertEqual(m.nextDeadline(), at(2300))
        XCTAssertEqual(m.tick(now: at(2300)), [.signal(did(1), .kill)])
        XCTAssertEqual(m.tick(now: at(2400)), [])
        XCTAssertEqual(events(m.exited(did(1), status: .signaled(9), now: at(2310))), [
            .exited(did(1), slot: 0, status: .signaled(9), expected: true, uptime: .milliseconds(2300)),
            .retired(did(1), slot: 0, replacedBy: did(2)),
        ])
        XCTAssertEqual(m.liveDaemons.map(\.id), [did(2)])
    }

    func testRecyclingIsDrivenPastSeveralGenerations() {
        var m = ready(policy(limit: 10, poolMax: 2))
        XCTAssertEqual(m.policy.recycleThreshold, 6)
        var current = 1, now: Int64 = 10
        for _ in 0..<5 {
            now += 100
            let actions = m.connectionsOpened(did(current), count: 5, now: at(now))
            guard let next = spawns(actions).first else { return XCTFail("no replacement for \(current)") }
            _ = makeReady(&m, next, spawnedAt: now, readyAt: now + 20)
            XCTAssertEqual(m.endpointRemoved(did(current), now: at(now + 30)), [.signal(did(current), .terminate)])
            _ = m.exited(did(current), status: .exited(0), now: at(now + 40))
            current = next
        }
        XCTAssertEqual(m.slots[0].recycles, 5)
        XCTAssertEqual(m.liveDaemons.map(\.id), [did(6)])
    }

    func testAgeLimitRecyclesWithUpToTenPercentJitter() {
        var m = ready(policy { $0.maxAge = .milliseconds(10_000) })
        let due = m.nextDeadline() ?? at(0)
        XCTAssertGreaterThan(due, at(9_010))
        XCTAssertLessThanOrEqual(due, at(10_010))
        let actions = m.tick(now: due)
        XCTAssertEqual(spawns(actions), [2])
        guard case .recycling(_, _, let reason, _, _)? = events(actions).first else { return XCTFail("\(actions)") }
        XCTAssertEqual(reason, .age)
    }

    func testFailedReplacementLeavesTheOldDaemonServingAndIsRetried() {
        var m = ready(policy())
        _ = m.connectionsOpened(did(1), count: 31, now: at(100))
        let failed = m.spawnFailed(did(2), reason: "gone", now: at(100))
        XCTAssertEqual(events(failed).count, 1)
        XCTAssertEqual(m.current(ofSlot: 0)?.id, did(1))
        XCTAssertEqual(m.availability, .serving)
        XCTAssertEqual(spawns(m.tick(now: at(1100))), [3])
    }

    func testDaemonDyingWhileItsReplacementStartsIsReplacedByIt() {
        var m = ready(policy())
        _ = m.connectionsOpened(did(1), count: 31, now: at(100))
        let crash = m.exited(did(1), status: .signaled(9), now: at(120))
        XCTAssertEqual(spawns(crash), [], "the replacement already starting takes over")
        XCTAssertTrue(crash.contains(.removeEndpoint(did(1))))
        let ready = makeReady(&m, 2, spawnedAt: 100, readyAt: 150)
        XCTAssertFalse(ready.contains { if case .retire = $0 { true } else { false } })
        XCTAssertTrue(ready.contains(.addEndpoint(did(2), slot: 0, connectionBudget: 39)), "\(ready)")
    }

    func testRetiringDaemonThatDiesIsNotRestarted() {
        var m = ready(policy())
        _ = m.connectionsOpened(did(1), count: 31, now: at(100))
        _ = makeReady(&m, 2, spawnedAt: 100, readyAt: 150)
        let died = m.exited(did(1), status: .signaled(11), now: at(160))
        XCTAssertEqual(spawns(died), [])
        XCTAssertEqual(events(died).last, .retired(did(1), slot: 0, replacedBy: did(2)))
        XCTAssertEqual(m.slots[0].crashes, 0)
    }

    func testHeadroomStaysWithinHalfTheLimit() {
        XCTAssertEqual(policy(limit: 240, poolMax: 10).recycleThreshold, 210)
        XCTAssertEqual(policy(limit: 8, poolMax: 10).recycleThreshold, 4)
        XCTAssertEqual(policy(limit: 0).recycleThreshold, 0)
        var unlimited = ready(policy(limit: 0))
        XCTAssertEqual(unlimited.connectionsOpened(did(1), count: 1_000_000, now: at(100)), [])
    }

    // MARK: Stop

    func testStopAllTerminatesEveryDaemonKillsAfterTheGraceAndRestartsNothing() {
        var m = ready(policy(instances: 2))
        _ = m.exited(did(2), status: .signaled(9), now: at(50)) // restart of slot 1 as daemon 3
        _ = m.spawned(did(3), pid: 1003, now: at(50))
        XCTAssertEqual(m.stopAll(now: at(60)), [.signal(did(1), .terminate), .signal(did(3), .kill)],
                       "a daemon still starting serves nothing: killed at once")
        XCTAssertEqual(m.availability, .stopped)
        XCTAssertEqual(m.stopAll(now: at(61)), [])
        XCTAssertEqual(m.tick(now: at(2060)), [.signal(did(1), .kill)])
        XCTAssertFalse(m.isFinished)
        XCTAssertEqual(events(m.exited(did(1), status: .signaled(15), now: at(70))),
                       [.exited(did(1), slot: 0, status: .signaled(15), expected: true, uptime: .milliseconds(60))])
        _ = m.exited(did(3), status: .signaled(9), now: at(80))
        XCTAssertTrue(m.isFinished)
        XCTAssertNil(m.nextDeadline())
        // A spawn that completes after the stop is stopped at once.
        var late = Machine(policy: policy())
        _ = late.start(now: at(0))
        _ = late.stopAll(now: at(1))
        XCTAssertEqual(late.spawned(did(1), pid: 9, now: at(2)), [.signal(did(1), .kill)])
    }

    // MARK: Output

    func testOutputLinesAreRateLimitedAndDropsAreCounted() {
        var limiter = LineRateLimiter(burst: 3, perSecond: 2, now: at(0))
        XCTAssertEqual((0..<5).map { _ in limiter.admit(now: at(0)) },
                       [.emit(droppedBefore: 0), .emit(droppedBefore: 0), .emit(droppedBefore: 0), .drop, .drop])
        XCTAssertEqual(limiter.admit(now: at(499)), .drop)
        // Tokens accrue at 2 a second: two lines at 1 s, then nothing until more time passes.
        XCTAssertEqual(limiter.admit(now: at(1000)), .emit(droppedBefore: 3))
        XCTAssertEqual(limiter.admit(now: at(1000)), .emit(droppedBefore: 0))
        XCTAssertEqual(limiter.admit(now: at(1000)), .drop)
        XCTAssertEqual(limiter.droppedTotal, 4)
    }
}
