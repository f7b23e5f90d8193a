import XCTest
@testable import GoxelPoolCore

/// Always the same "random" value, so jitter is exact.
struct FixedRandom: RandomSource {
    var value: Double
    mutating func nextUnit() -> Double { value }
}

final class BackoffTests: XCTestCase {
    typealias Machine = PoolStateMachine

    /// The delays (in ms, to the nanosecond) of `count` failures in a row.
    private func delays(_ backoff: inout Backoff, random value: Double, count: Int) -> [Double] {
        var random = FixedRandom(value: value)
        return (0..<count).map { _ in backoff.failed(random: &random).milliseconds }
    }

    private func assertDelays(_ actual: [Double], _ expected: [Double], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(actual.count, expected.count, file: file, line: line)
        for (a, e) in zip(actual, expected) { XCTAssertEqual(a, e, accuracy: 1e-6, file: file, line: line) }
    }

    // MARK: Backoff alone

    func testDelaysGrowByTheMultiplierAndCapAtTheMaximum() {
        let expected = [1000, 1600, 2560, 4096, 6553.6, 10485.76, 16777.216, 26843.5456, 42949.67296,
                        68719.476736, 109951.1627776, 120_000, 120_000, 120_000]
        var noJitter = Backoff(policy: .init(initial: .milliseconds(1000), multiplier: 1.6, jitter: 0,
                                             maximum: .milliseconds(120_000)))
        assertDelays(delays(&noJitter, random: 0.123, count: expected.count), expected)
        // With jitter, a random value in the middle of [0, 1) is no jitter at all.
        var grpc = Backoff(policy: .grpcDefault)
        assertDelays(delays(&grpc, random: 0.5, count: expected.count), expected)
        XCTAssertEqual(grpc.consecutiveFailures, expected.count)
    }

    func testJitterIsPlusOrMinusTheFraction() {
        var low = Backoff(policy: .grpcDefault), high = Backoff(policy: .grpcDefault)
        assertDelays(delays(&low, random: 0, count: 3), [800, 1280, 2048])
        let highs = delays(&high, random: 0.999_999, count: 3)
        for (delay, base) in zip(highs, [1000.0, 1600, 2560]) {
            XCTAssertLessThan(delay, base * 1.2)
            XCTAssertGreaterThan(delay, base * 1.2 - 0.01)
        }
    }

    func testJitteredDelaysStayWithinTheirBoundsAtTheCap() {
        var backoff = Backoff(policy: .grpcDefault)
        var random = SplitMix64(seed: 99)
        var base = 1000.0
        for _ in 0..<40 {
            let delay = backoff.failed(random: &random).milliseconds
            XCTAssertGreaterThanOrEqual(delay, base * 0.8 - 1e-6)
            XCTAssertLessThanOrEqual(delay, base * 1.2 + 1e-6)
            base = min(base * 1.6, 120_000)
        }
    }

    func testSuccessResetsTheBackoff() {
        var backoff = Backoff(policy: .grpcDefault)
        _ = delays(&backoff, random: 0.5, count: 5)
        backoff.succeeded()
        XCTAssertEqual(backoff.consecutiveFailures, 0)
        assertDelays(delays(&backoff, random: 0.5, count: 2), [1000, 1600])
    }

    // MARK: Backoff in the pool

    func testFailedOpenBacksOffThenRetriesOnceTheDelayEnds() {
        var m = Machine(settings: .test(min: 1, max: 1), now: at(0))
        XCTAssertEqual(m.start(now: at(0)), [.open(cid(1))])
        XCTAssertEqual(m.connectionOpenFailed(cid(1), now: at(0), reason: "refused"),
                       [.event(.connectionOpenFailed(consecutiveFailures: 1, retryIn: .milliseconds(1000))), .wakeMaintenance])
        XCTAssertEqual(m.nextDeadline(), at(1000))
        XCTAssertEqual(m.queue(1, at: 500), [], "no open while backing off")
        XCTAssertEqual(m.tick(now: at(999)), [])
        XCTAssertEqual(m.tick(now: at(1000)), [.open(cid(2))])
        XCTAssertEqual(m.connectionOpenFailed(cid(2), now: at(1000), reason: "refused"),
                       [.event(.connectionOpenFailed(consecutiveFailures: 2, retryIn: .milliseconds(1600))), .wakeMaintenance])
        XCTAssertEqual(m.tick(now: at(2599)), [])
        XCTAssertEqual(m.tick(now: at(2600)), [.open(cid(3))])
        XCTAssertEqual(m.connectionOpened(cid(3), now: at(2600)),
                       [.event(.connectionAdded(cid(3))), .lease(wid(1), cid(3)),
                        .event(.poolStateChanged(from: .unhealthy, to: .ready))])
        XCTAssertEqual(m.consecutiveOpenFailures, 0)
        XCTAssertEqual(m.statistics.connectionAttempts, 3)
        XCTAssertEqual(m.statistics.connectionFailures, 2)
        XCTAssertEqual(m.statistics.reconnectionAttempts, 2)
        XCTAssertEqual(m.statistics.connectionsCreated, 1)
        XCTAssertEqual(m.statistics.lastConnectError, "refused")

        // The connection breaks: replaced at once (a reconnection), and the backoff starts over.
        XCTAssertEqual(m.release(cid(3), now: at(3000), outcome: .broken(reason: "EOF")),
                       [.event(.healthChanged(cid(3), from: .healthy, to: .degraded)), .close(cid(3), .error),
                        .event(.connectionRemoved(cid(3), .error)), .open(cid(4)),
                        .event(.poolStateChanged(from: .ready, to: .unhealthy))])
        XCTAssertEqual(m.statistics.reconnectionAttempts, 3)
        XCTAssertEqual(m.connectionOpenFailed(cid(4), now: at(3000), reason: "refused"),
                       [.event(.connectionOpenFailed(consecutiveFailures: 1, retryIn: .milliseconds(1000))), .wakeMaintenance])
        XCTAssertEqual(m.statistics.connectionFailures, 3)
    }

