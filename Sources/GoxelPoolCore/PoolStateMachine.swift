import DequeModule

public struct ConnectionID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let value: Int
    public init(_ value: Int) { self.value = value }
    public static func < (a: Self, b: Self) -> Bool { a.value < b.value }
    public var description: String { "#\(value)" }
}

public struct WaiterID: Hashable, Sendable {
    public let value: UInt64
    public init(_ value: UInt64) { self.value = value }
}

public enum CloseReason: String, Sendable, CaseIterable {
    case idle, lifetime, rotation, error, health, shutdown
}

/// Why a caller did not get a connection.
public enum PoolFailure: Sendable, Equatable {
    case closed         // the pool is shut down
    case busy           // the wait queue is full
    case timedOut       // the deadline passed while waiting
    case connectFailed  // the deadline passed and the daemon could not be reached meanwhile
    case unavailable    // the circuit breaker is open
    case removed        // the endpoint is being removed (its sessions move elsewhere)
    case rejected       // the daemon (or the TLS terminator in front of it) refused us: a configuration fault
}

/// The pool's overall health: ready (≥ 80 % of open connections healthy), degraded (≥ 50 %),
/// unhealthy (below, or no connection at all), closed.
public enum PoolState: String, Sendable, Equatable, CaseIterable {
    case ready, degraded, unhealthy, closed
}

public enum LoadBalancing: String, Sendable, Equatable, CaseIterable {
    case leastUsed = "least_used", roundRobin = "round_robin", random
}

/// What happened, for listeners. The runner turns these into JSON events and alerts.
public enum PoolEvent: Sendable, Equatable {
    case connectionAdded(ConnectionID)
    case connectionRemoved(ConnectionID, CloseReason)
    case connectionOpenFailed(consecutiveFailures: Int, retryIn: Span)
    /// A connection was refused for who we are or who the peer is (peer credentials, TLS
    /// verification, a client certificate the server refused): a configuration fault. Calls fail
    /// fast until an attempt made after `retryIn` succeeds.
    case connectionRejected(reason: String, consecutiveFailures: Int, retryIn: Span)
    case healthChanged(ConnectionID, from: HealthTier, to: HealthTier)
    case poolStateChanged(from: PoolState, to: PoolState)
    case circuitChanged(from: CircuitBreaker.State, to: CircuitBreaker.State)
    /// A call or check took `factor` times the recent average or more (and at least 10 ms more).
    case latencySpike(ConnectionID, latency: Span, average: Span)
    /// The pool's latency trend turned to degrading; when it will cross the next tier, if it does.
    case trendDegrading(slopeMsPerSecond: Double, prediction: HealthTier?, after: Span?)
    /// More than `queueSaturation` of max_waiters are waiting.
    case queueSaturated(waiting: Int, limit: Int)
}

/// A side effect the runner performs after releasing its lock.
public enum PoolAction: Sendable, Equatable {
    /// Hand the connection to a waiting caller (wake it).
    case lease(WaiterID, ConnectionID)
    /// Tell a waiting caller it will not get a connection.
    case failWaiter(WaiterID, PoolFailure)
    /// Open a new connection with this id, then report connectionOpened or connectionOpenFailed.
    case open(ConnectionID)
    /// Close the connection's socket (it is no longer in the pool).
    case close(ConnectionID, CloseReason)
    /// Ping this idle connection (it is reserved for the check), then report healthCheckFinished.
    case checkHealth(ConnectionID)
    /// A deadline was set that may be earlier than the one the maintenance thread sleeps until.
    case wakeMaintenance
    case event(PoolEvent)
}

/// The result of asking for a connection.
public enum LeaseDecision: Sendable, Equatable {
    case leased(ConnectionID)
    case queued
    case failed(PoolFailure)
}

/// How a leased connection came back.
public enum ReleaseOutcome: Sendable, Equatable {
    /// The daemon answered (a result or a JSON-RPC error): the connection is in step.
    case answered(latency: Span)
    /// The connection was not used (e.g. the caller's deadline passed as it was handed over).
    case unused
    /// A notification was written; nobody waits for its answer (no latency to record).
    case sent
    /// The connection can't be reused (I/O error, protocol error, timeout): it is closed.
    case broken(reason: String)
    /// The peer refused us on this connection (a TLS 1.3 server refuses a client certificate
    /// only at the first read): closed, and the pool treats it as a rejected open.
    case rejected(reason: String)
}

/// The connection pool as a pure state machine: events go in with the current instant, actions
/// come out. No locks, no I/O, no clock: the runner (GoxelPoolIO) owns those.
///
/// Rules (see README "Pool"): never more than `maxConnections` open or opening; `minConnections`
/// kept; growth toward max while callers wait; idle connections above min closed after
/// `idleTimeout`; FIFO waiters bounded by `maxWaiters`; rotation after `maxRequestsPerConnection`
/// or `maxLifetime` once the current request is done; failed opens retried with backoff; health
/// checks on idle connections only, never more than one per connection.
public struct PoolStateMachine {
    public struct Settings: Sendable, Equatable {
        public var minConnections = 2
        public var maxConnections = 10
        public var maxWaiters = 1024
        /// 0: idle connections are never closed.
        public var idleTimeout = Span.milliseconds(60_000)
        /// 0: unlimited.
        public var maxLifetime = Span.zero
        /// 0: unlimited.
        public var maxRequestsPerConnection = 0
        public var loadBalancing = LoadBalancing.leastUsed
        public var backoff = Backoff.Policy.grpcDefault
        /// 0: no health checks.
        public var healthInterval = Span.milliseconds(30_000)
        public var health = HealthTracker.Policy.seedDefault
        public var circuitBreaker = CircuitBreaker.Policy()
        /// latency_spike: a latency at least this many times the recent average.
        public var latencySpikeFactor = 3.0
        /// queue_saturated: waiters above this share of maxWaiters (re-armed below half of it).
        public var queueSaturation = 0.8
        /// Connections this pool may ever open; 0: unlimited. A managed daemon accepts only so
        /// many in its lifetime: past this the pool opens nothing more and callers wait (for a
        /// connection coming back, or for the daemon's replacement).
        public var maxConnectionAttempts = 0
        /// While callers wait, a released connection is kept for the caller that released it (its
        /// next call takes it back without parking) up to this many calls in a row and while
        /// `reuseWindow` has not passed since that caller got it; then the release hands it to the
        /// longest waiter. 0: every release while callers wait hands the connection over at once
        /// (strict FIFO, one park and wake per call beyond max).
        public var reuseWhileWaiting = 0
        /// The window bounds a waiter's extra wait in time. Only short calls are reused (where the
        /// park and wake is a large share of a call's cost): a call that took half the window or
        /// longer is handed over at once (there reuse would only stretch the waiters' tail).
        public var reuseWindow = Span(nanoseconds: 1_000_000)
        /// How long a kept connection waits for its caller; then the longest waiter gets it.
        public var reuseGrace = Span(nanoseconds: 200_000)
        public init() {}
    }

