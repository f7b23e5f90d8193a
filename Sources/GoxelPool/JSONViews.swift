import CJansson
import GoxelPoolCore
import GoxelPoolIO

/// Small jansson builders for the statistics and health snapshots.
struct JSONObject {
    let raw: UnsafeMutablePointer<json_t>?

    init() { raw = json_object() }

    func set(_ key: String, _ value: UnsafeMutablePointer<json_t>?) {
        guard let raw, let value else { return }
        json_object_set_new(raw, key, value)
    }
    func set(_ key: String, _ value: Int) { set(key, json_integer(json_int_t(value))) }
    func set(_ key: String, _ value: Double) { set(key, value.isFinite ? json_real(value) : json_null()) }
    func set(_ key: String, _ value: String?) { set(key, value.map { json_stringn($0, $0.utf8.count) } ?? json_null()) }
    func set(_ key: String, _ value: Bool) { set(key, value ? json_true() : json_false()) }
    func set(_ key: String, counts: [String: Int]) {
        let object = JSONObject()
        for (name, count) in counts.sorted(by: { $0.key < $1.key }) { object.set(name, count) }
        set(key, object.raw)
    }
}

func millis(_ micros: UInt64) -> Double { Double(micros) / 1000 }

func poolStatisticsJSON(_ snapshot: PoolClient.Snapshot) -> JSONObject {
    let stats = snapshot.statistics
    let object = JSONObject()
    object.set("pool_state", snapshot.state.rawValue)
    object.set("total_connections", snapshot.total)
    object.set("available_connections", snapshot.idle)
    object.set("busy_connections", snapshot.busy + snapshot.checking)
    object.set("opening_connections", snapshot.opening)
    object.set("healthy_connections", snapshot.healthy)
    object.set("total_requests_served", stats.totalRequestsServed)
    object.set("failed_requests", counts: stats.failedRequests)
    object.set("average_request_time_ms", stats.averageRequestTime.milliseconds)
    let latency = JSONObject()
    let requestHistogram = stats.requestLatency
    let empty = requestHistogram.totalCount == 0
    for (name, percentile) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0)] {
        latency.set(name, empty ? 0 : millis(requestHistogram.valueAtPercentile(percentile)))
    }
    latency.set("max", empty ? 0 : millis(requestHistogram.max))
    object.set("request_latency_ms", latency.raw)
    object.set("waiting_requests", snapshot.waiting)
    object.set("max_waiting_seen", stats.maxWaitingSeen)
    let wait = JSONObject()
    let waitEmpty = stats.acquireWait.totalCount == 0
    wait.set("p50", waitEmpty ? 0 : millis(stats.acquireWait.valueAtPercentile(50)))
    wait.set("p99", waitEmpty ? 0 : millis(stats.acquireWait.valueAtPercentile(99)))
    object.set("acquire_wait_ms", wait.raw)
    object.set("rejected_busy", stats.rejectedBusy)
    object.set("rejected_unavailable", stats.rejectedUnavailable)
    object.set("circuit_state", snapshot.circuit.state.rawValue)
    object.set("pool_uptime_ms", stats.uptime(now: snapshot.now).milliseconds)
    object.set("connection_attempts", stats.connectionAttempts)
    object.set("connection_failures", stats.connectionFailures)
    object.set("reconnection_attempts", stats.reconnectionAttempts)
    object.set("connections_rejected", stats.connectionsRejected)
    object.set("tls_sessions_resumed", stats.tlsSessionsResumed)
    object.set("connections_created", stats.connectionsCreated)
    var closed: [String: Int] = [:]
    for reason in CloseReason.allCases { closed[reason.rawValue] = stats.connectionsClosed[reason] ?? 0 }
    object.set("connections_closed", counts: closed)
    object.set("retries", stats.retries)
    object.set("notifications_sent", stats.notificationsSent)
    object.set("bytes_sent", stats.bytesSent)
    object.set("bytes_received", stats.bytesReceived)
    object.set("health_checks", stats.healthChecks)
    object.set("health_check_failures", stats.healthCheckFailures)
    object.set("last_health_check", stats.lastHealthCheck.map { json_integer(json_int_t(Clock.wallMilliseconds(of: $0))) } ?? json_null())
    object.set("alerts_generated", counts: stats.alertsGenerated)
    object.set("events_delivered", snapshot.eventsDelivered)
    object.set("events_dropped", snapshot.eventsDropped)
    object.set("last_connect_error", stats.lastConnectError)
    return object
}

