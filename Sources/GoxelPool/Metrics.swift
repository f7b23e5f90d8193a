import CGoxelPool
import Glibc
import GoxelPoolCore
import GoxelPoolIO

// goxelpool_metrics_text: the statistics and health of a snapshot in the Prometheus text format.
// Every figure a snapshot has per endpoint is exported per endpoint (label `endpoint`), never as a
// client total beside it, so that sum() over endpoints is right. A figure is one line of
// `metricFamilies`; the name gets the `goxelpool_` prefix.

/// One metric family: its name (without the prefix), type, help, and how to read its samples.
struct Metric: Sendable {
    typealias Labels = PrometheusText.Labels
    let name: String
    let kind: PrometheusText.Kind
    let help: String
    let write: @Sendable (inout PrometheusText, String, MultiPoolClient.Snapshot) -> Void

    typealias Endpoint = MultiPoolClient.EndpointSnapshot

    /// A counter or gauge per endpoint; nil (no sample) where the endpoint lacks the figure.
    static func perEndpoint(_ name: String, _ kind: PrometheusText.Kind, _ help: String,
                            _ value: @escaping @Sendable (Endpoint) -> Double?) -> Metric {
        Metric(name: name, kind: kind, help: help) { text, full, client in
            for endpoint in client.endpoints {
                if let value = value(endpoint) { text.sample(full, endpointLabel(endpoint), value) }
            }
        }
    }

    static func counter(_ name: String, _ help: String, _ value: @escaping @Sendable (Endpoint) -> Int?) -> Metric {
        perEndpoint(name, .counter, help) { value($0).map(Double.init) }
    }

    static func gauge(_ name: String, _ help: String, _ value: @escaping @Sendable (Endpoint) -> Double?) -> Metric {
        perEndpoint(name, .gauge, help, value)
    }

    /// Per endpoint and per value of a second label (e.g. failures by status).
    static func split(_ name: String, _ kind: PrometheusText.Kind, _ help: String, by label: String,
                      _ values: @escaping @Sendable (Endpoint) -> [String: Int]) -> Metric {
        Metric(name: name, kind: kind, help: help) { text, full, client in
            for endpoint in client.endpoints {
                for (key, value) in values(endpoint).sorted(by: { $0.key < $1.key }) {
                    text.sample(full, endpointLabel(endpoint) + [(label, key)], value)
                }
            }
        }
    }

    /// An enumeration as a set of 0/1 gauges, one per possible value (1 for the current one).
    static func state(_ name: String, _ help: String, values: [String], _ current: @escaping @Sendable (Endpoint) -> String) -> Metric {
        split(name, .gauge, help, by: "state") { endpoint in
            let now = current(endpoint)
            return Dictionary(uniqueKeysWithValues: values.map { ($0, $0 == now ? 1 : 0) })
        }
    }

    /// A latency histogram per endpoint (`le` buckets in seconds, `_sum`, `_count`).
    static func histogram(_ name: String, _ help: String, _ latency: PoolStatistics.Latency) -> Metric {
        Metric(name: name, kind: .histogram, help: help) { text, full, client in
            for endpoint in client.endpoints {
                let figures = endpoint.pool.statistics.distribution(latency, boundsSeconds: latencyBucketsSeconds)
                text.histogram(full, endpointLabel(endpoint), bounds: latencyBucketsSeconds, cumulative: figures.cumulative,
                               sum: seconds(figures.sum), count: figures.count)
            }
        }
    }

    /// A figure of the balancer, per endpoint; none for a client with one endpoint (not balanced).
    static func routing(_ name: String, _ kind: PrometheusText.Kind, _ help: String,
                        _ value: @escaping @Sendable (EndpointBalancer.Member) -> Double) -> Metric {
        Metric(name: name, kind: kind, help: help) { text, full, client in
            guard client.endpoints.count > 1 else { return }
            for endpoint in client.endpoints {
                if let member = endpoint.balancer { text.sample(full, endpointLabel(endpoint), value(member)) }
            }
        }
    }

    /// A figure of the client as a whole (no endpoint label).
    static func client(_ name: String, _ kind: PrometheusText.Kind, _ help: String,
                       _ value: @escaping @Sendable (MultiPoolClient.Snapshot) -> [(Labels, Double)]) -> Metric {
        Metric(name: name, kind: kind, help: help) { text, full, client in
            for (labels, sample) in value(client) { text.sample(full, labels, sample) }
        }
    }
}

private func endpointLabel(_ endpoint: MultiPoolClient.EndpointSnapshot) -> PrometheusText.Labels {
    [("endpoint", endpoint.endpoint.description)]
}

