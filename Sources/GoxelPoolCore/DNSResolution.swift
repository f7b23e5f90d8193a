/// The resolution state of one DNS name (`dns:name:port`): its last good set of addresses, when
/// to look it up again, and what each lookup changes. Pure: the resolver thread (GoxelPoolIO)
/// runs `getaddrinfo` and passes the instant.
///
/// Rules (gRPC's `dns:` resolver and Envoy's STRICT_DNS clusters): look up every `refresh`
/// (0: never on a timer), and at once when every address of the name has failed, but never
/// twice within `minimumInterval`; a failed or empty lookup keeps the last good set (and says
/// so once per failure streak), and is retried with a backoff (1 s doubling, at most the refresh
/// interval or 30 s) rather than waiting for the next refresh.
public struct DNSResolution: Sendable {
    public let name: DNSName
    public let refresh: Span
    /// The shortest time between two lookups asked for by failures.
    public static let minimumInterval = Span.milliseconds(1000)

    /// The last good set of numeric addresses, sorted.
    public private(set) var addresses: [String] = []
    /// A lookup has returned addresses at least once.
    public private(set) var hasResolved = false
    public private(set) var lookups = 0
    public private(set) var lookupFailures = 0
    public private(set) var lastLookup: Instant?
    public private(set) var lastSuccess: Instant?
    /// Why the last lookup failed; nil once one succeeds.
    public private(set) var lastError: String?
    /// When the next lookup is due; nil while one is running (or never, with refresh 0 and no failure).
    public private(set) var due: Instant?
    public private(set) var inFlight = false
    private var retry: Backoff
    private var random: SplitMix64

    /// What a finished lookup changed.
    public struct Update: Sendable, Equatable {
        public var added: [String] = []
        public var removed: [String] = []
        /// The lookup failed or was empty; the last good set (`kept` addresses) stays. Set on
        /// the first failure of a streak only, so one outage is one alert.
        public var failure: String?
        public var kept = 0
        /// The first success after a failure streak.
        public var recovered = false
        public init() {}
    }

    /// The first lookup is due at once.
    public init(name: DNSName, refresh: Span, now: Instant, seed: UInt64 = 0xD45) {
        self.name = name
        self.refresh = refresh
        due = now
        let cap = refresh > .zero ? min(refresh, .milliseconds(30_000)) : .milliseconds(30_000)
        retry = Backoff(policy: Backoff.Policy(initial: min(.milliseconds(1000), cap), multiplier: 2, jitter: 0.1, maximum: cap))
        random = SplitMix64(seed: seed)
    }

    public func isDue(now: Instant) -> Bool { !inFlight && due.map { $0 <= now } == true }

    /// The resolver starts a lookup.
    public mutating func lookupStarted(now: Instant) {
        inFlight = true
        due = nil
        lastLookup = now
        lookups += 1
    }

    /// A lookup returned `found` (numeric addresses, in any order, duplicates allowed).
    public mutating func lookupSucceeded(_ found: [String], now: Instant) -> Update {
        let fresh = Array(Set(found)).sorted()
        guard !fresh.isEmpty else { return lookupFailed("the name resolved to no address", now: now) }
        inFlight = false
        var update = Update()
        update.recovered = lastError != nil
        update.added = fresh.filter { !addresses.contains($0) }
        update.removed = addresses.filter { !fresh.contains($0) }
        addresses = fresh
        hasResolved = true
        lastSuccess = now
        lastError = nil
        retry.succeeded()
        due = refresh > .zero ? now + refresh : nil
        return update
    }

    /// A lookup failed: the last good set stays; retried after a backoff.
    public mutating func lookupFailed(_ error: String, now: Instant) -> Update {
        inFlight = false
        lookupFailures += 1
        var update = Update()
        if lastError == nil { update.failure = error }
        update.kept = addresses.count
        lastError = error
        let delay = retry.failed(random: &random)
        due = now + delay
        return update
    }

    /// Every address of the name has failed (or none is known yet): look up again at once, or
    /// as soon as `minimumInterval` since the last lookup has passed. Returns whether the due
    /// time moved earlier (the resolver should wake up).
    public mutating func everyAddressFailed(now: Instant) -> Bool {
        guard !inFlight else { return false }
        let earliest = lastLookup.map { max(now, $0 + Self.minimumInterval) } ?? now
        if let current = due, current <= earliest { return false }
        due = earliest
        return true
    }
}
