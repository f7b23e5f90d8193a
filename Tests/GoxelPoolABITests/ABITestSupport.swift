import CGoxelPool
import CJansson
import Glibc
import XCTest

/// Parses JSON text with jansson (new reference).
func parse(_ text: String) -> UnsafeMutablePointer<json_t>? {
    var error = json_error_t()
    return json_loads(text, 0, &error)
}

func text(_ value: UnsafePointer<json_t>?) -> String {
    guard let value, let dumped = json_dumps(value, Int(JSON_COMPACT | JSON_SORT_KEYS)) else { return "null" }
    defer { free(dumped) }
    return String(cString: dumped)
}

func now() -> Double {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}

func waitFor(_ seconds: Double = 8, _ condition: () -> Bool) -> Bool {
    let deadline = now() + seconds
    while now() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Creates a client through goxelpool_client_new; fails the test with the errbuf text.
func makeClient(_ config: String, file: StaticString = #filePath, line: UInt = #line) -> OpaquePointer? {
    let value = parse(config)
    defer { json_decref(value) }
    var client: OpaquePointer?
    var errbuf = [CChar](repeating: 0, count: 256)
    let status = goxelpool_client_new(value, &client, &errbuf, errbuf.count)
    XCTAssertEqual(status, GOXELPOOL_OK, String(cString: errbuf), file: file, line: line)
    return client
}

/// Calls through goxelpool_call; returns the status and frees what it got.
@discardableResult
func call(_ client: OpaquePointer?, _ method: String, _ params: String? = nil, timeoutMs: Int32 = -1) -> goxelpool_status {
    let value = params.flatMap(parse)
    defer { if let value { json_decref(value) } }
    var result: UnsafeMutablePointer<json_t>?
    var rpcError: UnsafeMutablePointer<json_t>?
    let status = goxelpool_call(client, method, value, timeoutMs, &result, &rpcError)
    if let result { json_decref(result) }
    if let rpcError { json_decref(rpcError) }
    return status
}

/// Collects events delivered to a C listener (a @convention(c) function with userdata).
final class EventLog: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var events: [String: [String]] = [:]   // type -> JSON texts
    private(set) var callbackThreads = Set<UInt>()

    init() { pthread_mutex_init(&lock, nil) }

    func record(_ event: UnsafePointer<json_t>?) {
        guard let event, let type = json_object_get(event, "type"), let cType = json_string_value(type) else { return }
        let key = String(cString: cType)
        let body = text(event)
        pthread_mutex_lock(&lock)
        events[key, default: []].append(body)
        callbackThreads.insert(UInt(pthread_self()))
        pthread_mutex_unlock(&lock)
    }

    func all(_ type: String) -> [String] {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return events[type] ?? []
    }

    func count(_ type: String) -> Int { all(type).count }

    var types: [String] {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return events.keys.sorted()
    }

    /// Registers on `client` for `kinds`; the log must outlive the listener.
    func listen(_ client: OpaquePointer?, kinds: UInt32 = UInt32(GOXELPOOL_EVENT_ALL)) -> Int32 {
        var id: Int32 = 0
        let status = goxelpool_add_listener(client, kinds, { event, userdata in
            guard let userdata else { return }
            Unmanaged<EventLog>.fromOpaque(userdata).takeUnretainedValue().record(event)
        }, Unmanaged.passUnretained(self).toOpaque(), &id)
        XCTAssertEqual(status, GOXELPOOL_OK)
        return id
    }
}

/// The value of a numeric field of goxelpool_stats / goxelpool_health, by a path of keys.
func statValue(_ client: OpaquePointer?, _ keys: String..., health: Bool = false) -> Double? {
    guard let root = health ? goxelpool_health(client) : goxelpool_stats(client) else { return nil }
    defer { json_decref(root) }
    var node: UnsafeMutablePointer<json_t>? = root
    for key in keys { node = node.flatMap { json_object_get($0, key) } }
    guard let node else { return nil }
    return json_number_value(node)
}

func stateValue(_ client: OpaquePointer?, _ key: String, health: Bool = false) -> String? {
    guard let root = health ? goxelpool_health(client) : goxelpool_stats(client) else { return nil }
    defer { json_decref(root) }
    guard let node = json_object_get(root, key), let value = json_string_value(node) else { return nil }
    return String(cString: value)
}
