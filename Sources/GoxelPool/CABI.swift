import CGoxelPool
import CJansson
import Glibc
import GoxelPoolCore
import GoxelPoolIO

// The C ABI: every function checks its arguments, converts, calls the client and maps errors to
// statuses. `@c @implementation` makes the compiler check each signature against
// include/goxelpool.h. Nothing here may trap: a trap would abort the host program.

/// What a goxelpool_client pointer points at.
final class ClientHandle: @unchecked Sendable {
    let client: MultiPoolClient
    private let lock = PthreadMutex()
    private var suppressed = false
    private var freeing = false

    init(client: MultiPoolClient) { self.client = client }

    /// Async callbacks check this (thread mode): after goxelpool_client_free from a callback none
    /// runs again.
    var callbacksSuppressed: Bool { lock.withLock { suppressed } }
    func suppressCallbacks() { lock.withLock { suppressed = true } }

    /// Dispatch mode: goxelpool_client_free was called (true once; later calls are ignored).
    func markFreeing() -> Bool {
        lock.withLock {
            if freeing { return false }
            freeing = true
            return true
        }
    }
    var isFreeing: Bool { lock.withLock { freeing } }

    static func from(_ pointer: OpaquePointer?) -> ClientHandle? {
        guard let pointer else { return nil }
        return Unmanaged<ClientHandle>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
    }

    /// `body` with the handle, not retained (the caller's use of the pointer keeps it alive).
    static func withUnretained<R>(_ pointer: OpaquePointer, _ body: (ClientHandle) -> R) -> R {
        Unmanaged<ClientHandle>.fromOpaque(UnsafeRawPointer(pointer))._withUnsafeGuaranteedRef(body)
    }
}

private func status(_ value: CallStatus) -> goxelpool_status { goxelpool_status(rawValue: UInt32(value.rawValue)) }

func failed(_ failure: CallFailure) -> goxelpool_status {
    LastError.set(failure.message)
    return status(failure.status)
}

func invalid(_ message: String) -> goxelpool_status { failed(CallFailure(.invalid, message)) }

private func staticCString(_ text: StaticString) -> UnsafePointer<CChar> {
    UnsafeRawPointer(text.utf8Start).assumingMemoryBound(to: CChar.self)
}

/// `timeout_ms < 0`: the configured default (nil).
private func timeoutSpan(_ timeoutMs: Int32) -> Span? { timeoutMs < 0 ? nil : .milliseconds(Int(timeoutMs)) }

private func methodName(_ method: UnsafePointer<CChar>?) -> Result<String, CallFailure> {
    guard let method else { return .failure(CallFailure(.invalid, "method is NULL")) }
    guard let name = String(validatingCString: method) else { return .failure(CallFailure(.invalid, "method is not valid UTF-8")) }
    guard !name.isEmpty else { return .failure(CallFailure(.invalid, "method is empty")) }
    return .success(name)
}

/// params must be NULL, an array or an object (the daemon silently drops scalar params).
private func checkParams(_ params: UnsafePointer<json_t>?) -> CallFailure? {
    guard let params else { return nil }
    let type = params.pointee.type
    guard type == JSON_ARRAY || type == JSON_OBJECT else { return CallFailure(.invalid, "params must be NULL, a JSON array or a JSON object") }
    return checkParamsShape(UnsafeMutablePointer(mutating: params))
}

/// jansson's dump, copy and free recurse once per nesting level: params nested ~1700 deep
/// overflowed a library thread's 512 KiB stack (SIGSEGV in json_dumpb on an async worker). The
/// daemon's parser refuses more than 2048 levels anyway. Walked iteratively; also bounded in
/// values, since a request of more than 65535 values exceeds the daemon's 65535 bytes (and a
/// DAG of shared values would otherwise make the walk, and jansson's dump, exponential).
let maxParamsDepth = 1000
private let maxParamsValues = 65_535