    /// `kept`: released while callers wait and held for its releaser's next call, until
    /// `keptUntil` (see `Settings.reuseWhileWaiting`). Counted as idle from outside.
    enum ConnectionState: Equatable { case opening, idle, leased, checking, kept }

    /// A class, not a struct: the hot path (lease, release) updates it in place, where a struct
    /// copied out of the dictionary and written back would copy its health samples each time.
    /// Only the state machine holds these, so it stays a value from the outside.
    final class Connection {
        let id: ConnectionID
        var state: ConnectionState
        var openedAt: Instant?
        var expiresAt: Instant?
        /// Opened or last released after a call: idle expiry and balancing ties count from here.
        var lastUsed: Instant
        var nextHealthCheck: Instant?
        var requestsServed = 0
        /// Requests in the current and the previous balancing window, for least_used.
        var windowRequests = 0
        var previousWindowRequests = 0
        var windowStart: Instant
        var health: HealthTracker
        /// Closed when it comes back: the pool shut down meanwhile.
        var retireOnReturn = false
        /// Calls in a row its releaser got it back while callers waited (bounded by reuseWhileWaiting).
        var reuseStreak = 0
        var keptUntil = Instant(nanoseconds: 0)
        /// When its current caller got it from the pool (not back from being kept): reuseWindow counts from here.
        var runStartedAt = Instant(nanoseconds: 0)
        /// False once it left `connections` (a `ConnectionHandle` may outlive that).
        var inPool = true

        init(id: ConnectionID, state: ConnectionState, lastUsed: Instant, windowStart: Instant, health: HealthTracker) {
            self.id = id; self.state = state; self.lastUsed = lastUsed; self.windowStart = windowStart; self.health = health
        }
    }

    /// A connection of this pool as the runner holds it to record its fast calls
    /// (`recordFastCall(_:at:latency:lease:)`) without looking it up by id at every call.
    public struct ConnectionHandle {
        fileprivate let connection: Connection
        public var id: ConnectionID { connection.id }
    }

    /// The handle of a connection in the pool (from `.open` until it is closed), or nil.
    public func connectionHandle(_ id: ConnectionID) -> ConnectionHandle? {
        connections[id].map(ConnectionHandle.init)
    }

    struct Waiter {
        let id: WaiterID
        let enqueuedAt: Instant
    }

    public let settings: Settings
    private(set) var connections: [ConnectionID: Connection] = [:]
    private var waiters = Deque<Waiter>()
    private var backoff: Backoff
    private var backoffUntil: Instant?
    private var nextConnectionNumber = 1
    private var roundRobinCursor = 0
    private var random: SplitMix64
    private var lostConnections = 0
    public private(set) var isClosed = false
    public private(set) var poolState: PoolState = .unhealthy
    public internal(set) var statistics: PoolStatistics
    public private(set) var poolHealth: HealthTracker
    public private(set) var breaker: CircuitBreaker
    private var lastPoolTrend = Trend.stable
    private var lastSpikeAt: Instant?
    private var queueSaturatedReported = false
    private var keptCount = 0
    /// No kept connection expires before this (it may be stale-early: then a scan corrects it).
    private var keptExpiryBound: Instant?
    /// Why the last connection attempt was refused (a configuration fault), until one succeeds.
    public private(set) var rejection: String?

    /// How long a balancing window lasts (least_used counts requests over the last one or two).
    static let balancingWindow = Span.milliseconds(1000)

    public init(settings: Settings, now: Instant, seed: UInt64 = 0x5EED) {
        self.settings = settings
        backoff = Backoff(policy: settings.backoff)
        random = SplitMix64(seed: seed)
        statistics = PoolStatistics(startedAt: now)
        poolHealth = HealthTracker(policy: settings.health)
        breaker = CircuitBreaker(policy: settings.circuitBreaker)
    }

    // MARK: - Queries

    public var waitingCount: Int { waiters.count }
    public var connectionCount: Int { connections.count }
    public func count(_ state: ConnectionStateQuery) -> Int {
        connections.values.reduce(0) { $0 + (state.matches($1.state) ? 1 : 0) }
    }
    public var consecutiveOpenFailures: Int { backoff.consecutiveFailures }
    public func health(of id: ConnectionID) -> HealthTracker? { connections[id]?.health }
    public var connectionIDs: [ConnectionID] { connections.keys.sorted() }
    public func requestsServed(by id: ConnectionID) -> Int? { connections[id]?.requestsServed }
    public func openedAt(_ id: ConnectionID) -> Instant? { connections[id]?.openedAt }
    public var healthyCount: Int {
        connections.values.reduce(0) { $0 + ($1.state != .opening && $1.health.tier == .healthy ? 1 : 0) }
    }

    /// The earliest instant at which `tick` has something to do (backoff end, idle or lifetime
    /// expiry, a health check due), or nil. Kept connections' expiry is `keptExpiry` (the runner
    /// may check those less often: every other call into the pool checks them too).
    public func nextDeadline() -> Instant? {
        var next = backoffUntil
        func consider(_ instant: Instant?) {
            guard let instant else { return }
            if let current = next, current <= instant { return }
            next = instant
        }
        let aboveMin = connections.count > settings.minConnections
        for connection in connections.values where connection.state == .idle {
            consider(connection.expiresAt)
            consider(connection.nextHealthCheck)
            if aboveMin && settings.idleTimeout > .zero { consider(connection.lastUsed + settings.idleTimeout) }
        }
        return next
    }

    /// The earliest instant a kept connection must go to a waiter (or become idle), or nil.
    public var keptExpiry: Instant? { keptCount > 0 ? keptExpiryBound : nil }

    // MARK: - Events

    /// Starts the pool: opens `minConnections`.
    public mutating func start(now: Instant) -> [PoolAction] {
        var actions: [PoolAction] = []
        fill(now: now, into: &actions)
        updatePoolState(into: &actions)
        return actions
    }

