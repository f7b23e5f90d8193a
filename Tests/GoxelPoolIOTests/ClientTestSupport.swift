import CJansson
import Glibc
import GoxelPoolCore
import XCTest
@testable import GoxelPoolIO

/// Parses JSON text with jansson (a new reference; the test frees it with `json_decref`).
func json(_ text: String) -> OpaquePointer {
    var error = json_error_t()
    guard let value = json_loads(text, 0, &error) else { fatalError("bad JSON in test: \(text)") }
    return OpaquePointer(value)
}

func dump(_ value: OpaquePointer?) -> String {
    guard let value, let text = json_dumps(UnsafeMutablePointer(value), Int(JSON_COMPACT | JSON_SORT_KEYS)) else { return "null" }
    defer { free(text) }
    return String(cString: text)
}

func release(_ value: OpaquePointer?) { if let value { json_decref(UnsafeMutablePointer(value)) } }

/// A call's outcome reduced to something XCTest can compare.
struct Outcome: Equatable, CustomStringConvertible {
    var status: CallStatus
    var body: String
    var message: String = ""
    static func == (a: Outcome, b: Outcome) -> Bool { a.status == b.status && a.body == b.body }
    var description: String { "\(status.name) \(body) \(message)" }
}

/// What the tests need of a client: PoolClient (one endpoint) and MultiPoolClient (the C API's).
protocol TestCaller {
    func call(method: String, params: OpaquePointer?, timeout: Span?, notification: Bool) -> CallOutcome
}
extension PoolClient: TestCaller {}
extension MultiPoolClient: TestCaller {}

func testConfiguration(_ socketPath: String, _ overrides: String) throws -> ClientConfiguration {
    let extra = overrides.isEmpty ? "" : ", " + overrides
    let text = #"{"socket_path": "\#(socketPath)", "timeout_ms": 2000, "reconnect": {"initial_backoff_ms": 50, "max_backoff_ms": 500}\#(extra)}"#
    let value = json(text)
    defer { release(value) }
    return try ClientConfiguration.parse(json: UnsafePointer(UnsafeMutablePointer(value)))
}

extension PoolClient {
    /// A pool for `socketPath` with test-friendly defaults plus `overrides` (JSON members).
    static func forTest(_ socketPath: String, _ overrides: String = "") throws -> PoolClient {
        PoolClient(configuration: try testConfiguration(socketPath, overrides))
    }

    func statistic(_ keyPath: KeyPath<PoolStatistics, Int>) -> Int { snapshot().statistics[keyPath: keyPath] }
}

extension MultiPoolClient {
    /// The client the C API uses, for `socketPath` (or `endpoints` in `overrides`).
    static func forTest(_ socketPath: String, _ overrides: String = "") throws -> MultiPoolClient {
        let configuration = try testConfiguration(socketPath, overrides)
        return MultiPoolClient(configuration: configuration, endpoints: configuration.effectiveEndpoints)
    }
}

extension TestCaller {
    func run(_ method: String, _ params: String? = nil, timeoutMs: Int? = nil) -> Outcome {
        let value = params.map(json)
        defer { release(value) }
        switch call(method: method, params: value, timeout: timeoutMs.map { .milliseconds($0) }, notification: false) {
        case .result(let result): defer { release(result) }; return Outcome(status: .ok, body: dump(result))
        case .rpcError(let error): defer { release(error) }; return Outcome(status: .rpc, body: dump(error))
        case .notified: return Outcome(status: .ok, body: "")
        case .failure(let failure): return Outcome(status: failure.status, body: "", message: failure.message)
        }
    }
}

func elapsedMs(_ body: () -> Void) -> Double {
    let start = Clock.now()
    body()
    return (Clock.now() - start).milliseconds
}

/// Runs `count` threads of `body(threadIndex)` and waits for all.
func concurrently(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let threads = (0..<count).map { index in LibraryThread { body(index) } }
    for thread in threads { thread.join() }
}

/// Counts this process's open file descriptors (leak checks).
func openFileDescriptors() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while readdir(dir) != nil { count += 1 }
    return count - 3  // ".", ".." and the directory's own descriptor
}

/// Waits up to `timeout` seconds for `condition`.
func eventually(_ timeout: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Clock.now() + .milliseconds(Int(timeout * 1000))
    while Clock.now() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// A holder makes `holderCalls` calls, the first 300 ms long (a second caller queues meanwhile on
/// the pool's only connection), then stops calling; returns the milliseconds between the holder's
/// last release and the queued caller's answer (nil if either call is missing).
func handOverGapAfterTheHolderStops(_ client: PoolClient, _ daemon: RefDaemon, holderCalls: Int) throws -> Double? {
    XCTAssertEqual(client.run("ping").status, .ok)
    try daemon.setFaults(#"{"latency_ms": 300}"#)
    let finishedAt = OrderLog()   // [holder's last release, waiter's answer], in ns
    let holder = LibraryThread {
        for _ in 0..<holderCalls { XCTAssertEqual(client.run("ping").status, .ok) }
        finishedAt.append(Int(Clock.now().nanoseconds))
    }
    XCTAssertTrue(eventually { client.snapshot().busy == 1 })
    let waiter = LibraryThread {
        XCTAssertEqual(client.run("ping").status, .ok, "the waiter's call")
        finishedAt.append(Int(Clock.now().nanoseconds))
    }
    XCTAssertTrue(eventually { client.snapshot().waiting == 1 })
    try daemon.setFaults(#"{"latency_ms": 0}"#)
    waiter.join()
    holder.join()
    let times = finishedAt.values
    XCTAssertEqual(times.count, 2)
    guard times.count == 2 else { return nil }
    return Double(times[1] - times[0]) / 1e6
}
