import XCTest
@testable import GoxelPoolCore

final class EndpointBalancerTests: XCTestCase {
    func balancer(_ count: Int, _ configure: (inout EndpointBalancer.Policy) -> Void = { _ in }) -> EndpointBalancer {
        var policy = EndpointBalancer.Policy()
        policy.baseEjection = .milliseconds(1000)
        configure(&policy)
        var b = EndpointBalancer(policy: policy, seed: 42)
        for id in 1...count { b.add(id: id, now: at(0)) }
        return b
    }

    /// Routes `n` calls that each finish at once with `latency(id)`; returns calls per endpoint.
    func route(_ b: inout EndpointBalancer, _ n: Int, from start: Int64 = 0, latency: (Int) -> Int) -> [Int: Int] {
        var counts: [Int: Int] = [:]
        for i in 0..<n {
            guard let picked = b.pick(now: at(start + Int64(i))) else { continue }
            counts[picked.id, default: 0] += 1
            _ = b.finished(id: picked.id, success: true, latency: .milliseconds(latency(picked.id)), now: at(start + Int64(i)))
        }
        return counts
    }

    func testEqualEndpointsShareTheTraffic() {
        var b = balancer(3)
        let counts = route(&b, 900) { _ in 1 }
        for id in 1...3 { XCTAssertGreaterThan(counts[id] ?? 0, 200, "\(counts)") }
    }

    func testASlowEndpointGetsLessTraffic() {
        var b = balancer(3)
        let counts = route(&b, 900) { $0 == 1 ? 50 : 1 }
        XCTAssertLessThan((counts[1] ?? 0) * 5, counts[2] ?? 0, "\(counts)")
    }

    func testOutstandingCallsWeighTheChoice() {
        var b = balancer(2)
        // Endpoint 1 holds 10 calls that have not finished.
        for _ in 0..<10 { XCTAssertEqual(b.pick(now: at(0), excluding: [2])?.id, 1) }
        // The next 9 new calls all go to 2 (its cost stays below 1's while it holds fewer).
        let next = (0..<9).compactMap { _ in b.pick(now: at(1))?.id }
        XCTAssertEqual(next, Array(repeating: 2, count: 9))
    }

    func testConsecutiveFailuresEjectWithGrowingJitteredTimeAndReadmit() {
        var b = balancer(3) { $0.consecutiveFailures = 3 }
        for _ in 0..<2 { XCTAssertEqual(b.finished(id: 1, success: false, latency: .zero, now: at(0)), []) }
        let changes = b.finished(id: 1, success: false, latency: .zero, now: at(0))
        guard case .ejected(1, let duration)? = changes.first else { return XCTFail("\(changes)") }
        XCTAssertTrue((800...1200).contains(Int(duration.milliseconds)), "\(duration.milliseconds) ms: 1 s ± 20 %")
        // Ejected: never picked while out.
        XCTAssertFalse(route(&b, 100, from: 10) { _ in 1 }.keys.contains(1))
        XCTAssertEqual(b.readmit(now: at(1300)), [.readmitted(id: 1)])
        // The second ejection lasts about twice as long.
        for _ in 0..<2 { _ = b.finished(id: 1, success: false, latency: .zero, now: at(1400)) }
        guard case .ejected(1, let second)? = b.finished(id: 1, success: false, latency: .zero, now: at(1400)).first else {
            return XCTFail("not ejected again")
        }
        XCTAssertTrue((1600...2400).contains(Int(second.milliseconds)), "\(second.milliseconds) ms")
    }

    func testLowSuccessRateEjects() {
        var b = balancer(2) { $0.consecutiveFailures = 100; $0.minimumCalls = 10; $0.window = 10; $0.successRate = 0.5 }
        var ejected = false
        for i in 0..<10 {
            let changes = b.finished(id: 1, success: i % 3 == 2, latency: .milliseconds(1), now: at(0))
            if changes.contains(where: { if case .ejected = $0 { true } else { false } }) { ejected = true }
        }
        XCTAssertTrue(ejected, "3 of 10 succeeded")
    }

    func testTheLastAvailableEndpointIsNeverEjected() {
        var b = balancer(2) { $0.consecutiveFailures = 1 }
        XCTAssertFalse(b.finished(id: 1, success: false, latency: .zero, now: at(0)).isEmpty)
        XCTAssertEqual(b.finished(id: 2, success: false, latency: .zero, now: at(0)), [], "2 is the last one")
        XCTAssertEqual(b.pick(now: at(1))?.id, 2)
    }

    func testPanicModeUsesEveryEndpointWhenFewerThanHalfAreAvailable() {
        var b = balancer(4) { $0.consecutiveFailures = 1 }
        for id in 1...3 { _ = b.finished(id: id, success: false, latency: .zero, now: at(0)) }
        // 3 of 4 ejected? Only while another stays available: 1, 2, 3 out, 4 left.
        let picked = b.pick(now: at(1))
        XCTAssertEqual(picked?.changes, [.panic(true)])
        XCTAssertTrue(b.inPanic)
        let counts = route(&b, 200, from: 2) { _ in 1 }
        XCTAssertEqual(counts.keys.count, 4, "all endpoints used in panic: \(counts)")
    }

    func testDrainingEndpointGetsNoNewCalls() {
        var b = balancer(2)
        b.drain(id: 1)
        XCTAssertEqual(Set(route(&b, 50) { _ in 1 }.keys), [2])
        b.forget(id: 1)
        XCTAssertNil(b.member(1))
    }

    func testExcludedEndpointsAreSkippedAndNilWhenNoneIsLeft() {
        var b = balancer(2)
        XCTAssertEqual(b.pick(now: at(0), excluding: [1])?.id, 2)
        XCTAssertNil(b.pick(now: at(0), excluding: [1, 2]))
    }

    func testEndpointParsing() {
        XCTAssertEqual(try Endpoint.parse("unix:/tmp/a.sock").get(), .unix(path: "/tmp/a.sock"))
        XCTAssertEqual(try Endpoint.parse("/tmp/a.sock").get(), .unix(path: "/tmp/a.sock"))
        XCTAssertEqual(try Endpoint.parse("tcp:127.0.0.1:7000").get(), .tcp(host: "127.0.0.1", port: 7000))
        XCTAssertEqual(try Endpoint.parse("tcp:[::1]:7000").get(), .tcp(host: "::1", port: 7000))
        XCTAssertEqual(Endpoint.tcp(host: "::1", port: 7000).description, "tcp:[::1]:7000")
        for bad in ["tcp:host", "tcp::7000", "tcp:h:0", "tcp:h:70000", "tcp:::1:7000", "tcp:[::1]7000", "unix:",
                    "unix:/" + String(repeating: "x", count: 120)] {
            XCTAssertThrowsError(try Endpoint.parse(bad).get(), bad)
        }
    }
}
