import DequeModule

/// Health tiers of the seed: healthy (latency ≤ healthy threshold), degraded (≤ degraded
/// threshold), unhealthy (slower, or failed).
public enum HealthTier: String, Sendable, Equatable, CaseIterable {
    case healthy, degraded, unhealthy
}

public enum Trend: String, Sendable, Equatable {
    case improving, stable, degrading
}

/// The health of one connection (or of the pool as a whole), fed by health checks and by real
/// calls alike. Pure: the caller passes the instant of each observation.
public struct HealthTracker: Sendable {
    public struct Policy: Sendable, Equatable {
        public var healthyLatency: Span
        public var degradedLatency: Span
        public var failureThreshold: Int
        public var successThreshold: Int
        public var trendAnalysis: Bool
        public var sampleSize: Int
        public init(healthyLatency: Span, degradedLatency: Span, failureThreshold: Int,
                    successThreshold: Int, trendAnalysis: Bool, sampleSize: Int) {
            self.healthyLatency = healthyLatency; self.degradedLatency = degradedLatency
            self.failureThreshold = max(1, failureThreshold); self.successThreshold = max(1, successThreshold)
            self.trendAnalysis = trendAnalysis; self.sampleSize = max(2, sampleSize)
        }
        public static let seedDefault = Policy(healthyLatency: .milliseconds(1000), degradedLatency: .milliseconds(3000),
                                               failureThreshold: 3, successThreshold: 2, trendAnalysis: true, sampleSize: 10)
    }

    public struct Sample: Sendable, Equatable {
        public var at: Instant
        public var latency: Span
    }

    public let policy: Policy
    public private(set) var tier: HealthTier = .healthy
    public private(set) var consecutiveFailures = 0
    public private(set) var consecutiveSuccesses = 0
    /// Consecutive answers within the healthy latency: what it takes to be healthy again.
    public private(set) var consecutiveHealthy = 0
    public private(set) var totalObservations = 0
    public private(set) var totalFailures = 0
    public private(set) var lastError: String?
    /// The last `sampleSize` successful latencies, oldest first. A ring with the sum of its
    /// latencies: every answered call is recorded in two trackers (its connection's and the
    /// pool's), so a record neither shifts an array nor sums it for `averageLatency`.
    public private(set) var samples = Deque<Sample>()
    /// Wrapping: exact while the kept latencies add up to less than 292 years.
    private var latencySum: Int64 = 0
    public private(set) var lastObservation: Instant?

    public init(policy: Policy) { self.policy = policy }

    func classify(_ latency: Span) -> HealthTier {
        if latency <= policy.healthyLatency { return .healthy }
        if latency <= policy.degradedLatency { return .degraded }
        return .unhealthy
    }

    /// Records one observation. Returns the new tier when it changed.
    @discardableResult
    public mutating func record(success: Bool, latency: Span, at now: Instant, error: String? = nil) -> HealthTier? {
        totalObservations += 1
        lastObservation = now
        let observed: HealthTier = success ? classify(latency) : .unhealthy
        if success {
            samples.append(Sample(at: now, latency: latency))
            latencySum &+= latency.nanoseconds
            while samples.count > policy.sampleSize { latencySum &-= samples.removeFirst().latency.nanoseconds }
        } else {
            totalFailures += 1
            lastError = error
        }
        if observed == .unhealthy {
            consecutiveFailures += 1
            consecutiveSuccesses = 0
        } else {
            consecutiveSuccesses += 1
            consecutiveFailures = 0
        }
        consecutiveHealthy = observed == .healthy ? consecutiveHealthy + 1 : 0
        let previous = tier
        switch observed {
        case .unhealthy:
            // Hysteresis: one slow or failed answer is not enough to condemn a connection.
            if consecutiveFailures >= policy.failureThreshold { tier = .unhealthy }
            else if tier == .healthy { tier = .degraded }
        case .degraded:
            if tier == .healthy { tier = .degraded }
            else if tier == .unhealthy && consecutiveSuccesses >= policy.successThreshold { tier = .degraded }
        case .healthy:
            if tier != .healthy && consecutiveHealthy >= policy.successThreshold { tier = .healthy }
        }
        return tier == previous ? nil : tier
    }

    public var successRate: Double {
        totalObservations == 0 ? 1 : Double(totalObservations - totalFailures) / Double(totalObservations)
    }

    public var averageLatency: Span? {
        guard !samples.isEmpty else { return nil }
        return Span(nanoseconds: latencySum / Int64(samples.count))
    }

    /// The least-squares line through the samples: latency (ns) against time (s since the first).
    private struct Fit { let first: Instant; let meanX: Double; let meanY: Double; let slope: Double }

    private var fit: Fit? {
        guard policy.trendAnalysis, samples.count >= 3, let first = samples.first else { return nil }
        let xs = samples.map { Double(($0.at - first.at).nanoseconds) / 1e9 }
        let ys = samples.map { Double($0.latency.nanoseconds) }
        let n = Double(samples.count)
        let mx = xs.reduce(0, +) / n, my = ys.reduce(0, +) / n
        var sxy = 0.0, sxx = 0.0
        for (x, y) in zip(xs, ys) { sxy += (x - mx) * (y - my); sxx += (x - mx) * (x - mx) }
        guard sxx > 0 else { return nil }
        return Fit(first: first.at, meanX: mx, meanY: my, slope: sxy / sxx)
    }

    /// Least-squares slope of latency over time, in nanoseconds of latency per second of time.
    public var slope: Double? { fit?.slope }

    /// Improving / stable / degrading: the fitted change over the sample window compared with the
    /// average latency (±10 %, and at least 1 ms, so microsecond noise reads as stable).
    public var trend: Trend {
        guard let slope, let first = samples.first, let last = samples.last, let avg = averageLatency else { return .stable }
        let window = Double((last.at - first.at).nanoseconds) / 1e9
        let change = slope * window
        let significant = max(0.1 * Double(avg.nanoseconds), 1_000_000)
        if change > significant { return .degrading }
        if change < -significant { return .improving }
        return .stable
    }

    /// When degrading: how long until the fitted latency crosses the next threshold at the
    /// current slope (the seed's "predictive insight"). nil when not degrading.
    public func predictedTimeToNextTier(now: Instant) -> (tier: HealthTier, after: Span)? {
        guard trend == .degrading, let fit, fit.slope > 0 else { return nil }
        let slope = fit.slope
        let nowX = Double((now - fit.first).nanoseconds) / 1e9
        let fittedNow = fit.meanY + slope * (nowX - fit.meanX)
        let target: (HealthTier, Double)
        if fittedNow < Double(policy.healthyLatency.nanoseconds) { target = (.degraded, Double(policy.healthyLatency.nanoseconds)) }
        else if fittedNow < Double(policy.degradedLatency.nanoseconds) { target = (.unhealthy, Double(policy.degradedLatency.nanoseconds)) }
        else { return nil }
        let seconds = (target.1 - fittedNow) / slope
        guard seconds.isFinite, seconds >= 0, seconds < 1e9 else { return nil }
        return (target.0, Span(nanoseconds: Int64(seconds * 1e9)))
    }
}
