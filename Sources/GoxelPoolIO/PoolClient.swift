import CJansson
import CLinux
import Glibc
import GoxelPoolCore
import Synchronization

/// The outcome of one call. Result and error values are new references owned by the receiver.
public enum CallOutcome {
    case result(OpaquePointer)
    case rpcError(OpaquePointer)
    case notified
    case failure(CallFailure)
}

/// What a session asks of the connection its call runs on: learn which daemon process it reaches
/// (`status` pid, once per connection), and optionally refuse to send if it is not `expect`.
public enum DaemonCheck: Sendable, Equatable {
    case learn
    case expect(Int64)
}

/// The outcome of a call made with a DaemonCheck.
public enum PinnedOutcome {
    /// The call ran (or failed) on the daemon with this pid (nil: unknown).
    case done(CallOutcome, pid: Int64?)
    /// The connection reaches another daemon process than expected: nothing was sent.
    case daemonChanged(pid: Int64)
}

/// The client: runs the pool state machine. Every decision is the state machine's; this class
/// takes the lock, asks it, releases the lock and then performs the actions (wake a waiter, open
/// or close a socket, ping, post an event). Caller threads do their own I/O on the connection
/// they lease, so a call costs one lock round trip plus the exchange itself.
public final class PoolClient: @unchecked Sendable {
    public let configuration: ClientConfiguration
    /// The daemon this pool connects to.
    public let endpoint: Endpoint
    /// Added to every event when several pools share one event stream (`endpoints`).
    private let eventLabel: String?
    /// False when the event thread belongs to a client of several pools.
    private let ownsEvents: Bool
    private let lock = PthreadMutex()
    private var machine: PoolStateMachine
    private var connections: [ConnectionID: DaemonConnection] = [:]
    private var waiters: [WaiterID: WaiterBox] = [:]
    private var nextWaiter: UInt64 = 1
    private var closing = false
    private let drained = Condition()
    /// A close in progress waits until this instant for calls in flight; a later close with an
    /// earlier deadline shortens it (a client closing while one of its endpoints drains).
    private var drainDeadline: Instant?
    private var closed = false
    private let closeFinished = Condition()
    /// Told the pool's lifetime count of connection attempts after each open it schedules (a
    /// managed daemon counts the connections it was given).
    private let attemptObserver: ((Int) -> Void)?

    private let maintenanceWakeup = Condition()
    /// Where the maintenance thread sleeps until (nanoseconds; 0: awake or already woken),
    /// written under the lock, read without it by a caller that keeps a connection in its lane.
    /// A kept connection whose expiry it would sleep past wakes it; otherwise releases do not.
    private let maintenanceNap = Atomic<Int64>(0)
    /// When the maintenance thread last saw a kept connection, or was woken for one.
    private var keptSeen: Instant?
    /// Times the maintenance thread woke (under the lock; tests read maintenanceWakeupCount).
    private var maintenanceWakeups = 0
    private var maintenanceThread: LibraryThread?
    private var maintenanceStop = false
    /// Opens and health checks (async calls run on MultiPoolClient's workers, so one waiting
    /// for a connection can never block the open that would serve it).
    private let jobs: WorkerGroup
    public let events: EventDispatcher
    private var reconnectStormReported = false
    /// The pool has been ready once: before that, reaching ready is starting, not recovering.
    private var wasReady = false
    /// The last connection attempt failed the peer-credential check: callers get EPEER, not ECONNECT.
    private var lastOpenRejectedPeer = false
    /// New connections learn the daemon's pid (their first call is `status`): set while a durable
    /// session lives on this endpoint, so a restarted daemon is noticed as soon as it is reached.
    private let identifying = Atomic<Bool>(false)
    /// This pool's key in each thread's ThreadAffinity slots.
    private let affinitySerial = ThreadAffinity.newPoolSerial()
    /// Told (on a library thread, no lock held) each pid a new connection learned.
    private let onDaemonIdentified: (@Sendable (Int64) -> Void)?
    /// The client's TLS context, for a `tls:` endpoint.
    private let tls: TLSContext?
    /// The fast path: one lane per connection the pool may hold (fixed, so a thread reads its
    /// lane without the lock), and the lanes no connection uses (under the lock).
    private let lanes: [FastLane]
    private var freeLanes: [Int]
    /// `gate.count`: zero when calls may take and release connections without the lock. Each
    /// queued waiter adds one (so a waiter never sleeps beside a parked connection, and nobody
    /// takes one past it); `fastGateShut` adds while the pool is closing or its circuit is not
    /// closed. Changed only under the lock. Callers that get a connection at once leave it alone:
    /// a caller preempted in the lock would otherwise shut every other thread's fast path.
    /// `gate.dirty`: set after a connection is parked, cleared by the collector that then looks
    /// at the lanes: while callers wait (the gate shut, nothing parked), operations under the
    /// lock skip the lanes altogether. Written only when it changes, so callers on the fast path
    /// only read it.
    private let gate = FastGate()
    /// Connections are kept in lanes (reuse while waiting without the lock) in pools of up to 64
    /// (`FastGate.keptLanes` has a bit per lane); in larger ones through the state machine.
    private let keepsInLanes: Bool
    private var fastGateShut = false
    /// Acquires that took the lock (tests: the fast path is taken).
    private var lockedAcquires = 0
    /// Tests only: runs under the lock when a caller was queued, before it shuts the gate.
    var waiterQueuedHook: (() -> Void)?
    /// collectFastCalls' scratch space (under the lock), kept to spare an allocation each time.
    private var collected: [(connection: PoolStateMachine.ConnectionHandle, call: FastLane.Call)] = []
    private var reclaimed: [(lane: FastLane, kept: Bool)] = []
    private static let fastGateShutWeight = 1 << 40
    /// Told (on an opener thread, no lock held) when a connection attempt failed: a DNS name's
    /// resolver looks again when every address of the name fails.
    private let openFailed: (@Sendable () -> Void)?

    /// A waiting caller's parking spot: one futex word, so a hand-off wakes it without the
    /// pool's lock and costs one system call each way (a mutex and condition variable cost the
    /// woken caller a third: it takes the box's mutex again, contended, and wakes nobody).
    final class WaiterBox: @unchecked Sendable {
        /// `empty`, `sleeping` (its caller is about to sleep or sleeps on it), or `delivered`.
        private let word: UnsafeMutablePointer<Atomic<UInt32>>
        private static let empty: UInt32 = 0
        private static let delivered: UInt32 = 1
        private static let sleeping: UInt32 = 2
        /// The first deliverer writes `result`; the word publishes it (release, then acquire).
        private let claimed = Atomic<Bool>(false)
        private var result: Result<DaemonConnection, CallFailure>?

        init() {
            word = .allocate(capacity: 1)
            word.initialize(to: Atomic(Self.empty))
        }

        deinit {
            word.deinitialize(count: 1)
            word.deallocate()
        }

        /// The kernel's view of the word (an Atomic's storage is the value itself).
        private var futexWord: UnsafeMutablePointer<UInt32> {
            UnsafeMutableRawPointer(word).assumingMemoryBound(to: UInt32.self)
        }

        /// After the pool's lock is released: the waiter's connection, or why it gets none. Only
        /// the first delivery counts.
        func deliver(_ outcome: Result<DaemonConnection, CallFailure>) {
            guard !claimed.exchange(true, ordering: .relaxed) else { return }
            result = outcome
            if word.pointee.exchange(Self.delivered, ordering: .acquiringAndReleasing) == Self.sleeping {
                goxelpool_futex_wake_one(futexWord)
            }
        }

