import GoxelPoolCore
import XCTest
@testable import GoxelPoolIO

/// A waiting caller's parking spot (a futex word): every delivery reaches its waiter, whether it
/// comes before the waiter sleeps, while it sleeps or after its deadline; only the first counts.
final class WaiterBoxTests: XCTestCase {
    private typealias Box = PoolClient.WaiterBox

    private static func failure(_ message: String) -> Result<DaemonConnection, CallFailure> {
        .failure(CallFailure(.busy, message))
    }

    private func message(_ outcome: Result<DaemonConnection, CallFailure>?) -> String? {
        guard case .failure(let failure)? = outcome else { return nil }
        return failure.message
    }

    func testADeliveryBeforeTheWaitIsThereAtOnce() {
        let box = Box()
        box.deliver(Self.failure("first"))
        XCTAssertEqual(message(box.wait(until: Clock.now())), "first", "a past deadline still sees a delivery made before")
        XCTAssertEqual(message(box.wait(until: nil)), "first")
    }

    func testOnlyTheFirstDeliveryCounts() {
        let box = Box()
        box.deliver(Self.failure("first"))
        box.deliver(Self.failure("second"))
        XCTAssertEqual(message(box.wait(until: nil)), "first")
    }

    /// The deadline passes with nothing delivered: nil, not before the deadline. A delivery made
    /// afterwards (the pool's hand-off racing the timeout) reaches the waiter's second wait.
    func testAWaitEndsAtItsDeadlineAndALateDeliveryStillArrives() {
        let box = Box()
        let began = Clock.now()
        XCTAssertNil(box.wait(until: began + .milliseconds(30)))
        XCTAssertGreaterThanOrEqual((Clock.now() - began).nanoseconds, Span.milliseconds(30).nanoseconds)
        let deliverer = LibraryThread {
            usleep(20_000)
            box.deliver(Self.failure("late"))
        }
        // A lost wake-up would leave it asleep until this deadline (the outcome is there by then).
        let waited = Clock.now()
        XCTAssertEqual(message(box.wait(until: waited + .milliseconds(5000))), "late")
        XCTAssertLessThan((Clock.now() - waited).nanoseconds, Span.milliseconds(2500).nanoseconds, "woken, not timed out")
        deliverer.join()
    }

    /// Deliveries racing waits, thousands of times: some land before the waiter sleeps, some
    /// while it sleeps. Each waiter gets its own outcome, and none sleeps through its wake-up: a
    /// lost one would keep a waiter asleep until its 5 s deadline (all of them take milliseconds).
    func testEveryDeliveryReachesItsWaiterWhileOthersRace() {
        let count = 3000
        let boxes = (0..<count).map { _ in Box() }
        let deliverer = LibraryThread {
            for (index, box) in boxes.enumerated() {
                if index % 100 == 0 { usleep(200) } else if index % 3 == 0 { sched_yield() }
                box.deliver(Self.failure("\(index)"))
            }
        }
        var wrong = 0
        let began = Clock.now()
        for (index, box) in boxes.enumerated() where message(box.wait(until: Clock.now() + .milliseconds(5000))) != "\(index)" {
            wrong += 1
        }
        let elapsed = Clock.now() - began
        deliverer.join()
        XCTAssertEqual(wrong, 0)
        XCTAssertLessThan(elapsed.nanoseconds, Span.milliseconds(2500).nanoseconds, "every waiter woken, none timed out")
    }
}