    /// A caller wants a connection. `.leased` hands one over at once; `.queued` means the caller
    /// waits for a `.lease` or `.failWaiter` action naming `waiter` (or its own deadline, then
    /// `waiterTimedOut`).
    ///
    /// `preferred`: the connection the calling thread released last (HikariCP's thread-local
    /// list). Taken first when it is idle and healthy: its socket and the daemon's thread for it
    /// are warm, where the balancing policy would hand a lone caller a different, cold connection
    /// each time. Never taken past a waiter (there is no idle connection while callers wait).
    public mutating func requestLease(_ waiter: WaiterID, now: Instant, preferred: ConnectionID? = nil) -> (LeaseDecision, [PoolAction]) {
        if isClosed { return (.failed(.closed), []) }
        var actions: [PoolAction] = []
        handOverKept(now: now, into: &actions)
        let breakerBefore = breaker.state
        guard breaker.allowCall(now: now) else {
            statistics.rejectedUnavailable += 1
            return (.failed(.unavailable), actions)
        }
        // The cool-down is over: this call is the half-open probe.
        if breaker.state != breakerBefore { actions.append(.event(.circuitChanged(from: breakerBefore, to: breaker.state))) }
        if keptCount > 0 {
            if let id = preferred, let connection = connections[id], connection.state == .kept {
                unkeepOne()
                connection.reuseStreak += 1
                connection.state = .leased
                statistics.recordAcquireWait(.zero)
                return (.leased(id), actions)
            }
        }
        if let id = idlePreferred(preferred) ?? pickIdle(now: now) {
            lease(id, now: now)
            statistics.recordAcquireWait(.zero)
            return (.leased(id), actions)
        }
        // A known configuration fault and no connection that could come back: fail fast rather
        // than wait for a deadline (the next attempt, after the backoff, may find it fixed).
        if rejectedAndBackingOff(now: now) {
            breaker.probeAbandoned()
            return (.failed(.rejected), actions)
        }
        guard waiters.count < settings.maxWaiters else {
            breaker.probeAbandoned()
            statistics.rejectedBusy += 1
            // Still grow toward max (with max_waiters 0 this is the only way the pool grows).
            let opening = connections.values.contains { $0.state == .opening }
            if !opening && connections.count < settings.maxConnections && backoffUntil == nil && openBudget > 0 {
                openConnections(1, now: now, into: &actions)
            }
            return (.failed(.busy), actions)
        }
        waiters.append(Waiter(id: waiter, enqueuedAt: now))
        statistics.maxWaitingSeen = max(statistics.maxWaitingSeen, waiters.count)
        let threshold = Int((settings.queueSaturation * Double(settings.maxWaiters)).rounded(.up))
        if !queueSaturatedReported && waiters.count >= max(1, threshold) {
            queueSaturatedReported = true
            actions.append(.event(.queueSaturated(waiting: waiters.count, limit: settings.maxWaiters)))
        }
        fill(now: now, into: &actions)
        return (.queued, actions)
    }

    /// A queued caller's deadline passed. If it is still queued it is removed and failed; if it
    /// was already handed a connection (the lease and the timeout raced), nothing happens here and
    /// the caller must release that connection as `.unused`.
    public mutating func waiterTimedOut(_ waiter: WaiterID, now: Instant) -> [PoolAction] {
        var actions: [PoolAction] = []
        handOverKept(now: now, into: &actions)
        guard let index = waiters.firstIndex(where: { $0.id == waiter }) else { return actions }
        waiters.remove(at: index)
        // Nothing open and opens failing: the daemon is unreachable, which says more than "timed out".
        let unreachable = backoff.consecutiveFailures > 0 && !connections.values.contains { $0.state != .opening }
        actions.append(.failWaiter(waiter, rejection != nil ? .rejected : unreachable ? .connectFailed : .timedOut))
        if rejection != nil {
            breaker.probeAbandoned()
        } else if unreachable {
            updateBreaker(into: &actions) { $0.recordCall(success: false, now: now) }
        } else {
            breaker.probeAbandoned()
        }
        rearmQueueSaturation()
        return actions
    }

    public mutating func connectionOpened(_ id: ConnectionID, now: Instant) -> [PoolAction] {
        var actions: [PoolAction] = []
        handOverKept(now: now, into: &actions)
        guard let connection = connections[id], connection.state == .opening else { return actions }
        backoff.succeeded()
        rejection = nil
        statistics.connectionsCreated += 1
        if isClosed {
            connection.inPool = false
            connections[id] = nil
            statistics.recordClose(.shutdown)
            actions.append(.close(id, .shutdown))
            return actions
        }
        connection.openedAt = now
        connection.lastUsed = now
        connection.windowStart = now
        if settings.maxLifetime > .zero {
            // Up to 10 % earlier, so connections opened together do not all expire together.
            let jitter = Double(settings.maxLifetime.nanoseconds) * 0.1 * random.nextUnit()
            connection.expiresAt = now + Span(nanoseconds: settings.maxLifetime.nanoseconds - Int64(jitter))
        }
        connection.nextHealthCheck = healthCheckDue(after: now)
        connection.state = .idle
        actions.append(.event(.connectionAdded(id)))
        updateBreaker(into: &actions) { $0.recordConnect(success: true, consecutiveFailures: 0, now: now) }
        makeAvailable(id, now: now, into: &actions)
        // Recovering from failures opened one at a time: grow to what is needed now.
        fill(now: now, into: &actions)
        updatePoolState(into: &actions)
        return actions
    }

    /// A connection attempt failed. `rejected`: the peer refused us (peer credentials, TLS
    /// verification or client certificate): a configuration fault, not a daemon that is down. It
    /// is backed off like any failure, but it does not count toward the circuit breaker (the
    /// daemon may be fine; an open circuit would hide the cause) and it fails every waiting
    /// caller at once with `.rejected` instead of letting them wait for their deadlines.
    public mutating func connectionOpenFailed(_ id: ConnectionID, now: Instant, reason: String,
                                              rejected: Bool = false) -> [PoolAction] {
        var actions: [PoolAction] = []
        handOverKept(now: now, into: &actions)
        guard let connection = connections[id], connection.state == .opening else { return actions }
        connection.inPool = false
        connections[id] = nil
        // Cancelled by shutdown: not a failure of the daemon.
        if isClosed { return actions }
        statistics.connectionFailures += 1
        statistics.lastConnectError = reason
        if rejected { return actions + reject(reason: reason, now: now) }
        // Opens that fail together (at start, min > 1) are one round: one backoff step.
        if let until = backoffUntil, until > now { return actions }
        let delay = backoff.failed(random: &random)
        backoffUntil = now + delay
        actions.append(.event(.connectionOpenFailed(consecutiveFailures: backoff.consecutiveFailures, retryIn: delay)))
        actions.append(.wakeMaintenance)
        let failures = backoff.consecutiveFailures
        updateBreaker(into: &actions) { $0.recordConnect(success: false, consecutiveFailures: failures, now: now) }
        updatePoolState(into: &actions)
        return actions
    }

