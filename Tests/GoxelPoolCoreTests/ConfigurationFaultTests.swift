import XCTest
@testable import GoxelPoolCore

/// A connection refused for who we are or who the peer is (TLS verification, a refused client
/// certificate, peer credentials): a configuration fault, not a daemon that is down.
final class ConfigurationFaultTests: XCTestCase {
    func rejected(_ actions: [PoolAction]) -> [String] {
        actions.compactMap { if case .event(.connectionRejected(let reason, _, _)) = $0 { reason } else { nil } }
    }

    func failedWaiters(_ actions: [PoolAction]) -> [PoolFailure] {
        actions.compactMap { if case .failWaiter(_, let failure) = $0 { failure } else { nil } }
    }

    func testRejectedOpenFailsWaitersAtOnceAndSkipsTheBreaker() {
        var machine = PoolStateMachine(settings: .test(min: 1, max: 2) { $0.circuitBreaker.consecutiveConnectFailures = 1 }, now: at(0))
        let first = opens(machine.start(now: at(0)))
        XCTAssertEqual(first, [1])
        _ = machine.queue(1, at: 1)
        _ = machine.queue(2, at: 2)
        let actions = machine.connectionOpenFailed(cid(1), now: at(10), reason: "certificate verify failed", rejected: true)
        XCTAssertEqual(failedWaiters(actions), [.rejected, .rejected], "no waiter waits for its deadline")
        XCTAssertEqual(rejected(actions), ["certificate verify failed"], "one event (an alert) per attempt")
        XCTAssertFalse(actions.contains { if case .event(.circuitChanged) = $0 { true } else { false } },
                       "a breaker that opens after 1 failure stays closed")
        XCTAssertFalse(actions.contains { if case .event(.connectionOpenFailed) = $0 { true } else { false } },
                       "not counted toward reconnect_storm")
        XCTAssertEqual(machine.breaker.state, .closed)
        XCTAssertEqual(machine.rejection, "certificate verify failed")
        XCTAssertEqual(machine.statistics.connectionsRejected, 1)
        XCTAssertEqual(machine.statistics.connectionFailures, 1)
    }

    func testCallsFailFastDuringTheBackoffThenWaitForTheNextAttempt() {
        var machine = PoolStateMachine(settings: .test(min: 0, max: 2), now: at(0))
        _ = machine.start(now: at(0))
        let opened = opens(machine.queue(1, at: 0))
        _ = machine.connectionOpenFailed(cid(opened[0]), now: at(5), reason: "hostname mismatch", rejected: true)
        // Backoff 1000 ms without jitter: until then calls fail at once, and nothing is opened.
        let (decision, actions) = machine.requestLease(wid(2), now: at(500))
        XCTAssertEqual(decision, .failed(.rejected))
        XCTAssertEqual(opens(actions), [])
        // After the backoff a call queues and makes the one next attempt (the config may be fixed).
        let retry = opens(machine.queue(3, at: 1006))
        XCTAssertEqual(retry.count, 1)
        XCTAssertEqual(machine.requestLease(wid(4), now: at(1007)).0, .queued, "the attempt is in flight: wait for it")
        let again = machine.connectionOpenFailed(cid(retry[0]), now: at(1010), reason: "hostname mismatch", rejected: true)
        XCTAssertEqual(failedWaiters(again), [.rejected, .rejected])
        XCTAssertEqual(machine.requestLease(wid(5), now: at(1500)).0, .failed(.rejected), "backed off again (1600 ms)")
        // Fixed: the next attempt opens, the fault is forgotten.
        let third = opens(machine.queue(6, at: 2700))
        XCTAssertEqual(third.count, 1)
        let served = machine.connectionOpened(cid(third[0]), now: at(2710))
        XCTAssertTrue(served.contains(.lease(wid(6), cid(third[0]))))
        XCTAssertNil(machine.rejection)
    }

    func testWaitersStayWhenAnOpenConnectionCanServeThem() {
        var machine = PoolStateMachine.ready(.test(min: 1, max: 2))
        let busy = machine.take(at: 1)
        let opened = opens(machine.queue(1, at: 2))
        let actions = machine.connectionOpenFailed(cid(opened[0]), now: at(5), reason: "unknown ca", rejected: true)
        XCTAssertEqual(failedWaiters(actions), [], "the leased connection will come back to it")
        XCTAssertTrue(machine.answer(busy, at: 10).contains(.lease(wid(1), busy)))
    }

    func testAConnectionRefusedAtItsFirstReadBacksThePoolOff() {
        // TLS 1.3: the server refuses the client certificate after the handshake, at the first read.
        var machine = PoolStateMachine.ready(.test(min: 1, max: 1))
        let id = machine.take(at: 1)
        _ = machine.queue(1, at: 2)
        let actions = machine.release(id, now: at(3), outcome: .rejected(reason: "tlsv13 alert certificate required"))
        XCTAssertEqual(closes(actions), [.error])
        XCTAssertEqual(failedWaiters(actions), [.rejected])
        XCTAssertEqual(opens(actions), [], "no reconnection at once: backed off")
        XCTAssertEqual(rejected(actions), ["tlsv13 alert certificate required"])
        XCTAssertEqual(machine.breaker.state, .closed)
        XCTAssertEqual(machine.requestLease(wid(2), now: at(100)).0, .failed(.rejected))
    }

    func testAWaiterTimingOutWhileAnAttemptRunsGetsTheRejection() {
        var machine = PoolStateMachine(settings: .test(min: 0, max: 1), now: at(0))
        let opened = opens(machine.queue(1, at: 0))
        _ = machine.connectionOpenFailed(cid(opened[0]), now: at(5), reason: "refused", rejected: true)
        _ = machine.queue(2, at: 1100)
        XCTAssertEqual(failedWaiters(machine.waiterTimedOut(wid(2), now: at(1200))), [.rejected])
    }

    func testBalancerEjectsAnEndpointThatRefusesAtOnceButNeverTheLastOne() {
        var policy = EndpointBalancer.Policy()
        policy.consecutiveFailures = 5
        var b = EndpointBalancer(policy: policy, seed: 1)
        b.add(id: 1, now: at(0))
        b.add(id: 2, now: at(0))
        let changes = b.finished(id: 1, success: false, latency: .zero, now: at(1), configurationFault: true)
        XCTAssertEqual(changes.count, 1, "ejected after one refusal, not five failures")
        guard case .ejected(1, _)? = changes.first else { return XCTFail("\(changes)") }
        XCTAssertEqual(b.finished(id: 2, success: false, latency: .zero, now: at(2), configurationFault: true), [],
                       "the last available endpoint stays")
    }
}