    /// Three connections failing together at start (one round: one backoff step), then only one
    /// open in flight while the daemon is down.
    private func failingPool() -> Machine {
        var m = Machine(settings: .test(min: 3, max: 5), now: at(0))
        XCTAssertEqual(m.start(now: at(0)), [.open(cid(1)), .open(cid(2)), .open(cid(3))])
        for id in 1...3 { _ = m.connectionOpenFailed(cid(id), now: at(0), reason: "refused") }
        XCTAssertEqual(m.consecutiveOpenFailures, 1)
        XCTAssertEqual(m.statistics.connectionFailures, 3)
        XCTAssertEqual(m.nextDeadline(), at(1000))
        XCTAssertEqual(m.tick(now: at(1000)), [.open(cid(4))])
        for n in 1...5 { XCTAssertEqual(m.queue(UInt64(n), at: 1100), [], "one open at a time while failing") }
        XCTAssertEqual(m.tick(now: at(1200)), [])
        return m
    }

    /// The open that succeeds after an outage resumes growth at once, not at the next tick.
    func testOnlyOneOpenAtATimeWhileFailingThenGrowthResumesAtOnce() {
        var m = failingPool()
        let actions = m.connectionOpened(cid(4), now: at(1300))
        XCTAssertTrue(actions.contains(.lease(wid(1), cid(4))))
        XCTAssertEqual(opens(actions), [5, 6, 7, 8], "toward the 4 waiters, up to max")
        XCTAssertEqual(m.tick(now: at(1300)), [])
        XCTAssertEqual(m.statistics.connectionFailures, 3)
    }

    func testWaiterTimingOutWhileTheDaemonIsUnreachableFailsConnectFailed() {
        var m = Machine(settings: .test(min: 1, max: 1), now: at(0))
        _ = m.start(now: at(0))
        _ = m.connectionOpenFailed(cid(1), now: at(0), reason: "refused")
        _ = m.queue(1, at: 0)
        XCTAssertEqual(m.waiterTimedOut(wid(1), now: at(500)), [.failWaiter(wid(1), .connectFailed)])
        XCTAssertEqual(m.tick(now: at(1000)), [.open(cid(2))])
        _ = m.queue(2, at: 1000)
        XCTAssertEqual(m.waiterTimedOut(wid(2), now: at(1500)), [.failWaiter(wid(2), .connectFailed)],
                       "an open in flight is no connection")
    }

    func testWaiterTimingOutWhileAConnectionWorksFailsTimedOut() {
        var m = Machine.ready(.test(min: 1, max: 2))
        _ = m.take(1, at: 0)
        XCTAssertEqual(m.queue(2, at: 0), [.open(cid(2))])
        _ = m.connectionOpenFailed(cid(2), now: at(10), reason: "refused")
        XCTAssertEqual(m.waiterTimedOut(wid(2), now: at(500)), [.failWaiter(wid(2), .timedOut)])
    }

    func testFiveFailedOpensInARowOpenTheCircuitAndFailWaitersUnavailable() {
        var m = Machine(settings: .test(min: 1, max: 1), now: at(0))
        var now: Int64 = 0
        var id = opens(m.start(now: at(0)))[0]
        _ = m.queue(1, at: 0)
        var failed: [PoolAction] = []
        for _ in 1...5 {
            failed = m.connectionOpenFailed(cid(id), now: at(now), reason: "refused")
            now = m.nextDeadline().map { $0.nanoseconds / 1_000_000 } ?? now
            if m.breaker.state == .closed { id = opens(m.tick(now: at(now)))[0] }
        }
        XCTAssertEqual(Array(failed.suffix(2)), [.event(.circuitChanged(from: .closed, to: .open)), .failWaiter(wid(1), .unavailable)])
        XCTAssertEqual(m.requestLease(wid(2), now: at(9300)).0, .failed(.unavailable))
        XCTAssertEqual(m.statistics.rejectedUnavailable, 1)
        XCTAssertEqual(m.statistics.connectionFailures, 5)
    }
}