private func checkParamsShape(_ root: UnsafeMutablePointer<json_t>) -> CallFailure? {
    // The usual params, a flat array or object of scalars ([x, y, z, r, g, b, a, layer]), need
    // no walk (and no allocation): only nesting can be deep.
    if root.pointee.type == JSON_ARRAY, json_array_size(root) <= maxParamsValues {
        var nested = false
        for index in 0..<json_array_size(root) {
            if let item = json_array_get(root, index), item.pointee.type == JSON_ARRAY || item.pointee.type == JSON_OBJECT {
                nested = true
                break
            }
        }
        if !nested { return nil }
    }
    var pending: [(UnsafeMutablePointer<json_t>, Int)] = [(root, 1)]
    var visited = 0
    while let (value, depth) = pending.popLast() {
        visited += 1
        if visited > maxParamsValues {
            return CallFailure(.tooBig, "params hold more than \(maxParamsValues) values; the daemon accepts at most \(daemonMaxRequestBytes) bytes")
        }
        let type = value.pointee.type
        guard type == JSON_ARRAY || type == JSON_OBJECT else { continue }
        if depth > maxParamsDepth { return CallFailure(.invalid, "params are nested deeper than \(maxParamsDepth) levels") }
        if type == JSON_ARRAY {
            for index in 0..<json_array_size(value) { if let item = json_array_get(value, index) { pending.append((item, depth + 1)) } }
        } else {
            var iterator = json_object_iter(value)
            while let current = iterator {
                if let item = json_object_iter_value(current) { pending.append((item, depth + 1)) }
                iterator = json_object_iter_next(value, current)
            }
        }
    }
    return nil
}

private func paramsPointer(_ params: UnsafePointer<json_t>?) -> OpaquePointer? { params.map { OpaquePointer($0) } }

/// The arguments every call takes: a client, a method name, params.
private func checkCall(_ client: OpaquePointer?, _ method: UnsafePointer<CChar>?,
                       _ params: UnsafePointer<json_t>?) -> Result<(ClientHandle, String), CallFailure> {
    checkArguments(client, method, params).map { client, name in
        (Unmanaged<ClientHandle>.fromOpaque(UnsafeRawPointer(client)).takeUnretainedValue(), name)
    }
}

/// The same checks, without taking a reference to the client (goxelpool_call's hot path).
private func checkArguments(_ client: OpaquePointer?, _ method: UnsafePointer<CChar>?,
                            _ params: UnsafePointer<json_t>?) -> Result<(OpaquePointer, String), CallFailure> {
    guard let client else { return .failure(CallFailure(.invalid, "client is NULL")) }
    let name: String
    switch methodName(method) {
    case .success(let value): name = value
    case .failure(let failure): return .failure(failure)
    }
    if let failure = checkParams(params) { return .failure(failure) }
    return .success((client, name))
}

// MARK: - Version and status

/// Equals GOXELPOOL_VERSION_STRING (Tests/packaging checks it at run time).
let libraryVersion: StaticString = "1.4.3"

@c @implementation
public func goxelpool_version() -> UnsafePointer<CChar>! { staticCString(libraryVersion) }

@c @implementation
public func goxelpool_strerror(_ value: goxelpool_status) -> UnsafePointer<CChar>! {
    guard let known = CallStatus(rawValue: Int32(truncatingIfNeeded: value.rawValue)) else { return staticCString("unknown status") }
    return staticCString(known.sentence)
}

@c @implementation
public func goxelpool_status_name(_ value: goxelpool_status) -> UnsafePointer<CChar>! {
    guard let known = CallStatus(rawValue: Int32(truncatingIfNeeded: value.rawValue)) else { return staticCString("UNKNOWN") }
    return staticCString(known.name)
}

@c @implementation
public func goxelpool_last_error() -> UnsafePointer<CChar>! {
    guard let buffer = LastError.buffer() else { return staticCString("") }
    return UnsafePointer(buffer)
}

// MARK: - Client

