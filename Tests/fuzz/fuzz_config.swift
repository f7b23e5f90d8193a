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
        if let spawn = c.spawn {
            precondition(c.endpoints.isEmpty && c.effectiveEndpoints.isEmpty && (1...64).contains(spawn.instances))
            precondition(!spawn.command.isEmpty && !spawn.command.contains { $0.isEmpty || $0.utf8.contains(0) })
            precondition(spawn.command.contains { $0.contains("{socket}") } || spawn.environment.contains { $0.value.contains("{socket}") })
            precondition(spawn.environment.allSatisfy { !$0.name.isEmpty && !$0.name.contains("=") && !$0.name.utf8.contains(0) && !$0.value.utf8.contains(0) })
            precondition(spawn.maxConnectionsPerProcess == 0 || spawn.maxConnectionsPerProcess >= 2 * (c.pool.minConnections + 2))
            for ms in [spawn.maxAgeMs, spawn.startTimeoutMs, spawn.stopGraceMs, spawn.drainTimeoutMs] {
                precondition((0...Int(Int32.max)).contains(ms), "milliseconds out of range: \(ms)")
            }
        }
    } catch {
        // The message must name a key, and survive the trip to C (no NUL).
        precondition(!error.key.isEmpty && !error.message.isEmpty, "error without key or message")
        precondition(!error.description.utf8.contains(0), "NUL in \(error)")
    }
    return 0
}
