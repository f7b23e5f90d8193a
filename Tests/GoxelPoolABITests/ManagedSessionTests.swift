import CGoxelPool
import CJansson
import Glibc
import XCTest

/// Sessions on managed daemons (spawn): a durable session rides through a kill -9 of its daemon
/// and through recycles (its document moves by checkpoint and restore), and keys stay with their
/// slot when a daemon is replaced. Through the C API, against goxel-refd processes the library
/// starts itself.
final class ManagedSessionTests: XCTestCase {
    let log = EventLog()
    var refd = ""

    override func setUpWithError() throws { refd = try RefDaemon.locateBinary() }

    func client(_ extraArguments: [String] = [], spawn: String = "", pool: String = #""min_connections": 1, "max_connections": 4"#) -> OpaquePointer? {
        let command = ([refd, "--socket", "{socket}"] + extraArguments).map { "\"\($0)\"" }.joined(separator: ", ")
        return makeClient(#"""
            {"timeout_ms": 8000, "reconnect": {"initial_backoff_ms": 20, "max_backoff_ms": 200},
             "circuit_breaker": {"enabled": false}, "pool": {\#(pool)},
             "spawn": {"command": [\#(command)]\#(spawn.isEmpty ? "" : ", " + spawn)}}
            """#)
    }

    func open(_ client: OpaquePointer?, _ options: String) -> OpaquePointer? {
        let value = parse(options)
        defer { json_decref(value) }
        var session: OpaquePointer?
        XCTAssertEqual(goxelpool_session_open(client, value, 10_000, &session), GOXELPOOL_OK, String(cString: goxelpool_last_error()))
        return session
    }

    func add(_ session: OpaquePointer?, _ n: Int, _ thread: Int) -> goxelpool_status {
        let params = parse("[\(n % 64), \(n / 64 % 64), \(thread), 1, 2, 3, 255, 0]")
        defer { json_decref(params) }
        return goxelpool_session_call(session, "goxel.add_voxel", params, 15_000, nil, nil)
    }

    func voxelCount(_ session: OpaquePointer?) -> Int {
        var result: UnsafeMutablePointer<json_t>?
        guard goxelpool_session_call(session, "goxel.get_status", nil, 10_000, &result, nil) == GOXELPOOL_OK else { return -1 }
        defer { json_decref(result) }
        return Int(json_integer_value(json_object_get(result, "voxel_count")))
    }

    func infoInt(_ session: OpaquePointer?, _ key: String) -> Int {
        guard let info = goxelpool_session_info(session) else { return -1 }
        defer { json_decref(info) }
        return Int(json_integer_value(json_object_get(info, key)))
    }

    func infoText(_ session: OpaquePointer?, _ key: String) -> String {
        guard let info = goxelpool_session_info(session), let value = json_string_value(json_object_get(info, key)) else { return "" }
        defer { json_decref(info) }
        return String(cString: value)
    }

    /// Writers add distinct voxels until `stop`; returns acknowledged and failed counts.
    func writers(_ session: OpaquePointer?, threads: Int, stop: Flag, acknowledged: Counter, failures: Counter) -> [LibraryThreadBox] {
        (0..<threads).map { thread in
            LibraryThreadBox {
                var n = 0
                while !stop.isSet && n < 4096 {
                    let status = self.add(session, n, thread)
                    if status == GOXELPOOL_OK { acknowledged.add() } else {
                        failures.add()
                        XCTFail("add_voxel failed: \(String(cString: goxelpool_status_name(status))) \(String(cString: goxelpool_last_error()))")
                    }
                    n += 1
                }
            }
        }
    }

    func testDurableSessionOnAManagedDaemonSurvivesItsKill9() throws {
        let client = client()
        defer { goxelpool_client_free(client) }
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_SESSION | GOXELPOOL_EVENT_ALERT | GOXELPOOL_EVENT_DAEMON))
        // No checkpoint_dir: managed daemons' sessions checkpoint into the private directory.
        let session = open(client, #"{"durable": true, "checkpoint_every": 300}"#)
        defer { goxelpool_session_close(session) }
        let firstPid = infoInt(session, "daemon_pid")
        let firstEndpoint = infoText(session, "endpoint")
        XCTAssertGreaterThan(firstPid, 0)
        let (stop, acknowledged, failures) = (Flag(), Counter(), Counter())
        let threads = writers(session, threads: 4, stop: stop, acknowledged: acknowledged, failures: failures)
        for thread in threads { thread.start() }
        XCTAssertTrue(waitFor { acknowledged.value > 500 })
        kill(pid_t(firstPid), SIGKILL)
        XCTAssertTrue(waitFor(15) { self.log.count("session_restored") >= 1 }, "\(log.types)")
        let after = acknowledged.value
        XCTAssertTrue(waitFor { acknowledged.value > after + 300 })
        stop.set()
        for thread in threads { thread.join() }
        XCTAssertEqual(failures.value, 0)
        XCTAssertEqual(voxelCount(session), acknowledged.value, "every acknowledged voxel, once")
        XCTAssertNotEqual(infoInt(session, "daemon_pid"), firstPid)
        XCTAssertNotEqual(infoText(session, "endpoint"), firstEndpoint, "moved to the successor's socket")
        XCTAssertEqual(infoText(session, "state"), "active")
        XCTAssertEqual(log.count("session_lost"), 0)
        XCTAssertGreaterThanOrEqual(log.count("daemon_exited"), 1)
    }

    func testDurableSessionMovesWithEveryRecycleAndNoCallFails() throws {
        // Daemons are recycled every second or so (max_age_ms, up to 10 % early); the recycling
        // mechanics are the same for max_connections_per_process (ManagedDaemonTests).
        let client = client(spawn: #""max_age_ms": 1000"#)
        defer { goxelpool_client_free(client) }
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_SESSION | GOXELPOOL_EVENT_ALERT | GOXELPOOL_EVENT_DAEMON))
        let session = open(client, #"{"durable": true}"#)
        defer { goxelpool_session_close(session) }
        let (stop, acknowledged, failures) = (Flag(), Counter(), Counter())
        let threads = writers(session, threads: 3, stop: stop, acknowledged: acknowledged, failures: failures)
        for thread in threads { thread.start() }
        XCTAssertTrue(waitFor(30) { self.log.count("daemon_retired") >= 3 }, "\(log.types)")
        stop.set()
        for thread in threads { thread.join() }
        XCTAssertEqual(failures.value, 0)
        XCTAssertEqual(voxelCount(session), acknowledged.value, "the document came along through every recycle")
        XCTAssertGreaterThanOrEqual(infoInt(session, "moves"), 3)
        XCTAssertEqual(log.count("session_lost"), 0, "\(log.all("session_lost"))")
        XCTAssertEqual(log.count("checkpoint_failed"), 0, "\(log.all("checkpoint_failed"))")
        print("managed sessions: \(acknowledged.value) voxels over \(infoInt(session, "moves")) moves, \(failures.value) failed")
    }

    func testKeysStayWithTheirSlotWhenADaemonIsReplaced() throws {
        let client = client(spawn: #""instances": 2"#)
        defer { goxelpool_client_free(client) }
        let keys = (0..<8).map { "key-\($0)" }
        /// Endpoint -> slot of the daemons that are ready (endpoints of the client).
        func slots() -> [String: Int] {
            guard let stats = goxelpool_stats(client) else { return [:] }
            defer { json_decref(stats) }
            var out: [String: Int] = [:]
            let list = json_object_get(stats, "daemons")
            for index in 0..<json_array_size(list) {
                let daemon = json_array_get(list, index)
                guard let state = json_string_value(json_object_get(daemon, "state")), String(cString: state) == "ready" else { continue }
                if let endpoint = json_string_value(json_object_get(daemon, "endpoint")) {
                    out[String(cString: endpoint)] = Int(json_integer_value(json_object_get(daemon, "slot")))
                }
            }
            return out
        }
        func placement() -> [Int] {
            let sessions = keys.map { open(client, #"{"key": "\#($0)", "exclusive": false}"#) }
            defer { for session in sessions { goxelpool_session_close(session) } }
            let map = slots()
            return sessions.map { map[infoText($0, "endpoint")] ?? -1 }
        }
        XCTAssertTrue(waitFor(10) { slots().count == 2 })
        let before = placement()
        XCTAssertEqual(Set(before), [0, 1], "the keys spread over both slots: \(before)")
        // Replace slot 0's daemon (kill -9: its successor has a new socket).
        let victim = slots().first { $0.value == 0 }!.key
        var pid: Int32 = 0
        if let stats = goxelpool_stats(client) {
            let list = json_object_get(stats, "daemons")
            for index in 0..<json_array_size(list) where String(cString: json_string_value(json_object_get(json_array_get(list, index), "endpoint"))) == victim {
                pid = Int32(json_integer_value(json_object_get(json_array_get(list, index), "pid")))
            }
            json_decref(stats)
        }
        XCTAssertGreaterThan(pid, 0)
        kill(pid, SIGKILL)
        XCTAssertTrue(waitFor(10) { let now = slots(); return now.count == 2 && !now.keys.contains(victim) })
        XCTAssertEqual(placement(), before, "every key went back to its slot")
    }
}