@c @implementation
public func goxelpool_client_new(_ config: UnsafePointer<json_t>?, _ out: UnsafeMutablePointer<OpaquePointer?>?,
                                 _ errbuf: UnsafeMutablePointer<CChar>?, _ errbufLength: Int) -> goxelpool_status {
    LastError.clear()
    func reject(_ failure: CallFailure) -> goxelpool_status {
        if let errbuf, errbufLength > 0 { copy(failure.message, into: errbuf, capacity: errbufLength) }
        return failed(failure)
    }
    guard let out else { return reject(CallFailure(.invalid, "out is NULL")) }
    out.pointee = nil
    let configuration: ClientConfiguration
    do {
        configuration = try ClientConfiguration.parse(json: config)
    } catch {
        return reject(CallFailure(.invalid, error.description))
    }
    var inbox: DispatchInbox?
    if configuration.callbacks == .dispatch {
        inbox = DispatchInbox(eventCapacity: configuration.eventQueueSize)
        if inbox == nil {
            return reject(CallFailure(.noMemory, "cannot create the event fd of dispatch mode: \(String(cString: strerror(errno)))"))
        }
    }
    let client: MultiPoolClient
    do {
        client = try MultiPoolClient.make(configuration: configuration, inbox: inbox)
    } catch {
        return reject(error)
    }
    let handle = ClientHandle(client: client)
    out.pointee = OpaquePointer(Unmanaged.passRetained(handle).toOpaque())
    if let errbuf, errbufLength > 0 { errbuf.pointee = 0 }
    return GOXELPOOL_OK
}

@c @implementation
public func goxelpool_client_close(_ client: OpaquePointer?, _ drainTimeoutMs: Int32) -> goxelpool_status {
    LastError.clear()
    guard let handle = ClientHandle.from(client) else { return invalid("client is NULL") }
    guard !handle.client.isLibraryThread() else {
        return invalid("goxelpool_client_close called from a callback of the same client (it would wait for itself)")
    }
    let drain = drainTimeoutMs < 0 ? Span.milliseconds(handle.client.configuration.timeoutMs) : .milliseconds(Int(drainTimeoutMs))
    handle.client.close(drain: drain)
    return GOXELPOOL_OK
}

@c @implementation
public func goxelpool_client_free(_ client: OpaquePointer?) {
    guard let client, let handle = ClientHandle.from(client) else { return }
    if let inbox = handle.client.inbox {
        // Dispatch mode: no user code runs on library threads, so the thread freeing is the
        // application's. From a callback that goxelpool_dispatch runs, the free happens when
        // that callback returns (goxelpool_dispatch finishes it).
        guard handle.markFreeing() else { return }
        if inbox.isRunnerThread() {
            inbox.stopAfterCurrentItem()
            return
        }
        finishFree(handle)
        return
    }
    if handle.client.isLibraryThread() {
        // From a callback: nothing more is delivered, and the close (which joins this very
        // thread) happens on a thread of its own once the callback has returned.
        handle.suppressCallbacks()
        handle.client.events.suppress()
        _ = LibraryThread.detached {
            handle.client.close(drain: .zero)
            Unmanaged<ClientHandle>.passUnretained(handle).release()
        }
        return
    }
    handle.client.close(drain: .zero)
    Unmanaged<ClientHandle>.passUnretained(handle).release()
}

/// Dispatch mode: closes, runs every completion and event still queued on the calling thread
/// (each async callback exactly once, most with ECLOSED), then releases the client and its fd.
/// Returns the number of items run.
@discardableResult
private func finishFree(_ handle: ClientHandle) -> Int {
    handle.client.close(drain: .zero)
    // After close nothing new is queued (calls and events are refused), so this ends; it runs
    // until the queue is empty rather than trusting one pass.
    var total = 0
    while case .ran(let count)? = handle.client.dispatch(maxItems: 0), count > 0 { total += count }
    Unmanaged<ClientHandle>.passUnretained(handle).release()
    return total
}

// MARK: - Event loops (dispatch mode)

@c @implementation
public func goxelpool_event_fd(_ client: OpaquePointer?) -> Int32 {
    LastError.clear()
    guard let handle = ClientHandle.from(client) else {
        LastError.set("client is NULL")
        return -1
    }
    guard let inbox = handle.client.inbox else {
        LastError.set("the client runs callbacks on library threads (\"callbacks\": \"thread\"): it has no event fd")
        return -1
    }
    return inbox.fd
}

@c @implementation
public func goxelpool_dispatch(_ client: OpaquePointer?, _ maxItems: Int32,
                               _ ran: UnsafeMutablePointer<Int32>?) -> goxelpool_status {
    LastError.clear()
    ran?.pointee = 0
    guard let handle = ClientHandle.from(client) else { return invalid("client is NULL") }
    switch handle.client.dispatch(maxItems: Int(maxItems)) {
    case nil:
        return invalid("goxelpool_dispatch needs a client created with \"callbacks\": \"dispatch\"")
    case .nested?:
        return invalid("goxelpool_dispatch called from a callback it is running")
    case .busy?:
        return failed(CallFailure(.busy, "another thread is in goxelpool_dispatch for this client"))
    case .ran(let count)?:
        var total = count
        // goxelpool_client_free was called from one of those callbacks: finish it here.
        if handle.isFreeing { total += finishFree(handle) }
        ran?.pointee = Int32(clamping: total)
        // What the last callback left in this thread's last error is not this call's failure.
        LastError.clear()
        return GOXELPOOL_OK
    }
}