func healthJSON(_ tracker: HealthTracker, now: Instant) -> JSONObject {
    let object = JSONObject()
    object.set("tier", tracker.tier.rawValue)
    object.set("consecutive_failures", tracker.consecutiveFailures)
    object.set("consecutive_successes", tracker.consecutiveSuccesses)
    object.set("total_checks", tracker.totalObservations)
    object.set("total_failures", tracker.totalFailures)
    object.set("success_rate", tracker.successRate)
    object.set("average_latency_ms", tracker.averageLatency.map { json_real($0.milliseconds) } ?? json_null())
    let samples = json_array()
    for sample in tracker.samples { json_array_append_new(samples, json_real(sample.latency.milliseconds)) }
    object.set("latencies_ms", samples)
    object.set("trend", tracker.trend.rawValue)
    if let prediction = tracker.predictedTimeToNextTier(now: now) {
        let predicted = JSONObject()
        predicted.set("tier", prediction.tier.rawValue)
        predicted.set("in_ms", prediction.after.milliseconds)
        object.set("prediction", predicted.raw)
    } else {
        object.set("prediction", json_null())
    }
    object.set("last_error", tracker.lastError)
    return object
}

/// One endpoint's pool: state, circuit breaker, pool-level health and its connections.
func poolHealthJSON(_ snapshot: PoolClient.Snapshot, into connections: UnsafeMutablePointer<json_t>?, endpoint: String) -> JSONObject {
    let object = JSONObject()
    object.set("endpoint", endpoint)
    object.set("state", snapshot.state.rawValue)
    object.set("healthy_connections", snapshot.healthy)
    object.set("total_connections", snapshot.total)
    let circuit = JSONObject()
    circuit.set("state", snapshot.circuit.state.rawValue)
    circuit.set("times_opened", snapshot.circuit.timesOpened)
    circuit.set("open_until", snapshot.circuit.openUntil.map { json_integer(json_int_t(Clock.wallMilliseconds(of: $0))) } ?? json_null())
    object.set("circuit_breaker", circuit.raw)
    object.set("pool", healthJSON(snapshot.poolHealth, now: snapshot.now).raw)
    for entry in snapshot.connections {
        let item = healthJSON(entry.health, now: snapshot.now)
        item.set("connection_id", entry.id.value)
        item.set("endpoint", endpoint)
        item.set("requests_served", entry.requests)
        item.set("uptime_ms", entry.openedAt.map { (snapshot.now - $0).milliseconds } ?? 0)
        if let raw = item.raw { json_array_append_new(connections, raw) }
    }
    return object
}

/// The client's totals over its endpoints (one endpoint: exactly that pool's figures). With no
/// endpoint yet (managed daemons starting, DNS names not resolved) the totals are zero.
func aggregate(_ multi: MultiPoolClient.Snapshot) -> PoolClient.Snapshot {
    var total = multi.endpoints.first?.pool ?? PoolClient.emptySnapshot(closed: multi.closed, uptime: multi.uptime)
    for other in multi.endpoints.dropFirst().map(\.pool) {
        total.statistics.merge(other.statistics)
        total.total += other.total; total.idle += other.idle; total.busy += other.busy
        total.opening += other.opening; total.checking += other.checking
        total.healthy += other.healthy; total.waiting += other.waiting
    }
    if multi.endpoints.count > 1 {
        let states = multi.endpoints.map(\.pool.state)
        if states.allSatisfy({ $0 == .closed }) { total.state = .closed }
        else if total.total == 0 { total.state = .unhealthy }
        else if total.healthy * 10 >= total.total * 8 { total.state = .ready }
        else if total.healthy * 2 >= total.total { total.state = .degraded }
        else { total.state = .unhealthy }
    }
    total.eventsDelivered = multi.eventsDelivered
    total.eventsDropped = multi.eventsDropped
    if let daemons = multi.daemons { total.statistics.alertsGenerated.merge(daemons.alertsGenerated, uniquingKeysWith: +) }
    return total
}

