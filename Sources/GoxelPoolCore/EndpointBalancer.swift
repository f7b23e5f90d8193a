import RealModule

/// Spreads calls over several daemons (endpoints), as Finagle and Envoy do for services:
/// power-of-two-choices by outstanding requests weighted by a peak-EWMA latency, so a slow daemon
/// gets less traffic at once; outlier ejection with a growing, jittered ejection time (never the
/// last available endpoint); panic mode (use every endpoint) when fewer than half are available.
/// Pure: the runner passes the instant and owns the lock.
public struct EndpointBalancer {
    public struct Policy: Sendable, Equatable {
        /// Ejected after this many failed calls in a row.
        public var consecutiveFailures = 5
        /// ... or when the success rate over the last `window` calls (at least `minimumCalls`) falls below this.
        public var successRate = 0.5
        public var window = 20
        public var minimumCalls = 10
        public var baseEjection = Span.milliseconds(1000)
        public var maxEjection = Span.milliseconds(30_000)
        /// Time constant of the latency EWMA.
        public var decay = Span.milliseconds(10_000)
        /// Below this share of available endpoints, every endpoint is used (panic mode).
        public var panicThreshold = 0.5
        public init() {}
    }

    public struct Member: Sendable {
        public let id: Int
        public fileprivate(set) var outstanding = 0
        /// Peak-EWMA latency in nanoseconds.
        public fileprivate(set) var peakEWMA = 0.0
        fileprivate var ewmaUpdatedAt: Instant
        public fileprivate(set) var consecutiveFailures = 0
        fileprivate var outcomes: [Bool] = []
        public fileprivate(set) var ejectedUntil: Instant?
        public fileprivate(set) var ejections = 0
        public fileprivate(set) var calls = 0
        public fileprivate(set) var failures = 0
        /// Being removed: no new calls, in-flight ones drain.
        public fileprivate(set) var draining = false

        public var successRate: Double {
            outcomes.isEmpty ? 1 : Double(outcomes.reduce(0) { $0 + ($1 ? 1 : 0) }) / Double(outcomes.count)
        }
    }

    public enum Change: Sendable, Equatable {
        case ejected(id: Int, for: Span)
        case readmitted(id: Int)
        case panic(Bool)
    }

    public let policy: Policy
    public private(set) var members: [Member] = []
    public private(set) var inPanic = false
    private var random: SplitMix64

    public init(policy: Policy, seed: UInt64 = 0xB41A) {
        self.policy = policy
        random = SplitMix64(seed: seed)
    }

    public mutating func add(id: Int, now: Instant) {
        guard !members.contains(where: { $0.id == id }) else { return }
        members.append(Member(id: id, ewmaUpdatedAt: now))
    }

    /// Stops routing to `id`; it leaves when `finished` has been called for all it had in flight.
    public mutating func drain(id: Int) {
        guard let index = members.firstIndex(where: { $0.id == id }) else { return }
        members[index].draining = true
    }

    public mutating func forget(id: Int) { members.removeAll { $0.id == id } }

    public func member(_ id: Int) -> Member? { members.first { $0.id == id } }

    /// Picks the endpoint for a call (not one of `excluding`, e.g. those that just failed it) and
    /// counts the call as outstanding there.
    public mutating func pick(now: Instant, excluding: [Int] = []) -> (id: Int, changes: [Change])? {
        var changes = readmit(now: now)
        // Counted without building arrays: this runs on every call.
        var live = 0, available = 0, usable = 0, usableAvailable = 0
        for member in members where !member.draining {
            live += 1
            if member.ejectedUntil == nil { available += 1 }
            if !excluding.contains(member.id) {
                usable += 1
                if member.ejectedUntil == nil { usableAvailable += 1 }
            }
        }
        let panic = live > 0 && Double(available) < policy.panicThreshold * Double(live)
        if panic != inPanic {
            inPanic = panic
            changes.append(.panic(panic))
        }
        let useEjected = panic || usableAvailable == 0
        let count = useEjected ? usable : usableAvailable
        guard count > 0 else { return nil }
        func candidate(_ n: Int) -> Int {
            var seen = 0
            for index in members.indices where !members[index].draining && !excluding.contains(members[index].id)
                && (useEjected || members[index].ejectedUntil == nil) {
                if seen == n { return index }
                seen += 1
            }
            return 0
        }
        var chosen = candidate(0)
        if count > 1 {
            let a = Int(random.next() % UInt64(count))
            var b = Int(random.next() % UInt64(count - 1))
            if b >= a { b += 1 }
            let first = candidate(a), second = candidate(b)
            chosen = cost(first, now: now) <= cost(second, now: now) ? first : second
        }
        members[chosen].outstanding += 1
        return (members[chosen].id, changes)
    }