// MARK: - Calls

@c @implementation
public func goxelpool_call(_ client: OpaquePointer?, _ method: UnsafePointer<CChar>?, _ params: UnsafePointer<json_t>?,
                           _ timeoutMs: Int32, _ result: UnsafeMutablePointer<UnsafeMutablePointer<json_t>?>?,
                           _ rpcError: UnsafeMutablePointer<UnsafeMutablePointer<json_t>?>?) -> goxelpool_status {
    LastError.clear()
    result?.pointee = nil
    rpcError?.pointee = nil
    let checked: (client: OpaquePointer, name: String)
    switch checkArguments(client, method, params) {
    case .success(let value): checked = value
    case .failure(let failure): return failed(failure)
    }
    let name = checked.name
    // Not retained: the header forbids freeing a client while another thread uses it, and a
    // retain here would write the client's reference count (shared by every calling thread).
    return ClientHandle.withUnretained(checked.client) { handle in
        deliver(handle.client.call(method: name, params: paramsPointer(params), timeout: timeoutSpan(timeoutMs)),
                result, rpcError)
    }
}

/// Hands a synchronous call's outcome to the caller's out pointers (dropping what they don't want).
private func deliver(_ outcome: CallOutcome, _ result: UnsafeMutablePointer<UnsafeMutablePointer<json_t>?>?,
                     _ rpcError: UnsafeMutablePointer<UnsafeMutablePointer<json_t>?>?) -> goxelpool_status {
    switch outcome {
    case .result(let value):
        if let result { result.pointee = UnsafeMutablePointer(value) } else { json_decref(UnsafeMutablePointer(value)) }
        return GOXELPOOL_OK
    case .rpcError(let value):
        let message = errorMessage(UnsafeMutablePointer(value))
        if let rpcError { rpcError.pointee = UnsafeMutablePointer(value) } else { json_decref(UnsafeMutablePointer(value)) }
        LastError.set(message)
        return GOXELPOOL_ERPC
    case .notified:
        return GOXELPOOL_OK
    case .failure(let failure):
        return failed(failure)
    }
}

@c @implementation
public func goxelpool_call_async(_ client: OpaquePointer?, _ method: UnsafePointer<CChar>?, _ params: UnsafePointer<json_t>?,
                                 _ timeoutMs: Int32, _ cb: goxelpool_call_cb?, _ userdata: UnsafeMutableRawPointer?) -> goxelpool_status {
    LastError.clear()
    let handle: ClientHandle, name: String
    switch checkCall(client, method, params) {
    case .success(let checked): (handle, name) = checked
    case .failure(let failure): return failed(failure)
    }
    guard let cb else { return invalid("callback is NULL") }
    // A private copy: the caller may change or free its params as soon as we return.
    var copied: UnsafeMutablePointer<json_t>?
    if let params {
        copied = json_deep_copy(params)
        if copied == nil { return failed(CallFailure(.noMemory, "out of memory copying params")) }
    }
    let context = AsyncContext(callback: cb, userdata: userdata, params: copied)
    let refused = handle.client.callAsync(method: name, params: copied.map { OpaquePointer($0) },
                                          timeout: timeoutSpan(timeoutMs)) { [handle] outcome in
        context.complete(outcome, suppressed: handle.callbacksSuppressed)
    }
    if let refused {
        if let copied { json_decref(copied) }
        return failed(refused)
    }
    return GOXELPOOL_OK
}

/// Carries a C callback and its userdata across threads.
private final class AsyncContext: @unchecked Sendable {
    let callback: goxelpool_call_cb
    let userdata: UnsafeMutableRawPointer?
    let params: UnsafeMutablePointer<json_t>?

    init(callback: goxelpool_call_cb, userdata: UnsafeMutableRawPointer?, params: UnsafeMutablePointer<json_t>?) {
        self.callback = callback; self.userdata = userdata; self.params = params
    }