        /// The outcome, or nil when `deadline` passed first (nil deadline: wait for it).
        func wait(until deadline: Instant?) -> Result<DaemonConnection, CallFailure>? {
            var spec = timespec()
            if let deadline {
                let nanoseconds = max(deadline.nanoseconds, 0)
                spec = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
            }
            while true {
                let state = word.pointee.load(ordering: .acquiring)
                if state == Self.delivered { return result }
                if state == Self.empty {
                    guard word.pointee.compareExchange(expected: Self.empty, desired: Self.sleeping, ordering: .acquiringAndReleasing).exchanged
                    else { continue }  // delivered meanwhile
                }
                let status = deadline == nil ? goxelpool_futex_wait(futexWord, Self.sleeping, nil)
                                             : goxelpool_futex_wait(futexWord, Self.sleeping, &spec)
                if status == ETIMEDOUT {
                    return word.pointee.load(ordering: .acquiring) == Self.delivered ? result : nil
                }
            }
        }
    }

    /// Side effects collected under the lock and performed after it.
    enum Deferred {
        case handOff(WaiterBox, Result<DaemonConnection, CallFailure>)
        case open(ConnectionID)
        case close(DaemonConnection)
        case check(DaemonConnection)
        case wakeMaintenance
        case event(ClientEvent)
        case attempted(Int)
    }

    /// A pool for `endpoint` (default: the configuration's socket_path). `events`: a shared
    /// event stream (the pool then labels its events with the endpoint and does not stop it).
    /// `connectionBudget`: connections the pool may ever open (0: no limit), and
    /// `attemptObserver` is told the count as it grows (managed daemons). `tls`: the client's TLS
    /// context (needed by a `tls:` endpoint); `openFailed`: told when a connection attempt failed.
    public init(configuration: ClientConfiguration, endpoint: Endpoint? = nil, events shared: EventDispatcher? = nil,
                onDaemonIdentified: (@Sendable (Int64) -> Void)? = nil,
                connectionBudget: Int = 0, attemptObserver: ((Int) -> Void)? = nil,
                tls: TLSContext? = nil, openFailed: (@Sendable () -> Void)? = nil) {
        self.configuration = configuration
        self.onDaemonIdentified = onDaemonIdentified
        self.attemptObserver = attemptObserver
        self.tls = tls
        self.openFailed = openFailed
        self.endpoint = endpoint ?? .unix(path: configuration.socketPath)
        eventLabel = shared == nil ? nil : self.endpoint.description
        ownsEvents = shared == nil
        var settings = PoolStateMachine.Settings()
        let pool = configuration.pool
        settings.minConnections = configuration.pooling ? pool.minConnections : 1
        settings.maxConnections = configuration.pooling ? pool.maxConnections : 1
        settings.maxWaiters = pool.maxWaiters
        settings.idleTimeout = configuration.pooling ? .milliseconds(pool.idleTimeoutMs) : .zero
        settings.maxLifetime = .milliseconds(pool.maxLifetimeMs)
        settings.maxRequestsPerConnection = pool.maxRequestsPerConnection
        settings.loadBalancing = pool.loadBalancing
        settings.reuseWhileWaiting = pool.reuseWhileWaiting
        settings.reuseGrace = Span(nanoseconds: Int64(pool.reuseGraceUs) * 1000)
        settings.reuseWindow = Span(nanoseconds: Int64(pool.reuseWindowUs) * 1000)
        let reconnect = configuration.reconnect
        settings.backoff = Backoff.Policy(initial: .milliseconds(reconnect.initialBackoffMs), multiplier: reconnect.multiplier,
                                          jitter: reconnect.jitter, maximum: .milliseconds(reconnect.maxBackoffMs))
        let health = configuration.health
        settings.healthInterval = .milliseconds(health.intervalMs)
        settings.health = HealthTracker.Policy(healthyLatency: .milliseconds(health.healthyLatencyMs),
                                               degradedLatency: .milliseconds(health.degradedLatencyMs),
                                               failureThreshold: health.failureThreshold, successThreshold: health.successThreshold,
                                               trendAnalysis: health.trendAnalysis, sampleSize: health.trendSampleSize)
        settings.latencySpikeFactor = health.latencySpikeFactor
        let breaker = configuration.circuitBreaker
        settings.circuitBreaker.enabled = breaker.enabled
        settings.circuitBreaker.consecutiveConnectFailures = breaker.consecutiveConnectFailures
        settings.circuitBreaker.failureRate = breaker.failureRate
        settings.circuitBreaker.windowSize = breaker.windowSize
        settings.circuitBreaker.minimumCalls = breaker.minimumCalls
        settings.circuitBreaker.cooldown = .milliseconds(breaker.cooldownMs)
        settings.maxConnectionAttempts = max(0, connectionBudget)
        let now = Clock.now()
        machine = PoolStateMachine(settings: settings, now: now, seed: UInt64(bitPattern: now.nanoseconds) ^ UInt64(getpid()))
        jobs = WorkerGroup(threads: min(settings.maxConnections, 4), capacity: 4 * settings.maxConnections + 16)
        events = shared ?? EventDispatcher(capacity: configuration.eventQueueSize)
        let laneCount = pool.fastPath ? settings.maxConnections : 0
        lanes = (0..<laneCount).map { FastLane(index: $0) }
        freeLanes = Array((0..<laneCount).reversed())
        keepsInLanes = laneCount > 0 && laneCount <= 64 && settings.reuseWhileWaiting > 0
        maintenanceThread = LibraryThread { [unowned self] in self.maintenanceLoop() }
        modify { $0.start(now: Clock.now()) }
    }

    // MARK: - Calls

    /// A synchronous call on the calling thread. `timeout` nil: the configured timeout_ms.
    public func call(method: String, params: OpaquePointer?, timeout: Span?, notification: Bool = false) -> CallOutcome {
        switch perform(method: method, params: params, timeout: timeout, notification: notification, check: nil) {
        case .done(let outcome, _): return outcome
        case .daemonChanged: return .failure(CallFailure(.proto, "internal error: daemon check without a check"))
        }
    }

    /// A call for a session: the connection's daemon pid is learned (once per connection) and,
    /// with `.expect`, nothing is sent to another process than the expected one.
    /// `encodedParams`: `params` as jansson wrote them (see `DaemonConnection.exchange`).
    public func call(method: String, params: OpaquePointer?, encodedParams: UnsafeRawBufferPointer? = nil,
                     timeout: Span?, check: DaemonCheck) -> PinnedOutcome {
        perform(method: method, params: params, encodedParams: encodedParams, timeout: timeout, notification: false, check: check)
    }

    /// Whether new connections learn their daemon's pid (see `identifying`).
    public func setIdentifying(_ on: Bool) { identifying.store(on, ordering: .relaxed) }