/// Upper bounds of the latency histograms, in seconds: 100 µs (a cheap call on a local daemon
/// is ~50-100 µs) to 10 s (beyond the default 5 s timeout).
let latencyBucketsSeconds: [Double] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                       0.1, 0.25, 0.5, 1, 2.5, 5, 10]

private func seconds(_ span: Span) -> Double { Double(span.nanoseconds) / 1e9 }
private func flag(_ value: Bool) -> Double { value ? 1 : 0 }

/// Every status a call can fail with is exported from the start (at 0), so that rate() sees the
/// first failure.
private func failuresByStatus(_ failed: [String: Int]) -> [String: Int] {
    var all: [String: Int] = [:]
    for status in CallStatus.allCases where status != .ok { all[status.name.description] = 0 }
    return all.merging(failed, uniquingKeysWith: +)
}

/// The exported figures, in output order. Adding one is adding a line.
let metricFamilies: [Metric] = [
    // The client as a whole.
    .client("build_info", .gauge, "The library's version (always 1)") { _ in [([("version", libraryVersion.description)], 1)] },
    .client("client_state", .gauge, "State of the client over all its endpoints: ready, degraded, unhealthy or closed (1 for the current one)") { client in
        let current = aggregate(client).state
        return PoolState.allCases.map { ([("state", $0.rawValue)], flag($0 == current)) }
    },
    .client("panic_mode", .gauge, "1 while fewer than half of the endpoints are available and all are used") { [([], flag($0.inPanic))] },
    .client("events_delivered_total", .counter, "Events handed to listeners") { [([], Double($0.eventsDelivered))] },
    .client("events_dropped_total", .counter, "Events dropped because listeners fell behind (event_queue_size)") { [([], Double($0.eventsDropped))] },

    // Pool and circuit breaker state, per endpoint.
    .state("pool_state", "State of the endpoint's pool (1 for the current one)", values: PoolState.allCases.map(\.rawValue)) { $0.pool.state.rawValue },
    .state("circuit_state", "State of the endpoint's circuit breaker (1 for the current one)",
           values: CircuitBreaker.State.allCases.map(\.rawValue)) { $0.pool.circuit.state.rawValue },
    .counter("circuit_opened_total", "Times the circuit breaker opened") { $0.pool.circuit.timesOpened },

    // Connections.
    .split("connections", .gauge, "Open or opening connections by state (busy: serving a call; checking: a health check)", by: "state") { endpoint in
        ["idle": endpoint.pool.idle, "busy": endpoint.pool.busy, "checking": endpoint.pool.checking, "opening": endpoint.pool.opening]
    },
    .split("connections_health", .gauge, "Open connections by health tier", by: "tier") { endpoint in
        var tiers = Dictionary(uniqueKeysWithValues: HealthTier.allCases.map { ($0.rawValue, 0) })
        for connection in endpoint.pool.connections { tiers[connection.health.tier.rawValue, default: 0] += 1 }
        return tiers
    },
    .gauge("max_connections", "Most connections the endpoint may have (pool.max_connections within max_total_connections)") { Double($0.maxConnections) },
    .counter("connection_attempts_total", "Connections attempted") { $0.pool.statistics.connectionAttempts },
    .counter("connection_failures_total", "Connection attempts that failed") { $0.pool.statistics.connectionFailures },
    .counter("reconnection_attempts_total", "Connection attempts made after a failure (backoff)") { $0.pool.statistics.reconnectionAttempts },
    .counter("connections_created_total", "Connections opened and validated") { $0.pool.statistics.connectionsCreated },
    .split("connections_closed_total", .counter, "Connections closed, by reason", by: "reason") { endpoint in
        Dictionary(uniqueKeysWithValues: CloseReason.allCases.map { ($0.rawValue, endpoint.pool.statistics.connectionsClosed[$0] ?? 0) })
    },

    // Calls.
    .counter("requests_total", "Requests answered by the daemon (results and JSON-RPC errors)") { $0.pool.statistics.totalRequestsServed },
    .split("requests_failed_total", .counter, "Calls that failed, by status (ERPC: the daemon answered with an error)", by: "status") {
        failuresByStatus($0.pool.statistics.failedRequests)
    },
    .split("requests_rejected_total", .counter, "Calls refused at once: busy (wait queue full), unavailable (circuit open)", by: "reason") { endpoint in
        ["busy": endpoint.pool.statistics.rejectedBusy, "unavailable": endpoint.pool.statistics.rejectedUnavailable]
    },
    .counter("retries_total", "Calls sent again after a connection broke") { $0.pool.statistics.retries },
    .histogram("request_duration_seconds", "Time from sending a request to its answer", .request),
    .histogram("acquire_wait_seconds", "Time a call waited for a connection", .acquireWait),
    .gauge("waiting_requests", "Calls waiting for a connection now") { Double($0.pool.waiting) },
    .gauge("waiting_requests_max", "Most calls seen waiting at once") { Double($0.pool.statistics.maxWaitingSeen) },
    .counter("sent_bytes_total", "Bytes written to the daemon") { $0.pool.statistics.bytesSent },
    .counter("received_bytes_total", "Bytes read from the daemon") { $0.pool.statistics.bytesReceived },

    // Health.
    .counter("health_checks_total", "Health checks made") { $0.pool.statistics.healthChecks },
    .counter("health_check_failures_total", "Health checks that failed") { $0.pool.statistics.healthCheckFailures },
    .gauge("last_health_check_timestamp_seconds", "Unix time of the last health check") { endpoint in
        endpoint.pool.statistics.lastHealthCheck.map { Double(Clock.wallMilliseconds(of: $0)) / 1000 }
    },
    .split("alerts_total", .counter, "Alerts raised, by type", by: "type") { $0.pool.statistics.alertsGenerated },
    .gauge("uptime_seconds", "Time since the endpoint's pool started (stops at close)") { seconds($0.pool.statistics.uptime(now: $0.pool.now)) },

    // Routing between endpoints (only clients with several endpoints balance).
    .routing("outstanding_calls", .gauge, "Calls in flight to the endpoint") { Double($0.outstanding) },
    .routing("peak_ewma_latency_seconds", .gauge, "Peak-EWMA latency the balancer weighs the endpoint by") { $0.peakEWMA / 1e9 },
    .routing("routed_calls_total", .counter, "Calls routed to the endpoint") { Double($0.calls) },
    .routing("routed_failures_total", .counter, "Calls routed to the endpoint that failed there") { Double($0.failures) },
    .routing("success_rate", .gauge, "Share of recent calls that succeeded (outlier detection window)") { $0.successRate },
    .routing("ejected", .gauge, "1 while the endpoint is ejected by outlier detection") { flag($0.ejectedUntil != nil) },
    .routing("ejections_total", .counter, "Times the endpoint was ejected") { Double($0.ejections) },
    .routing("draining", .gauge, "1 while the endpoint is being removed") { flag($0.draining) },

    // Sessions (documents pinned to a daemon; see README "Sessions").
    .gauge("sessions", "Open sessions placed on the endpoint") { endpoint in Double(endpoint.sessions) },
    .client("sessions_waiting", .gauge, "Session opens waiting for a free daemon") { [([], Double($0.sessions.waiting))] },
    .client("sessions_opened_total", .counter, "Sessions opened") { [([], Double($0.sessions.opened))] },
    .client("session_restores_total", .counter, "Durable sessions restored after their daemon restarted (or moved)") { [([], Double($0.sessions.restores))] },
    .client("sessions_lost_total", .counter, "Sessions whose document could not be restored") { [([], Double($0.sessions.lost))] },
    .client("session_checkpoints_total", .counter, "Checkpoints written by durable sessions") { [([], Double($0.sessions.checkpoints))] },
    .client("session_checkpoint_failures_total", .counter, "Checkpoints that failed") { [([], Double($0.sessions.checkpointFailures))] },
    .client("session_journal_entries", .gauge, "Calls journaled since the last checkpoint, over all durable sessions") { [([], Double($0.sessions.journalEntries))] },
]