    /// A leased connection comes back. The request that reached the rotation limit has succeeded;
    /// the connection is closed now, after it, and replaced if needed.
    public mutating func release(_ id: ConnectionID, now: Instant, outcome: ReleaseOutcome) -> [PoolAction] {
        var actions: [PoolAction] = []
        handOverKept(now: now, into: &actions)
        guard let connection = connections[id], connection.state == .leased else { return actions }
        var closeReason: CloseReason?
        switch outcome {
        case .answered(let latency):
            closeReason = recordAnswer(connection, latency: latency, now: now, into: &actions)
        case .unused:
            markUsed(connection, now: now)
            breaker.probeAbandoned()
        case .sent:
            markUsed(connection, now: now)
            connection.requestsServed += 1
            countInWindow(connection, now: now)
            statistics.notificationsSent += 1
            breaker.probeAbandoned()
        case .broken(let reason):
            markUsed(connection, now: now)
            poolHealth.record(success: false, latency: .zero, at: now, error: reason)
            updateBreaker(into: &actions) { $0.recordCall(success: false, now: now) }
            recordHealth(connection, success: false, latency: .zero, now: now, error: reason, into: &actions)
            closeReason = .error
        case .rejected(let reason):
            markUsed(connection, now: now)
            breaker.probeAbandoned()
            remove(connection.id, reason: .error, into: &actions)
            statistics.lastConnectError = reason
            actions += reject(reason: reason, now: now)
            updatePoolState(into: &actions)
            return actions
        }
        settle(connection, closeReason: closeReason, mayKeep: reusePays(after: outcome), now: now, into: &actions)
        return actions
    }

    /// Whether keeping a connection for its releaser pays after this call: not after a slow one.
    private func reusePays(after outcome: ReleaseOutcome) -> Bool {
        guard case .answered(let latency) = outcome else { return true }
        return Self.shortEnoughToKeep(latency, window: settings.reuseWindow)
    }

    /// The short-call rule of reuse while callers wait (the lock path and the fast path's terms):
    /// a call that took half the window or longer hands its connection over.
    static func shortEnoughToKeep(_ latency: Span, window: Span) -> Bool {
        latency.nanoseconds < window.nanoseconds / 2
    }

    /// The bookkeeping of an answered call (statistics, health, breaker, spike, balancing counts):
    /// the part of `release` that the fast path defers to `recordFastCall`. Returns `.health` when
    /// the connection became unhealthy.
    private mutating func recordAnswer(_ connection: Connection, latency: Span, now: Instant,
                                       into actions: inout [PoolAction]) -> CloseReason? {
        markUsed(connection, now: now)
        connection.requestsServed += 1
        countInWindow(connection, now: now)
        statistics.recordRequest(latency)
        detectSpike(connection.id, latency: latency, now: now, into: &actions)
        poolHealth.record(success: true, latency: latency, at: now)
        updateBreaker(into: &actions) { $0.recordCall(success: true, now: now) }
        let tier = recordHealth(connection, success: true, latency: latency, now: now, error: nil, into: &actions)
        return tier == .unhealthy ? .health : nil
    }

    /// A connection's tier changed: the pool's state may have too.
    private mutating func updatePoolStateIfHealthChanged(_ actions: inout [PoolAction]) {
        if actions.contains(where: { if case .event(.healthChanged) = $0 { true } else { false } }) {
            updatePoolState(into: &actions)
        }
    }

    /// Released after a call: idle expiry and the next health check count from here.
    private mutating func markUsed(_ connection: Connection, now: Instant) {
        connection.lastUsed = now
        connection.nextHealthCheck = healthCheckDue(after: now)
    }

    /// What happens to a connection after its calls are recorded: closed (health, error, shutdown,
    /// rotation, lifetime), kept for its caller while others wait (`mayKeep`), or idle and given
    /// to the longest waiter.
    /// `limitsDue`: false when the release happened earlier (a parked connection the pool takes
    /// back), when its rotation and lifetime were not due (the fast path's terms say so).
    private mutating func settle(_ connection: Connection, closeReason reason: CloseReason?, mayKeep: Bool,
                                 limitsDue: Bool = true, now: Instant, into actions: inout [PoolAction]) {
        var closeReason = reason
        if closeReason == nil {
            if isClosed || connection.retireOnReturn { closeReason = .shutdown }
            else if limitsDue, settings.maxRequestsPerConnection > 0 && connection.requestsServed >= settings.maxRequestsPerConnection {
                closeReason = .rotation
            } else if limitsDue, let expiry = connection.expiresAt, expiry <= now {
                closeReason = .lifetime
            }
        }
        if let closeReason {
            remove(connection.id, reason: closeReason, into: &actions)
            fill(now: now, into: &actions)
            updatePoolState(into: &actions)
            return
        }
        handOverKept(now: now, into: &actions)
        if mayKeep && settings.reuseWhileWaiting > 0 && !waiters.isEmpty && connection.reuseStreak < settings.reuseWhileWaiting
            && now - connection.runStartedAt < settings.reuseWindow && connection.health.tier == .healthy {
            keep(connection, until: now + settings.reuseGrace)
        } else {
            connection.reuseStreak = 0
            connection.state = .idle
            makeAvailable(connection.id, now: now, into: &actions)
        }
        updatePoolStateIfHealthChanged(&actions)
    }

    // MARK: - The fast path (see PoolClient: a thread's own connection without the pool's lock)