    func complete(_ outcome: CallOutcome, suppressed: Bool) {
        defer { if let params { json_decref(params) } }
        switch outcome {
        case .result(let value):
            if !suppressed { callback(GOXELPOOL_OK, UnsafePointer(UnsafeMutablePointer<json_t>(value)), nil, userdata) }
            json_decref(UnsafeMutablePointer(value))
        case .rpcError(let value):
            if !suppressed { callback(GOXELPOOL_ERPC, nil, UnsafePointer(UnsafeMutablePointer<json_t>(value)), userdata) }
            json_decref(UnsafeMutablePointer(value))
        case .notified:
            if !suppressed { callback(GOXELPOOL_OK, nil, nil, userdata) }
        case .failure(let failure):
            LastError.set(failure.message)
            if !suppressed { callback(status(failure.status), nil, nil, userdata) }
        }
    }
}

@c @implementation
public func goxelpool_notify(_ client: OpaquePointer?, _ method: UnsafePointer<CChar>?, _ params: UnsafePointer<json_t>?) -> goxelpool_status {
    LastError.clear()
    let handle: ClientHandle, name: String
    switch checkCall(client, method, params) {
    case .success(let checked): (handle, name) = checked
    case .failure(let failure): return failed(failure)
    }
    switch handle.client.call(method: name, params: paramsPointer(params), timeout: nil, notification: true) {
    case .result(let value), .rpcError(let value):
        json_decref(UnsafeMutablePointer(value))
        return GOXELPOOL_OK
    case .notified: return GOXELPOOL_OK
    case .failure(let failure): return failed(failure)
    }
}

@c @implementation
public func goxelpool_call_batch(_ client: OpaquePointer?, _ requests: UnsafePointer<json_t>?, _ timeoutMs: Int32,
                                 _ results: UnsafeMutablePointer<UnsafeMutablePointer<json_t>?>?) -> goxelpool_status {
    LastError.clear()
    results?.pointee = nil
    guard let handle = ClientHandle.from(client) else { return invalid("client is NULL") }
    guard let results else { return invalid("results is NULL") }
    guard let requests, requests.pointee.type == JSON_ARRAY else { return invalid("requests must be a JSON array") }
    let list = UnsafeMutablePointer(mutating: requests)
    var items: [(method: String, params: OpaquePointer?)] = []
    for index in 0..<json_array_size(list) {
        guard let request = json_array_get(list, index), request.pointee.type == JSON_OBJECT else {
            return invalid("requests[\(index)] must be an object {\"method\": ..., \"params\": ...}")
        }
        guard let method = json_object_get(request, "method"), method.pointee.type == JSON_STRING,
              let text = json_string_value(method), let name = String(validatingCString: text), !name.isEmpty,
              json_string_length(method) == name.utf8.count else {
            return invalid("requests[\(index)].method must be a non-empty string")
        }
        var params = json_object_get(request, "params")
        if let value = params, value.pointee.type == JSON_NULL { params = nil }
        if let failure = checkParams(params.map { UnsafePointer($0) }) {
            return invalid("requests[\(index)].params: \(failure.message)")
        }
        var unknown: String?
        var iterator = json_object_iter(request)
        while let current = iterator {
            let key = String(cString: json_object_iter_key(current))
            if key != "method" && key != "params" { unknown = key }
            iterator = json_object_iter_next(request, current)
        }
        if let unknown { return invalid("requests[\(index)]: unknown key '\(unknown)'") }
        items.append((name, params.map { OpaquePointer($0) }))
    }
    if handle.client.isClosing { return failed(CallFailure(.closed, "client is closed")) }
    // Params stay borrowed from `requests`, which the caller keeps alive for the whole call.
    let outcomes = handle.client.batch(items, timeout: timeoutSpan(timeoutMs))
    guard let array = json_array() else {
        for outcome in outcomes { releaseOutcome(outcome) }
        return failed(CallFailure(.noMemory, "out of memory"))
    }
    for outcome in outcomes {
        let entry = JSONObject()
        switch outcome {
        case .result(let value):
            entry.set("status", "OK")
            entry.set("result", UnsafeMutablePointer(value))
        case .rpcError(let value):
            entry.set("status", "ERPC")
            entry.set("error", UnsafeMutablePointer(value))
        case .notified:
            entry.set("status", "OK")
        case .failure(let failure):
            entry.set("status", failure.status.name.description)
            entry.set("message", failure.message)
        }
        if let raw = entry.raw { json_array_append_new(array, raw) }
    }
    results.pointee = array
    return GOXELPOOL_OK
}