/// The whole exposition for one snapshot.
func metricsText(_ client: MultiPoolClient.Snapshot) -> String {
    var text = PrometheusText()
    for metric in metricFamilies {
        let name = "goxelpool_" + metric.name
        text.family(name, metric.kind, help: metric.help)
        metric.write(&text, name, client)
    }
    return text.text
}

// MARK: - C ABI

@c @implementation
public func goxelpool_metrics_text(_ client: OpaquePointer?, _ out: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> goxelpool_status {
    LastError.clear()
    out?.pointee = nil
    guard let handle = ClientHandle.from(client) else { return invalid("client is NULL") }
    guard let out else { return invalid("out is NULL") }
    var text = metricsText(handle.client.snapshot())
    let count = text.utf8.count
    guard let buffer = malloc(count + 1)?.assumingMemoryBound(to: CChar.self) else {
        return failed(CallFailure(.noMemory, "out of memory (\(count + 1) bytes for the metrics text)"))
    }
    text.withUTF8 { bytes in
        if let base = bytes.baseAddress { memcpy(buffer, base, count) }
    }
    buffer[count] = 0
    out.pointee = buffer
    return GOXELPOOL_OK
}

@c @implementation
public func goxelpool_free(_ pointer: UnsafeMutableRawPointer?) {
    free(pointer)
}