    /// What a leased connection's calls may do without the state machine: a thread that holds it
    /// records answered calls in a buffer (`recordFastCall` later, in order) and parks it for its
    /// next call, as long as `admits` says that release would have changed nothing but counters.
    /// While callers wait, it may also keep it for its next call (`admitsKeep`), as `settle`
    /// would: the holder counts the streak and the window here.
    public struct FastReleaseTerms: Sendable, Equatable {
        /// Answered calls this connection may still make before its rotation is due.
        public var callsLeft: Int
        /// Its lifetime ends here (nil: no limit).
        public var expiresAt: Instant?
        /// Answers slower than this go through `release`: they could change its health tier or be
        /// a latency spike.
        public var latencyBelow: Span
        /// Times its holder may still get it back kept (`Settings.reuseWhileWaiting` less its streak).
        public var keepsLeft: Int
        /// A release from here on hands it over (`reuseWindow` after its holder got it from the pool).
        public var keepWindowEnds: Instant
        let reuseWhileWaiting: Int
        let reuseWindow: Span
        /// How long it is kept for its holder (`Settings.reuseGrace`).
        public let reuseGrace: Span

        /// True when a `release(.answered(latency))` at `now` would only count: no tier change, no
        /// spike, no rotation or lifetime due. The breaker must be closed and nobody waiting
        /// (PoolClient's gate checks those).
        public func admits(latency: Span, now: Instant) -> Bool {
            callsLeft > 0 && latency < latencyBelow && (expiresAt.map { now < $0 } ?? true)
        }

        /// True when, with callers waiting (and no kept connection overdue), that release would
        /// keep the connection for its holder's next call and do nothing else.
        public func admitsKeep(latency: Span, now: Instant) -> Bool {
            keepsLeft > 0 && now < keepWindowEnds && PoolStateMachine.shortEnoughToKeep(latency, window: reuseWindow)
                && admits(latency: latency, now: now)
        }

        /// Its holder took it back kept: one more in its streak.
        public mutating func takenBackKept() { keepsLeft -= 1 }

        /// Its holder took it back as a new lease (parked with nobody waiting): a new streak.
        public mutating func takenBackFresh(now: Instant) {
            keepsLeft = reuseWhileWaiting
            keepWindowEnds = now + reuseWindow
        }
    }

    /// How the holder of a connection on the fast path got it, when not from the pool.
    public enum FastLease: Sendable, Equatable {
        /// It took back its parked connection as a new lease (the lock path: the connection went
        /// idle at its release, then `requestLease` preferred it).
        case fresh(at: Instant)
        /// It took back the connection kept for it while callers waited.
        case kept
    }

    /// The terms for a connection just leased, or nil when its releases must all go through
    /// `release` (not healthy, retiring, the pool closed, the breaker not closed).
    public func fastReleaseTerms(for id: ConnectionID) -> FastReleaseTerms? {
        guard let connection = connections[id], connection.state == .leased, !isClosed, !connection.retireOnReturn,
              connection.health.tier == .healthy, breaker.state == .closed else { return nil }
        // A healthy connection's answer within the healthy latency keeps it healthy; under 10 ms
        // it cannot be a spike (that takes 10 ms above the average).
        let latencyBelow = min(Span(nanoseconds: settings.health.healthyLatency.nanoseconds.addingSaturating(1)), Self.spikeMinimumExcess)
        let callsLeft = settings.maxRequestsPerConnection > 0
            ? settings.maxRequestsPerConnection - connection.requestsServed - 1 : Int.max
        return FastReleaseTerms(callsLeft: callsLeft, expiresAt: connection.expiresAt, latencyBelow: latencyBelow,
                                keepsLeft: max(0, settings.reuseWhileWaiting - connection.reuseStreak),
                                keepWindowEnds: connection.runStartedAt + settings.reuseWindow,
                                reuseWhileWaiting: settings.reuseWhileWaiting, reuseWindow: settings.reuseWindow,
                                reuseGrace: settings.reuseGrace)
    }

    /// A call made on the fast path, recorded now in the order it happened: exactly the
    /// bookkeeping of `release(.answered)` at `at`, and of the lease before it when its caller
    /// took the connection back without the pool (`lease`). The connection stays leased;
    /// `returnParked` or `adoptKept` gives it back. Through the connection's handle (no lookup by
    /// id at every call); nothing once it left the pool.
    public mutating func recordFastCall(_ handle: ConnectionHandle, at: Instant, latency: Span, lease: FastLease?) -> [PoolAction] {
        let connection = handle.connection
        guard connection.inPool, connection.state == .leased else { return [] }
        var actions: [PoolAction] = []
        if let lease { recordLease(connection, lease) }
        // The terms exclude a close for health; should it happen anyway, `returnParked` closes it.
        _ = recordAnswer(connection, latency: latency, now: at, into: &actions)
        updatePoolStateIfHealthChanged(&actions)
        return actions
    }

    /// A caller took a parked connection back without the pool and its release goes through
    /// `release` (not admitted to the fast path): count that lease, as `requestLease` would have.
    public mutating func recordLeaseWithoutPool(_ id: ConnectionID, _ lease: FastLease) {
        guard let connection = connections[id], connection.state == .leased else { return }
        recordLease(connection, lease)
    }

    /// What `requestLease` records for a lease that did not wait, and what the lease meant for
    /// the connection's reuse streak (see `settle`).
    private mutating func recordLease(_ connection: Connection, _ lease: FastLease) {
        statistics.recordAcquireWait(.zero)
        switch lease {
        case .fresh(let at):
            connection.reuseStreak = 0
            connection.runStartedAt = at
        case .kept:
            connection.reuseStreak += 1
        }
    }

    /// A connection kept on the fast path (its calls already recorded) becomes kept in the state
    /// machine: overdue, or with nobody waiting, the next event hands it over (`handOverKept`);
    /// within its grace, its caller asks for it through `requestLease`.
    public mutating func adoptKept(_ id: ConnectionID, until: Instant) {
        guard let connection = connections[id], connection.state == .leased else { return }
        keep(connection, until: until)
    }

    /// A connection parked on the fast path comes back to the pool, its calls already recorded.
    /// `byItsCaller`: its caller returns it (it may be kept for that caller while others wait,
    /// unless its last call, `lastLatency`, was slow); otherwise the pool took it back while
    /// nobody held it.
    public mutating func returnParked(_ id: ConnectionID, now: Instant, byItsCaller: Bool, lastLatency: Span = .zero) -> [PoolAction] {
        guard let connection = connections[id], connection.state == .leased else { return [] }
        var actions: [PoolAction] = []
        // Only its own calls change a leased connection's tier: unhealthy means one of them did.
        // Taken back by the pool: on the lock path it went idle at its last release, when its
        // rotation and lifetime were not due (an idle connection's lifetime is the tick's).
        settle(connection, closeReason: connection.health.tier == .unhealthy ? .health : nil,
               mayKeep: byItsCaller && reusePays(after: .answered(latency: lastLatency)),
               limitsDue: byItsCaller, now: now, into: &actions)
        return actions
    }

