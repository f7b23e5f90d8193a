import XCTest
@testable import GoxelPoolCore

final class HealthTrackerTests: XCTestCase {
    typealias Machine = PoolStateMachine

    /// healthy ≤ 1000 ms < degraded ≤ 3000 ms < unhealthy; 3 failures to condemn, 2 successes to recover.
    private func tracker(failureThreshold: Int = 3, successThreshold: Int = 2, trend: Bool = true) -> HealthTracker {
        HealthTracker(policy: .init(healthyLatency: .milliseconds(1000), degradedLatency: .milliseconds(3000),
                                    failureThreshold: failureThreshold, successThreshold: successThreshold,
                                    trendAnalysis: trend, sampleSize: 10))
    }

    /// Records one observation per second from `start` s: a latency in ms, or nil for a failure.
    /// Returns what each `record` returned (the new tier, when it changed).
    @discardableResult
    private func feed(_ t: inout HealthTracker, _ latencies: [Double?], from start: Int64 = 0) -> [HealthTier?] {
        latencies.enumerated().map { index, ms in
            t.record(success: ms != nil, latency: Span(nanoseconds: Int64((ms ?? 0) * 1e6)),
                     at: at((start + Int64(index)) * 1000), error: ms == nil ? "timeout" : nil)
        }
    }

    /// A tracker fed `latencies` one second apart from 0 s.
    private func fed(_ latencies: [Double?], trend: Bool = true) -> HealthTracker {
        var t = tracker(trend: trend)
        feed(&t, latencies)
        return t
    }

    // MARK: Tiers and hysteresis

    func testTierFollowsTheLatencyThresholds() {
        let t = tracker()
        XCTAssertEqual([1, 1000, 1001, 3000, 3001].map { t.classify(.milliseconds($0)) },
                       [.healthy, .healthy, .degraded, .degraded, .unhealthy])
        var slow = tracker()
        XCTAssertEqual(feed(&slow, [1500]), [.degraded], "one slow answer degrades at once")
    }

    func testUnhealthyOnlyAfterFailureThresholdConsecutiveFailures() {
        var t = tracker()
        XCTAssertEqual(feed(&t, [nil, nil, nil]), [.degraded, nil, .unhealthy])
        XCTAssertEqual(t.consecutiveFailures, 3)
        XCTAssertEqual(t.lastError, "timeout")
        XCTAssertEqual(t.successRate, 0)
        var slow = tracker()
        XCTAssertEqual(feed(&slow, [4000, 4000, 4000]), [.degraded, nil, .unhealthy], "too slow counts as failed")
    }

    func testFailuresMustBeConsecutive() {
        var t = tracker()
        XCTAssertEqual(feed(&t, [nil, nil, 10, nil, nil]), [.degraded, nil, nil, nil, nil])
        XCTAssertEqual(t.tier, .degraded)
    }

    func testHealthyOnlyAfterSuccessThresholdConsecutiveSuccesses() {
        var t = tracker()
        XCTAssertEqual(feed(&t, [nil, nil, nil, 10, nil, 10, 10]), [.degraded, nil, .unhealthy, nil, nil, nil, .healthy])
        var viaDegraded = tracker()
        XCTAssertEqual(feed(&viaDegraded, [nil, nil, nil, 1500, 1500]), [.degraded, nil, .unhealthy, nil, .degraded])
    }

    func testThresholdsOfOneSwitchAtOnce() {
        var t = tracker(failureThreshold: 1, successThreshold: 1)
        XCTAssertEqual(feed(&t, [nil, 10]), [.unhealthy, .healthy])
        let clamped = HealthTracker.Policy(healthyLatency: .zero, degradedLatency: .zero, failureThreshold: 0,
                                           successThreshold: -1, trendAnalysis: false, sampleSize: 0)
        XCTAssertEqual([clamped.failureThreshold, clamped.successThreshold, clamped.sampleSize], [1, 1, 2])
    }

    func testDegradedNeedsSuccessThresholdFastAnswersToBeHealthyAgain() throws {
        var t = tracker()
        XCTAssertEqual(feed(&t, [1500, 10, 1500, 10]), [.degraded, nil, nil, nil])
    }

