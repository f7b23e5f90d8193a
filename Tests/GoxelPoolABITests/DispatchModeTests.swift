import CGoxelPool
import CJansson
import Glibc
import XCTest

/// Dispatch mode ("callbacks": "dispatch") through the C ABI against a goxel-refd: callbacks and
/// listeners run only inside goxelpool_dispatch, on its caller's thread; the event fd is readable
/// exactly while something is queued; close and free keep "exactly once".
final class DispatchModeTests: XCTestCase {
    var daemon: RefDaemon!

    override func setUpWithError() throws { daemon = try RefDaemon() }
    override func tearDown() { daemon?.stop(); daemon = nil }

    func config(_ extra: String = "", connections: Int = 2) -> String {
        #"""
        {"socket_path": "\#(daemon.socketPath)", "timeout_ms": 10000, "callbacks": "dispatch",
         "pool": {"min_connections": 1, "max_connections": \#(connections)}\#(extra)}
        """#
    }

    // MARK: Statuses

    func testEventFdAndDispatchStatuses() throws {
        XCTAssertEqual(goxelpool_event_fd(nil), -1)
        XCTAssertTrue(String(cString: goxelpool_last_error()).contains("NULL"))
        var ran: Int32 = 7
        XCTAssertEqual(goxelpool_dispatch(nil, 0, &ran), GOXELPOOL_EINVAL)
        XCTAssertEqual(ran, 0)

        let threaded = makeClient(#"{"socket_path": "\#(daemon.socketPath)"}"#)
        defer { goxelpool_client_free(threaded) }
        XCTAssertEqual(goxelpool_event_fd(threaded), -1)
        XCTAssertTrue(String(cString: goxelpool_last_error()).contains("thread"), String(cString: goxelpool_last_error()))
        ran = 7
        XCTAssertEqual(goxelpool_dispatch(threaded, 0, &ran), GOXELPOOL_EINVAL)
        XCTAssertTrue(String(cString: goxelpool_last_error()).contains("dispatch"))
        XCTAssertEqual(ran, 0)
        XCTAssertEqual(stateValue(threaded, "callbacks"), "thread")

        let client = makeClient(config())
        defer { goxelpool_client_free(client) }
        let fd = goxelpool_event_fd(client)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(goxelpool_event_fd(client), fd, "one fd for the client's life")
        XCTAssertFalse(readable(fd))
        ran = 7
        XCTAssertEqual(goxelpool_dispatch(client, 0, &ran), GOXELPOOL_OK)
        XCTAssertEqual(ran, 0)
        XCTAssertEqual(goxelpool_dispatch(client, -5, nil), GOXELPOOL_OK)
        XCTAssertEqual(stateValue(client, "callbacks"), "dispatch")
        XCTAssertEqual(statValue(client, "dispatch_queue_depth"), 0)
    }

    // MARK: Async calls

    func testAsyncCallbacksRunOnlyInsideDispatchOnTheCallingThread() throws {
        let client = makeClient(config(connections: 4))
        defer { goxelpool_client_free(client) }
        let fd = goxelpool_event_fd(client)
        let recorder = Recorder(count: 300)
        for index in 0..<recorder.count { XCTAssertEqual(recorder.start(client, index), GOXELPOOL_OK) }

        // Every answer arrives and waits: no callback has run yet, and the fd says so.
        XCTAssertTrue(waitFor(15) { statValue(client, "dispatch_queue_depth") == Double(recorder.count) })
        XCTAssertTrue(readable(fd))
        XCTAssertEqual(recorder.totalRuns, 0, "a callback ran outside goxelpool_dispatch")

        var ran: Int32 = 0
        XCTAssertEqual(goxelpool_dispatch(client, 0, &ran), GOXELPOOL_OK)
        XCTAssertEqual(ran, Int32(recorder.count))
        XCTAssertFalse(readable(fd), "the fd stays readable with an empty queue")
        recorder.assertEachRanOnce(status: GOXELPOOL_OK, onThread: pthread_self())
        XCTAssertEqual(statValue(client, "dispatch_queue_depth"), 0)
        XCTAssertEqual(statValue(client, "dispatch_queue_peak"), Double(recorder.count))
    }

    func testTheFdIsReadableExactlyWhileItemsAreQueued() throws {
        let client = makeClient(config())
        defer { goxelpool_client_free(client) }
        let fd = goxelpool_event_fd(client)
        let recorder = Recorder(count: 3)
        for index in 0..<3 { XCTAssertEqual(recorder.start(client, index), GOXELPOOL_OK) }
        XCTAssertTrue(waitFor { statValue(client, "dispatch_queue_depth") == 3 })
        for remaining in [2, 1, 0] {
            XCTAssertTrue(readable(fd))
            var ran: Int32 = 0
            XCTAssertEqual(goxelpool_dispatch(client, 1, &ran), GOXELPOOL_OK)
            XCTAssertEqual(ran, 1)
            XCTAssertEqual(recorder.totalRuns, 3 - remaining)
            XCTAssertEqual(readable(fd), remaining > 0)
        }
        recorder.assertEachRanOnce(status: GOXELPOOL_OK, onThread: pthread_self())
    }

    /// max_items <= 0 runs what was queued when the call started: an item queued by a callback
    /// waits for the next call.
    func testItemsQueuedDuringDispatchWaitForTheNextCall() throws {
        let client = makeClient(config())
        defer { goxelpool_client_free(client) }
        let fd = goxelpool_event_fd(client)
        let recorder = Recorder(count: 2)
        recorder.onRun = { index in
            guard index == 0 else { return }
            // Start the second call and wait, inside this callback, until its answer is queued.
            XCTAssertEqual(recorder.start(client, 1), GOXELPOOL_OK)
            XCTAssertTrue(waitFor { statValue(client, "dispatch_queue_depth") == 1 })
        }
        XCTAssertEqual(recorder.start(client, 0), GOXELPOOL_OK)
        XCTAssertTrue(waitFor { readable(fd) })
        var ran: Int32 = 0
        XCTAssertEqual(goxelpool_dispatch(client, 0, &ran), GOXELPOOL_OK)
        XCTAssertEqual(ran, 1)
        XCTAssertEqual(recorder.runs(1), 0)
        XCTAssertTrue(readable(fd))
        XCTAssertEqual(goxelpool_dispatch(client, 0, &ran), GOXELPOOL_OK)
        XCTAssertEqual(ran, 1)
        recorder.assertEachRanOnce(status: GOXELPOOL_OK, onThread: pthread_self())
    }

    // MARK: From inside a callback

    func testLibraryCallsFromADispatchedCallback() throws {
        let client = makeClient(config())
        defer { goxelpool_client_free(client) }
        let fd = goxelpool_event_fd(client)
        let log = EventLog()
        let listenerID = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_REQUEST))
        let recorder = Recorder(count: 2)
        var inner: [String: goxelpool_status] = [:]
        recorder.onRun = { index in
            guard index == 0 else { return }
            inner["call"] = call(client, "echo", "[5]")
            inner["call_async"] = recorder.start(client, 1)
            var ran: Int32 = 9
            inner["dispatch"] = goxelpool_dispatch(client, 0, &ran)
            inner["dispatch_ran_zero"] = ran == 0 ? GOXELPOOL_OK : GOXELPOOL_EINVAL
            // Another thread trying to dispatch while this one does: EBUSY at once.
            var other = pthread_t()
            let box = Unmanaged.passRetained(BusyProbe(client: client)).toOpaque()
            pthread_create(&other, nil, { raw in
                let probe = Unmanaged<BusyProbe>.fromOpaque(raw!).takeRetainedValue()
                probe.status = goxelpool_dispatch(probe.client, 0, nil)
                return UnsafeMutableRawPointer(bitPattern: Int(probe.status.rawValue) + 1)
            }, box)
            var value: UnsafeMutableRawPointer?
            pthread_join(other, &value)
            inner["other_thread_dispatch"] = goxelpool_status(rawValue: UInt32(Int(bitPattern: value) - 1))
            inner["remove_listener"] = goxelpool_remove_listener(client, listenerID)
            let stats = goxelpool_stats(client)
            inner["stats"] = stats == nil ? GOXELPOOL_ENOMEM : GOXELPOOL_OK
            json_decref(stats)
        }
        XCTAssertEqual(recorder.start(client, 0), GOXELPOOL_OK)
        // One item at a time (request events come first) until callback 0 has run.
        XCTAssertTrue(waitFor { readable(fd) && goxelpool_dispatch(client, 1, nil) == GOXELPOOL_OK && recorder.runs(0) == 1 })
        XCTAssertEqual(inner["call"], GOXELPOOL_OK)
        XCTAssertEqual(inner["call_async"], GOXELPOOL_OK)
        XCTAssertEqual(inner["dispatch"], GOXELPOOL_EINVAL, "no nested dispatch")
        XCTAssertEqual(inner["dispatch_ran_zero"], GOXELPOOL_OK)
        XCTAssertEqual(inner["other_thread_dispatch"], GOXELPOOL_EBUSY)
        XCTAssertEqual(inner["remove_listener"], GOXELPOOL_OK)
        XCTAssertEqual(inner["stats"], GOXELPOOL_OK)
        XCTAssertTrue(waitFor { self.drain(client) >= 1 && recorder.runs(1) == 1 })
        recorder.assertEachRanOnce(status: GOXELPOOL_OK, onThread: pthread_self())
        XCTAssertEqual(log.callbackThreads, [UInt(pthread_self())], "listeners ran only here")
    }

    /// In dispatch mode close may be called from a callback (it runs on the application's
    /// thread): the other callbacks then wait in the queue with ECLOSED.
    func testCloseFromADispatchedCallback() throws {
        let client = makeClient(config(connections: 1))
        defer { goxelpool_client_free(client) }
        let fd = goxelpool_event_fd(client)
        XCTAssertEqual(call(client, "ping"), GOXELPOOL_OK)
        let recorder = Recorder(count: 4)
        var closeStatus: goxelpool_status?
        recorder.onRun = { index in
            if index == 0 { closeStatus = goxelpool_client_close(client, 0) }
        }
        XCTAssertEqual(recorder.start(client, 0), GOXELPOOL_OK)
        XCTAssertTrue(waitFor { readable(fd) })
        try daemon.setFaults(#"{"latency_ms": 3000}"#)
        for index in 1..<4 { XCTAssertEqual(recorder.start(client, index), GOXELPOOL_OK) }
        var ran: Int32 = 0
        XCTAssertEqual(goxelpool_dispatch(client, 1, &ran), GOXELPOOL_OK)
        XCTAssertEqual(closeStatus, GOXELPOOL_OK)
        XCTAssertTrue(readable(fd), "the ECLOSED completions are queued")
        XCTAssertEqual(goxelpool_dispatch(client, 0, &ran), GOXELPOOL_OK)
        XCTAssertEqual(ran, 3)
        for index in 1..<4 { XCTAssertEqual(recorder.status(index), GOXELPOOL_ECLOSED, "call \(index)") }
        recorder.assertEachRanOnce(onThread: pthread_self())
        XCTAssertFalse(readable(fd))
    }

    // MARK: Close and free

    func testCloseLeavesEveryCompletionQueuedForDispatch() throws {
        let client = makeClient(config(connections: 1))
        defer { goxelpool_client_free(client) }
        let fd = goxelpool_event_fd(client)
        XCTAssertEqual(call(client, "ping"), GOXELPOOL_OK)
        try daemon.setFaults(#"{"latency_ms": 3000}"#)
        let recorder = Recorder(count: 5)
        for index in 0..<5 { XCTAssertEqual(recorder.start(client, index), GOXELPOOL_OK) }
        usleep(100_000)
        XCTAssertEqual(goxelpool_client_close(client, 0), GOXELPOOL_OK)
        XCTAssertEqual(recorder.totalRuns, 0, "close runs no callback in dispatch mode")
        XCTAssertTrue(readable(fd))
        XCTAssertEqual(statValue(client, "dispatch_queue_depth"), 5)
        var ran: Int32 = 0
        XCTAssertEqual(goxelpool_dispatch(client, 0, &ran), GOXELPOOL_OK)
        XCTAssertEqual(ran, 5)
        recorder.assertEachRanOnce(status: GOXELPOOL_ECLOSED, onThread: pthread_self())
        XCTAssertTrue(recorder.messages.allSatisfy { !$0.isEmpty }, "\(recorder.messages)")
        XCTAssertEqual(recorder.start(client, 0), GOXELPOOL_ECLOSED)
    }

    func testFreeRunsWhatIsQueuedOnTheFreeingThread() throws {
        let client = makeClient(config(connections: 2))
        let fd = goxelpool_event_fd(client)
        let recorder = Recorder(count: 50)
        for index in 0..<50 { XCTAssertEqual(recorder.start(client, index), GOXELPOOL_OK) }
        XCTAssertTrue(waitFor { statValue(client, "dispatch_queue_depth") ?? 0 >= 20 })
        XCTAssertEqual(recorder.totalRuns, 0)
        goxelpool_client_free(client)
        recorder.assertEachRanOnce(onThread: pthread_self())
        XCTAssertGreaterThanOrEqual(recorder.count(of: GOXELPOOL_OK), 20)
        XCTAssertEqual(recorder.count(of: GOXELPOOL_OK) + recorder.count(of: GOXELPOOL_ECLOSED), 50)
        XCTAssertEqual(fcntl(fd, F_GETFD), -1, "the event fd is closed by free")
    }

    func testFreeFromADispatchedCallbackIsDeferredAndTheRestStillRunOnce() throws {
        let client = makeClient(config(connections: 1))
        let fd = goxelpool_event_fd(client)
        XCTAssertEqual(call(client, "ping"), GOXELPOOL_OK)
        let recorder = Recorder(count: 6)
        var afterFree: goxelpool_status?
        recorder.onRun = { index in
            if index == 0 {
                goxelpool_client_free(client)
                // Deferred: the client still answers (closed once free has begun).
                afterFree = recorder.start(client, 5)
            }
        }
        XCTAssertEqual(recorder.start(client, 0), GOXELPOOL_OK)
        XCTAssertTrue(waitFor { readable(fd) })
        try daemon.setFaults(#"{"latency_ms": 3000}"#)
        for index in 1..<5 { XCTAssertEqual(recorder.start(client, index), GOXELPOOL_OK) }
        var ran: Int32 = 0
        let started = now()
        XCTAssertEqual(goxelpool_dispatch(client, 1, &ran), GOXELPOOL_OK)
        XCTAssertLessThan(now() - started, 2.5, "free cut the slow calls off")
        // The callback, then the five cut-off calls, all in that goxelpool_dispatch.
        XCTAssertEqual(ran, 6)
        XCTAssertEqual(afterFree, GOXELPOOL_OK, "calls made before free begins are still accepted")
        for index in 1..<5 { XCTAssertEqual(recorder.status(index), GOXELPOOL_ECLOSED, "call \(index)") }
        XCTAssertEqual(recorder.runs(5), 1)
        recorder.assertEachRanOnce(onThread: pthread_self())
        XCTAssertEqual(fcntl(fd, F_GETFD), -1, "freed when dispatch returned")
    }

    // MARK: Listeners

    func testListenerEventsAreDispatchedAndBoundedWhileCompletionsAreNot() throws {
        let client = makeClient(config(#", "event_queue_size": 4"#))
        defer { goxelpool_client_free(client) }
        let fd = goxelpool_event_fd(client)
        let log = EventLog()
        _ = log.listen(client, kinds: UInt32(GOXELPOOL_EVENT_REQUEST))
        let recorder = Recorder(count: 40)
        for index in 0..<40 { XCTAssertEqual(recorder.start(client, index), GOXELPOOL_OK) }
        // 40 completions plus 4 events (a request_served per call at least, the oldest dropped).
        XCTAssertTrue(waitFor { (statValue(client, "total_requests_served") ?? 0) >= 40 })
        XCTAssertTrue(waitFor { statValue(client, "dispatch_queue_depth") == 44 })
        XCTAssertEqual(log.types, [], "no listener ran outside goxelpool_dispatch")
        XCTAssertGreaterThanOrEqual(statValue(client, "events_dropped") ?? 0, 36)
        var ran: Int32 = 0
        XCTAssertEqual(goxelpool_dispatch(client, 0, &ran), GOXELPOOL_OK)
        XCTAssertEqual(ran, 44)
        recorder.assertEachRanOnce(status: GOXELPOOL_OK, onThread: pthread_self())
        XCTAssertEqual(log.count("request_queued") + log.count("request_served"), 4)
        XCTAssertEqual(log.callbackThreads, [UInt(pthread_self())])
        XCTAssertFalse(readable(fd))
        XCTAssertEqual(statValue(client, "events_delivered"), 4)
    }

    // MARK: Helpers

    private func drain(_ client: OpaquePointer?) -> Int {
        var ran: Int32 = 0
        XCTAssertEqual(goxelpool_dispatch(client, 0, &ran), GOXELPOOL_OK)
        return Int(ran)
    }
}

/// poll(2) with a zero timeout.
func readable(_ fd: Int32) -> Bool {
    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&entry, 1, 0) == 1 && entry.revents & Int16(POLLIN) != 0
}

private final class BusyProbe {
    let client: OpaquePointer?
    var status = GOXELPOOL_OK
    init(client: OpaquePointer?) { self.client = client }
}

/// Async calls `echo [index]` whose callbacks record how often, with what and on which thread
/// they ran.
final class Recorder: @unchecked Sendable {
    let count: Int
    private var lock = pthread_mutex_t()
    private var runCounts: [Int]
    private var statuses: [goxelpool_status?]
    private var threads: [pthread_t?]
    private(set) var messages: [String] = []
    /// Runs inside the callback of call `index`, after it is recorded.
    var onRun: ((Int) -> Void)?

    init(count: Int) {
        self.count = count
        runCounts = Array(repeating: 0, count: count)
        statuses = Array(repeating: nil, count: count)
        threads = Array(repeating: nil, count: count)
        pthread_mutex_init(&lock, nil)
    }

    private struct Token { let recorder: Recorder; let index: Int }

    func start(_ client: OpaquePointer?, _ index: Int) -> goxelpool_status {
        let params = parse("[\(index)]")
        defer { json_decref(params) }
        let token = Unmanaged.passRetained(TokenBox(recorder: self, index: index)).toOpaque()
        let status = goxelpool_call_async(client, "echo", params, -1, { status, result, _, userdata in
            let box = Unmanaged<TokenBox>.fromOpaque(userdata!).takeRetainedValue()
            box.recorder.record(box.index, status, result)
        }, token)
        if status != GOXELPOOL_OK { Unmanaged<TokenBox>.fromOpaque(token).release() }
        return status
    }

    private func record(_ index: Int, _ status: goxelpool_status, _ result: UnsafePointer<json_t>?) {
        var good = status
        if status == GOXELPOOL_OK && text(result) != "[\(index)]" { good = GOXELPOOL_EPROTO }
        let message = status == GOXELPOOL_OK ? "" : String(cString: goxelpool_last_error())
        pthread_mutex_lock(&lock)
        runCounts[index] += 1
        statuses[index] = good
        threads[index] = pthread_self()
        if status != GOXELPOOL_OK { messages.append(message) }
        pthread_mutex_unlock(&lock)
        onRun?(index)
    }

    var totalRuns: Int { pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }; return runCounts.reduce(0, +) }
    func runs(_ index: Int) -> Int { pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }; return runCounts[index] }
    func status(_ index: Int) -> goxelpool_status? { pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }; return statuses[index] }
    func count(of status: goxelpool_status) -> Int {
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        return statuses.filter { $0 == status }.count
    }

    func assertEachRanOnce(status: goxelpool_status? = nil, onThread thread: pthread_t,
                           file: StaticString = #filePath, line: UInt = #line) {
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        XCTAssertEqual(runCounts, Array(repeating: 1, count: count), "callback runs per call", file: file, line: line)
        if let status {
            let wrong = statuses.enumerated().filter { $0.element != status }.map { "\($0.offset): \(String(describing: $0.element))" }
            XCTAssertEqual(wrong, [], "statuses", file: file, line: line)
        }
        let elsewhere = threads.filter { $0 == nil || pthread_equal($0!, thread) == 0 }.count
        XCTAssertEqual(elsewhere, 0, "callbacks that ran on another thread", file: file, line: line)
    }
}

private final class TokenBox {
    let recorder: Recorder
    let index: Int
    init(recorder: Recorder, index: Int) { self.recorder = recorder; self.index = index }
}