    /// The result of a `.checkHealth` action.
    public mutating func healthCheckFinished(_ id: ConnectionID, now: Instant, success: Bool, latency: Span,
                                             error: String?) -> [PoolAction] {
        var actions: [PoolAction] = []
        handOverKept(now: now, into: &actions)
        guard let connection = connections[id], connection.state == .checking else { return actions }
        statistics.healthChecks += 1
        statistics.lastHealthCheck = now
        if !success { statistics.healthCheckFailures += 1 }
        if success { detectSpike(id, latency: latency, now: now, into: &actions) }
        poolHealth.record(success: success, latency: latency, at: now, error: error)
        let tier = recordHealth(connection, success: success, latency: latency, now: now, error: error, into: &actions)
        // lastUsed is not touched: a ping is not use, or idle connections would never age out.
        connection.nextHealthCheck = healthCheckDue(after: now)
        if !success || tier == .unhealthy || isClosed || connection.retireOnReturn {
            // A failed check leaves the connection's state unknown (like a timed-out call): close it.
            remove(id, reason: isClosed ? .shutdown : (success ? .health : .error), into: &actions)
            fill(now: now, into: &actions)
        } else {
            connection.state = .idle
            makeAvailable(id, now: now, into: &actions)
        }
        updatePoolState(into: &actions)
        return actions
    }

    /// Timers: backoff ended, idle or lifetime expiry, health checks due.
    public mutating func tick(now: Instant) -> [PoolAction] {
        if isClosed { return [] }
        var actions: [PoolAction] = []
        if let until = backoffUntil, until <= now { backoffUntil = nil }
        handOverKept(now: now, into: &actions)
        for id in connections.keys.sorted() {
            guard let connection = connections[id], connection.state == .idle else { continue }
            if let expiry = connection.expiresAt, expiry <= now {
                remove(id, reason: .lifetime, into: &actions)
            } else if settings.idleTimeout > .zero, connections.count > settings.minConnections,
                      now - connection.lastUsed >= settings.idleTimeout {
                remove(id, reason: .idle, into: &actions)
            } else if let due = connection.nextHealthCheck, due <= now {
                connection.state = .checking
                connection.nextHealthCheck = nil
                actions.append(.checkHealth(id))
            }
        }
        fill(now: now, into: &actions)
        updatePoolState(into: &actions)
        detectTrend(now: now, into: &actions)
        rearmQueueSaturation()
        return actions
    }

    /// The maintenance thread woke for kept connections alone, before any deadline of `tick`:
    /// the overdue ones go to the waiters (what every event does first), and nothing else of the
    /// housekeeping runs (under contention it wakes for this every 2 ms).
    public mutating func handOverOverdueKept(now: Instant) -> [PoolAction] {
        if isClosed { return [] }
        var actions: [PoolAction] = []
        handOverKept(now: now, into: &actions)
        return actions
    }

    /// Shutdown: waiters fail, idle connections close, busy ones close when they come back,
    /// nothing new is opened.
    public mutating func close(now: Instant) -> [PoolAction] {
        guard !isClosed else { return [] }
        isClosed = true
        statistics.closedAt = now
        var actions: [PoolAction] = []
        while let waiter = waiters.popFirst() { actions.append(.failWaiter(waiter.id, .closed)) }
        for id in connections.keys.sorted() {
            guard let connection = connections[id] else { continue }
            switch connection.state {
            case .idle, .kept: remove(id, reason: .shutdown, into: &actions)
            case .opening, .leased, .checking:
                connection.retireOnReturn = true
            }
        }
        backoffUntil = nil
        updatePoolState(into: &actions)
        return actions
    }

    /// The endpoint is being removed: callers waiting for a connection give up now (they were
    /// never sent, so they may go elsewhere); calls in flight go on.
    public mutating func failWaiters() -> [PoolAction] {
        var actions: [PoolAction] = []
        while let waiter = waiters.popFirst() { actions.append(.failWaiter(waiter.id, .removed)) }
        rearmQueueSaturation()
        return actions
    }

    /// After a drain timeout the runner force-closes what is still out; the pool forgets them.
    public mutating func abandonAll() -> [ConnectionID] {
        let ids = connections.keys.sorted()
        for _ in ids { statistics.recordClose(.shutdown) }
        for connection in connections.values { connection.inPool = false }
        connections.removeAll()
        keptCount = 0
        keptExpiryBound = nil
        return ids
    }

    // MARK: - Rules

    /// A configuration fault: back off (no breaker), fail the waiters, say so once per attempt.
    private mutating func reject(reason: String, now: Instant) -> [PoolAction] {
        rejection = reason
        statistics.connectionsRejected += 1
        var actions: [PoolAction] = []
        // Only waiters nobody else can serve: an open connection may still come back to them.
        if !hasOpenConnection {
            while let waiter = waiters.popFirst() { actions.append(.failWaiter(waiter.id, .rejected)) }
        }
        if backoffUntil == nil || backoffUntil.map({ $0 <= now }) == true {
            let delay = backoff.failed(random: &random)
            backoffUntil = now + delay
            actions.append(.wakeMaintenance)
            actions.append(.event(.connectionRejected(reason: reason, consecutiveFailures: backoff.consecutiveFailures, retryIn: delay)))
        }
        updatePoolState(into: &actions)
        return actions
    }

    private var hasOpenConnection: Bool { connections.values.contains { $0.state != .opening } }

    /// Calls fail fast with `.rejected` while the last attempt was refused, no open connection
    /// exists, and the next attempt is not due yet (or is in flight: then they wait for it).
    private func rejectedAndBackingOff(now: Instant) -> Bool {
        guard rejection != nil, !hasOpenConnection else { return false }
        if let until = backoffUntil, until > now { return true }
        return false
    }

    private mutating func lease(_ id: ConnectionID, now: Instant) {
        // A read of the dictionary, then a write to the object: no copy-on-write of the dictionary.
        if let connection = connections[id] {
            connection.state = .leased
            connection.runStartedAt = now
        }
    }

