import CGoxelPool
import CJansson
import Glibc
import XCTest

/// Health monitoring and alerts, end to end: a reference daemon made slow, silent, failing and
/// restarted, and a C listener registered through goxelpool_add_listener receiving each alert.
final class HealthAlertTests: XCTestCase {
    var daemon: RefDaemon!
    let log = EventLog()

    override func setUpWithError() throws { daemon = try RefDaemon() }
    override func tearDown() { daemon?.stop(); daemon = nil }

    /// Fast health checks and low latency tiers so a test takes seconds.
    func config(_ extra: String = "") -> String {
        #"""
        {"socket_path": "\#(daemon.socketPath)", "timeout_ms": 2000,
         "pool": {"min_connections": 2, "max_connections": 2},
         "reconnect": {"initial_backoff_ms": 20, "max_backoff_ms": 100},
         "health": {"interval_ms": 50, "timeout_ms": 400, "failure_threshold": 2, "success_threshold": 2,
                    "healthy_latency_ms": 40, "degraded_latency_ms": 120}\#(extra)}
        """#
    }

    func testSlowDaemonDegradesThenRecovers() throws {
        let client = makeClient(config())
        defer { goxelpool_client_free(client) }
        _ = log.listen(client)
        XCTAssertTrue(waitFor { stateValue(client, "pool_state") == "ready" })
        for _ in 0..<5 { XCTAssertEqual(call(client, "ping"), GOXELPOOL_OK) }

        // Slower than healthy, faster than unhealthy: degraded, and a spike against a µs average.
        try daemon.setFaults(#"{"latency_ms": 70}"#)
        XCTAssertTrue(waitFor { self.log.count("degraded") >= 1 && self.log.count("pool_degraded") >= 1 }, "\(log.types)")
        XCTAssertTrue(waitFor { self.log.count("latency_spike") >= 1 }, "\(log.types)")
        XCTAssertTrue(log.all("degraded")[0].contains(#""severity":"warning""#), log.all("degraded")[0])
        XCTAssertNotEqual(stateValue(client, "pool_state"), "ready")

        try daemon.resetFaults()
        XCTAssertTrue(waitFor { self.log.count("recovered") >= 1 && self.log.count("pool_recovered") >= 1 }, "\(log.types)")
        XCTAssertTrue(waitFor { stateValue(client, "pool_state") == "ready" })
        XCTAssertTrue(log.all("pool_recovered")[0].contains(#""severity":"info""#))
        XCTAssertFalse(log.callbackThreads.contains(UInt(pthread_self())), "listeners run on a library thread")
        XCTAssertGreaterThanOrEqual(statValue(client, "alerts_generated", "degraded") ?? 0, 1)
        XCTAssertGreaterThan(statValue(client, "health_checks") ?? 0, 0)
    }

    func testRisingLatencyIsReportedAsADegradingTrendWithAPrediction() throws {
        let client = makeClient(config(#", "health": {"interval_ms": 30, "healthy_latency_ms": 200, "degraded_latency_ms": 400, "trend_sample_size": 8, "failure_threshold": 3}"#))
        defer { goxelpool_client_free(client) }
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_ALERT))
        XCTAssertTrue(waitFor { stateValue(client, "pool_state") == "ready" })
        for latency in stride(from: 5, through: 60, by: 5) {
            try daemon.setFaults(#"{"latency_ms": \#(latency)}"#)
            call(client, "ping")  // feeds the samples; on a loaded machine one may be slow
            usleep(20_000)
        }
        XCTAssertTrue(waitFor(3) { self.log.count("trend_degrading") >= 1 }, "\(log.types)")
        let alert = log.all("trend_degrading")[0]
        // Which tier comes next depends on where the fitted line is now; either way it is named.
        XCTAssertTrue(alert.contains(#""predicted_tier":"degraded""#) || alert.contains(#""predicted_tier":"unhealthy""#), alert)
        XCTAssertTrue(alert.contains(#""predicted_in_ms":"#), alert)
    }

    func testSilentDaemonMakesConnectionsUnhealthyAndThePoolUnhealthy() throws {
        let client = makeClient(config())
        defer { goxelpool_client_free(client) }
        _ = log.listen(client)
        XCTAssertTrue(waitFor { stateValue(client, "pool_state") == "ready" })
        try daemon.setFaults(#"{"stall": true}"#)
        XCTAssertTrue(waitFor { self.log.count("unhealthy") >= 1 || self.log.count("pool_unhealthy") >= 1 }, "\(log.types)")
        XCTAssertTrue(waitFor { self.log.count("pool_unhealthy") >= 1 }, "\(log.types)")
        XCTAssertTrue(log.all("pool_unhealthy")[0].contains(#""severity":"critical""#))
        try daemon.setFaults(#"{"stall": false}"#)
        XCTAssertTrue(waitFor { stateValue(client, "pool_state") == "ready" }, stateValue(client, "pool_state") ?? "nil")
        XCTAssertTrue(waitFor { self.log.count("pool_recovered") >= 1 }, "\(log.types)")
        XCTAssertGreaterThan(statValue(client, "health_check_failures") ?? 0, 0)
    }

    func testDeadDaemonOpensTheCircuitAndARestartClosesIt() throws {
        let client = makeClient(config(#", "circuit_breaker": {"consecutive_connect_failures": 3, "cooldown_ms": 200}"#))
        defer { goxelpool_client_free(client) }
        _ = log.listen(client)
        XCTAssertTrue(waitFor { stateValue(client, "pool_state") == "ready" })
        daemon.kill9()
        // EIO (the write may have run), or already EUNAVAILABLE if the health checks were faster.
        let write = call(client, "goxel.add_voxel", "[0,0,0,1,1,1,255,0]")
        XCTAssertTrue(write == GOXELPOOL_EIO || write == GOXELPOOL_EUNAVAILABLE || write == GOXELPOOL_ECONNECT, "\(write)")
        XCTAssertTrue(waitFor { self.log.count("circuit_open") >= 1 }, "\(log.types)")
        XCTAssertTrue(waitFor { self.log.count("reconnect_storm") >= 1 }, "\(log.types)")
        XCTAssertTrue(waitFor { self.log.count("pool_unhealthy") >= 1 }, "\(log.types)")
        // Fail fast: no waiting out the 2 s timeout on a dead daemon.
        let began = now()
        let status = call(client, "ping")
        XCTAssertTrue(status == GOXELPOOL_EUNAVAILABLE || status == GOXELPOOL_ECONNECT, "\(status)")
        if status == GOXELPOOL_EUNAVAILABLE { XCTAssertLessThan(now() - began, 0.1) }
        XCTAssertGreaterThan(statValue(client, "connection_failures") ?? 0, 2)

        try daemon.restart()
        XCTAssertTrue(waitFor { self.log.count("circuit_closed") >= 1 }, "\(log.types)")
        XCTAssertTrue(waitFor { call(client, "ping") == GOXELPOOL_OK })
        XCTAssertTrue(waitFor { stateValue(client, "pool_state") == "ready" })
        XCTAssertTrue(waitFor { self.log.count("pool_recovered") >= 1 }, "\(log.types)")
        XCTAssertEqual(stateValue(client, "circuit_state"), "closed")
    }

    func testFailingCallsOpenTheCircuit() throws {
        let client = makeClient(config(#", "circuit_breaker": {"window_size": 10, "minimum_calls": 5, "failure_rate": 0.5, "cooldown_ms": 300}"#))
        defer { goxelpool_client_free(client) }
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_ALERT))
        XCTAssertTrue(waitFor { stateValue(client, "pool_state") == "ready" })
        try daemon.setFaults(#"{"garbage_rate": 1}"#)
        for _ in 0..<10 { call(client, "goxel.add_voxel", "[0,0,0,1,1,1,255,0]") }
        XCTAssertTrue(waitFor { self.log.count("circuit_open") == 1 }, "\(log.types)")
        XCTAssertEqual(call(client, "ping"), GOXELPOOL_EUNAVAILABLE)
        try daemon.resetFaults()
        usleep(350_000)
        XCTAssertEqual(call(client, "ping"), GOXELPOOL_OK, "the half-open probe")
        XCTAssertTrue(waitFor { self.log.count("circuit_closed") == 1 }, "\(log.types)")
    }

    func testSaturatedQueueIsReported() throws {
        let client = makeClient(config(#", "pool": {"min_connections": 1, "max_connections": 1, "max_waiters": 5}"#))
        defer { goxelpool_client_free(client) }
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_ALERT))
        XCTAssertEqual(call(client, "ping"), GOXELPOOL_OK)
        try daemon.setFaults(#"{"latency_ms": 100}"#)
        let threads = (0..<6).map { _ in Thread { _ = call(client, "version") } }
        threads.forEach { $0.join() }
        XCTAssertTrue(waitFor { self.log.count("queue_saturated") >= 1 }, "\(log.types)")
        XCTAssertTrue(log.all("queue_saturated")[0].contains(#""max_waiters":5"#))
    }
}

/// A joinable pthread for tests that must not depend on the library's own thread type.
final class Thread: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: () -> Void

    init(_ body: @escaping () -> Void) {
        self.body = body
        let context = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            let me = Unmanaged<Thread>.fromOpaque(raw).takeRetainedValue()
            me.body()
            return nil
        }, context)
    }

    func join() { pthread_join(thread, nil) }
}