private func releaseOutcome(_ outcome: CallOutcome) {
    switch outcome {
    case .result(let value), .rpcError(let value): json_decref(UnsafeMutablePointer(value))
    default: break
    }
}

private func errorMessage(_ error: UnsafeMutablePointer<json_t>) -> String {
    let code = json_object_get(error, "code").map { json_integer_value($0) } ?? 0
    let message = json_object_get(error, "message").flatMap { json_string_value($0) }.map { String(cString: $0) } ?? ""
    return "daemon error \(code): \(message)"
}

// MARK: - Endpoints

private func parseEndpoint(_ text: UnsafePointer<CChar>?) -> Result<EndpointTarget, CallFailure> {
    guard let text else { return .failure(CallFailure(.invalid, "endpoint is NULL")) }
    guard let string = String(validatingCString: text) else { return .failure(CallFailure(.invalid, "endpoint is not valid UTF-8")) }
    switch EndpointTarget.parse(string) {
    case .success(let endpoint): return .success(endpoint)
    case .failure(let error): return .failure(CallFailure(.invalid, "endpoint \(error.message)"))
    }
}

@c @implementation
public func goxelpool_add_endpoint(_ client: OpaquePointer?, _ endpoint: UnsafePointer<CChar>?) -> goxelpool_status {
    LastError.clear()
    guard let handle = ClientHandle.from(client) else { return invalid("client is NULL") }
    switch parseEndpoint(endpoint) {
    case .success(let parsed):
        if let failure = handle.client.addEndpoint(parsed) { return failed(failure) }
        return GOXELPOOL_OK
    case .failure(let failure): return failed(failure)
    }
}

@c @implementation
public func goxelpool_remove_endpoint(_ client: OpaquePointer?, _ endpoint: UnsafePointer<CChar>?,
                                      _ drainTimeoutMs: Int32) -> goxelpool_status {
    LastError.clear()
    guard let handle = ClientHandle.from(client) else { return invalid("client is NULL") }
    guard !handle.client.isLibraryThread() else {
        return invalid("goxelpool_remove_endpoint called from a callback of the same client (it would wait for itself)")
    }
    switch parseEndpoint(endpoint) {
    case .success(let parsed):
        let drain = drainTimeoutMs < 0 ? Span.milliseconds(handle.client.configuration.timeoutMs) : .milliseconds(Int(drainTimeoutMs))
        if let failure = handle.client.removeEndpoint(parsed, drain: drain) { return failed(failure) }
        return GOXELPOOL_OK
    case .failure(let failure): return failed(failure)
    }
}

// MARK: - Statistics, health, listeners

@c @implementation
public func goxelpool_stats(_ client: OpaquePointer?) -> UnsafeMutablePointer<json_t>? {
    guard let handle = ClientHandle.from(client) else { return nil }
    return statisticsJSON(handle.client.snapshot())
}

@c @implementation
public func goxelpool_health(_ client: OpaquePointer?) -> UnsafeMutablePointer<json_t>? {
    guard let handle = ClientHandle.from(client) else { return nil }
    return healthJSON(handle.client.snapshot())
}

@c @implementation
public func goxelpool_add_listener(_ client: OpaquePointer?, _ kinds: UInt32, _ cb: goxelpool_event_cb?,
                                   _ userdata: UnsafeMutableRawPointer?, _ listenerID: UnsafeMutablePointer<Int32>?) -> goxelpool_status {
    LastError.clear()
    guard let handle = ClientHandle.from(client) else { return invalid("client is NULL") }
    guard let cb else { return invalid("callback is NULL") }
    guard kinds != 0, kinds & ~EventKind.all.rawValue == 0 else {
        return invalid("kinds must be a non-zero mask of GOXELPOOL_EVENT_* bits")
    }
    if handle.client.isClosing { return failed(CallFailure(.closed, "client is closed")) }
    let box = ListenerBox(callback: cb, userdata: userdata)
    let id = handle.client.events.add(kinds: EventKind(rawValue: kinds)) { event in box.callback(UnsafePointer(event), box.userdata) }
    listenerID?.pointee = Int32(truncatingIfNeeded: id)
    return GOXELPOOL_OK
}

