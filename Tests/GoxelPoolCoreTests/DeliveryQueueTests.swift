import XCTest
@testable import GoxelPoolCore

final class DeliveryQueueTests: XCTestCase {
    typealias Queue = DeliveryQueue<Int, String>

    private func drain(_ queue: inout Queue) -> [String] {
        var out: [String] = []
        while let item = queue.popFirst() {
            switch item {
            case .completion(let n): out.append("c\(n)")
            case .event(let e): out.append(e)
            }
        }
        return out
    }

    func testEmpty() {
        var queue = Queue(eventCapacity: 4)
        XCTAssertTrue(queue.isEmpty)
        XCTAssertEqual(queue.count, 0)
        XCTAssertNil(queue.popFirst())
        XCTAssertEqual(queue.peak, 0)
    }

    func testItemsComeOutInTheOrderTheyWentInAcrossBothKinds() {
        var queue = Queue(eventCapacity: 10)
        queue.append(completion: 1)
        queue.append(event: "e1")
        queue.append(event: "e2")
        queue.append(completion: 2)
        queue.append(completion: 3)
        queue.append(event: "e3")
        XCTAssertEqual(queue.count, 6)
        XCTAssertEqual(drain(&queue), ["c1", "e1", "e2", "c2", "c3", "e3"])
        XCTAssertTrue(queue.isEmpty)
        XCTAssertEqual(queue.peak, 6)
    }

    func testWhenEventsAreFullTheOldestEventIsDroppedAndCounted() {
        var queue = Queue(eventCapacity: 2)
        XCTAssertNil(queue.append(event: "e1"))
        queue.append(completion: 1)
        XCTAssertNil(queue.append(event: "e2"))
        XCTAssertEqual(queue.append(event: "e3"), "e1")
        XCTAssertEqual(queue.append(event: "e4"), "e2")
        XCTAssertEqual(queue.eventsDropped, 2)
        XCTAssertEqual(queue.count, 3)
        XCTAssertEqual(drain(&queue), ["c1", "e3", "e4"])
    }

    func testCompletionsAreNeverDropped() {
        var queue = Queue(eventCapacity: 1)
        for n in 0..<5000 { queue.append(completion: n) }
        queue.append(event: "e")
        queue.append(event: "f")
        XCTAssertEqual(queue.count, 5001)
        XCTAssertEqual(queue.eventsDropped, 1)
        let out = drain(&queue)
        XCTAssertEqual(out.count, 5001)
        XCTAssertEqual(Array(out.prefix(3)), ["c0", "c1", "c2"])
        XCTAssertEqual(out.last, "f")
        XCTAssertEqual(queue.peak, 5001)
    }

    func testACapacityBelowOneIsTreatedAsOne() {
        var queue = Queue(eventCapacity: 0)
        XCTAssertEqual(queue.eventCapacity, 1)
        queue.append(event: "a")
        XCTAssertEqual(queue.append(event: "b"), "a")
        XCTAssertEqual(drain(&queue), ["b"])
    }

    func testInterleavedAppendsAndPops() {
        var queue = Queue(eventCapacity: 3)
        queue.append(event: "e1")
        queue.append(completion: 1)
        guard case .event("e1")? = queue.popFirst() else { return XCTFail("e1 first") }
        queue.append(event: "e2")
        queue.append(completion: 2)
        XCTAssertEqual(drain(&queue), ["c1", "e2", "c2"])
        queue.append(completion: 3)
        XCTAssertEqual(drain(&queue), ["c3"])
        XCTAssertEqual(queue.peak, 3)
    }
}