/// The managed daemons (spawn mode), one object each: for statistics and health.
func daemonsJSON(_ snapshot: DaemonSupervisor.Snapshot) -> UnsafeMutablePointer<json_t>? {
    let list = json_array()
    for daemon in snapshot.daemons {
        let item = JSONObject()
        let slot = snapshot.slots.indices.contains(daemon.slot) ? snapshot.slots[daemon.slot] : nil
        item.set("slot", daemon.slot)
        item.set("pid", daemon.pid.map { json_integer(json_int_t($0)) } ?? json_null())
        item.set("endpoint", daemon.endpoint)
        item.set("state", daemon.state.rawValue)
        item.set("started_at", json_integer(json_int_t(Clock.wallMilliseconds(of: daemon.startedAt))))
        item.set("ready_at", daemon.readyAt.map { json_integer(json_int_t(Clock.wallMilliseconds(of: $0))) } ?? json_null())
        item.set("uptime_ms", (snapshot.now - daemon.startedAt).milliseconds)
        item.set("restarts", slot?.restarts ?? 0)
        item.set("recycles", slot?.recycles ?? 0)
        item.set("lifetime_connections", daemon.lifetimeConnections)
        item.set("max_connections", daemon.connectionLimit)
        item.set("recycling", daemon.recycleReason?.rawValue)
        if let raw = item.raw { json_array_append_new(list, raw) }
    }
    return list
}

/// Totals of the managed daemons over the client's life.
func spawnJSON(_ snapshot: DaemonSupervisor.Snapshot) -> UnsafeMutablePointer<json_t>? {
    let object = JSONObject()
    object.set("directory", snapshot.directory)
    object.set("daemons_started", snapshot.daemonsStarted)
    object.set("restarts", snapshot.slots.reduce(0) { $0 + $1.restarts })
    object.set("recycles", snapshot.slots.reduce(0) { $0 + $1.recycles })
    object.set("start_failures", snapshot.slots.reduce(0) { $0 + $1.startFailures })
    object.set("crashes", snapshot.slots.reduce(0) { $0 + $1.crashes })
    object.set("recycle_threshold", snapshot.recycleThreshold)
    object.set("output_lines_dropped", snapshot.outputLinesDropped)
    return object.raw
}

/// "closed", "open", "half_open" when all endpoints agree, else "mixed".
func circuitSummary(_ multi: MultiPoolClient.Snapshot) -> String {
    let states = Set(multi.endpoints.map(\.pool.circuit.state.rawValue))
    return states.count == 1 ? (states.first ?? "closed") : "mixed"
}

func statisticsJSON(_ multi: MultiPoolClient.Snapshot) -> UnsafeMutablePointer<json_t>? {
    let total = aggregate(multi)
    let object = poolStatisticsJSON(total)
    object.set("circuit_state", circuitSummary(multi))
    object.set("panic_mode", multi.inPanic)
    object.set("alerts_generated", counts: total.statistics.alertsGenerated.merging(multi.alertsGenerated, uniquingKeysWith: +)
                                                .merging(multi.sessions.alerts, uniquingKeysWith: +))
    object.set("dns", dnsJSON(multi))
    object.set("callbacks", multi.dispatchQueue == nil ? "thread" : "dispatch")
    object.set("dispatch_queue_depth", multi.dispatchQueue?.depth ?? 0)
    object.set("dispatch_queue_peak", multi.dispatchQueue?.peak ?? 0)
    object.set("sessions", sessionStatisticsJSON(multi.sessions).raw)
    let list = json_array()
    for endpoint in multi.endpoints {
        let item = poolStatisticsJSON(endpoint.pool)
        item.set("endpoint", endpoint.endpoint.description)
        item.set("dns_name", endpoint.origin?.description)
        item.set("tls", endpoint.endpoint.usesTLS)
        item.set("max_connections", endpoint.maxConnections)
        item.set("sessions", endpoint.sessions)
        if let member = endpoint.balancer {
            item.set("outstanding_calls", member.outstanding)
            item.set("peak_ewma_latency_ms", member.peakEWMA / 1e6)
            item.set("routed_calls", member.calls)
            item.set("routed_failures", member.failures)
            item.set("success_rate", member.successRate)
            item.set("ejected", member.ejectedUntil != nil)
            item.set("ejections", member.ejections)
            item.set("draining", member.draining)
        }
        if let raw = item.raw { json_array_append_new(list, raw) }
    }
    object.set("endpoints", list)
    if let daemons = multi.daemons {
        object.set("daemons", daemonsJSON(daemons))
        object.set("spawn", spawnJSON(daemons))
    }
    return object.raw
}