private final class ListenerBox: @unchecked Sendable {
    let callback: goxelpool_event_cb
    let userdata: UnsafeMutableRawPointer?
    init(callback: goxelpool_event_cb, userdata: UnsafeMutableRawPointer?) { self.callback = callback; self.userdata = userdata }
}

@c @implementation
public func goxelpool_remove_listener(_ client: OpaquePointer?, _ listenerID: Int32) -> goxelpool_status {
    LastError.clear()
    guard let handle = ClientHandle.from(client) else { return invalid("client is NULL") }
    guard handle.client.events.remove(id: Int(listenerID)) else { return invalid("no listener with id \(listenerID)") }
    return GOXELPOOL_OK
}

// MARK: - Sessions

/// What a goxelpool_session pointer points at. It keeps its client's handle (and so the client's
/// objects) alive, so a session may be closed after goxelpool_client_free.
final class SessionHandle: @unchecked Sendable {
    let session: Session
    let client: ClientHandle

    init(session: Session, client: ClientHandle) { self.session = session; self.client = client }

    static func from(_ pointer: OpaquePointer?) -> SessionHandle? {
        guard let pointer else { return nil }
        return Unmanaged<SessionHandle>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
    }
}

@c @implementation
public func goxelpool_session_open(_ client: OpaquePointer?, _ options: UnsafePointer<json_t>?, _ timeoutMs: Int32,
                                   _ out: UnsafeMutablePointer<OpaquePointer?>?) -> goxelpool_status {
    LastError.clear()
    out?.pointee = nil
    guard let handle = ClientHandle.from(client) else { return invalid("client is NULL") }
    guard let out else { return invalid("out is NULL") }
    if let options, options.pointee.type != JSON_OBJECT { return invalid("options must be a JSON object or NULL") }
    guard let value = configValue(from: options) else { return invalid("options: nested too deeply") }
    let parsed: SessionOptions
    do {
        parsed = try SessionOptions.parse(value, defaultCheckpointDir: handle.client.sessions.defaultCheckpointDir)
    } catch {
        return invalid("options.\(error.description)")
    }
    switch handle.client.sessions.open(options: parsed, timeout: timeoutSpan(timeoutMs)) {
    case .success(let session):
        out.pointee = OpaquePointer(Unmanaged.passRetained(SessionHandle(session: session, client: handle)).toOpaque())
        return GOXELPOOL_OK
    case .failure(let failure):
        return failed(failure)
    }
}

@c @implementation
public func goxelpool_session_call(_ session: OpaquePointer?, _ method: UnsafePointer<CChar>?, _ params: UnsafePointer<json_t>?,
                                   _ timeoutMs: Int32, _ result: UnsafeMutablePointer<UnsafeMutablePointer<json_t>?>?,
                                   _ rpcError: UnsafeMutablePointer<UnsafeMutablePointer<json_t>?>?) -> goxelpool_status {
    LastError.clear()
    result?.pointee = nil
    rpcError?.pointee = nil
    guard let handle = SessionHandle.from(session) else { return invalid("session is NULL") }
    let name: String
    switch methodName(method) {
    case .success(let value): name = value
    case .failure(let failure): return failed(failure)
    }
    if let failure = checkParams(params) { return failed(failure) }
    return deliver(handle.session.call(method: name, params: paramsPointer(params), timeout: timeoutSpan(timeoutMs)),
                   result, rpcError)
}

@c @implementation
public func goxelpool_session_info(_ session: OpaquePointer?) -> UnsafeMutablePointer<json_t>? {
    guard let handle = SessionHandle.from(session) else { return nil }
    return sessionInfoJSON(handle.session.info()).raw
}

@c @implementation
public func goxelpool_session_close(_ session: OpaquePointer?) -> goxelpool_status {
    LastError.clear()
    guard let session, let handle = SessionHandle.from(session) else { return GOXELPOOL_OK }
    handle.client.client.sessions.close(handle.session)
    Unmanaged<SessionHandle>.passUnretained(handle).release()
    return GOXELPOOL_OK
}