    private func perform(method: String, params: OpaquePointer?, encodedParams: UnsafeRawBufferPointer? = nil,
                         timeout: Span?, notification: Bool, check: DaemonCheck?) -> PinnedOutcome {
        // One clock read serves the deadline and the first try's fast take (each read is tens of
        // nanoseconds on a virtual machine, and a call makes several).
        let start = Clock.now()
        let deadline = start + (timeout ?? .milliseconds(configuration.timeoutMs))
        // Only needed once a call fails: not worked out on the hot path.
        var idempotent: Bool { !notification && configuration.isIdempotent(method: method) }
        var retries = 0
        while true {
            let connection: DaemonConnection
            switch acquire(deadline: deadline, now: retries == 0 ? start : Clock.now()) {
            case .success(let leased): connection = leased
            case .failure(let failure): return .done(fail(failure), pid: nil)
            }
            if let check {
                if connection.daemonPid == nil {
                    if case .failure(let failure) = connection.identify(deadline: deadline) {
                        // A daemon whose status fails or has no pid: the connection is fine, its
                        // process just cannot be told; anything else broke the connection.
                        let broken = failure.status == .io || failure.status == .timedOut || failure.status == .tooBig
                        release(connection, broken ? .broken(reason: failure.message) : .unused)
                        if broken && failure.status == .io && retries < configuration.retryAttempts && Clock.now() < deadline {
                            retries += 1
                            continue
                        }
                        if broken { return .done(fail(failure), pid: nil) }
                        log(.warn, "cannot learn the daemon's pid at \(endpoint): \(failure.message)")
                        return .done(fail(CallFailure(.proto, "the daemon at \(endpoint) does not report its pid (status): \(failure.message)")), pid: nil)
                    }
                }
                if case .expect(let expected) = check, let pid = connection.daemonPid, pid != expected {
                    release(connection, .unused)
                    return .daemonChanged(pid: pid)
                }
            }
            let pid = connection.daemonPid
            let began = Clock.now()
            let exchange = connection.exchange(method: method, params: params, encodedParams: encodedParams,
                                               notification: notification, deadline: deadline)
            let ended = Clock.now()
            let latency = ended - began
            switch exchange {
            case .result(let value):
                release(connection, .answered(latency: latency), answeredAt: ended)
                return .done(.result(value), pid: pid)
            case .rpcError(let value, let inStep):
                release(connection, inStep ? .answered(latency: latency) : .broken(reason: "daemon answered with id null: out of step"),
                        answeredAt: ended)
                recordFailure(.rpc)
                return .done(.rpcError(value), pid: pid)
            case .notified:
                // Sent; its answer (if the daemon sends one) is skipped by the next exchange.
                release(connection, .sent)
                return .done(.notified, pid: pid)
            case .failed(let failure, _) where failure.status == .peer:
                // The TLS terminator refused our certificate (TLS 1.3 says so at the first read):
                // a configuration fault for the whole pool; nothing reached the daemon.
                release(connection, .rejected(reason: failure.message))
                return .done(fail(CallFailure(.peer, "\(endpoint) refused the connection: \(failure.message)")), pid: pid)
            case .failed(let failure, let written):
                // Refused before sending (too big, not encodable): the connection is untouched.
                let untouched = !written && failure.status != .io && failure.status != .timedOut
                release(connection, untouched ? .unused : .broken(reason: failure.message))
                // Cut off by close (the drain deadline passed): ECLOSED, as documented.
                if written && isClosing {
                    return .done(fail(CallFailure(.closed, "client closed while the call was in flight (it may have run)", mayHaveRun: true)), pid: pid)
                }
                // Safe to try again: the request never left, or the method has no side effects
                // and the connection broke (never after a timeout: no time is left, and a late
                // answer proves nothing).
                let retryable = !notification && failure.status == .io && (!written || idempotent)
                if retryable && retries < configuration.retryAttempts && Clock.now() < deadline {
                    retries += 1
                    modifyStatistics { $0.retries += 1 }
                    // Fail over to another connection at once; wait between later attempts.
                    if retries > 1 { sleep(until: min(deadline, Clock.now() + .milliseconds(configuration.retryDelayMs))) }
                    continue
                }
                if failure.status == .io && written && !idempotent && !notification {
                    return .done(fail(CallFailure(.io, "\(failure.message); the request may have run, so it was not repeated (\(method) is not idempotent)",
                                                  mayHaveRun: true)), pid: pid)
                }
                var reported = failure
                reported.mayHaveRun = written
                return .done(fail(reported), pid: pid)
            }
        }
    }

    // MARK: - Acquire and release

    /// `now`: the caller's clock reading, just taken (the fast take needs no other).
    private func acquire(deadline: Instant, now fastNow: Instant) -> Result<DaemonConnection, CallFailure> {
        let remembered = ThreadAffinity.lastConnection(of: affinitySerial)
        if let remembered, let connection = takeParked(lane: remembered.lane, now: fastNow) { return .success(connection) }
        let now = Clock.now()
        let acquireDeadline = min(deadline, now + .milliseconds(configuration.pool.acquireTimeoutMs))
        lock.lock()
        lockedAcquires &+= 1
        var actions = collectFastCalls(now: now)
        if let remembered { adoptKeptLane(remembered) }
        let waiterID = WaiterID(nextWaiter)
        nextWaiter &+= 1
        let (decision, leaseActions) = machine.requestLease(waiterID, now: now, preferred: remembered?.connection)
        actions += leaseActions
        // Adopted and refused (the circuit is open): still kept, now by the state machine.
        noteKeptConnections()
        switch decision {
        case .leased(let id):
            let connection = connections[id]
            lend(id)
            let deferred = actions.isEmpty ? [] : apply(actions)
            lock.unlock()
            perform(deferred)
            guard let connection else { return .failure(CallFailure(.proto, "internal error: leased connection \(id) missing")) }
            return .success(connection)
        case .failed(let failure):
            let described = describe(failure)
            // A refusal may still carry actions: a busy pool grows toward max, kept connections
            // go to waiters.
            let deferred = actions.isEmpty ? [] : apply(actions)
            lock.unlock()
            perform(deferred)
            return .failure(described)
        case .queued:
            let box = WaiterBox()
            waiters[waiterID] = box
            // A waiter shuts the gate (apply opens it again as its box leaves), then looks at the
            // lanes once more: a connection parked before the gate shut is taken back now and
            // goes to the longest waiter; one parked after sees the gate and comes back through
            // the lock (a Dekker pair with `releaseWithoutLock`). So no waiter sleeps beside a
            // parked connection, and nobody takes one past it.
            waiterQueuedHook?()
            gate.count.add(1, ordering: .sequentiallyConsistent)
            actions += collectFastCalls(now: now)
            let deferred = apply(actions)
            let waiting = machine.waitingCount
            lock.unlock()
            postRequestEvent("request_queued", [("waiting", .int(Int64(waiting)))])
            perform(deferred)
            if let outcome = box.wait(until: acquireDeadline) { return outcome }
            // The deadline passed. Still queued: the pool fails it now. Handed a connection at the
            // same moment: that hand-off is on its way (the caller then uses it).
            lock.lock()
            let timedOut = apply(machine.waiterTimedOut(waiterID, now: Clock.now()))
            lock.unlock()
            perform(timedOut)
            return box.wait(until: nil) ?? .failure(CallFailure(.timedOut, "no connection became free before the deadline"))
        }
    }

    // MARK: - The fast path
    //
    // A thread's last connection, taken and given back without the pool's lock (HikariCP's
    // thread-local list). A release that would only count (`FastReleaseTerms.admits`: answered,
    // healthy, nothing due) buffers the call in the connection's lane and parks the connection;
    // the same thread's next call takes it back with a compare-and-swap. The state machine still
    // sees it leased. Every operation under the lock first records the buffered calls, in order,
    // and takes parked connections back (`collectFastCalls`), so the pool decides on exactly the
    // state it would have had: FastPathModelTests runs both paths.

    /// The connection parked in this lane: free with nobody waiting (a new lease), or kept for
    /// this thread while callers wait and not overdue, nor any other kept one (one more in its
    /// streak; an overdue one is handed over first, under the lock).
    private func takeParked(lane index: Int, now: Instant) -> DaemonConnection? {
        guard index >= 0, index < lanes.count else { return nil }
        let lane = lanes[index]
        let state = lane.parked.load(ordering: .sequentiallyConsistent)
        guard state != FastLane.notParked else { return nil }
        let gateCount = gate.count.load(ordering: .sequentiallyConsistent)
        if gateCount == 0 {
            guard lane.parked.compareExchange(expected: state, desired: FastLane.notParked, ordering: .acquiringAndReleasing).exchanged
            else { return nil }
            lane.lease = .fresh(at: now)
            lane.terms?.takenBackFresh(now: now)
        } else if state == FastLane.parkedKept && gateCount < Self.fastGateShutWeight {
            guard now.nanoseconds < lane.keptUntil.load(ordering: .relaxed), noKeptOverdue(at: now.nanoseconds),
                  lane.parked.compareExchange(expected: state, desired: FastLane.notParked, ordering: .acquiringAndReleasing).exchanged
            else { return nil }
            lane.lease = .kept
            lane.terms?.takenBackKept()
        } else {
            return nil
        }
        if state == FastLane.parkedKept { unmarkKept(lane) }
        return lane.connection  // never nil: a lane parks only with a connection
    }