/// Each DNS name: its last good addresses, the endpoints they became, its lookups.
func dnsJSON(_ multi: MultiPoolClient.Snapshot) -> UnsafeMutablePointer<json_t>? {
    let list = json_array()
    let now = Clock.now()
    func wall(_ instant: Instant?) -> UnsafeMutablePointer<json_t>? {
        instant.map { json_integer(json_int_t(Clock.wallMilliseconds(of: $0))) } ?? json_null()
    }
    for name in multi.names {
        let item = JSONObject()
        item.set("name", name.name.description)
        let addresses = json_array()
        for address in name.addresses { json_array_append_new(addresses, json_string(address)) }
        item.set("addresses", addresses)
        let endpoints = json_array()
        for endpoint in multi.endpoints where endpoint.origin == name.name {
            json_array_append_new(endpoints, json_string(endpoint.endpoint.description))
        }
        item.set("endpoints", endpoints)
        item.set("lookups", name.lookups)
        item.set("lookup_failures", name.lookupFailures)
        item.set("last_lookup", wall(name.lastLookup))
        item.set("last_success", wall(name.lastSuccess))
        item.set("last_error", name.lastError)
        item.set("next_lookup_in_ms", name.due.map { json_real(max(0, ($0 - now).milliseconds)) } ?? json_null())
        if let raw = item.raw { json_array_append_new(list, raw) }
    }
    return list
}

func healthJSON(_ multi: MultiPoolClient.Snapshot) -> UnsafeMutablePointer<json_t>? {
    let object = JSONObject()
    let total = aggregate(multi)
    object.set("state", total.state.rawValue)
    object.set("healthy_connections", total.healthy)
    object.set("total_connections", total.total)
    object.set("circuit_state", circuitSummary(multi))
    let connections = json_array()
    let endpoints = json_array()
    for endpoint in multi.endpoints {
        let item = poolHealthJSON(endpoint.pool, into: connections, endpoint: endpoint.endpoint.description)
        item.set("ejected", endpoint.balancer?.ejectedUntil != nil)
        if let raw = item.raw { json_array_append_new(endpoints, raw) }
    }
    // With one endpoint its pool-level figures are the client's.
    if multi.endpoints.count == 1, let only = multi.endpoints.first {
        let single = poolHealthJSON(only.pool, into: nil, endpoint: only.endpoint.description)
        for key in ["circuit_breaker", "pool"] {
            if let raw = single.raw, let value = json_object_get(raw, key) { object.set(key, json_incref(value)) }
        }
        json_decref(single.raw)
    }
    object.set("connections", connections)
    object.set("endpoints", endpoints)
    let sessions = json_array()
    for info in multi.sessions.sessions { if let raw = sessionInfoJSON(info).raw { json_array_append_new(sessions, raw) } }
    object.set("sessions", sessions)
    if let daemons = multi.daemons { object.set("daemons", daemonsJSON(daemons)) }
    return object.raw
}

// MARK: - Sessions

func sessionInfoJSON(_ info: Session.Info) -> JSONObject {
    let object = JSONObject()
    object.set("id", info.id.value)
    object.set("key", info.key)
    object.set("endpoint", info.endpoint.description)
    object.set("daemon_pid", info.pid.map { json_integer(json_int_t($0)) } ?? json_null())
    object.set("state", info.state.name)
    object.set("exclusive", info.exclusive)
    object.set("durable", info.durable)
    object.set("calls", info.calls)
    object.set("restores", info.restores)
    object.set("calls_replayed", info.callsReplayed)
    object.set("moves", info.moves)
    object.set("journal_length", info.journalLength)
    object.set("checkpoints", info.checkpoints)
    object.set("checkpoint_failures", info.checkpointFailures)
    object.set("last_checkpoint_ms", info.lastCheckpointWallMs.map { json_integer(json_int_t($0)) } ?? json_null())
    object.set("checkpoint_path", info.checkpointPath)
    object.set("opened_ms", json_integer(json_int_t(info.openedWallMs)))
    object.set("last_error", info.lastError)
    return object
}

func sessionStatisticsJSON(_ snapshot: SessionManager.Snapshot) -> JSONObject {
    let object = JSONObject()
    object.set("open", snapshot.open)
    object.set("exclusive", snapshot.exclusive)
    object.set("durable", snapshot.durable)
    object.set("waiting", snapshot.waiting)
    object.set("opened", snapshot.opened)
    object.set("closed", snapshot.closed)
    object.set("restores", snapshot.restores)
    object.set("lost", snapshot.lost)
    object.set("moves", snapshot.moves)
    object.set("rejected_busy", snapshot.rejectedBusy)
    object.set("timed_out", snapshot.timedOut)
    object.set("checkpoints", snapshot.checkpoints)
    object.set("checkpoint_failures", snapshot.checkpointFailures)
    object.set("journal_entries", snapshot.journalEntries)
    object.set("max_journal_length", snapshot.sessions.map(\.journalLength).max() ?? 0)
    return object
}
