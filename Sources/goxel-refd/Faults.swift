// Fault-injection settings: set by command-line flags at start and by the JSON-RPC control
// method `refd.set_faults` at run time. All default to off / 0.

import CJansson
import Glibc
import Synchronization

struct Faults: Sendable {
    var latencyMs: Double = 0             // fixed delay added before each answer
    var latencyJitterMs: Double = 0       // uniform extra delay in 0..jitter
    var errorRate: Double = 0             // answered with -32603 "Injected failure"
    var dropRate: Double = 0              // never answered (connection stays open)
    var maxLifetimeConnections: Int = 0   // N > 0: from the (N+1)-th accepted connection, accept and close
    var unreadRate: Double = 0            // fraction of new connections never read
    var stall: Bool = false               // read requests, answer nothing (except refd.* control methods)
    var truncateRate: Double = 0          // half a line, then EOF
    var garbageRate: Double = 0           // "this is not json\n"
    var wrongIdRate: Double = 0           // id + 1000
    var nullIdRate: Double = 0            // {"jsonrpc":"2.0","error":{"code":-32603,"message":"Injected"},"id":null}
    var noResultRate: Double = 0          // {"jsonrpc":"2.0","id":<id>}
    var oversizeRate: Double = 0          // one valid line of `oversizeBytes` bytes
    var oversizeBytes: Int = 2 * 1024 * 1024
    var resetRate: Double = 0             // half a line, then ECONNRESET
    var crashAfterCreateMs: Double = 0    // > 0: die this long after the last goxel.create_project (real: 300 s)
    var silentNotifications = false       // answer no notification (JSON-RPC 2.0; the real daemon answers id null)

    enum Kind { case rate, milliseconds, count, bytes, flag }

    /// Every setting: its JSON key (the same in `refd.set_faults`, `refd.get_faults` and the
    /// result), its command-line flag, and its kind.
    static let keys: [(key: String, flag: String, kind: Kind)] = [
        ("latency_ms", "--latency-ms", .milliseconds),
        ("latency_jitter_ms", "--latency-jitter-ms", .milliseconds),
        ("error_rate", "--error-rate", .rate),
        ("drop_rate", "--drop-rate", .rate),
        ("max_lifetime_connections", "--max-lifetime-connections", .count),
        ("unread_rate", "--unread-rate", .rate),
        ("stall", "--stall", .flag),
        ("truncate_rate", "--truncate-rate", .rate),
        ("garbage_rate", "--garbage-rate", .rate),
        ("wrong_id_rate", "--wrong-id-rate", .rate),
        ("null_id_rate", "--null-id-rate", .rate),
        ("no_result_rate", "--no-result-rate", .rate),
        ("oversize_rate", "--oversize-rate", .rate),
        ("oversize_bytes", "--oversize-bytes", .bytes),
        ("reset_rate", "--reset-rate", .rate),
        ("crash_after_create_ms", "--crash-after-create-ms", .milliseconds),
        ("silent_notifications", "--silent-notifications", .flag),
    ]

    /// Sets one numeric/boolean setting by its JSON key. The value has already been validated.
    mutating func set(_ key: String, number: Double, flag: Bool) {
        switch key {
        case "latency_ms": latencyMs = number
        case "latency_jitter_ms": latencyJitterMs = number
        case "error_rate": errorRate = number
        case "drop_rate": dropRate = number
        case "max_lifetime_connections": maxLifetimeConnections = Int(number)
        case "unread_rate": unreadRate = number
        case "stall": stall = flag
        case "truncate_rate": truncateRate = number
        case "garbage_rate": garbageRate = number
        case "wrong_id_rate": wrongIdRate = number
        case "null_id_rate": nullIdRate = number
        case "no_result_rate": noResultRate = number
        case "oversize_rate": oversizeRate = number
        case "oversize_bytes": oversizeBytes = Int(number)
        case "reset_rate": resetRate = number
        case "crash_after_create_ms": crashAfterCreateMs = number
        case "silent_notifications": silentNotifications = flag
        default: break
        }
    }