    /// Under the lock, after collecting: the caller's own connection, kept in its lane and not
    /// overdue, becomes kept in the state machine, whose `requestLease` then gives it back (or
    /// refuses the call: the circuit is open) exactly as on the lock path.
    private func adoptKeptLane(_ remembered: ThreadAffinity.Remembered) {
        guard remembered.lane >= 0, remembered.lane < lanes.count else { return }
        let lane = lanes[remembered.lane]
        guard lane.connection?.id == remembered.connection,
              lane.parked.compareExchange(expected: FastLane.parkedKept, desired: FastLane.notParked,
                                          ordering: .sequentiallyConsistent).exchanged else { return }
        unmarkKept(lane)
        lane.terms = nil
        machine.adoptKept(remembered.connection, until: Instant(nanoseconds: lane.keptUntil.load(ordering: .relaxed)))
    }

    /// Under the lock, after a lease: the terms of the connection's fast releases. While callers
    /// wait they serve only to keep it in its lane (none when this pool does not keep in lanes:
    /// its release goes through the lock anyway, so a contended pool does not work them out).
    private func lend(_ id: ConnectionID) {
        guard let lane = connections[id]?.fastLane else { return }
        lane.terms = gate.count.load(ordering: .relaxed) == 0 || keepsInLanes ? inspect({ $0.fastReleaseTerms(for: id) }) : nil
        lane.lease = nil
    }

    /// Releases without the lock when the terms allow; false: go through the lock. `now`: when
    /// the answer was read (the call is recorded at that instant).
    private func releaseWithoutLock(_ connection: DaemonConnection, latency: Span, now: Instant) -> Bool {
        guard let lane = connection.fastLane, let terms = lane.terms, lane.hasRoom else { return false }
        let gateCount = gate.count.load(ordering: .relaxed)
        if gateCount != 0 {
            guard gateCount < Self.fastGateShutWeight, terms.keepsLeft > 0, keepsInLanes else { return false }
            return keepWithoutLock(connection, lane: lane, terms: terms, latency: latency, now: now)
        }
        guard terms.admits(latency: latency, now: now) else { return false }
        buffer(connection, lane: lane, at: now, latency: latency)
        lane.parked.store(FastLane.parkedFree, ordering: .sequentiallyConsistent)
        markDirty()
        // A caller came to the lock meanwhile (it may wait): if it did not take the connection
        // already, give it back through the lock, so the pool hands it over (or keeps it).
        if gate.count.load(ordering: .sequentiallyConsistent) != 0,
           lane.parked.compareExchange(expected: FastLane.parkedFree, desired: FastLane.notParked, ordering: .sequentiallyConsistent).exchanged {
            returnThroughLock(connection, lane: lane, lastLatency: latency)
        }
        return true
    }

    /// Callers wait: keeps the connection in its lane for this thread's next call, as `settle`
    /// would keep it (reuse while callers wait), when its streak and window allow and no kept
    /// connection is overdue (that one is handed over first, under the lock).
    private func keepWithoutLock(_ connection: DaemonConnection, lane: FastLane, terms: PoolStateMachine.FastReleaseTerms,
                                 latency: Span, now: Instant) -> Bool {
        guard terms.admitsKeep(latency: latency, now: now), noKeptOverdue(at: now.nanoseconds) else { return false }
        buffer(connection, lane: lane, at: now, latency: latency)
        let until = (now + terms.reuseGrace).nanoseconds
        lane.keptUntil.store(until, ordering: .relaxed)
        lane.keptReleases &+= 1
        gate.keptLanes.bitwiseOr(1 << UInt64(lane.index), ordering: .sequentiallyConsistent)
        lane.parked.store(FastLane.parkedKept, ordering: .sequentiallyConsistent)
        gate.lowerEarliestKept(to: until)
        markDirty()
        // Closing, or the circuit opened meanwhile: nothing is kept then; back through the lock.
        if gate.count.load(ordering: .sequentiallyConsistent) >= Self.fastGateShutWeight,
           lane.parked.compareExchange(expected: FastLane.parkedKept, desired: FastLane.notParked, ordering: .sequentiallyConsistent).exchanged {
            unmarkKept(lane)
            returnThroughLock(connection, lane: lane, lastLatency: latency)
        } else if maintenanceNap.load(ordering: .relaxed) > until + Self.keptCheckInterval.nanoseconds {
            // The maintenance thread, the backstop for a caller that does not come back, sleeps
            // past this connection's grace (it lingers at keptCheckInterval while keeping goes on).
            lock.withLock { noteKeptConnections() }
        }
        return true
    }

    /// Whoever took a kept connection out of its lane (with the compare-and-swap).
    @inline(__always)
    private func unmarkKept(_ lane: FastLane) {
        gate.keptLanes.bitwiseAnd(~(1 << UInt64(lane.index)), ordering: .sequentiallyConsistent)
    }

    /// True when no kept connection, in a lane or in the state machine, is overdue at `now`: a
    /// fast operation never passes one (the lock path hands it over first, see `handOverKept`).
    /// `earliestKept` says so at once unless it is early; then the kept lanes are looked at.
    private func noKeptOverdue(at now: Int64) -> Bool {
        guard now < gate.machineKeptUntil.load(ordering: .sequentiallyConsistent) else { return false }
        let earliest = gate.earliestKept.load(ordering: .sequentiallyConsistent)
        if now < earliest { return true }
        let lanesEarliest = laneKeptExpiry() ?? Int64.max
        guard now < lanesEarliest else { return false }
        // Early: what it said went back to its thread. Raised to what the lanes hold, unless a
        // parker lowered it meanwhile, so the next operations need not look at the lanes.
        _ = gate.earliestKept.compareExchange(expected: earliest, desired: lanesEarliest, ordering: .sequentiallyConsistent)
        return true
    }

    /// The lanes that hold a kept connection now (the mask says which may).
    @inline(__always)
    private func forEachKeptLane(_ body: (FastLane) -> Void) {
        var mask = gate.keptLanes.load(ordering: .sequentiallyConsistent)
        while mask != 0 {
            let lane = lanes[mask.trailingZeroBitCount]
            mask &= mask &- 1
            if lane.parked.load(ordering: .sequentiallyConsistent) == FastLane.parkedKept { body(lane) }
        }
    }

    /// Under the lock: connections kept in their lanes now (each is leased in the state machine).
    private func keptLaneCount() -> Int {
        var count = 0
        forEachKeptLane { _ in count += 1 }
        return count
    }

    /// The earliest expiry of a connection kept in a lane, looked up (not `earliestKept`).
    private func laneKeptExpiry() -> Int64? {
        var earliest: Int64?
        forEachKeptLane { lane in
            let until = lane.keptUntil.load(ordering: .relaxed)
            if earliest.map({ until < $0 }) ?? true { earliest = until }
        }
        return earliest
    }

    /// The holder: the call goes into the lane's buffer, the lease that preceded it with it.
    @inline(__always)
    private func buffer(_ connection: DaemonConnection, lane: FastLane, at now: Instant, latency: Span) {
        let (sent, received) = connection.takeByteCounts()
        _ = lane.append(FastLane.Call(at: now, latency: latency, bytesSent: sent, bytesReceived: received, lease: lane.lease))
        lane.lease = nil
        lane.terms?.callsLeft -= 1
        ThreadAffinity.remember(connection.id, lane: lane.index, of: affinitySerial)
    }

    /// After parking: a collector that finds this flag clear (and so skips the lanes) opened the
    /// gate before, and the gate is read next.
    @inline(__always)
    private func markDirty() {
        if !gate.dirty.load(ordering: .sequentiallyConsistent) { gate.dirty.store(true, ordering: .sequentiallyConsistent) }
    }