    func testSamplesKeepTheLastSampleSizeSuccesses() {
        let t = fed((1...15).map { Optional(Double($0)) } + [nil])
        XCTAssertEqual(t.samples.map(\.latency.milliseconds), (6...15).map(Double.init))
        XCTAssertEqual(t.averageLatency, Span(nanoseconds: 10_500_000))
        XCTAssertEqual(t.totalObservations, 16)
        XCTAssertEqual(t.successRate, 15.0 / 16.0)
        XCTAssertEqual(t.lastObservation, at(15_000))
    }

    /// The average is kept as a running sum (not summed at every call): after every record,
    /// through thousands of evictions and failures, it is the mean of exactly the kept samples.
    func testAverageLatencyStaysTheMeanOfTheKeptSamples() {
        var t = tracker()
        var generator = SplitMix64(seed: 7)
        for index in 0..<5_000 {
            let failed = generator.next() % 7 == 0
            let latency = Span(nanoseconds: Int64(generator.next() % 5_000_000_000))
            t.record(success: !failed, latency: latency, at: at(Int64(index)), error: failed ? "timeout" : nil)
            let kept = t.samples.map(\.latency.nanoseconds)
            XCTAssertLessThanOrEqual(kept.count, 10)
            XCTAssertEqual(t.averageLatency, kept.isEmpty ? nil : Span(nanoseconds: kept.reduce(0, +) / Int64(kept.count)),
                           "after record \(index)")
        }
    }

    // MARK: Trend

    func testRisingLatencyIsDegradingWithAPredictedTimeToTheNextTier() throws {
        let t = fed(stride(from: 100.0, through: 550, by: 50).map { $0 })
        XCTAssertEqual(t.trend, .degrading)
        XCTAssertEqual(try XCTUnwrap(t.slope), 50e6, accuracy: 1, "50 ms of latency per second")
        let prediction = try XCTUnwrap(t.predictedTimeToNextTier(now: at(9000)))
        XCTAssertEqual(prediction.tier, .degraded)
        XCTAssertEqual(prediction.after.milliseconds, 9000, accuracy: 0.001, "550 ms now, 1000 ms in 9 s")
        XCTAssertEqual(try XCTUnwrap(t.predictedTimeToNextTier(now: at(10_000))).after.milliseconds, 8000, accuracy: 0.001)

        let degraded = fed(stride(from: 1100.0, through: 2000, by: 100).map { $0 })
        let next = try XCTUnwrap(degraded.predictedTimeToNextTier(now: at(9000)))
        XCTAssertEqual(next.tier, .unhealthy)
        XCTAssertEqual(next.after.milliseconds, 10_000, accuracy: 0.001)
        XCTAssertNil(fed(stride(from: 3100.0, through: 4000, by: 100).map { $0 }).predictedTimeToNextTier(now: at(9000)),
                     "already past the last threshold")
    }

    func testFallingLatencyIsImprovingAndFlatIsStable() {
        let falling = fed(stride(from: 550.0, through: 100, by: -50).map { $0 })
        XCTAssertEqual(falling.trend, .improving)
        XCTAssertNil(falling.predictedTimeToNextTier(now: at(9000)))
        XCTAssertEqual(fed(Array(repeating: 200, count: 10)).trend, .stable)
        XCTAssertEqual(fed([200, 210, 195, 205, 200, 190, 210, 200]).trend, .stable, "±5 % noise")
        XCTAssertEqual(fed([0.1, 0.3, 0.5, 0.7, 0.9]).trend, .stable, "sub-millisecond change is noise")
    }

    func testTrendNeedsThreeSamplesAndTrendAnalysis() {
        XCTAssertEqual(fed([100, 900]).trend, .stable)
        XCTAssertNil(fed([100, 900]).slope)
        let off = fed([100, 300, 500, 700], trend: false)
        XCTAssertNil(off.slope)
        XCTAssertEqual(off.trend, .stable)
        XCTAssertNil(off.predictedTimeToNextTier(now: at(4000)))
    }

    // MARK: Health checks in the pool

    private func checking(min: Int, interval: Int64 = 1000, _ tweak: (inout Machine.Settings) -> Void = { _ in }) -> Machine {
        .ready(.test(min: min, max: min) { $0.healthInterval = .milliseconds(Int(interval)); tweak(&$0) })
    }

