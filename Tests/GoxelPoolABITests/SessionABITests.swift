import CGoxelPool
import CJansson
import Glibc
import GoxelPoolCore
import XCTest

/// Sessions end to end through the C API, against real goxel-refd processes: placement by key,
/// exclusivity and its FIFO wait, calls that never leave their daemon, durable sessions restored
/// after kill -9 and after the crash timer, a checkpoint that cannot be loaded, exactly-once
/// re-runs of calls in flight at the crash, endpoint removal, and notifications.
final class SessionABITests: XCTestCase {
    var daemons: [RefDaemon] = []
    let log = EventLog()
    var checkpointDir = ""

    override func setUpWithError() throws {
        checkpointDir = "/tmp/gxp-cp-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        XCTAssertEqual(mkdir(checkpointDir, 0o700), 0)
    }

    override func tearDown() {
        for daemon in daemons { daemon.stop() }
        daemons = []
        if let dir = opendir(checkpointDir) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { unlink(checkpointDir + "/" + name) }
            }
            closedir(dir)
        }
        rmdir(checkpointDir)
    }

    func config(_ sockets: [String], _ extra: String = "") -> String {
        let endpoints = sockets.map { "\"unix:\($0)\"" }.joined(separator: ", ")
        return #"""
        {"endpoints": [\#(endpoints)], "timeout_ms": 4000,
         "pool": {"min_connections": 1, "max_connections": 8},
         "reconnect": {"initial_backoff_ms": 20, "max_backoff_ms": 200},
         "circuit_breaker": {"enabled": false}\#(extra)}
        """#
    }

    // MARK: - Helpers

    func open(_ client: OpaquePointer?, _ options: String?, timeoutMs: Int32 = 3000) -> (goxelpool_status, OpaquePointer?) {
        let value = options.flatMap(parse)
        defer { if let value { json_decref(value) } }
        var session: OpaquePointer?
        let status = goxelpool_session_open(client, value, timeoutMs, &session)
        return (status, session)
    }

    /// A session call; returns the status and the result as compact JSON text.
    @discardableResult
    func scall(_ session: OpaquePointer?, _ method: String, _ params: String? = nil, timeoutMs: Int32 = -1) -> (goxelpool_status, String) {
        let value = params.flatMap(parse)
        defer { if let value { json_decref(value) } }
        var result: UnsafeMutablePointer<json_t>?
        var rpcError: UnsafeMutablePointer<json_t>?
        let status = goxelpool_session_call(session, method, value, timeoutMs, &result, &rpcError)
        defer { json_decref(result); json_decref(rpcError) }
        return (status, status == GOXELPOOL_OK ? text(result) : (rpcError.map { text($0) } ?? String(cString: goxelpool_last_error())))
    }

    /// One field of goxelpool_session_info as JSON text (strings keep their quotes).
    func info(_ session: OpaquePointer?, _ key: String) -> String {
        guard let root = goxelpool_session_info(session) else { return "nil" }
        defer { json_decref(root) }
        guard let value = json_object_get(root, key),
              let dumped = json_dumps(value, Int(JSON_COMPACT | JSON_ENCODE_ANY)) else { return "missing" }
        defer { free(dumped) }
        return String(cString: dumped)
    }

    func voxelCount(_ daemon: RefDaemon) -> Int? {
        guard let line = try? daemon.control(#"{"jsonrpc":"2.0","method":"goxel.get_status","id":1}"#) else { return nil }
        return RefDaemon.intField("voxel_count", in: line)
    }

    func daemonPid(_ daemon: RefDaemon) -> Int? {
        (try? daemon.stats()).flatMap { RefDaemon.intField("pid", in: $0) }
    }

    func durable(_ extra: String = "") -> String {
        #"{"durable": true, "checkpoint_dir": "\#(checkpointDir)", "restore_timeout_ms": 8000\#(extra)}"#
    }

    // MARK: - Placement

    func testEachSessionsCallsStayOnItsOwnDaemon() throws {
        daemons = try (0..<3).map { _ in try RefDaemon() }
        let client = makeClient(config(daemons.map(\.socketPath)))
        defer { goxelpool_client_free(client) }
        var sessions: [OpaquePointer?] = []
        for _ in 0..<3 {
            let (status, session) = open(client, nil)
            XCTAssertEqual(status, GOXELPOOL_OK, String(cString: goxelpool_last_error()))
            sessions.append(session)
        }
        let endpoints = sessions.map { info($0, "endpoint") }
        XCTAssertEqual(Set(endpoints).count, 3, "exclusive sessions hold one daemon each: \(endpoints)")
        // Each session builds its own model: 10, 20 and 30 voxels, from 4 threads each.
        for (index, session) in sessions.enumerated() {
            XCTAssertEqual(scall(session, "goxel.create_project", #"["s\#(index)", 32, 32, 32]"#).0, GOXELPOOL_OK)
            let count = 10 * (index + 1)
            let threads = (0..<4).map { thread in
                LibraryThreadBox {
                    for n in stride(from: thread, to: count, by: 4) {
                        XCTAssertEqual(self.scall(session, "goxel.add_voxel", "[\(n), 1, 2, 255, 0, 0, 255, 0]").0, GOXELPOOL_OK)
                    }
                }
            }
            for thread in threads { thread.start() }
            for thread in threads { thread.join() }
        }
        // Plain calls meanwhile still go anywhere (they read only).
        for _ in 0..<20 { XCTAssertEqual(call(client, "ping"), GOXELPOOL_OK) }
        for (index, session) in sessions.enumerated() {
            let daemon = try XCTUnwrap(daemons.first { "\"unix:\($0.socketPath)\"" == info(session, "endpoint") })
            XCTAssertEqual(voxelCount(daemon), 10 * (index + 1), "every call of session \(index) reached its daemon, and only it")
            XCTAssertEqual(info(session, "daemon_pid"), String(daemonPid(daemon) ?? -1))
        }
        let stats = try XCTUnwrap(goxelpool_stats(client))
        defer { json_decref(stats) }
        XCTAssertEqual(json_integer_value(json_object_get(json_object_get(stats, "sessions"), "open")), 3)
        XCTAssertEqual(json_integer_value(json_object_get(json_object_get(stats, "sessions"), "exclusive")), 3)
        for session in sessions { XCTAssertEqual(goxelpool_session_close(session), GOXELPOOL_OK) }
        XCTAssertEqual(statValue(client, "sessions", "open"), 0)
        XCTAssertEqual(statValue(client, "sessions", "closed"), 3)
    }

    func testSameKeyFindsTheSameDaemonFromEveryClientAndRendezvousPicksIt() throws {
        daemons = try (0..<3).map { _ in try RefDaemon() }
        let names = daemons.map { "unix:\($0.socketPath)" }
        let first = makeClient(config(daemons.map(\.socketPath)))
        let second = makeClient(config(daemons.map(\.socketPath).reversed()))
        defer { goxelpool_client_free(first); goxelpool_client_free(second) }
        for key in ["alice", "bob", "carol", "dave", "erin", "frank"] {
            let expected = names.max { SessionPlacement.weight(key: key, endpoint: $0) < SessionPlacement.weight(key: key, endpoint: $1) }!
            let (s1, a) = open(first, #"{"key": "\#(key)", "exclusive": false}"#)
            let (s2, b) = open(second, #"{"key": "\#(key)", "exclusive": false}"#)
            XCTAssertEqual(s1, GOXELPOOL_OK)
            XCTAssertEqual(s2, GOXELPOOL_OK)
            XCTAssertEqual(info(a, "endpoint"), "\"\(expected)\"", key)
            XCTAssertEqual(info(b, "endpoint"), "\"\(expected)\"", "\(key): another client, endpoints listed in another order")
            goxelpool_session_close(a)
            goxelpool_session_close(b)
        }
    }

    func testExclusiveSessionsWaitFIFOThenTimeOutOrAreRefusedPastTheBound() throws {
        daemons = [try RefDaemon()]
        let client = makeClient(config([daemons[0].socketPath], #", "pool": {"min_connections": 1, "max_connections": 4, "max_waiters": 2}"#))
        defer { goxelpool_client_free(client) }
        let (status, holder) = open(client, nil)
        XCTAssertEqual(status, GOXELPOOL_OK)
        let order = OrderLog()
        let threads = (0..<2).map { index in
            LibraryThreadBox {
                let (st, session) = self.open(client, nil, timeoutMs: 8000)
                XCTAssertEqual(st, GOXELPOOL_OK, "waiter \(index)")
                order.append(index)
                // Hold the daemon a moment so the next waiter visibly waits for this close.
                usleep(100_000)
                goxelpool_session_close(session)
            }
        }
        threads[0].start()
        XCTAssertTrue(waitFor { statValue(client, "sessions", "waiting") == 1 })
        threads[1].start()
        XCTAssertTrue(waitFor { statValue(client, "sessions", "waiting") == 2 })
        // The bound: a third waiter is refused at once.
        var began = now()
        XCTAssertEqual(open(client, nil, timeoutMs: 5000).0, GOXELPOOL_EBUSY)
        XCTAssertLessThan(now() - began, 1.0)
        XCTAssertEqual(order.values, [], "nobody got the daemon while it is held")
        goxelpool_session_close(holder)
        for thread in threads { thread.join() }
        XCTAssertEqual(order.values, [0, 1], "FIFO")
        // Held again: a short deadline gives ETIMEDOUT, in about that time.
        let (_, again) = open(client, nil)
        began = now()
        XCTAssertEqual(open(client, nil, timeoutMs: 300).0, GOXELPOOL_ETIMEDOUT)
        XCTAssertGreaterThanOrEqual(now() - began, 0.29)
        XCTAssertLessThan(now() - began, 2.0)
        XCTAssertTrue(String(cString: goxelpool_last_error()).contains("no daemon became free"), String(cString: goxelpool_last_error()))
        goxelpool_session_close(again)
    }

    func testOptionsAreCheckedAndAnUnwritableCheckpointDirIsReportedAtOpen() throws {
        daemons = [try RefDaemon()]
        let client = makeClient(config([daemons[0].socketPath]))
        defer { goxelpool_client_free(client) }
        XCTAssertEqual(open(client, #"{"durable": true}"#).0, GOXELPOOL_EINVAL)
        XCTAssertTrue(String(cString: goxelpool_last_error()).contains("checkpoint_dir"))
        XCTAssertEqual(open(client, #"{"exclusive": 1}"#).0, GOXELPOOL_EINVAL)
        XCTAssertEqual(String(cString: goxelpool_last_error()), "options.exclusive: expected a boolean, got integer")
        XCTAssertEqual(open(client, #"{"colour": "red"}"#).0, GOXELPOOL_EINVAL)
        XCTAssertEqual(open(client, #"{"durable": true, "checkpoint_dir": "/nonexistent-\#(getpid())/cp"}"#).0, GOXELPOOL_EINVAL)
        XCTAssertTrue(String(cString: goxelpool_last_error()).contains("the daemon could not write"), String(cString: goxelpool_last_error()))
        var session: OpaquePointer?
        XCTAssertEqual(goxelpool_session_open(nil, nil, 100, &session), GOXELPOOL_EINVAL)
        XCTAssertEqual(goxelpool_session_open(client, nil, 100, nil), GOXELPOOL_EINVAL)
        XCTAssertEqual(goxelpool_session_close(nil), GOXELPOOL_OK)
        XCTAssertNil(goxelpool_session_info(nil))
        XCTAssertEqual(goxelpool_session_call(nil, "ping", nil, -1, nil, nil), GOXELPOOL_EINVAL)
        // The failed opens left the daemon free.
        let (status, ok) = open(client, nil, timeoutMs: 500)
        XCTAssertEqual(status, GOXELPOOL_OK)
        XCTAssertEqual(scall(ok, "", nil).0, GOXELPOOL_EINVAL)
        goxelpool_session_close(ok)
    }

    // MARK: - Durable sessions

    /// A durable session writes a changing call's params once, for its journal, and sends that
    /// text: params jansson cannot encode and requests over max_message_size are refused as
    /// plain calls are, and neither reaches the journal.
    func testDurableCallsRefuseWhatCannotBeSentAndJournalOnlyWhatRan() throws {
        daemons = [try RefDaemon()]
        let daemon = daemons[0]
        let client = makeClient(config([daemon.socketPath], #", "max_message_size": 4096"#))
        defer { goxelpool_client_free(client) }
        let (status, session) = open(client, durable(#", "checkpoint_every": 100000, "checkpoint_interval_ms": 0"#))
        XCTAssertEqual(status, GOXELPOOL_OK, String(cString: goxelpool_last_error()))
        defer { goxelpool_session_close(session) }
        let journaled = Int(info(session, "journal_length")) ?? -1

        // A string that is not UTF-8 (made with json_stringn_nocheck): jansson will not write it.
        let invalid = try XCTUnwrap(json_array())
        let bad: [CChar] = [CChar(bitPattern: 0xFF), CChar(bitPattern: 0xFE)]
        bad.withUnsafeBufferPointer { json_array_append_new(invalid, json_stringn_nocheck($0.baseAddress, 2)) }
        defer { json_decref(invalid) }
        XCTAssertEqual(goxelpool_session_call(session, "goxel.add_voxel", invalid, -1, nil, nil), GOXELPOOL_EINVAL)
        XCTAssertTrue(String(cString: goxelpool_last_error()).contains("cannot be encoded"), String(cString: goxelpool_last_error()))

        let huge = "[\"" + String(repeating: "x", count: 5000) + "\"]"
        XCTAssertEqual(scall(session, "goxel.add_voxel", huge).0, GOXELPOOL_ETOOBIG)
        XCTAssertEqual(Int(info(session, "journal_length")), journaled, "refused calls are not journaled")

        // Object params and the array form: both run, both journaled, both as sent.
        XCTAssertEqual(scall(session, "goxel.add_voxel", #"{"x": 1, "y": 2, "z": 3, "color": [10, 20, 30, 255]}"#).0, GOXELPOOL_OK)
        XCTAssertEqual(scall(session, "goxel.add_voxel", "[4, 5, 6, 40, 50, 60, 255]").0, GOXELPOOL_OK)
        XCTAssertEqual(Int(info(session, "journal_length")), journaled + 2)
        XCTAssertEqual(scall(session, "goxel.get_voxel", "[1, 2, 3]").0, GOXELPOOL_OK)
        XCTAssertEqual(Int(info(session, "journal_length")), journaled + 2, "reads are not journaled")
    }

    func testDurableSessionSurvivesKill9WithEightWritersAndNoCallFails() throws {
        daemons = [try RefDaemon(arguments: ["--supervise", "--restart-delay-ms", "100"])]
        let daemon = daemons[0]
        let client = makeClient(config([daemon.socketPath]))
        defer { goxelpool_client_free(client) }
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_SESSION | GOXELPOOL_EVENT_ALERT))
        let (status, session) = open(client, durable(#", "checkpoint_every": 200"#))
        XCTAssertEqual(status, GOXELPOOL_OK, String(cString: goxelpool_last_error()))
        defer { goxelpool_session_close(session) }
        XCTAssertEqual(scall(session, "goxel.create_project", #"["kill9", 64, 64, 64]"#).0, GOXELPOOL_OK)
        let pidBefore = daemonPid(daemon)
        let acknowledged = Counter()
        let failures = Counter()
        let stop = Flag()
        let writers = (0..<8).map { thread in
            LibraryThreadBox {
                var n = 0
                while !stop.isSet {
                    let (st, detail) = self.scall(session, "goxel.add_voxel", "[\(n), \(thread), 3, 10, 20, 30, 255, 0]", timeoutMs: 10_000)
                    if st == GOXELPOOL_OK { acknowledged.add() } else { failures.add(); XCTFail("call failed: \(st.rawValue) \(detail)") }
                    n += 1
                }
            }
        }
        for writer in writers { writer.start() }
        XCTAssertTrue(waitFor { acknowledged.value > 800 }, "\(acknowledged.value) acknowledged")
        daemon.crash()   // the supervised daemon dies at once (SIGKILL), mid-stream
        XCTAssertTrue(waitFor(10) { self.log.count("session_restored") >= 1 }, "\(log.types)")
        let afterRestore = acknowledged.value
        XCTAssertTrue(waitFor { acknowledged.value > afterRestore + 400 })
        stop.set()
        for writer in writers { writer.join() }
        XCTAssertEqual(failures.value, 0)
        XCTAssertNotEqual(daemonPid(daemon), pidBefore, "a new process")
        XCTAssertEqual(info(session, "daemon_pid"), String(daemonPid(daemon) ?? -1))
        XCTAssertEqual(voxelCount(daemon), acknowledged.value, "every acknowledged voxel is in the restored document, once")
        XCTAssertEqual(info(session, "state"), "\"active\"")
        XCTAssertGreaterThanOrEqual(Int(info(session, "restores")) ?? 0, 1)
        let restored = log.all("session_restored").first ?? ""
        XCTAssertTrue(restored.contains(#""pid_before":\#(pidBefore ?? -1)"#), restored)
        XCTAssertTrue(restored.contains(#""calls_replayed":"#), restored)
        XCTAssertEqual(log.count("session_lost"), 0)
    }

    func testCrashTimerAfterCreateProjectIsRiddenOutAndNotReArmedByTheRestore() throws {
        // The real daemon dies 300 s after goxel.create_project; this one after 400 ms.
        daemons = [try RefDaemon(arguments: ["--supervise", "--restart-delay-ms", "50", "--crash-after-create-ms", "400"])]
        let daemon = daemons[0]
        let client = makeClient(config([daemon.socketPath]))
        defer { goxelpool_client_free(client) }
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_SESSION))
        let (status, session) = open(client, durable())
        XCTAssertEqual(status, GOXELPOOL_OK, String(cString: goxelpool_last_error()))
        defer { goxelpool_session_close(session) }
        XCTAssertEqual(scall(session, "goxel.create_project", #"["timer", 16, 16, 16]"#).0, GOXELPOOL_OK)
        // A checkpoint right after create_project: restores load it, which does not arm the timer.
        XCTAssertTrue(waitFor { self.log.count("checkpoint") >= 2 }, "\(log.types)")
        var added = 0
        let until = now() + 1.5
        while now() < until {
            XCTAssertEqual(scall(session, "goxel.add_voxel", "[\(added % 16), \(added / 16 % 16), \(added / 256), 1, 2, 3, 255, 0]", timeoutMs: 8000).0, GOXELPOOL_OK)
            added += 1
            usleep(2000)
        }
        XCTAssertEqual(log.count("session_restored"), 1, "one crash, one restore: \(log.types)")
        // Well past the timer again: the restored daemon (its document loaded) does not crash.
        usleep(800_000)
        XCTAssertEqual(scall(session, "goxel.get_status").0, GOXELPOOL_OK)
        XCTAssertEqual(log.count("session_restored"), 1)
        XCTAssertEqual(voxelCount(daemon), min(added, 16 * 16 * 16))
    }

    func testACheckpointThatCannotBeLoadedLosesTheSession() throws {
        daemons = [try RefDaemon(arguments: ["--supervise", "--restart-delay-ms", "50"])]
        let daemon = daemons[0]
        let client = makeClient(config([daemon.socketPath]))
        defer { goxelpool_client_free(client) }
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_ALERT | GOXELPOOL_EVENT_SESSION))
        // One checkpoint due, after the twelfth call (none by time): the file damaged below is the
        // last one written (with a smaller cadence a later checkpoint could replace it after the
        // damage, and the restore would load that one).
        let (status, session) = open(client, durable(#", "checkpoint_every": 12, "checkpoint_interval_ms": 0"#))
        XCTAssertEqual(status, GOXELPOOL_OK, String(cString: goxelpool_last_error()))
        defer { goxelpool_session_close(session) }
        for n in 0..<12 { XCTAssertEqual(scall(session, "goxel.add_voxel", "[\(n), 0, 0, 9, 9, 9, 255, 0]").0, GOXELPOOL_OK) }
        // The initial checkpoint and the one holding all twelve voxels (the journal is then empty).
        XCTAssertTrue(waitFor { (Int(self.info(session, "checkpoints")) ?? 0) >= 2 && self.info(session, "journal_length") == "0" },
                      text(goxelpool_session_info(session)))
        let path = String(info(session, "checkpoint_path").dropFirst().dropLast())  // JSON string: drop the quotes
        guard path.hasPrefix(checkpointDir + "/") else { return XCTFail("checkpoint path \(path) is not in \(checkpointDir)") }
        // Damage the checkpoint the restore will load.
        let file = fopen(path, "w")
        XCTAssertNotNil(file)
        fputs("not a project", file)
        fclose(file)
        daemon.crash()
        let (st, message) = scall(session, "goxel.get_voxel", "[1, 0, 0]", timeoutMs: 8000)
        XCTAssertEqual(st, GOXELPOOL_ELOST, message)
        XCTAssertTrue(message.contains("could not be loaded"), message)
        XCTAssertEqual(scall(session, "ping").0, GOXELPOOL_ELOST, "lost stays lost")
        XCTAssertEqual(info(session, "state"), "\"lost\"")
        XCTAssertTrue(waitFor { self.log.count("session_lost") == 1 }, "\(log.types)")
        XCTAssertTrue(log.all("session_lost").first?.contains(#""severity":"critical""#) ?? false)
        XCTAssertEqual(statValue(client, "sessions", "lost"), 1)
        XCTAssertEqual(statValue(client, "alerts_generated", "session_lost"), 1)
    }

    func testNonIdempotentCallsInFlightAtTheCrashRunExactlyOnce() throws {
        daemons = [try RefDaemon(arguments: ["--supervise", "--restart-delay-ms", "50"])]
        let daemon = daemons[0]
        let client = makeClient(config([daemon.socketPath]))
        defer { goxelpool_client_free(client) }
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_SESSION))
        let (status, session) = open(client, durable())
        XCTAssertEqual(status, GOXELPOOL_OK, String(cString: goxelpool_last_error()))
        defer { goxelpool_session_close(session) }
        XCTAssertEqual(scall(session, "goxel.create_layer", #"["before"]"#).0, GOXELPOOL_OK)
        // Every call now sits in the daemon for 1.5 s before it runs: the crash finds six in flight.
        try daemon.setFaults(#"{"latency_ms": 1500}"#)
        let results = Counter()
        let callers = (0..<6).map { index in
            LibraryThreadBox {
                let (st, detail) = self.scall(session, "goxel.create_layer", #"["in-flight-\#(index)"]"#, timeoutMs: 15_000)
                XCTAssertEqual(st, GOXELPOOL_OK, detail)
                if st == GOXELPOOL_OK { results.add() }
            }
        }
        for caller in callers { caller.start() }
        XCTAssertTrue(waitFor { (try? daemon.stats()).flatMap { RefDaemon.intField("open", in: $0) } ?? 0 >= 6 })
        usleep(300_000)
        daemon.crash()   // the new process has no latency fault
        for caller in callers { caller.join() }
        XCTAssertEqual(results.value, 6)
        let (st, layers) = scall(session, "goxel.list_layers")
        XCTAssertEqual(st, GOXELPOOL_OK)
        // Layer 0, "before", and each in-flight call exactly once.
        XCTAssertTrue(layers.contains(#""count":8"#), layers)
        for index in 0..<6 { XCTAssertEqual(layers.components(separatedBy: "in-flight-\(index)\"").count - 1, 1, layers) }
        // Posted as the restore ends, delivered on the event thread: waited for, then counted.
        XCTAssertTrue(waitFor(5) { self.log.count("session_restored") >= 1 }, "\(log.types)")
        XCTAssertEqual(log.count("session_restored"), 1, "\(log.types)")
    }

    func testRemovingAnEndpointMovesADurableSessionWithItsDocument() throws {
        daemons = try (0..<2).map { _ in try RefDaemon() }
        let client = makeClient(config(daemons.map(\.socketPath)))
        defer { goxelpool_client_free(client) }
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_SESSION))
        let (status, session) = open(client, durable())
        XCTAssertEqual(status, GOXELPOOL_OK, String(cString: goxelpool_last_error()))
        defer { goxelpool_session_close(session) }
        for n in 0..<25 { XCTAssertEqual(scall(session, "goxel.add_voxel", "[\(n), 5, 5, 1, 1, 1, 255, 0]").0, GOXELPOOL_OK) }
        let from = info(session, "endpoint")
        let fromDaemon = try XCTUnwrap(daemons.first { "\"unix:\($0.socketPath)\"" == from })
        let toDaemon = try XCTUnwrap(daemons.first { $0 !== fromDaemon })
        XCTAssertEqual(goxelpool_remove_endpoint(client, "unix:\(fromDaemon.socketPath)", 1000), GOXELPOOL_OK)
        XCTAssertEqual(info(session, "endpoint"), "\"unix:\(toDaemon.socketPath)\"")
        XCTAssertEqual(info(session, "moves"), "1")
        XCTAssertEqual(voxelCount(toDaemon), 25, "the document came along")
        XCTAssertEqual(scall(session, "goxel.add_voxel", "[99, 5, 5, 1, 1, 1, 255, 0]").0, GOXELPOOL_OK)
        XCTAssertEqual(voxelCount(toDaemon), 26)
        XCTAssertTrue(waitFor(5) { self.log.all("session_restored").last?.contains(#""moved":true"#) ?? false },
                      "\(log.all("session_restored"))")
    }

    func testNonDurableSessionStaysOnItsDaemonThroughARestart() throws {
        daemons = [try RefDaemon(arguments: ["--supervise", "--restart-delay-ms", "50"]), try RefDaemon()]
        let client = makeClient(config(daemons.map(\.socketPath)))
        defer { goxelpool_client_free(client) }
        let key = ["a", "b", "c", "d", "e", "f", "g", "h"].first { k in
            daemons.map { "unix:\($0.socketPath)" }.max { SessionPlacement.weight(key: k, endpoint: $0) < SessionPlacement.weight(key: k, endpoint: $1) } == "unix:\(daemons[0].socketPath)"
        }!
        let (status, session) = open(client, #"{"key": "\#(key)"}"#)
        XCTAssertEqual(status, GOXELPOOL_OK)
        defer { goxelpool_session_close(session) }
        XCTAssertEqual(scall(session, "goxel.add_voxel", "[1, 1, 1, 1, 1, 1, 255, 0]").0, GOXELPOOL_OK)
        daemons[0].crash()
        XCTAssertTrue(waitFor { (try? self.daemons[0].stats()) != nil })
        // Not durable: the document is gone, as without a session, but the session stays put.
        XCTAssertTrue(waitFor { self.scall(session, "goxel.get_voxel", "[1, 1, 1]").1.contains(#""exists":false"#) })
        XCTAssertEqual(info(session, "endpoint"), "\"unix:\(daemons[0].socketPath)\"")
        XCTAssertEqual(info(session, "state"), "\"active\"")
        XCTAssertEqual(voxelCount(daemons[1]), 0, "nothing leaked to the other daemon")
    }

    // MARK: - Notifications

    func testNotifyNeverWaitsForAnAnswerAndTheConnectionStaysInStep() throws {
        daemons = [try RefDaemon(arguments: ["--silent-notifications"]), try RefDaemon()]
        for daemon in daemons {
            let client = makeClient(#"{"socket_path": "\#(daemon.socketPath)", "timeout_ms": 2000, "pool": {"min_connections": 1, "max_connections": 1}}"#)
            defer { goxelpool_client_free(client) }
            XCTAssertEqual(call(client, "ping"), GOXELPOOL_OK)
            let began = now()
            for n in 0..<5 {
                let params = parse("[\(n), 0, 0, 1, 1, 1, 255, 0]")
                XCTAssertEqual(goxelpool_notify(client, "goxel.add_voxel", params), GOXELPOOL_OK, String(cString: goxelpool_last_error()))
                json_decref(params)
            }
            XCTAssertLessThan(now() - began, 1.0, "no notification waits for an answer (the call deadline is 2 s)")
            // One connection: the next call's answer is its own, whatever the daemon sent before.
            var result: UnsafeMutablePointer<json_t>?
            XCTAssertEqual(goxelpool_call(client, "goxel.get_status", nil, -1, &result, nil), GOXELPOOL_OK)
            XCTAssertTrue(text(result).contains(#""voxel_count":5"#), text(result))
            json_decref(result)
            XCTAssertEqual(statValue(client, "notifications_sent"), 5)
            XCTAssertEqual(statValue(client, "connections_closed", "error"), 0, "no connection fell out of step")
        }
    }
}

/// A thread started on demand (LibraryThread starts at once). The body is not checked for
/// Sendable: tests hand C handles (raw pointers) to their threads on purpose.
final class LibraryThreadBox: @unchecked Sendable {
    private let body: () -> Void
    private var thread: pthread_t?
    init(_ body: @escaping () -> Void) { self.body = body }
    func start() {
        let box = Unmanaged.passRetained(self).toOpaque()
        var handle = pthread_t()
        if pthread_create(&handle, nil, { raw in
            guard let raw else { return nil }
            let me = Unmanaged<LibraryThreadBox>.fromOpaque(raw).takeRetainedValue()
            me.body()
            return nil
        }, box) == 0 { thread = handle } else { Unmanaged<LibraryThreadBox>.fromOpaque(box).release() }
    }
    func join() { if let thread { pthread_join(thread, nil); self.thread = nil } }
}

final class Flag: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var on = false
    init() { pthread_mutex_init(&lock, nil) }
    func set() { pthread_mutex_lock(&lock); on = true; pthread_mutex_unlock(&lock) }
    var isSet: Bool { pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }; return on }
}