    /// A connection its holder parked and took back at once: returned through the lock.
    private func returnThroughLock(_ connection: DaemonConnection, lane: FastLane, lastLatency: Span) {
        lock.lock()
        lane.terms = nil
        let now = Clock.now()
        var actions = collectFastCalls(now: now)
        actions += machine.returnParked(connection.id, now: now, byItsCaller: true, lastLatency: lastLatency)
        let deferred = apply(actions)
        noteKeptConnections()
        lock.unlock()
        perform(deferred)
    }

    /// Under the lock, before any decision: the calls made without the lock are recorded, in
    /// order; free parked connections come back to the pool, and kept ones when overdue or when
    /// nobody waits any more (what `PoolStateMachine.handOverKept` does first in every event).
    private func collectFastCalls(now: Instant) -> [PoolAction] {
        var actions: [PoolAction] = []
        guard !lanes.isEmpty else { return actions }
        // Kept connections to hand over, even with nothing parked since the last look.
        let earliest = gate.earliestKept.load(ordering: .sequentiallyConsistent)
        let everyKeptGoes = machine.waitingCount == 0 || machine.isClosed
        let keptDue = earliest != Int64.max && (earliest <= now.nanoseconds || everyKeptGoes)
        // A load first: while callers wait the flag stays clear, and an exchange would take its
        // cache line from the other CPU at every operation.
        let dirty = gate.dirty.load(ordering: .sequentiallyConsistent) && gate.dirty.exchange(false, ordering: .sequentiallyConsistent)
        guard dirty || keptDue else { return actions }
        // Raised before the look, lowered again for each connection still kept (a parker that the
        // look misses lowers it itself, after parking).
        if earliest != Int64.max { gate.earliestKept.store(Int64.max, ordering: .sequentiallyConsistent) }
        var stillKept = Int64.max
        // Parked connections first, then the buffers: a call is buffered before its connection
        // is parked, so taking the connection makes its last call visible to the drain below.
        for lane in lanes where lane.connection != nil {
            switch lane.parked.load(ordering: .sequentiallyConsistent) {
            case FastLane.parkedFree:
                if lane.parked.compareExchange(expected: FastLane.parkedFree, desired: FastLane.notParked, ordering: .sequentiallyConsistent).exchanged {
                    reclaimed.append((lane, false))
                }
            case FastLane.parkedKept:
                let until = lane.keptUntil.load(ordering: .relaxed)
                if everyKeptGoes || until <= now.nanoseconds {
                    if lane.parked.compareExchange(expected: FastLane.parkedKept, desired: FastLane.notParked, ordering: .sequentiallyConsistent).exchanged {
                        unmarkKept(lane)
                        reclaimed.append((lane, true))
                    }
                } else {
                    stillKept = min(stillKept, until)
                }
            default: break
            }
        }
        if stillKept != Int64.max { gate.lowerEarliestKept(to: stillKept) }
        for lane in lanes {
            guard let recorder = lane.recorder else { continue }
            lane.drain { collected.append((recorder, $0)) }
        }
        if !collected.isEmpty {
            // In the order they were made, across connections: the pool's health samples, the
            // breaker's window and the spike detector see the sequence the lock path would have.
            if lanes.count > 1 { collected.sort { $0.call.at < $1.call.at } }
            var sent = 0, received = 0
            for (connection, call) in collected {
                sent &+= call.bytesSent
                received &+= call.bytesReceived
                actions += machine.recordFastCall(connection, at: call.at, latency: call.latency, lease: call.lease)
            }
            machine.withStatistics { $0.bytesSent &+= sent; $0.bytesReceived &+= received }
            collected.removeAll(keepingCapacity: true)
        }
        for (lane, kept) in reclaimed {
            guard let connection = lane.connection else { continue }
            lane.terms = nil
            if kept && !machine.isClosed {
                // Kept by the state machine now: the event that follows hands it over with its own
                // kept connections, in their order, first thing (`handOverKept`).
                machine.adoptKept(connection.id, until: Instant(nanoseconds: lane.keptUntil.load(ordering: .relaxed)))
            } else {
                actions += machine.returnParked(connection.id, now: now, byItsCaller: false)
            }
        }
        reclaimed.removeAll(keepingCapacity: true)
        return actions
    }

    /// Under the lock, after every change: the gate is shut while closing, or while the circuit
    /// is not closed or a successful call could open it (failures near the rate: then the order
    /// of calls matters, and calls are recorded when they are collected).
    private func updateFastGate() {
        let shut = closing || !inspect({ $0.breaker.successesCannotOpen })
        guard shut != fastGateShut else { return }
        fastGateShut = shut
        if shut { gate.count.add(Self.fastGateShutWeight, ordering: .sequentiallyConsistent) }
        else { gate.count.subtract(Self.fastGateShutWeight, ordering: .sequentiallyConsistent) }
    }

    /// `answeredAt`: when the answer of an `.answered` call was read (nil: now).
    private func release(_ connection: DaemonConnection, _ outcome: ReleaseOutcome, answeredAt: Instant? = nil) {
        if case .answered(let latency) = outcome, releaseWithoutLock(connection, latency: latency, now: answeredAt ?? Clock.now()) {
            if events.wants(.request) {
                postRequestEvent("request_served", [("connection_id", .int(Int64(connection.id.value))),
                                                    ("latency_ms", .double(latency.milliseconds))])
            }
            return
        }
        ThreadAffinity.remember(connection.id, lane: connection.fastLane?.index ?? -1, of: affinitySerial)
        lock.lock()
        connection.fastLane?.terms = nil
        let now = Clock.now()
        let (sent, received) = connection.takeByteCounts()
        machine.withStatistics { $0.bytesSent &+= sent; $0.bytesReceived &+= received }
        var actions = collectFastCalls(now: now)
        if let lease = connection.fastLane?.lease { machine.recordLeaseWithoutPool(connection.id, lease) }
        actions += machine.release(connection.id, now: now, outcome: outcome)
        var deferred = actions.isEmpty ? [] : apply(actions)
        noteKeptConnections()
        // Forgotten by the pool (a drain timed out and it was abandoned): close it here.
        if closing && connections[connection.id] != nil && machine.health(of: connection.id) == nil {
            connections[connection.id] = nil
            freeLane(of: connection)
            deferred.append(.close(connection))
        }
        let wantsServed = events.wants(.request)
        lock.unlock()
        perform(deferred)
        if wantsServed, case .answered(let latency) = outcome {
            postRequestEvent("request_served", [("connection_id", .int(Int64(connection.id.value))),
                                                ("latency_ms", .double(latency.milliseconds))])
        }
    }

    /// Under the lock, after any operation that may keep a connection for its thread: the state
    /// machine's kept expiry is published for `noKeptOverdue`, and the maintenance thread wakes
    /// in time to hand a kept connection over if its thread does not come back (when no other
    /// call into the pool does it first).
    private func noteKeptConnections() {
        if !lanes.isEmpty {
            let until = machine.keptExpiry?.nanoseconds ?? Int64.max
            if gate.machineKeptUntil.load(ordering: .relaxed) != until { gate.machineKeptUntil.store(until, ordering: .sequentiallyConsistent) }
        }
        let sleeping = maintenanceNap.load(ordering: .relaxed)
        if sleeping != 0, let expiry = keptExpiry, sleeping > (expiry + Self.keptCheckInterval).nanoseconds {
            maintenanceNap.store(0, ordering: .relaxed)
            keptSeen = Clock.now()
            maintenanceWakeup.signal()
        }
    }

    /// Under the lock: a connection leaves the registry; its lane is free for the next one.
    private func freeLane(of connection: DaemonConnection) {
        guard let lane = connection.fastLane else { return }
        connection.fastLane = nil
        lane.connection = nil
        lane.recorder = nil
        lane.terms = nil
        freeLanes.append(lane.index)
    }