    /// A tick at `ms` must check exactly `ids`; each check then answers after `latency` ms (nil:
    /// fails). Returns what each healthCheckFinished returned.
    private func checkRound(_ m: inout Machine, at ms: Int64, ids: [Int], latency: (Int) -> Int?,
                            file: StaticString = #filePath, line: UInt = #line) -> [[PoolAction]] {
        XCTAssertEqual(checks(m.tick(now: at(ms))), ids, file: file, line: line)
        return ids.map { m.checked(cid($0), at: ms, latency: latency($0)) }
    }

    func testHealthChecksRunOnIdleConnectionsOnlyAndNeverTwiceAtOnce() {
        var m = checking(min: 2, interval: 10_000)
        let leased = m.take(1, at: 0)
        let idle = m.connectionIDs.first { $0 != leased }!
        let due = m.nextDeadline() ?? at(0)
        XCTAssertTrue(due > at(9000) && due <= at(10_000), "up to 10 % early: \(due)")
        XCTAssertEqual(m.tick(now: at(9000)), [])
        XCTAssertEqual(m.tick(now: at(10_000)), [.checkHealth(idle)])
        XCTAssertEqual(m.count(.checking), 1)
        XCTAssertEqual(m.tick(now: at(10_001)), [])
        XCTAssertEqual(m.tick(now: at(50_000)), [], "one check in flight, the leased one never checked")
        XCTAssertEqual(m.queue(2, at: 50_000), [], "a checking connection is not handed out")
        XCTAssertEqual(m.checked(idle, at: 50_001),
                       [.lease(wid(2), idle)], "a waiter gets the connection back from its check")
        XCTAssertEqual(m.checked(idle, at: 50_002), [])
        XCTAssertEqual(m.statistics.healthChecks, 1)
        XCTAssertEqual(m.statistics.lastHealthCheck, at(50_001))
        XCTAssertEqual(m.poolHealth.totalObservations, 1)
    }

    func testAnAnsweredRequestPostponesTheHealthCheck() {
        var m = checking(min: 1, interval: 10_000)
        _ = m.answer(m.take(at: 0), at: 5000)
        XCTAssertEqual(m.tick(now: at(10_000)), [])
        XCTAssertEqual(m.tick(now: at(15_000)), [.checkHealth(cid(1))])
    }

    func testFailedHealthCheckClosesTheConnectionAndReplacesIt() {
        var m = checking(min: 2, interval: 10_000)
        let finished = checkRound(&m, at: 10_000, ids: [1, 2]) { $0 == 1 ? nil : 5 }
        XCTAssertEqual(finished[0], [.event(.healthChanged(cid(1), from: .healthy, to: .degraded)), .close(cid(1), .error),
                                     .event(.connectionRemoved(cid(1), .error)), .open(cid(3))])
        XCTAssertEqual(finished[1], [])
        XCTAssertEqual(m.statistics.healthChecks, 2)
        XCTAssertEqual(m.statistics.healthCheckFailures, 1)
        XCTAssertEqual(m.statistics.reconnectionAttempts, 1)
        XCTAssertEqual(m.statistics.connectionsClosed[.error], 1)
    }

    func testSlowHealthChecksCloseTheConnectionAfterFailureThreshold() {
        var m = checking(min: 1)
        let rounds = (1...3).map { checkRound(&m, at: Int64($0) * 1000, ids: [1]) { _ in 4000 }[0] }
        XCTAssertEqual(rounds, [
            [.event(.healthChanged(cid(1), from: .healthy, to: .degraded)), .event(.poolStateChanged(from: .ready, to: .unhealthy))],
            [],
            [.event(.healthChanged(cid(1), from: .degraded, to: .unhealthy)), .close(cid(1), .health),
             .event(.connectionRemoved(cid(1), .health)), .open(cid(2))],
        ])
    }