    /// Validates a value for `kind`; returns an error message or nil.
    static func validate(_ value: Double, kind: Kind) -> String? {
        guard value.isFinite else { return "must be a finite number" }
        switch kind {
        case .rate: return (0...1).contains(value) ? nil : "must be between 0 and 1"
        case .milliseconds: return (0...3_600_000).contains(value) ? nil : "must be between 0 and 3600000"
        case .count:
            return value >= 0 && value <= 1e12 && value == value.rounded() ? nil : "must be a non-negative integer"
        case .bytes:
            return value >= 64 && value <= 1_073_741_824 && value == value.rounded()
                ? nil : "must be an integer between 64 and 1073741824"
        case .flag: return nil
        }
    }

    /// The full settings as a new JSON object (new reference).
    func toJSON() -> JSONRef {
        let o = jObject()
        jSet(o, "latency_ms", jReal(latencyMs))
        jSet(o, "latency_jitter_ms", jReal(latencyJitterMs))
        jSet(o, "error_rate", jReal(errorRate))
        jSet(o, "drop_rate", jReal(dropRate))
        jSet(o, "max_lifetime_connections", jInt(maxLifetimeConnections))
        jSet(o, "unread_rate", jReal(unreadRate))
        jSet(o, "stall", jBool(stall))
        jSet(o, "truncate_rate", jReal(truncateRate))
        jSet(o, "garbage_rate", jReal(garbageRate))
        jSet(o, "wrong_id_rate", jReal(wrongIdRate))
        jSet(o, "null_id_rate", jReal(nullIdRate))
        jSet(o, "no_result_rate", jReal(noResultRate))
        jSet(o, "oversize_rate", jReal(oversizeRate))
        jSet(o, "oversize_bytes", jInt(oversizeBytes))
        jSet(o, "reset_rate", jReal(resetRate))
        jSet(o, "crash_after_create_ms", jReal(crashAfterCreateMs))
        jSet(o, "silent_notifications", jBool(silentNotifications))
        return o
    }

    /// Applies a `refd.set_faults` params object (borrowed). All-or-nothing: on a bad key or value
    /// nothing changes and an error message is returned.
    mutating func apply(json params: JSONRef) -> String? {
        var updated = self
        var iter = json_object_iter(params)
        while let it = iter {
            guard let keyPtr = json_object_iter_key(it) else { return "invalid key" }
            let key = String(cString: keyPtr)
            let value = json_object_iter_value(it)
            guard let entry = Faults.keys.first(where: { $0.key == key }) else {
                return "Unknown fault setting: \(key)"
            }
            if entry.kind == .flag {
                guard let value, jType(value) == JSON_TRUE || jType(value) == JSON_FALSE else {
                    return "\(key) must be a boolean"
                }
                updated.set(key, number: 0, flag: jType(value) == JSON_TRUE)
            } else {
                guard let number = jNumber(value) else { return "\(key) must be a number" }
                if let problem = Faults.validate(number, kind: entry.kind) { return "\(key) \(problem)" }
                updated.set(key, number: number, flag: false)
            }
            iter = json_object_iter_next(params, it)
        }
        self = updated
        return nil
    }
}

/// The process-wide settings. Readers cache a copy and re-read only when the generation changes,
/// so the per-request cost is one atomic load.
final class FaultStore: @unchecked Sendable {
    private let lock = Lock()
    private var faults: Faults
    let generation = Atomic<UInt64>(1)

    init(_ initial: Faults) { faults = initial }

    func snapshot() -> Faults { lock.withLock { faults } }

    /// Runs `body` on the settings under the lock; bumps the generation.
    func update<T>(_ body: (inout Faults) -> T) -> T {
        lock.withLock {
            let r = body(&faults)
            generation.add(1, ordering: .releasing)
            return r
        }
    }
}

/// A per-thread cached view of the fault settings.
struct FaultView {
    private(set) var current: Faults
    private var seen: UInt64

    init(_ store: FaultStore) {
        seen = store.generation.load(ordering: .acquiring)
        current = store.snapshot()
    }

    @inline(__always)
    mutating func refresh(_ store: FaultStore) {
        let g = store.generation.load(ordering: .acquiring)
        if g != seen {
            seen = g
            current = store.snapshot()
        }
    }
}