    /// Under the lock: records waiter results and registry changes, returns the rest.
    private func apply(_ actions: [PoolAction]) -> [Deferred] {
        var deferred: [Deferred] = []
        for action in actions {
            switch action {
            case .lease(let waiterID, let id):
                // Decided here: the box leaves the registry, the waiter is told after the unlock.
                guard let box = waiters.removeValue(forKey: waiterID) else { continue }
                gate.count.subtract(1, ordering: .sequentiallyConsistent)
                if let connection = connections[id] {
                    lend(id)
                    deferred.append(.handOff(box, .success(connection)))
                } else {
                    deferred.append(.handOff(box, .failure(CallFailure(.proto, "internal error: connection \(id) missing"))))
                }
            case .failWaiter(let waiterID, let failure):
                guard let box = waiters.removeValue(forKey: waiterID) else { continue }
                gate.count.subtract(1, ordering: .sequentiallyConsistent)
                deferred.append(.handOff(box, .failure(describe(failure))))
            case .open(let id):
                deferred.append(.open(id))
                if attemptObserver != nil { deferred.append(.attempted(machine.statistics.connectionAttempts)) }
            case .close(let id, _):
                if let connection = connections.removeValue(forKey: id) {
                    freeLane(of: connection)
                    deferred.append(.close(connection))
                }
            case .checkHealth(let id):
                if let connection = connections[id] { deferred.append(.check(connection)) }
            case .wakeMaintenance:
                deferred.append(.wakeMaintenance)
            case .event(let event):
                deferred.append(contentsOf: clientEvents(for: event).map(Deferred.event))
            }
        }
        if closing && machine.connectionCount == 0 { drained.broadcast() }
        updateFastGate()
        return deferred
    }

    private func perform(_ deferred: [Deferred]) {
        for item in deferred {
            switch item {
            case .handOff(let box, let outcome): box.deliver(outcome)
            case .open(let id):
                if !jobs.submit({ [self] in open(id) }) {
                    modify { $0.connectionOpenFailed(id, now: Clock.now(), reason: "could not schedule the open") }
                }
            case .close(let connection): connection.close()
            case .check(let connection):
                if !jobs.submit({ [self] in checkHealth(connection) }) {
                    modify { $0.healthCheckFinished(connection.id, now: Clock.now(), success: true, latency: .zero, error: nil) }
                }
            case .wakeMaintenance: lock.withLock { maintenanceWakeup.signal() }
            case .event(let event): post(event)
            case .attempted(let count): attemptObserver?(count)
            }
        }
    }

    /// Runs a state machine event under the lock and performs its actions after.
    private func modify(_ body: (inout PoolStateMachine) -> [PoolAction]) {
        lock.lock()
        var actions = collectFastCalls(now: Clock.now())
        actions += body(&machine)
        let deferred = apply(actions)
        noteKeptConnections()
        lock.unlock()
        perform(deferred)
    }

    private func modifyStatistics(_ body: (inout PoolStatistics) -> Void) {
        lock.withLock { machine.withStatistics(body) }
    }

    /// Under the lock: asks the state machine something in place. `machine.f()`, for a
    /// non-mutating `f` of GoxelPoolCore, is made on a copy of the whole struct (its dictionaries,
    /// arrays and histograms retained, then released: about 500 instructions and their cache
    /// lines, at every lease through the lock); through an inout access the compiler hands `f`
    /// the struct where it is.
    @inline(__always)
    private func inspect<Result>(_ body: (inout PoolStateMachine) -> Result) -> Result { body(&machine) }

    // MARK: - Background work

    private func open(_ id: ConnectionID) {
        if isClosing {
            modify { $0.connectionOpenFailed(id, now: Clock.now(), reason: "client is closing") }
            return
        }
        let validate = configuration.pool.validateOnConnect ? configuration.health.method : nil
        let identify = identifying.load(ordering: .relaxed)
        do {
            let connection = try DaemonConnection.open(
                id: id, endpoint: endpoint, connectTimeout: .milliseconds(configuration.pool.connectTimeoutMs),
                maxMessageSize: configuration.maxMessageSize, verifyPeer: configuration.verifyPeer, validateMethod: validate,
                identify: identify, tls: tls)
            // Read before the connection is published: from then on its lessee owns it.
            let learnedPid = connection.daemonPid
            lock.lock()
            connections[id] = connection
            if let index = freeLanes.popLast() { lanes[index].assign(connection, recorder: inspect { $0.connectionHandle(id) }) }
            if connection.tlsResumed { machine.withStatistics { $0.tlsSessionsResumed += 1 } }
            let deferred = apply(machine.connectionOpened(id, now: Clock.now()))
            lock.unlock()
            perform(deferred)
            if let learnedPid { onDaemonIdentified?(learnedPid) }
        } catch {
            log(.warn, "connection \(id) failed to open: \(error.message)")
            // EPEER (peer credentials, TLS verification, a refused client certificate) is a
            // configuration fault: no circuit breaker, waiters fail at once, one alert per attempt.
            modify { $0.connectionOpenFailed(id, now: Clock.now(), reason: error.message, rejected: error.status == .peer) }
            openFailed?()
        }
    }

    private func checkHealth(_ connection: DaemonConnection) {
        let began = Clock.now()
        let exchange = connection.exchange(method: configuration.health.method, params: nil, notification: false,
                                           deadline: began + .milliseconds(configuration.health.timeoutMs))
        let latency = Clock.now() - began
        var success = false
        var error: String?
        switch exchange {
        case .result(let value): json_decref(UnsafeMutablePointer(value)); success = true
        case .rpcError(let value, _): json_decref(UnsafeMutablePointer(value)); error = "health check answered with an error"
        case .notified: success = true
        case .failed(let failure, _): error = failure.message
        }
        modify { $0.healthCheckFinished(connection.id, now: Clock.now(), success: success, latency: latency, error: error) }
    }

    /// The maintenance thread wakes for kept connections at most this often (under load there is
    /// always one: waking at each expiry would cost a thread switch every reuse_grace_us).
    static let keptCheckInterval = Span.milliseconds(2)
    /// After it last saw a kept connection, the maintenance thread keeps checking every
    /// keptCheckInterval for this long. A kept connection lives microseconds (until its thread's
    /// next call), so the thread mostly wakes to find none; sleeping a second then would let the
    /// next keep signal it again at once: thousands of wake-ups a second under contention.
    static let keptCheckLinger = Span.milliseconds(100)

    /// Under the lock: the earliest instant a kept connection (in the state machine or in a lane)
    /// must go to a waiter, or nil.
    private var keptExpiry: Instant? {
        guard let lanes = laneKeptExpiry().map(Instant.init(nanoseconds:)) else { return machine.keptExpiry }
        return min(machine.keptExpiry ?? lanes, lanes)
    }

    private func maintenanceLoop() {
        lock.lock()
        while !maintenanceStop {
            let now = Clock.now()
            // Housekeeping at least once a second, so idle expiry set by releases (which do not
            // wake this thread) is seen on time.
            var until = now + .milliseconds(1000)
            if let next = inspect({ $0.nextDeadline() }), next < until { until = next }
            // Woken before this only for kept connections (or a signal: a new deadline is seen
            // at the next pass), it hands over the overdue ones and skips the rest of the tick.
            let housekeepingDue = until
            // Kept connections are checked by every call into the pool; this thread is only the
            // backstop for a caller that does not come back, at most every keptCheckInterval.
            if let kept = keptExpiry {
                keptSeen = now
                until = min(until, max(kept, now + Self.keptCheckInterval))
            } else if let seen = keptSeen, now - seen < Self.keptCheckLinger {
                until = min(until, now + Self.keptCheckInterval)
            }
            if until > now {
                maintenanceNap.store(until.nanoseconds, ordering: .relaxed)
                maintenanceWakeup.wait(lock, until: until)
                maintenanceNap.store(0, ordering: .relaxed)
                maintenanceWakeups &+= 1
            }
            if maintenanceStop { break }
            let tickAt = Clock.now()
            // Parked connections come back first: their idle expiry and health checks are the
            // tick's to see (a connection parked after this pass waits for the next, within a second).
            var actions = collectFastCalls(now: tickAt)
            actions += tickAt >= housekeepingDue ? machine.tick(now: tickAt) : machine.handOverOverdueKept(now: tickAt)
            let deferred = apply(actions)
            noteKeptConnections()
            lock.unlock()
            perform(deferred)
            lock.lock()
        }
        lock.unlock()
    }

