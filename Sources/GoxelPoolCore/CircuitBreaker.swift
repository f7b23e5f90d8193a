/// Fails calls fast while the daemon is known to be down, instead of letting them pile up on it.
///
/// Closed: calls pass; it opens when `consecutiveConnectFailures` connection attempts fail in a
/// row, or when at least `minimumCalls` of the last `windowSize` calls completed and the share of
/// failures among them reaches `failureRate`. Open: calls fail at once until `cooldown` has passed.
/// Half-open: one call is let through as a probe (a connection that opens counts as one too):
/// success closes the circuit, failure opens it for another cool-down.
public struct CircuitBreaker: Sendable {
    public struct Policy: Sendable, Equatable {
        public var enabled = true
        public var consecutiveConnectFailures = 5
        public var failureRate = 0.5
        public var windowSize = 20
        public var minimumCalls = 10
        public var cooldown = Span.milliseconds(5000)
        public init() {}
    }

    public enum State: String, Sendable, Equatable, CaseIterable {
        case closed, open
        case halfOpen = "half_open"
    }

    public let policy: Policy
    public private(set) var state = State.closed
    public private(set) var openUntil: Instant?
    private var probeInFlight = false
    /// The last `windowSize` call outcomes (true: success) in a ring, and how many failed:
    /// O(1) per call, on the hot path.
    private var outcomes: [Bool] = []
    private var next = 0
    private var failuresInWindow = 0
    public private(set) var timesOpened = 0

    public init(policy: Policy) { self.policy = policy }

    /// May a call go ahead now? Moves open → half-open once the cool-down is over.
    public mutating func allowCall(now: Instant) -> Bool {
        guard policy.enabled else { return true }
        switch state {
        case .closed:
            return true
        case .open:
            guard let until = openUntil, until <= now else { return false }
            state = .halfOpen
            probeInFlight = true
            return true
        case .halfOpen:
            if probeInFlight { return false }
            probeInFlight = true
            return true
        }
    }

    /// The probe never ran (the caller gave up before it got a connection): let another through.
    public mutating func probeAbandoned() {
        if state == .halfOpen { probeInFlight = false }
    }

    /// A call completed (`success`: the daemon answered, even with a JSON-RPC error). Returns the
    /// new state when it changed.
    public mutating func recordCall(success: Bool, now: Instant) -> State? {
        guard policy.enabled else { return nil }
        switch state {
        case .closed:
            if outcomes.count < policy.windowSize {
                outcomes.append(success)
            } else {
                if !outcomes[next] { failuresInWindow -= 1 }
                outcomes[next] = success
                next = (next + 1) % policy.windowSize
            }
            if !success { failuresInWindow += 1 }
            let failures = failuresInWindow
            if outcomes.count >= policy.minimumCalls && Double(failures) >= policy.failureRate * Double(outcomes.count) {
                return open(now: now)
            }
            return nil
        case .open:
            return nil
        case .halfOpen:
            return success ? close() : open(now: now)
        }
    }

    /// True when no run of successful calls can open it (closed, and the failures already in
    /// the window stay below the rate at every count from the next call on): the fast path
    /// records successes later, so it runs only while their order cannot matter.
    public var successesCannotOpen: Bool {
        guard policy.enabled else { return true }
        guard state == .closed else { return false }
        let count = outcomes.count
        // A full window only drops outcomes: its failure rate cannot rise with successes.
        if count >= policy.windowSize { return Double(failuresInWindow) < policy.failureRate * Double(count) }
        // Below minimumCalls nothing opens; from there on the rate falls with each success.
        let firstChecked = max(count + 1, policy.minimumCalls)
        if firstChecked > policy.windowSize { return true }
        return Double(failuresInWindow) < policy.failureRate * Double(firstChecked)
    }

    /// A connection attempt finished.
    public mutating func recordConnect(success: Bool, consecutiveFailures: Int, now: Instant) -> State? {
        guard policy.enabled else { return nil }
        if success { return state == .closed ? nil : close() }
        switch state {
        case .closed: return consecutiveFailures >= policy.consecutiveConnectFailures ? open(now: now) : nil
        case .halfOpen: return open(now: now)
        case .open: return nil
        }
    }

    private mutating func open(now: Instant) -> State {
        state = .open
        openUntil = now + policy.cooldown
        probeInFlight = false
        resetWindow()
        timesOpened += 1
        return .open
    }

    private mutating func resetWindow() {
        outcomes.removeAll(keepingCapacity: true)
        next = 0
        failuresInWindow = 0
    }

    private mutating func close() -> State {
        state = .closed
        openUntil = nil
        probeInFlight = false
        resetWindow()
        return .closed
    }
}