    /// Finagle's cost: the decayed peak-EWMA latency times (outstanding + 1). An endpoint with no
    /// latency yet counts as 1 µs, so new ones are tried.
    func cost(_ index: Int, now: Instant) -> Double {
        let member = members[index]
        return max(decayed(member, now: now), 1000) * Double(member.outstanding + 1)
    }

    private func decayed(_ member: Member, now: Instant) -> Double {
        let elapsed = Double((now - member.ewmaUpdatedAt).nanoseconds)
        guard elapsed > 0 else { return member.peakEWMA }
        return member.peakEWMA * Double.exp(-elapsed / Double(policy.decay.nanoseconds))
    }

    /// A call routed to `id` finished. `success` is whether the daemon answered (an RPC error
    /// counts as an answer). `configurationFault`: the endpoint refused us (TLS verification,
    /// client certificate, peer credentials): it cannot serve any call until its configuration
    /// changes, so it is ejected at once (still never the last available one) instead of after
    /// `consecutiveFailures`.
    public mutating func finished(id: Int, success: Bool, latency: Span, now: Instant,
                                  configurationFault: Bool = false) -> [Change] {
        guard let index = members.firstIndex(where: { $0.id == id }) else { return [] }
        members[index].outstanding = max(0, members[index].outstanding - 1)
        members[index].calls += 1
        if success {
            let sample = Double(latency.nanoseconds)
            let current = decayed(members[index], now: now)
            // Peak: a slower sample is taken at once; faster ones are averaged in.
            let elapsed = Double((now - members[index].ewmaUpdatedAt).nanoseconds)
            let weight = Double.exp(-max(elapsed, 0) / Double(policy.decay.nanoseconds))
            members[index].peakEWMA = sample > current ? sample : current * weight + sample * (1 - weight)
            members[index].ewmaUpdatedAt = now
            members[index].consecutiveFailures = 0
        } else {
            members[index].failures += 1
            members[index].consecutiveFailures += 1
        }
        members[index].outcomes.append(success)
        if members[index].outcomes.count > policy.window { members[index].outcomes.removeFirst() }
        guard !success, members[index].ejectedUntil == nil else { return [] }
        let member = members[index]
        let outlier = configurationFault || member.consecutiveFailures >= policy.consecutiveFailures
            || (member.outcomes.count >= policy.minimumCalls && member.successRate < policy.successRate)
        guard outlier else { return [] }
        // Never eject the last endpoint still taking calls.
        let othersAvailable = members.contains { $0.id != id && !$0.draining && $0.ejectedUntil == nil }
        guard othersAvailable else { return [] }
        let base = Double(policy.baseEjection.nanoseconds) * Double(1 << min(member.ejections, 20))
        let capped = min(base, Double(policy.maxEjection.nanoseconds))
        let duration = Span(nanoseconds: Int64(capped * (0.8 + 0.4 * random.nextUnit())))
        members[index].ejectedUntil = now + duration
        members[index].ejections += 1
        members[index].consecutiveFailures = 0
        members[index].outcomes.removeAll()
        return [.ejected(id: id, for: duration)]
    }

    /// Ejections that are over.
    public mutating func readmit(now: Instant) -> [Change] {
        var changes: [Change] = []
        for index in members.indices {
            if let until = members[index].ejectedUntil, until <= now {
                members[index].ejectedUntil = nil
                changes.append(.readmitted(id: members[index].id))
            }
        }
        return changes
    }
}