    // MARK: - Shutdown

    /// No connection is open and the last attempt failed (or was refused).
    public var isFailing: Bool {
        lock.withLock { machine.consecutiveOpenFailures > 0 && machine.connectionCount == machine.count(.opening) }
    }

    public var isClosing: Bool { lock.withLock { closing } }

    /// How many acquires went through the lock (tests: a lone caller's go around it).
    var lockedAcquireCount: Int { lock.withLock { lockedAcquires } }

    /// How many releases kept their connection in its lane (tests; read once callers stopped).
    var keptInLaneCount: Int { lock.withLock { lanes.reduce(0) { $0 + $1.keptReleases } } }

    /// How often the maintenance thread has woken (tests: it must not wake at every keep).
    var maintenanceWakeupCount: Int { lock.withLock { maintenanceWakeups } }

    /// Calls waiting for a connection fail now with ECLOSED (not sent): the endpoint is going.
    public func failWaiters() { modify { $0.failWaiters() } }

    /// Open for calls: not closing, circuit not open (sessions are placed where calls can go).
    public var acceptsCalls: Bool { lock.withLock { !closing && machine.breaker.state != .open } }

    /// True on one of this client's own threads (callbacks and listeners run there).
    public func isLibraryThread() -> Bool {
        jobs.isWorkerThread() || events.isDispatcherThread()
            || (maintenanceThread.map(LibraryThread.isCurrent) ?? false)
    }

    /// Stops new calls, fails waiters, drains in-flight calls up to `drain`, then closes every
    /// socket and joins every thread. Must not be called from one of the client's threads.
    /// A second close (another thread) shortens the drain to its own deadline if earlier and
    /// returns when the first one is done.
    public func close(drain: Span) {
        lock.lock()
        let deadline = Clock.now() + drain
        if closing {
            if let current = drainDeadline, deadline < current {
                drainDeadline = deadline
                drained.broadcast()
            }
            while !closed { closeFinished.wait(lock, until: nil) }
            lock.unlock()
            return
        }
        closing = true
        drainDeadline = deadline
        // Shut the fast path before collecting: from here on every release comes through the lock.
        updateFastGate()
        let now = Clock.now()
        // Collected again after: connections kept in their lanes close as the state machine's do.
        var deferred = apply(collectFastCalls(now: now) + machine.close(now: now) + collectFastCalls(now: now))
        lock.unlock()
        perform(deferred)
        lock.lock()
        while machine.connectionCount > 0, let until = drainDeadline, Clock.now() < until {
            drained.wait(lock, until: until)
        }
        // What is still out is interrupted: its caller's read fails at once and it comes back.
        let abandoned = machine.abandonAll()
        let interrupted = abandoned.compactMap { connections[$0] }
        maintenanceStop = true
        maintenanceWakeup.signal()
        lock.unlock()
        for connection in interrupted { connection.interrupt() }
        maintenanceThread?.join()
        jobs.stopAndJoin()
        lock.lock()
        // Interrupted connections come back within a moment; close whatever remains.
        let waitUntil = Clock.now() + .milliseconds(1000)
        while !connections.isEmpty && Clock.now() < waitUntil { drained.wait(lock, until: min(waitUntil, Clock.now() + .milliseconds(5))) }
        deferred = connections.values.map(Deferred.close)
        // A lane and its connection refer to each other: the cycle ends here.
        for connection in connections.values { freeLane(of: connection) }
        connections.removeAll()
        lock.unlock()
        perform(deferred)
        if ownsEvents { events.stopAndJoin() }
        lock.withLock {
            closed = true
            closeFinished.broadcast()
        }
    }

    // MARK: - Statistics, health, events

    public struct Snapshot {
        public var statistics: PoolStatistics
        public var state: PoolState
        public var total, idle, busy, opening, checking, healthy, waiting: Int
        public var poolHealth: HealthTracker
        public var circuit: CircuitBreaker
        public var connections: [(id: ConnectionID, health: HealthTracker, requests: Int, openedAt: Instant?)]
        public var eventsDelivered, eventsDropped: Int
        public var now: Instant
    }

    /// No endpoint yet (a DNS name not resolved, managed daemons starting): zero figures, the
    /// client's `uptime`; `closed` after close.
    public static func emptySnapshot(closed: Bool, uptime: Span = .zero) -> Snapshot {
        let now = Clock.now()
        var statistics = PoolStatistics(startedAt: Instant(nanoseconds: now.nanoseconds - uptime.nanoseconds))
        if closed { statistics.closedAt = now }
        return Snapshot(statistics: statistics, state: closed ? .closed : .unhealthy, total: 0, idle: 0, busy: 0, opening: 0,
                        checking: 0, healthy: 0, waiting: 0, poolHealth: HealthTracker(policy: .seedDefault),
                        circuit: CircuitBreaker(policy: .init()), connections: [], eventsDelivered: 0, eventsDropped: 0, now: now)
    }

    public func snapshot() -> Snapshot {
        let counters = events.counters()
        lock.lock()
        // Calls made without the lock count, and parked connections are idle.
        let deferred = apply(collectFastCalls(now: Clock.now()))
        machine.withStatistics { $0.foldWaitlessLeases() }
        // Kept in a lane for its thread, as the state machine's kept ones: idle (leased to it).
        let keptInLanes = min(keptLaneCount(), machine.count(.busy))
        let snapshot = Snapshot(
            statistics: machine.statistics, state: machine.poolState,
            total: machine.connectionCount - machine.count(.opening), idle: machine.count(.idle) + keptInLanes,
            busy: machine.count(.busy) - keptInLanes, opening: machine.count(.opening), checking: machine.count(.checking),
            healthy: machine.healthyCount, waiting: machine.waitingCount, poolHealth: machine.poolHealth,
            circuit: machine.breaker,
            connections: machine.connectionIDs.compactMap { id in
                machine.health(of: id).map { (id, $0, machine.requestsServed(by: id) ?? 0, machine.openedAt(id)) }
            },
            eventsDelivered: counters.delivered, eventsDropped: counters.dropped, now: Clock.now())
        lock.unlock()
        perform(deferred)
        return snapshot
    }

