import CJansson
import Glibc
import GoxelPoolCore
import XCTest
@testable import GoxelPoolIO

/// The client against a real reference daemon process: every "no answer" and "bad answer" case
/// of the protocol page, in single-connection and pooled mode.
final class ProtocolIntegrationTests: XCTestCase {
    var daemon: RefDaemon!

    override func setUpWithError() throws {
        daemon = try RefDaemon()
    }

    override func tearDown() {
        daemon?.stop()
        daemon = nil
    }

    func testSingleConnectionModeServesCallsInOrder() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""pooling": false"#)
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("version").body, #"{"protocol":"JSON-RPC 2.0","type":"daemon","version":"0.18.6"}"#)
        XCTAssertEqual(client.run("echo", #"{"a": [1, 2, "é"]}"#).body, #"{"a":[1,2,"é"]}"#)
        XCTAssertEqual(client.run("goxel.create_project", #"["t", 16, 16, 16]"#).status, .ok)
        XCTAssertEqual(client.run("goxel.add_voxel", "[1, 2, 3, 255, 0, 0, 255, 0]").status, .ok)
        XCTAssertTrue(client.run("goxel.get_voxel", "[1, 2, 3]").body.contains(#""exists":true"#))
        // Calls from many threads are serialized on the one connection.
        concurrently(8) { _ in for _ in 0..<20 { XCTAssertEqual(client.run("ping").status, .ok) } }
        XCTAssertEqual(try RefDaemon.intField("peak_open", in: daemon.stats()), 1)
        XCTAssertEqual(client.snapshot().statistics.connectionsCreated, 1)
    }

    func testPooledClientNeverExceedsMaxConnections() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""pool": {"min_connections": 1, "max_connections": 3}"#)
        defer { client.close(drain: .zero) }
        try daemon.setFaults(#"{"latency_ms": 2}"#)
        concurrently(16) { _ in for _ in 0..<25 { XCTAssertEqual(client.run("ping").status, .ok) } }
        XCTAssertLessThanOrEqual(try RefDaemon.intField("peak_open", in: daemon.stats()) ?? 99, 3)
        XCTAssertEqual(client.snapshot().statistics.totalRequestsServed, 16 * 25)
        XCTAssertEqual(client.snapshot().statistics.connectionsCreated, 3)
    }

    func testUnknownMethodIsAnRPCErrorAndTheConnectionStaysInStep() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""pooling": false"#)
        defer { client.close(drain: .zero) }
        let outcome = client.run("no_such_method")
        XCTAssertEqual(outcome.status, .rpc)
        XCTAssertTrue(outcome.body.contains("-32601"), outcome.body)
        XCTAssertEqual(client.run("ping").status, .ok)
        XCTAssertEqual(client.snapshot().statistics.connectionsCreated, 1, "an RPC error must not cost a connection")
    }

    /// A request the daemon never answers: the call returns at its deadline, and the connection
    /// is closed (a late answer would otherwise be taken for the next call's).
    func testDroppedRequestTimesOutAtItsDeadlineAndTheConnectionIsReplaced() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""pooling": false"#)
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("ping").status, .ok)
        try daemon.setFaults(#"{"drop_rate": 1}"#)
        var outcome = Outcome(status: .ok, body: "")
        let took = elapsedMs { outcome = client.run("goxel.add_voxel", "[0,0,0,1,1,1,255,0]", timeoutMs: 300) }
        XCTAssertEqual(outcome.status, .timedOut)
        XCTAssertGreaterThanOrEqual(took, 299)
        XCTAssertLessThan(took, 300 + 50, "deadline overshoot")
        try daemon.resetFaults()
        XCTAssertEqual(client.run("ping").status, .ok)
        XCTAssertEqual(client.snapshot().statistics.connectionsClosed[.error], 1)
        XCTAssertEqual(client.snapshot().statistics.connectionsCreated, 2)
    }

    func testStalledDaemonTimesOut() throws {
        let client = try PoolClient.forTest(daemon.socketPath)
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("ping").status, .ok)
        try daemon.setFaults(#"{"stall": true}"#)
        XCTAssertEqual(client.run("ping", timeoutMs: 200).status, .timedOut)
        try daemon.setFaults(#"{"stall": false}"#)
        XCTAssertEqual(client.run("ping").status, .ok)
    }

    /// Each malformed answer is a clear status, never a hang, and costs only that connection.
    func testBadAnswersAreProtocolErrors() throws {
        let cases: [(fault: String, method: String, expected: CallStatus)] = [
            (#"{"garbage_rate": 1}"#, "goxel.add_voxel", .proto),
            (#"{"wrong_id_rate": 1}"#, "goxel.add_voxel", .proto),
            (#"{"no_result_rate": 1}"#, "goxel.add_voxel", .proto),
            (#"{"null_id_rate": 1}"#, "goxel.add_voxel", .rpc),
            (#"{"oversize_rate": 1, "oversize_bytes": 100000}"#, "goxel.add_voxel", .tooBig),
            (#"{"truncate_rate": 1}"#, "goxel.add_voxel", .io),
            (#"{"reset_rate": 1}"#, "goxel.add_voxel", .io),
        ]
        let client = try PoolClient.forTest(daemon.socketPath, #""max_message_size": 65536, "pool": {"validate_on_connect": false}, "circuit_breaker": {"enabled": false}"#)
        defer { client.close(drain: .zero) }
        for (fault, method, expected) in cases {
            try daemon.setFaults(fault)
            var outcome = Outcome(status: .ok, body: "")
            let took = elapsedMs { outcome = client.run(method, "[0,0,0,1,1,1,255,0]", timeoutMs: 1000) }
            XCTAssertEqual(outcome.status, expected, "\(fault): \(outcome)")
            XCTAssertLessThan(took, 900, "\(fault) must fail fast, not by timing out")
            try daemon.resetFaults()
            XCTAssertEqual(client.run("ping").status, .ok, "after \(fault)")
        }
        let closed = client.snapshot().statistics.connectionsClosed[.error] ?? 0
        XCTAssertGreaterThanOrEqual(closed, cases.count, "each bad answer closes its connection")
    }

    /// A broken answer to an idempotent method is retried on another connection; a write whose
    /// answer was lost is not repeated.
    func testFailoverRetriesIdempotentCallsOnly() throws {
        // The breaker off: a 30 % failure rate per attempt may open it, which is another test's subject.
        let client = try PoolClient.forTest(daemon.socketPath, #""retry_attempts": 3, "retry_delay_ms": 10, "circuit_breaker": {"enabled": false}"#)
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("goxel.create_project", #"["t", 8, 8, 8]"#).status, .ok)
        try daemon.resetStats()
        // A read fails only if all 4 attempts are truncated: 0.3^4 < 1 %.
        try daemon.setFaults(#"{"truncate_rate": 0.3}"#)
        var reads = 0, readFailures = 0
        for _ in 0..<40 {
            reads += 1
            if client.run("goxel.get_voxel", "[0,0,0]").status != .ok { readFailures += 1 }
        }
        XCTAssertLessThan(readFailures, 4, "idempotent reads fail over (\(readFailures)/\(reads) failed)")
        XCTAssertGreaterThan(client.snapshot().statistics.retries, 0)
        // A healthy idle connection for the write: if the last read failed all its attempts, the
        // pool has none, and the write would fail at the new connection's validation ping
        // ("connect"), not on a lost answer.
        try daemon.resetFaults()
        XCTAssertEqual(client.run("ping").status, .ok)
        try daemon.setFaults(#"{"truncate_rate": 1}"#)
        let write = client.run("goxel.add_voxel", "[1,1,1,255,0,0,255,0]")
        XCTAssertEqual(write.status, .io)
        XCTAssertTrue(write.message.contains("not idempotent"), write.message)
    }

    func testRequestLargerThanTheDaemonAcceptsIsRefusedBeforeSending() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""pooling": false"#)
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("ping").status, .ok)
        let big = "[\"" + String(repeating: "x", count: 70_000) + "\"]"
        let outcome = client.run("echo", big)
        XCTAssertEqual(outcome.status, .tooBig)
        XCTAssertEqual(client.run("ping").status, .ok)
        XCTAssertEqual(client.snapshot().statistics.connectionsCreated, 1, "nothing was sent, the connection is intact")
    }

    func testNotificationIsAnsweredWithNullIdAndTheConnectionStaysInStep() throws {
        let client = try PoolClient.forTest(daemon.socketPath, #""pooling": false"#)
        defer { client.close(drain: .zero) }
        let value = json(#"{"x": 1}"#)
        defer { release(value) }
        guard case .notified = client.call(method: "echo", params: value, timeout: nil, notification: true) else {
            return XCTFail("notification failed")
        }
        XCTAssertEqual(client.run("echo", "[5]").body, "[5]")
    }

    func testDaemonDownAtStartThenUp() throws {
        daemon.stop()
        let client = try PoolClient.forTest(daemon.socketPath)
        defer { client.close(drain: .zero) }
        let outcome = client.run("ping", timeoutMs: 300)
        XCTAssertEqual(outcome.status, .connect, outcome.message)
        XCTAssertGreaterThan(client.snapshot().statistics.connectionFailures, 0)
        try daemon.restart()
        XCTAssertTrue(eventually(3) { client.run("ping", timeoutMs: 500).status == .ok })
        XCTAssertGreaterThan(client.snapshot().statistics.reconnectionAttempts, 0)
    }

    func testKilledDaemonIsRiddenThrough() throws {
        let client = try PoolClient.forTest(daemon.socketPath)
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("ping").status, .ok)
        daemon.kill9()
        try daemon.restart()
        // Idempotent calls fail over onto fresh connections.
        XCTAssertTrue(eventually(3) { client.run("version").status == .ok })
        XCTAssertEqual(client.run("ping").status, .ok)
    }

    func testExhaustedDaemonIsBackedOffNotHammered() throws {
        daemon.stop()
        daemon = try RefDaemon(arguments: ["--max-lifetime-connections", "1"])
        let client = try PoolClient.forTest(daemon.socketPath, #""pool": {"min_connections": 2, "max_connections": 2}, "reconnect": {"initial_backoff_ms": 100, "max_backoff_ms": 400}"#)
        defer { client.close(drain: .zero) }
        usleep(1_000_000)
        let accepted = try RefDaemon.intField("accepted", in: daemon.stats()) ?? 0
        // 1 s of a tight loop would be thousands of connections; backoff 100, 160, 256, 400 ... is a handful.
        XCTAssertLessThan(accepted, 12, "accepted \(accepted) connections in 1 s")
        XCTAssertGreaterThan(client.snapshot().statistics.connectionFailures, 0)
    }

    func testCloseFailsNewCallsAndLeaksNothing() throws {
        let before = openFileDescriptors()
        let client = try PoolClient.forTest(daemon.socketPath, #""pool": {"min_connections": 4, "max_connections": 4}"#)
        concurrently(4) { _ in for _ in 0..<10 { _ = client.run("ping") } }
        try daemon.setFaults(#"{"latency_ms": 300}"#)
        let inFlight = LibraryThread { XCTAssertEqual(client.run("ping").status, .ok, "in-flight call drains") }
        usleep(50_000)
        client.close(drain: .milliseconds(2000))
        inFlight.join()
        XCTAssertEqual(client.run("ping").status, .closed)
        XCTAssertEqual(openFileDescriptors(), before, "every socket closed")
    }
}
