import Histogram

/// Counters and latency histograms of a pool, updated by the state machine (requests, waits,
/// connections) and by the runner (failures by status, bytes).
public struct PoolStatistics {
    public let startedAt: Instant
    public var closedAt: Instant?
    public var totalRequestsServed = 0
    public var totalRequestTime = Span.zero
    /// Request latency in microseconds (1 µs .. 1 h, 3 significant digits).
    public private(set) var requestLatency = Histogram<UInt64>(highestTrackableValue: 3_600_000_000)
    /// Time spent waiting for a connection, in microseconds: the waits recorded, and the leases
    /// that did not wait (most of them, every lease a thread takes back on the fast path) at the
    /// histogram's lowest value. Those are counted apart and entered when it is read (`record`
    /// per lease is a histogram update under the pool's lock at every call); `foldWaitlessLeases`
    /// enters them for good, so that reads do not copy the histogram to enter them.
    public var acquireWait: Histogram<UInt64> {
        guard waitlessLeases > 0 else { return recordedAcquireWait }
        var histogram = recordedAcquireWait
        _ = histogram.record(Self.micros(.zero), count: waitlessLeases)
        return histogram
    }
    private var recordedAcquireWait = Histogram<UInt64>(highestTrackableValue: 3_600_000_000)
    private var waitlessLeases: UInt64 = 0
    /// The sum of those waits (a histogram's `_sum` in the metrics).
    public private(set) var totalAcquireWait = Span.zero
    public var failedRequests: [String: Int] = [:]
    public var rejectedBusy = 0
    public var rejectedUnavailable = 0
    public var maxWaitingSeen = 0
    public var connectionAttempts = 0
    public var connectionsCreated = 0
    public var connectionFailures = 0
    public var reconnectionAttempts = 0
    /// Connections refused for a configuration fault (peer credentials, TLS verification, client
    /// certificate); also counted in connectionFailures.
    public var connectionsRejected = 0
    /// TLS connections opened by resuming an earlier session (no full certificate exchange).
    public var tlsSessionsResumed = 0
    public var lastConnectError: String?
    public private(set) var connectionsClosed: [CloseReason: Int] = [:]
    public var healthChecks = 0
    public var healthCheckFailures = 0
    public var lastHealthCheck: Instant?
    public var bytesSent = 0
    public var bytesReceived = 0
    public var retries = 0
    /// Notifications written (their answers, if any, are not waited for).
    public var notificationsSent = 0
    public var alertsGenerated: [String: Int] = [:]

    public init(startedAt: Instant) { self.startedAt = startedAt }

    mutating func recordRequest(_ latency: Span) {
        totalRequestsServed += 1
        totalRequestTime = Span(nanoseconds: totalRequestTime.nanoseconds.addingSaturating(latency.nanoseconds))
        _ = requestLatency.record(Self.micros(latency))
    }

    mutating func recordAcquireWait(_ wait: Span) {
        guard wait > .zero else {
            waitlessLeases &+= 1
            return
        }
        _ = recordedAcquireWait.record(Self.micros(wait))
        totalAcquireWait = Span(nanoseconds: totalAcquireWait.nanoseconds.addingSaturating(wait.nanoseconds))
    }

    /// Enters the leases that did not wait into `acquireWait` (before its statistics are copied
    /// out for reading).
    public mutating func foldWaitlessLeases() {
        guard waitlessLeases > 0 else { return }
        _ = recordedAcquireWait.record(Self.micros(.zero), count: waitlessLeases)
        waitlessLeases = 0
    }

    mutating func recordClose(_ reason: CloseReason) {
        connectionsClosed[reason, default: 0] += 1
    }

    public mutating func recordFailure(status: String) {
        failedRequests[status, default: 0] += 1
    }

    /// Clamped into the histogram's range so an absurd value can't make `record` fail.
    static func micros(_ span: Span) -> UInt64 {
        UInt64(min(max(span.nanoseconds / 1000, 1), 3_600_000_000))
    }

    public var averageRequestTime: Span {
        totalRequestsServed == 0 ? .zero : Span(nanoseconds: totalRequestTime.nanoseconds / Int64(totalRequestsServed))
    }

    public func uptime(now: Instant) -> Span { (closedAt ?? now) - startedAt }

    public enum Latency: Sendable { case request, acquireWait }

    /// A latency histogram with fixed upper bounds (Prometheus `le` buckets, in seconds, ascending):
    /// cumulative counts at each bound, the total count and the exact sum. A bound is exact to the
    /// HDR histogram's 3 significant digits (it counts whole HDR buckets).
    public func distribution(_ latency: Latency, boundsSeconds: [Double]) -> (cumulative: [UInt64], count: UInt64, sum: Span) {
        let (histogram, sum) = latency == .request ? (requestLatency, totalRequestTime) : (acquireWait, totalAcquireWait)
        // One walk over the HDR buckets, in disjoint ranges (a range starts past the previous
        // bound's HDR bucket, so none is counted twice), and none past the last value recorded:
        // a scrape costs microseconds, not a walk from zero per bound.
        let total = histogram.totalCount
        var cumulative: [UInt64] = []
        cumulative.reserveCapacity(boundsSeconds.count)
        var counted: UInt64 = 0, from: UInt64 = 0
        for bound in boundsSeconds {
            let upper = bound > 0 ? UInt64(min(bound * 1e6, 3_600_000_000)) : 0
            if counted < total && bound > 0 && upper >= from {
                counted += histogram.count(within: from...upper)
                from = histogram.nextNonEquivalentForValue(upper)
            }
            cumulative.append(counted)
        }
        return (cumulative, total, sum)
    }

    /// Adds another pool's figures (the totals of a client with several endpoints).
    public mutating func merge(_ other: PoolStatistics) {
        totalRequestsServed += other.totalRequestsServed
        totalRequestTime = Span(nanoseconds: totalRequestTime.nanoseconds.addingSaturating(other.totalRequestTime.nanoseconds))
        requestLatency.add(other.requestLatency)
        recordedAcquireWait.add(other.acquireWait)
        totalAcquireWait = Span(nanoseconds: totalAcquireWait.nanoseconds.addingSaturating(other.totalAcquireWait.nanoseconds))
        failedRequests.merge(other.failedRequests, uniquingKeysWith: +)
        rejectedBusy += other.rejectedBusy
        rejectedUnavailable += other.rejectedUnavailable
        maxWaitingSeen = max(maxWaitingSeen, other.maxWaitingSeen)
        connectionAttempts += other.connectionAttempts
        connectionsCreated += other.connectionsCreated
        connectionFailures += other.connectionFailures
        reconnectionAttempts += other.reconnectionAttempts
        connectionsRejected += other.connectionsRejected
        tlsSessionsResumed += other.tlsSessionsResumed
        lastConnectError = other.lastConnectError ?? lastConnectError
        connectionsClosed.merge(other.connectionsClosed, uniquingKeysWith: +)
        healthChecks += other.healthChecks
        healthCheckFailures += other.healthCheckFailures
        if let theirs = other.lastHealthCheck, lastHealthCheck.map({ $0 < theirs }) ?? true { lastHealthCheck = theirs }
        bytesSent &+= other.bytesSent
        bytesReceived &+= other.bytesReceived
        retries += other.retries
        notificationsSent += other.notificationsSent
        alertsGenerated.merge(other.alertsGenerated, uniquingKeysWith: +)
    }
}

public extension PoolStateMachine {
    /// The runner records what only it sees (statuses, bytes) through this.
    mutating func withStatistics<R>(_ body: (inout PoolStatistics) -> R) -> R { body(&statistics) }
}