    private func clientEvents(for event: PoolEvent) -> [ClientEvent] {
        var out: [ClientEvent] = []
        switch event {
        case .connectionAdded(let id):
            reconnectStormReported = false
            out.append(ClientEvent(kind: .connection, type: "connection_added", fields: [("connection_id", .int(Int64(id.value)))]))
            if let line = logLine(.debug, "connection \(id.value) to \(endpoint) opened") { out.append(line) }
        case .connectionRemoved(let id, let reason):
            out.append(ClientEvent(kind: .connection, type: "connection_removed",
                                   fields: [("connection_id", .int(Int64(id.value))), ("reason", .string(reason.rawValue))]))
            let level: ClientConfiguration.LogLevel = reason == .error || reason == .health ? .warn : .info
            if let line = logLine(level, "connection \(id.value) to \(endpoint) closed (\(reason.rawValue))") { out.append(line) }
        case .connectionRejected(let reason, let failures, let retryIn):
            // peer_rejected: a Unix socket served by another user; tls_rejected: a TLS verification
            // failure, a wrong name, or a client certificate the server refused.
            let type = endpoint.usesTLS ? "tls_rejected" : "peer_rejected"
            out.append(alert(type, "critical", nil,
                             "\(endpoint) refused: \(reason); a configuration fault (certificates, names or socket owner), not a daemon that is down: calls fail at once with EPEER; next attempt in \(Int(retryIn.milliseconds)) ms",
                             [("reason", .string(reason)), ("consecutive_failures", .int(Int64(failures))),
                              ("retry_in_ms", .double(retryIn.milliseconds))]))
        case .connectionOpenFailed(let failures, let retryIn):
            let message = machine.statistics.lastConnectError ?? "connect failed"
            if failures >= 3 && !reconnectStormReported {
                reconnectStormReported = true
                out.append(alert("reconnect_storm", "critical", nil,
                                 "\(failures) consecutive connection attempts failed: \(message)",
                                 [("consecutive_failures", .int(Int64(failures))), ("retry_in_ms", .double(retryIn.milliseconds))]))
            }
        case .healthChanged(let id, let from, let to):
            let health = machine.health(of: id)
            let metrics: [(String, EventValue)] = [
                ("previous", .string(from.rawValue)), ("current", .string(to.rawValue)),
                ("consecutive_failures", .int(Int64(health?.consecutiveFailures ?? 0))),
                ("average_latency_ms", health?.averageLatency.map { .double($0.milliseconds) } ?? .null),
                ("last_error", health?.lastError.map { .string($0) } ?? .null),
            ]
            out.append(ClientEvent(kind: .health, type: "health_changed", fields: [("connection_id", .int(Int64(id.value)))] + metrics))
            switch to {
            case .unhealthy: out.append(alert("unhealthy", "critical", id, "connection \(id.value) is unhealthy", metrics))
            case .degraded: out.append(alert("degraded", "warning", id, "connection \(id.value) is degraded", metrics))
            case .healthy: out.append(alert("recovered", "info", id, "connection \(id.value) recovered", metrics))
            }
        case .poolStateChanged(let from, let to):
            let metrics: [(String, EventValue)] = [
                ("previous", .string(from.rawValue)), ("current", .string(to.rawValue)),
                ("healthy_connections", .int(Int64(machine.healthyCount))),
                ("total_connections", .int(Int64(machine.connectionCount - machine.count(.opening)))),
            ]
            out.append(ClientEvent(kind: .pool, type: "pool_state_changed", fields: metrics))
            switch to {
            case .degraded: out.append(alert("pool_degraded", "warning", nil, "pool is degraded", metrics))
            case .unhealthy where from != .closed: out.append(alert("pool_unhealthy", "critical", nil, "pool is unhealthy", metrics))
            case .ready where wasReady && (from == .degraded || from == .unhealthy):
                out.append(alert("pool_recovered", "info", nil, "pool is ready again", metrics))
            default: break
            }
            if to == .ready { wasReady = true }
        case .circuitChanged(let from, let to):
            let metrics: [(String, EventValue)] = [("previous", .string(from.rawValue)), ("current", .string(to.rawValue))]
            switch to {
            case .open:
                out.append(alert("circuit_open", "critical", nil,
                                 "circuit open: calls fail fast with EUNAVAILABLE for \(configuration.circuitBreaker.cooldownMs) ms",
                                 metrics + [("last_error", machine.statistics.lastConnectError.map { .string($0) } ?? .null)]))
            case .closed: out.append(alert("circuit_closed", "info", nil, "circuit closed: calls go through again", metrics))
            case .halfOpen: out.append(ClientEvent(kind: .pool, type: "circuit_half_open", fields: metrics))
            }
        case .latencySpike(let id, let latency, let average):
            out.append(alert("latency_spike", "warning", id,
                             "connection \(id.value): \(latency.milliseconds) ms against a recent average of \(average.milliseconds) ms",
                             [("latency_ms", .double(latency.milliseconds)), ("average_latency_ms", .double(average.milliseconds))]))
        case .trendDegrading(let slope, let tier, let after):
            let predicted = tier.map { " (\($0.rawValue) in \(Int(after?.milliseconds ?? 0)) ms at this rate)" } ?? ""
            out.append(alert("trend_degrading", "warning", nil, "pool latency is degrading\(predicted)", [
                ("slope_ms_per_s", .double(slope)),
                ("predicted_tier", tier.map { .string($0.rawValue) } ?? .null),
                ("predicted_in_ms", after.map { .double($0.milliseconds) } ?? .null),
                ("average_latency_ms", machine.poolHealth.averageLatency.map { .double($0.milliseconds) } ?? .null),
            ]))
        case .queueSaturated(let waiting, let limit):
            out.append(alert("queue_saturated", "warning", nil, "\(waiting) calls are waiting for a connection (max_waiters \(limit))",
                             [("waiting", .int(Int64(waiting))), ("max_waiters", .int(Int64(limit)))]))
        }
        return out
    }

    private func alert(_ type: String, _ severity: String, _ id: ConnectionID?, _ message: String,
                       _ metrics: [(String, EventValue)]) -> ClientEvent {
        machine.withStatistics { $0.alertsGenerated[type, default: 0] += 1 }
        return ClientEvent(kind: .alert, type: type, fields: [
            ("severity", .string(severity)), ("message", .string(message)),
            ("connection_id", id.map { .int(Int64($0.value)) } ?? .string("pool")),
        ] + metrics)
    }

    /// Every event leaves through here: labelled with the endpoint when pools share a stream.
    private func post(_ event: ClientEvent) {
        guard let eventLabel else { return events.post(event) }
        var labelled = event
        labelled.fields.append(("endpoint", .string(eventLabel)))
        events.post(labelled)
    }

    private func postRequestEvent(_ type: String, _ fields: [(String, EventValue)]) {
        guard events.wants(.request) else { return }
        post(ClientEvent(kind: .request, type: type, fields: fields))
    }

    /// Log lines go to GOXELPOOL_EVENT_LOG listeners only, never to stderr, and never carry params.
    func log(_ level: ClientConfiguration.LogLevel, _ message: @autoclosure () -> String) {
        if let line = logLine(level, message()) { post(line) }
    }

    private func logLine(_ level: ClientConfiguration.LogLevel, _ message: @autoclosure () -> String) -> ClientEvent? {
        guard level != .off, level <= configuration.logLevel, events.wants(.log) else { return nil }
        return ClientEvent(kind: .log, type: "log", fields: [("level", .string(level.rawValue)), ("message", .string(message()))])
    }

    /// Under the lock (it reads the state machine).
    private func describe(_ failure: PoolFailure) -> CallFailure {
        switch failure {
        case .closed: CallFailure(.closed, "client is closed")
        case .removed: CallFailure(.closed, "the endpoint \(endpoint) is being removed (the call was not sent)")
        case .busy: CallFailure(.busy, "wait queue is full (pool.max_waiters = \(configuration.pool.maxWaiters))")
        case .timedOut: CallFailure(.timedOut, "no connection became free before the deadline")
        case .connectFailed:
            CallFailure(.connect, "cannot connect to \(endpoint): \(machine.statistics.lastConnectError ?? "no connection")")
        case .rejected:
            CallFailure(.peer, machine.rejection ?? "\(endpoint) refused the connection")
        case .unavailable:
            CallFailure(.unavailable, "circuit open: the daemon at \(endpoint) is failing (\(machine.statistics.lastConnectError ?? "recent calls failed")); retry later")
        }
    }

    private func fail(_ failure: CallFailure) -> CallOutcome {
        recordFailure(failure.status)
        return .failure(failure)
    }

    private func recordFailure(_ status: CallStatus) {
        modifyStatistics { $0.recordFailure(status: status.name.description) }
    }

    private func sleep(until deadline: Instant) {
        let remaining = deadline - Clock.now()
        guard remaining > .zero else { return }
        var spec = timespec(tv_sec: Int(remaining.nanoseconds / 1_000_000_000), tv_nsec: Int(remaining.nanoseconds % 1_000_000_000))
        var left = timespec()
        while nanosleep(&spec, &left) != 0 && errno == EINTR { spec = left }
    }
}