    private mutating func keep(_ connection: Connection, until: Instant) {
        connection.state = .kept
        connection.keptUntil = until
        keptCount += 1
        if keptExpiryBound.map({ until < $0 }) ?? true { keptExpiryBound = until }
    }

    /// A connection leaves `kept` (its caller sets the new state): only the count changes.
    private mutating func unkeepOne() {
        keptCount -= 1
        if keptCount == 0 { keptExpiryBound = nil }
    }

    /// Kept connections whose caller did not come back within `reuseGrace` go to the longest
    /// waiter; with nobody waiting any more, every kept connection is simply idle. Runs first in
    /// every event (lease, release, open, health check, timeout, tick), so a caller that never
    /// comes back holds nothing for long, and so PoolClient's fast path, which hands over the
    /// connections it keeps before every event it passes on, makes the same decisions.
    private mutating func handOverKept(now: Instant, into actions: inout [PoolAction]) {
        guard keptCount > 0 else { return }
        let nobodyWaits = waiters.isEmpty
        if !nobodyWaits, let bound = keptExpiryBound, bound > now { return }
        var due: [ConnectionID] = []
        var bound: Instant?
        for connection in connections.values where connection.state == .kept {
            if nobodyWaits || connection.keptUntil <= now {
                due.append(connection.id)
            } else if bound.map({ connection.keptUntil < $0 }) ?? true {
                bound = connection.keptUntil
            }
        }
        keptExpiryBound = bound
        // In id order: which waiter gets which connection must not vary with the dictionary's order.
        for id in due.sorted() {
            guard let connection = connections[id] else { continue }
            unkeepOne()
            connection.reuseStreak = 0
            connection.state = .idle
            makeAvailable(id, now: now, into: &actions)
        }
    }

    /// A connection became usable: the longest-waiting caller gets it.
    private mutating func makeAvailable(_ id: ConnectionID, now: Instant, into actions: inout [PoolAction]) {
        guard let waiter = waiters.popFirst() else { return }
        lease(id, now: now)
        statistics.recordAcquireWait(now - waiter.enqueuedAt)
        actions.append(.lease(waiter.id, id))
    }

    private func idlePreferred(_ id: ConnectionID?) -> ConnectionID? {
        guard let id, let connection = connections[id], connection.state == .idle, connection.health.tier == .healthy else { return nil }
        return id
    }

    /// Among idle connections: healthy ones first, degraded only when no healthy one is idle,
    /// unhealthy never. Then by the balancing policy.
    private mutating func pickIdle(now: Instant) -> ConnectionID? {
        if settings.loadBalancing == .random { return pickIdleInIDOrder(now: now) }
        // Least used and round robin take the minimum of a key that the id makes unique, so the
        // dictionary's order cannot change the pick: the same choice as a walk in id order, without
        // sorting the ids and copying every connection on each acquire (the hot path, under the lock).
        let cursor = roundRobinCursor
        let leastUsed = settings.loadBalancing == .leastUsed
        var best: (id: ConnectionID, healthy: Bool, requests: Int, lastUsed: Instant)?
        for connection in connections.values where connection.state == .idle && connection.health.tier != .unhealthy {
            let healthy = connection.health.tier == .healthy
            let requests = leastUsed ? recentRequests(connection, now: now) : 0
            if let current = best {
                if current.healthy && !healthy { continue }
                if current.healthy == healthy {
                    let better: Bool
                    if leastUsed {
                        // Ties go to the most recently used, so the others stay idle long enough to age out.
                        better = requests < current.requests || (requests == current.requests
                            && (connection.lastUsed > current.lastUsed || (connection.lastUsed == current.lastUsed && connection.id < current.id)))
                    } else {
                        // The next id after the cursor, wrapping around.
                        let key = { (id: ConnectionID) in id.value > cursor ? id.value : id.value + Int.max / 2 }
                        better = key(connection.id) < key(current.id)
                    }
                    if !better { continue }
                }
            }
            best = (connection.id, healthy, requests, connection.lastUsed)
        }
        if let best { roundRobinCursor = best.id.value }
        return best?.id
    }

    /// The random policy's reservoir sampling depends on the order of the walk: id order, so that
    /// picks do not vary with the dictionary's per-process order.
    private mutating func pickIdleInIDOrder(now: Instant) -> ConnectionID? {
        var best: Connection?
        var bestIsHealthy = false
        var candidates = 0
        // In id order: the dictionary's order varies between processes, and picks must not.
        for id in connections.keys.sorted() {
            guard let connection = connections[id], connection.state == .idle, connection.health.tier != .unhealthy else { continue }
            let healthy = connection.health.tier == .healthy
            if bestIsHealthy && !healthy { continue }
            guard let current = best, bestIsHealthy == healthy else {
                best = connection; bestIsHealthy = healthy; candidates = 1; continue
            }
            candidates += 1
            switch settings.loadBalancing {
            case .leastUsed:
                let a = recentRequests(connection, now: now), b = recentRequests(current, now: now)
                // Ties go to the most recently used, so the others stay idle long enough to age out.
                if a < b || (a == b && connection.lastUsed > current.lastUsed) { best = connection }
            case .roundRobin:
                // The next id after the cursor, wrapping around.
                let cursor = roundRobinCursor
                let key = { (c: Connection) in c.id.value > cursor ? c.id.value : c.id.value + Int.max / 2 }
                if key(connection) < key(current) { best = connection }
            case .random:
                // Reservoir sampling: each candidate of the best tier kept with probability 1/n.
                if random.nextUnit() * Double(candidates) < 1 { best = connection }
            }
        }
        if let best { roundRobinCursor = best.id.value }
        return best?.id
    }

    private func recentRequests(_ connection: Connection, now: Instant) -> Int {
        let elapsed = now - connection.windowStart
        if elapsed >= Span(nanoseconds: 2 * Self.balancingWindow.nanoseconds) { return 0 }
        if elapsed >= Self.balancingWindow { return connection.windowRequests }
        return connection.windowRequests + connection.previousWindowRequests
    }

    private func countInWindow(_ connection: Connection, now: Instant) {
        let elapsed = now - connection.windowStart
        if elapsed >= Self.balancingWindow {
            connection.previousWindowRequests = elapsed >= Span(nanoseconds: 2 * Self.balancingWindow.nanoseconds) ? 0 : connection.windowRequests
            connection.windowRequests = 0
            connection.windowStart = now
        }
        connection.windowRequests += 1
    }

