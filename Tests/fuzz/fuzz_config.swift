// libFuzzer target: the configuration parser, as goxelpool_client_new runs it: bytes -> json_loadb
// -> configValue(from:) -> ClientConfiguration.parse. Any input must either parse into a
// configuration that keeps every documented rule, or be refused with a ConfigurationError whose
// text names a key; never trap, leak or loop.
import CJansson
import Glibc
import GoxelPoolCore
@testable import GoxelPoolIO

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var error = json_error_t()
    // JSON_DECODE_ANY: also scalars (goxelpool_client_new receives any json_t a caller built).
    guard let root = data.withMemoryRebound(to: CChar.self, capacity: size, {
        json_loadb($0, size, Int(JSON_DECODE_ANY | JSON_ALLOW_NUL), &error)
    }) else { return 0 }
    defer { json_decref(root) }
    do {
        let c = try ClientConfiguration.parse(json: UnsafePointer(root))
        precondition(root.pointee.type == JSON_OBJECT || root.pointee.type == JSON_NULL, "a non-object config was accepted")
        precondition(c.pool.minConnections <= c.pool.maxConnections)
        precondition((1...1024).contains(c.pool.maxConnections))
        precondition(c.reconnect.initialBackoffMs <= c.reconnect.maxBackoffMs)
        precondition(c.health.healthyLatencyMs <= c.health.degradedLatencyMs)
        precondition(c.circuitBreaker.minimumCalls <= c.circuitBreaker.windowSize)
        precondition(c.health.intervalMs == 0 || c.health.intervalMs >= 10)
        precondition(!c.socketPath.utf8.contains(0) && c.socketPath.utf8.count <= ClientConfiguration.maxSocketPathBytes)
        for ms in [c.timeoutMs, c.retryDelayMs, c.pool.acquireTimeoutMs, c.pool.idleTimeoutMs, c.pool.maxLifetimeMs,
                   c.pool.connectTimeoutMs, c.reconnect.initialBackoffMs, c.reconnect.maxBackoffMs,
                   c.health.intervalMs, c.health.timeoutMs, c.circuitBreaker.cooldownMs] {
            precondition((0...Int(Int32.max)).contains(ms), "milliseconds out of range: \(ms)")
        }
        precondition(c.reconnect.multiplier.isFinite && c.reconnect.jitter.isFinite && c.circuitBreaker.failureRate.isFinite)
    } catch {
        // The message must name a key, and survive the trip to C (no NUL).
        precondition(!error.key.isEmpty && !error.message.isEmpty, "error without key or message")
        precondition(!error.description.utf8.contains(0), "NUL in \(error)")
    }
    return 0
}