    func testAConnectionTurningUnhealthyOnReleaseIsClosedNotLeasedAgain() {
        var m = Machine.ready(.test(min: 2, max: 2) {
            $0.health = .init(healthyLatency: .milliseconds(1000), degradedLatency: .milliseconds(3000),
                              failureThreshold: 1, successThreshold: 2, trendAnalysis: true, sampleSize: 10)
        }, openedAt: [0, 1])
        let id = m.take(at: 10)
        XCTAssertEqual(id, cid(2))
        XCTAssertEqual(m.answer(id, at: 20, latency: 4000),
                       [.event(.healthChanged(id, from: .healthy, to: .unhealthy)), .close(id, .health),
                        .event(.connectionRemoved(id, .health)), .open(cid(3))])
        XCTAssertEqual(m.take(at: 21), cid(1))
        XCTAssertEqual(m.queue(9, at: 22), [])
    }

    func testPoolStateFollowsThe80And50PercentThresholds() {
        // n connections; #1, #2, #3 turn degraded one after the other.
        let expected: [Int: [PoolState]] = [5: [.ready, .degraded, .unhealthy], 4: [.degraded, .degraded, .unhealthy],
                                             2: [.degraded, .unhealthy]]
        for (n, states) in expected {
            var m = checking(min: n)
            XCTAssertEqual(m.poolState, .ready)
            let finished = checkRound(&m, at: 1000, ids: Array(1...n)) { $0 <= states.count ? 1500 : 5 }
            var state = PoolState.ready
            let after = finished.prefix(states.count).map { actions -> PoolState in
                for case .event(.poolStateChanged(_, let to)) in actions { state = to }
                return state
            }
            XCTAssertEqual(after, states, "\(n) connections")
            XCTAssertEqual(m.poolState, states.last)
            for ms in [2000, 3000] as [Int64] { _ = checkRound(&m, at: ms, ids: Array(1...n)) { _ in 5 } }
            XCTAssertEqual(m.poolState, .ready, "\(n) connections recovered")
        }
    }

    func testPoolStateChangesAreReportedAsEvents() {
        var m = checking(min: 5)
        let finished = checkRound(&m, at: 1000, ids: [1, 2, 3, 4, 5]) { $0 <= 3 ? 1500 : 5 }
        let degraded = { (id: Int) in PoolAction.event(.healthChanged(cid(id), from: .healthy, to: .degraded)) }
        XCTAssertEqual(finished, [[degraded(1)],
                                  [degraded(2), .event(.poolStateChanged(from: .ready, to: .degraded))],
                                  [degraded(3), .event(.poolStateChanged(from: .degraded, to: .unhealthy))],
                                  [], []])
    }

    func testReleaseThatChangesHealthUpdatesThePoolState() throws {
        var m = Machine.ready(.test(min: 2, max: 2), openedAt: [0, 1])
        let id = m.take(at: 10)
        XCTAssertEqual(m.answer(id, at: 20, latency: 1500),
                       [.event(.healthChanged(id, from: .healthy, to: .degraded)),
                        .event(.poolStateChanged(from: .ready, to: .degraded))])
        XCTAssertEqual(m.poolState, .degraded)
    }

    func testCheckFinishingAfterCloseClosesTheConnection() {
        var m = checking(min: 1)
        XCTAssertEqual(m.tick(now: at(1000)), [.checkHealth(cid(1))])
        XCTAssertEqual(m.close(now: at(1001)), [.event(.poolStateChanged(from: .ready, to: .closed))])
        XCTAssertEqual(m.checked(cid(1), at: 1002),
                       [.close(cid(1), .shutdown), .event(.connectionRemoved(cid(1), .shutdown))])
    }

    func testIdleConnectionsAboveMinAgeOutDespiteHealthChecks() throws {
        var m = Machine.ready(.test(min: 1, max: 2) {
            $0.healthInterval = .milliseconds(30_000); $0.idleTimeout = .milliseconds(60_000)
        })
        _ = m.take(1, at: 0)
        _ = m.queue(2, at: 0)
        _ = m.connectionOpened(cid(2), now: at(0))
        _ = m.answer(cid(1), at: 0)
        _ = m.answer(cid(2), at: 0)
        var closed: [CloseReason] = []
        for second in 1...120 {
            let actions = m.tick(now: at(Int64(second) * 1000))
            closed += closes(actions)
            for id in checks(actions) {
                closed += closes(m.checked(cid(id), at: Int64(second) * 1000))
            }
        }
        XCTAssertEqual(closed, [.idle], "idle for 120 s (only pinged) with idle_timeout 60 s")
        XCTAssertEqual(m.connectionCount, 1)
    }
}
