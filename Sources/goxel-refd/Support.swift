// Small runtime helpers for goxel-refd: a pthread mutex, detached threads, a fast PRNG, time,
// logging to stderr (only with --verbose) and jansson shorthands. Glibc only, no Foundation.

import CJansson
import Glibc
import Synchronization

// MARK: - Lock

/// A pthread mutex (visible to ThreadSanitizer and helgrind, unlike Synchronization.Mutex).
final class Lock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    @inline(__always)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

// MARK: - Threads

private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// Starts a detached pthread running `body`. Returns false if the thread could not be created.
@discardableResult
func startDetachedThread(stackSize: Int = 512 * 1024, _ body: @escaping () -> Void) -> Bool {
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    defer { pthread_attr_destroy(&attr) }
    pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
    pthread_attr_setstacksize(&attr, stackSize)
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var tid: pthread_t = 0
    let rc = pthread_create(&tid, &attr, { raw in
        guard let raw else { return nil }
        let body = Unmanaged<ThreadBody>.fromOpaque(raw).takeRetainedValue()
        body.run()
        return nil
    }, box)
    if rc != 0 {
        Unmanaged<ThreadBody>.fromOpaque(box).release()
        return false
    }
    return true
}

// MARK: - PRNG

/// SplitMix64: tiny, fast, good enough for fault-injection coin flips. One per thread (no sharing).
struct SplitMix64 {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    @inline(__always)
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    @inline(__always)
    mutating func unit() -> Double {
        Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// True with probability `p` (p <= 0: never, without consuming randomness; p >= 1: always).
    @inline(__always)
    mutating func chance(_ p: Double) -> Bool {
        if !(p > 0) { return false }
        if p >= 1 { return true }
        return unit() < p
    }
}

// MARK: - Time

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func sleepMilliseconds(_ ms: Double) {
    guard ms > 0, ms.isFinite else { return }
    let capped = min(ms, 86_400_000)
    var req = timespec(tv_sec: Int(capped / 1000), tv_nsec: Int((capped.truncatingRemainder(dividingBy: 1000)) * 1_000_000))
    var rem = timespec()
    while nanosleep(&req, &rem) != 0 && errno == EINTR {
        req = rem
    }
}

// MARK: - Output (never stdout, except the one readiness line)

/// Writes all bytes of `s` to a file descriptor (stdout/stderr), ignoring errors.
func writeFD(_ fd: Int32, _ s: String) {
    var s = s
    s.withUTF8 { buf in
        guard let base = buf.baseAddress else { return }
        var off = 0
        while off < buf.count {
            let n = write(fd, base + off, buf.count - off)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            off += n
        }
    }
}

nonisolated(unsafe) var gVerbose = false

@inline(__always)
func vlog(_ message: @autoclosure () -> String) {
    guard gVerbose else { return }
    writeFD(2, "goxel-refd[\(getpid())]: \(message())\n")
}

func errorExit(_ message: String, code: Int32) -> Never {
    writeFD(2, "goxel-refd: \(message)\n")
    exit(code)
}

// MARK: - jansson shorthands

typealias JSONRef = UnsafeMutablePointer<json_t>

/// Allocation failure inside jansson is not socket input: report and exit instead of trapping.
@inline(__always)
func jsonAlloc(_ value: JSONRef?) -> JSONRef {
    if let value { return value }
    writeFD(2, "goxel-refd: out of memory (jansson allocation failed)\n")
    _exit(70)
}

@inline(__always) func jObject() -> JSONRef { jsonAlloc(json_object()) }
@inline(__always) func jArray() -> JSONRef { jsonAlloc(json_array()) }
@inline(__always) func jInt(_ v: Int) -> JSONRef { jsonAlloc(json_integer(json_int_t(v))) }
@inline(__always) func jReal(_ v: Double) -> JSONRef { jsonAlloc(json_real(v)) }
@inline(__always) func jBool(_ v: Bool) -> JSONRef { jsonAlloc(v ? json_true() : json_false()) }
@inline(__always) func jNull() -> JSONRef { jsonAlloc(json_null()) }
@inline(__always) func jString(_ s: String) -> JSONRef { jsonAlloc(json_string(s)) }

/// Sets `key` to `value`, stealing the reference to `value`.
@inline(__always)
func jSet(_ object: JSONRef, _ key: String, _ value: JSONRef) {
    json_object_set_new(object, key, value)
}

/// Appends `value` to `array`, stealing the reference.
@inline(__always)
func jAppend(_ array: JSONRef, _ value: JSONRef) {
    json_array_append_new(array, value)
}

@inline(__always) func jType(_ j: JSONRef) -> json_type { j.pointee.type }

/// An integral number (JSON integer, or a real with no fractional part) within Int32 range.
func jInt32(_ j: JSONRef?) -> Int32? {
    guard let j else { return nil }
    switch jType(j) {
    case JSON_INTEGER:
        let v = json_integer_value(j)
        guard v >= json_int_t(Int32.min), v <= json_int_t(Int32.max) else { return nil }
        return Int32(v)
    case JSON_REAL:
        let d = json_real_value(j)
        guard d.isFinite, d == d.rounded(), d >= Double(Int32.min), d <= Double(Int32.max) else { return nil }
        return Int32(d)
    default:
        return nil
    }
}

/// Any JSON number as a Double.
func jNumber(_ j: JSONRef?) -> Double? {
    guard let j else { return nil }
    switch jType(j) {
    case JSON_INTEGER: return Double(json_integer_value(j))
    case JSON_REAL: return json_real_value(j)
    default: return nil
    }
}

func jStringValue(_ j: JSONRef?) -> String? {
    guard let j, jType(j) == JSON_STRING, let p = json_string_value(j) else { return nil }
    return String(cString: p)
}