    /// Opens connections while fewer exist than needed: at least min, one per waiter, at most max.
    /// While backing off nothing is opened; after a failure only one open runs at a time.
    private mutating func fill(now: Instant, into actions: inout [PoolAction]) {
        guard !isClosed else { return }
        if let until = backoffUntil {
            if until > now { return }
            backoffUntil = nil
        }
        // Open (idle, leased, checking) connections plus one per waiter; connections still
        // opening are the supply for those waiters, not more demand.
        let opening = connections.values.reduce(0) { $0 + ($1.state == .opening ? 1 : 0) }
        let wanted = min(settings.maxConnections, max(settings.minConnections, connections.count - opening + waiters.count))
        var missing = min(wanted - connections.count, openBudget)
        if backoff.consecutiveFailures > 0 { missing = min(missing, 1 - opening) }
        guard missing > 0 else {
            if opening == 0 { lostConnections = 0 }
            return
        }
        openConnections(missing, now: now, into: &actions)
    }

    /// How many more connections may be opened (maxConnectionAttempts).
    public var openBudget: Int {
        settings.maxConnectionAttempts > 0 ? max(0, settings.maxConnectionAttempts - statistics.connectionAttempts) : .max
    }

    private mutating func openConnections(_ count: Int, now: Instant, into actions: inout [PoolAction]) {
        for _ in 0..<count {
            let id = ConnectionID(nextConnectionNumber)
            nextConnectionNumber += 1
            connections[id] = Connection(id: id, state: .opening, lastUsed: now, windowStart: now,
                                         health: HealthTracker(policy: settings.health))
            statistics.connectionAttempts += 1
            if backoff.consecutiveFailures > 0 || lostConnections > 0 {
                statistics.reconnectionAttempts += 1
                lostConnections = max(0, lostConnections - 1)
            }
            actions.append(.open(id))
        }
    }

    private mutating func remove(_ id: ConnectionID, reason: CloseReason, into actions: inout [PoolAction]) {
        guard let removed = connections.removeValue(forKey: id) else { return }
        removed.inPool = false
        if removed.state == .kept { unkeepOne() }
        if reason == .error || reason == .health { lostConnections += 1 }
        statistics.recordClose(reason)
        actions.append(.close(id, reason))
        actions.append(.event(.connectionRemoved(id, reason)))
    }

    @discardableResult
    private func recordHealth(_ connection: Connection, success: Bool, latency: Span, now: Instant,
                              error: String?, into actions: inout [PoolAction]) -> HealthTier? {
        let before = connection.health.tier
        guard let after = connection.health.record(success: success, latency: latency, at: now, error: error) else { return nil }
        actions.append(.event(.healthChanged(connection.id, from: before, to: after)))
        return after
    }

    private mutating func healthCheckDue(after now: Instant) -> Instant? {
        guard settings.healthInterval > .zero else { return nil }
        // Up to 10 % early, so many clients (and connections) do not ping in step.
        let jitter = Double(settings.healthInterval.nanoseconds) * 0.1 * random.nextUnit()
        return now + Span(nanoseconds: settings.healthInterval.nanoseconds - Int64(jitter))
    }

    /// Feeds the breaker; on a change posts the event and, when it opened, fails the waiters.
    private mutating func updateBreaker(into actions: inout [PoolAction],
                                        _ body: (inout CircuitBreaker) -> CircuitBreaker.State?) {
        let from = breaker.state
        guard let to = body(&breaker) else { return }
        actions.append(.event(.circuitChanged(from: from, to: to)))
        guard to == .open else { return }
        // Fail fast: nobody waits on a daemon known to be down.
        while let waiter = waiters.popFirst() { actions.append(.failWaiter(waiter.id, .unavailable)) }
    }

    /// A spike is at least this much above the recent average (and `latencySpikeFactor` times it).
    static let spikeMinimumExcess = Span.milliseconds(10)

    private mutating func detectSpike(_ id: ConnectionID, latency: Span, now: Instant, into actions: inout [PoolAction]) {
        guard poolHealth.samples.count >= 3, let average = poolHealth.averageLatency else { return }
        let far = Double(latency.nanoseconds) >= settings.latencySpikeFactor * Double(average.nanoseconds)
        guard far, latency.nanoseconds - average.nanoseconds >= Self.spikeMinimumExcess.nanoseconds else { return }
        // At most one a second: a slow daemon is one story, not thousands of alerts.
        if let last = lastSpikeAt, now - last < .milliseconds(1000) { return }
        lastSpikeAt = now
        actions.append(.event(.latencySpike(id, latency: latency, average: average)))
    }

    private mutating func detectTrend(now: Instant, into actions: inout [PoolAction]) {
        guard settings.health.trendAnalysis else { return }
        let trend = poolHealth.trend
        defer { lastPoolTrend = trend }
        guard trend == .degrading, lastPoolTrend != .degrading else { return }
        let prediction = poolHealth.predictedTimeToNextTier(now: now)
        actions.append(.event(.trendDegrading(slopeMsPerSecond: (poolHealth.slope ?? 0) / 1e6,
                                              prediction: prediction?.tier, after: prediction?.after)))
    }

    private mutating func rearmQueueSaturation() {
        if queueSaturatedReported && Double(waiters.count) < 0.5 * settings.queueSaturation * Double(settings.maxWaiters) {
            queueSaturatedReported = false
        }
    }

    private mutating func updatePoolState(into actions: inout [PoolAction]) {
        let next: PoolState
        if isClosed {
            next = .closed
        } else {
            let open = connections.values.filter { $0.state != .opening }
            let healthy = open.reduce(0) { $0 + ($1.health.tier == .healthy ? 1 : 0) }
            if open.isEmpty { next = .unhealthy }
            else if healthy * 10 >= open.count * 8 { next = .ready }
            else if healthy * 2 >= open.count { next = .degraded }
            else { next = .unhealthy }
        }
        guard next != poolState else { return }
        let previous = poolState
        poolState = next
        actions.append(.event(.poolStateChanged(from: previous, to: next)))
    }
}

/// Connection states as seen from outside (for counting).
public enum ConnectionStateQuery: Sendable {
    case opening, idle, busy, checking
    func matches(_ state: PoolStateMachine.ConnectionState) -> Bool {
        switch (self, state) {
        case (.opening, .opening), (.idle, .idle), (.idle, .kept), (.busy, .leased), (.checking, .checking): return true
        default: return false
        }
    }
}
