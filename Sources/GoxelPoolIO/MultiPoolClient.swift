import GoxelPoolCore

/// The client the C API drives: one `PoolClient` (sub-pool with its own health, backoff and
/// circuit breaker) per endpoint, and an `EndpointBalancer` that picks the endpoint of each call.
/// With one endpoint (the plain `socket_path` case) the balancer always picks it.
public final class MultiPoolClient: @unchecked Sendable {
    public let configuration: ClientConfiguration
    public let events: EventDispatcher
    /// Dispatch mode (`"callbacks": "dispatch"`): where completions and events wait for
    /// goxelpool_dispatch. nil in thread mode.
    public let inbox: DispatchInbox?
    /// Sessions: documents pinned to one endpoint each (SessionManager).
    public let sessions: SessionManager
    /// Async calls and batch items: one thread per connection the pools may open (a worker
    /// blocks on its call), at most 64.
    private let asyncWorkers: WorkerGroup
    private let lock = PthreadMutex()
    private var balancer: EndpointBalancer
    private var members: [Int: Member] = [:]
    private var nextMemberID = 1
    private var closing = false
    private let startedAt = Clock.now()
    /// Managed daemons (`spawn`): they become endpoints as they answer, and go as they are
    /// replaced or die. Set once, at the end of init.
    public private(set) var supervisor: DaemonSupervisor?
    /// What a call that finds no endpoint does while daemons are managed (nil: not managed).
    private var managedAvailability: ManagedAvailability?
    /// Broadcast when an endpoint is added, the managed availability changes, or at close.
    private let endpointsChanged = Condition()

    struct Member {
        let endpoint: Endpoint
        let pool: PoolClient
        /// This endpoint's share of max_total_connections.
        let maxConnections: Int
        /// A daemon the library started: only the library removes it.
        let managed: Bool
    }

    /// Set by the supervisor: a call with no endpoint to go to waits for a daemon that is
    /// starting, fails with the reason the starts failed, or fails because the client stops.
    public enum ManagedAvailability: Sendable, Equatable {
        case serving
        case starting
        case failing(CallFailure)
        case stopped
    }

    /// `endpoints` must not be empty; each gets min/max of `configuration.pool`, within
    /// `max_total_connections` when that is set (shared out evenly). `inbox`: dispatch mode.
    public init(configuration: ClientConfiguration, endpoints: [Endpoint], inbox: DispatchInbox? = nil) {
        self.configuration = configuration
        self.inbox = inbox
        events = EventDispatcher(capacity: configuration.eventQueueSize, inbox: inbox)
        var policy = EndpointBalancer.Policy()
        let outlier = configuration.outlierDetection
        policy.consecutiveFailures = outlier.consecutiveFailures
        policy.successRate = outlier.successRate
        policy.window = outlier.window
        policy.minimumCalls = outlier.minimumCalls
        policy.baseEjection = .milliseconds(outlier.baseEjectionMs)
        policy.maxEjection = .milliseconds(outlier.maxEjectionMs)
        policy.panicThreshold = outlier.panicThreshold
        balancer = EndpointBalancer(policy: policy, seed: UInt64(bitPattern: Clock.now().nanoseconds))
        let planned = max(1, configuration.plannedEndpointCount)
        let perEndpoint = Self.share(of: configuration, among: planned)
        asyncWorkers = WorkerGroup(threads: min(perEndpoint * planned, 64),
                                   capacity: max(configuration.pool.maxWaiters, 1))
        sessions = SessionManager(configuration: configuration, events: events)
        for endpoint in endpoints { _ = addLocked(endpoint, max: perEndpoint) }
        sessions.availability = { [weak self] in self?.sessionAvailability() ?? [:] }
        // Last: its thread starts at once and adds endpoints as daemons answer.
        if configuration.spawn != nil {
            managedAvailability = .starting
            supervisor = DaemonSupervisor(configuration: configuration, client: self)
            // Durable sessions checkpoint into the daemons' private directory by default: on
            // their machine, the user's alone, removed at close.
            sessions.defaultCheckpointDir = supervisor?.directory
        }
    }

    /// One endpoint's pool.max_connections within max_total_connections, shared out evenly.
    private static func share(of configuration: ClientConfiguration, among count: Int) -> Int {
        let total = configuration.maxTotalConnections
        let share = total > 0 ? max(1, total / max(1, count)) : configuration.pool.maxConnections
        return min(configuration.pool.maxConnections, share)
    }

    /// Under the lock (or from init).
    private func addLocked(_ endpoint: Endpoint, max maxConnections: Int, managed: Bool = false, placementName: String? = nil,
                           connectionBudget: Int = 0, attemptObserver: ((Int) -> Void)? = nil) -> Int {
        var settings = configuration
        // With several daemons, a broken call is retried once at once on the same one, and then
        // on the others (retry_attempts in all), rather than waiting retry_delay_ms on a daemon
        // that just failed.
        if configuration.hasSeveralEndpointSources { settings.retryAttempts = min(1, configuration.retryAttempts) }
        settings.pool.maxConnections = maxConnections
        settings.pool.minConnections = min(configuration.pool.minConnections, maxConnections)
        let id = nextMemberID
        nextMemberID += 1
        let pool = PoolClient(configuration: settings, endpoint: endpoint, events: events, onDaemonIdentified: { [weak sessions] pid in
            sessions?.daemonIdentified(endpointID: id, pid: pid)
        }, connectionBudget: connectionBudget, attemptObserver: attemptObserver)
        members[id] = Member(endpoint: endpoint, pool: pool, maxConnections: maxConnections, managed: managed)
        balancer.add(id: id, now: Clock.now())
        sessions.endpointAdded(id: id, endpoint: endpoint, pool: pool, placementName: placementName)
        endpointsChanged.broadcast()
        return id
    }

    // MARK: - Calls

    public func call(method: String, params: OpaquePointer?, timeout: Span?, notification: Bool = false) -> CallOutcome {
        // One endpoint (the socket_path case): nothing to choose, so no balancer on the hot path.
        lock.lock()
        if members.count == 1, let (onlyID, only) = members.first, !closing {
            let managed = managedAvailability != nil
            lock.unlock()
            guard managed else {
                return only.pool.call(method: method, params: params, timeout: timeout, notification: notification)
            }
            // A managed daemon can be replaced or restart meanwhile: a call it never ran goes on.
            let deadline = Clock.now() + (timeout ?? .milliseconds(configuration.timeoutMs))
            let outcome = only.pool.call(method: method, params: params, timeout: deadline - Clock.now(), notification: notification)
            guard case .failure(let failure) = outcome, mayGoElsewhere(failure, method: method, notification: notification),
                  Clock.now() < deadline else { return outcome }
            return routedCall(method: method, params: params, deadline: deadline, notification: notification,
                              tried: [onlyID], lastFailure: failure, retries: rerouted(failure) ? 0 : 1)
        }
        lock.unlock()
        let deadline = Clock.now() + (timeout ?? .milliseconds(configuration.timeoutMs))
        return routedCall(method: method, params: params, deadline: deadline, notification: notification,
                          tried: [], lastFailure: nil, retries: 0)
    }

    /// How long a call that failed on every managed daemon waits for news of a daemon's death.
    static let deathNoticeGrace = Span.milliseconds(250)

    /// The request did not reach its daemon (no connection, circuit open, queue full, or the
    /// endpoint was removed while the call waited), or the method is idempotent and the
    /// connection broke or its endpoint was removed under it: another daemon may serve it.
    private func mayGoElsewhere(_ failure: CallFailure, method: String, notification: Bool) -> Bool {
        let neverSent = failure.status == .connect || failure.status == .unavailable || failure.status == .busy || rerouted(failure)
        let idempotent = !notification && configuration.isIdempotent(method: method)
        let cutOff = failure.status == .io || (failure.status == .closed && !isClosing)
        return neverSent || (idempotent && cutOff)
    }

    /// Its endpoint was removed (replaced, or its daemon died) before the request was sent: going
    /// elsewhere is no retry and does not count against retry_attempts.
    private func rerouted(_ failure: CallFailure) -> Bool {
        failure.status == .closed && !failure.mayHaveRun && !isClosing
    }

    private func routedCall(method: String, params: OpaquePointer?, deadline: Instant, notification: Bool,
                            tried initiallyTried: [Int], lastFailure initialFailure: CallFailure?, retries initialRetries: Int) -> CallOutcome {
        var tried = initiallyTried
        var lastFailure = initialFailure
        var retries = initialRetries
        var graced = false
        while true {
            lock.lock()
            if closing {
                lock.unlock()
                return .failure(CallFailure(.closed, "client is closed"))
            }
            let picked = balancer.pick(now: Clock.now(), excluding: tried)
            guard let picked, let member = members[picked.id] else {
                // Managed daemons: wait for one that is starting, within the deadline.
                switch managedAvailability {
                case .starting?:
                    if Clock.now() < deadline {
                        endpointsChanged.wait(lock, until: deadline)
                        lock.unlock()
                        continue
                    }
                    lock.unlock()
                    return .failure(lastFailure ?? CallFailure(.timedOut, "no managed daemon became ready before the deadline"))
                case .failing(let failure)?:
                    lock.unlock()
                    return .failure(failure)
                case .stopped?:
                    lock.unlock()
                    return .failure(CallFailure(.closed, "client is closed"))
                case .serving? where lastFailure != nil && !graced && Clock.now() < deadline:
                    // A daemon that dies closes its connections before its exit reaches the
                    // supervisor: give it a moment to say so (then the call waits for the restart).
                    graced = true
                    endpointsChanged.wait(lock, until: min(deadline, Clock.now() + Self.deathNoticeGrace))
                    lock.unlock()
                    continue
                case .serving?, nil:
                    lock.unlock()
                    return .failure(lastFailure ?? CallFailure(.unavailable, "no endpoint is available"))
                }
            }
            lock.unlock()
            if !picked.changes.isEmpty { report(picked.changes) }
            let began = Clock.now()
            let outcome = member.pool.call(method: method, params: params, timeout: deadline - began, notification: notification)
            let ended = Clock.now()
            var answered = true
            var failure: CallFailure?
            if case .failure(let failed) = outcome {
                failure = failed
                // Local saturation or shutdown say nothing about the daemon.
                answered = failed.status == .busy || failed.status == .closed || failed.status == .invalid || failed.status == .tooBig
            }
            lock.lock()
            let changes = balancer.finished(id: picked.id, success: answered, latency: ended - began, now: ended)
            tried.append(picked.id)
            // Another endpoint exists, or a managed daemon is on its way.
            let others = members.keys.contains { !tried.contains($0) } || managedAvailability == .starting
            lock.unlock()
            if !changes.isEmpty { report(changes) }
            guard let failure else { return outcome }
            let goesOn = rerouted(failure) || retries < max(configuration.retryAttempts, 1)
            guard others, mayGoElsewhere(failure, method: method, notification: notification), goesOn,
                  Clock.now() < deadline else { return outcome }
            if !rerouted(failure) { retries += 1 }
            lastFailure = failure
        }
    }

    /// Queues a call on a library thread; `completion` runs exactly once: there (thread mode), or
    /// in `dispatch` on the application's thread (dispatch mode).
    public func callAsync(method: String, params: OpaquePointer?, timeout: Span?,
                          completion: @escaping (CallOutcome) -> Void) -> CallFailure? {
        if isClosing { return CallFailure(.closed, "client is closed") }
        let deliver: (CallOutcome) -> Void
        if let inbox {
            deliver = { outcome in inbox.post(outcome, to: completion) }
        } else {
            deliver = completion
        }
        let accepted = asyncWorkers.submit { [self] in deliver(call(method: method, params: params, timeout: timeout)) }
        if accepted { return nil }
        return isClosing ? CallFailure(.closed, "client is closed")
                         : CallFailure(.busy, "\(configuration.pool.maxWaiters) async calls already queued")
    }

    /// Runs the items concurrently over the pools; the calling thread takes part, so a batch
    /// completes even when every library thread is busy.
    public func batch(_ items: [(method: String, params: OpaquePointer?)], timeout: Span?) -> [CallOutcome] {
        let deadline = Clock.now() + (timeout ?? .milliseconds(configuration.timeoutMs))
        let state = BatchState(count: items.count)
        let work: () -> Void = { [self] in
            while let index = state.claim() {
                let remaining = deadline - Clock.now()
                let outcome: CallOutcome = remaining > .zero
                    ? call(method: items[index].method, params: items[index].params, timeout: remaining)
                    : .failure(CallFailure(.timedOut, "batch deadline passed before this request was sent"))
                state.finish(index, outcome)
            }
        }
        for _ in 0..<max(0, min(items.count - 1, asyncWorkers.threadCount)) { _ = asyncWorkers.submit(work) }
        work()
        return state.waitAll()
    }

    // MARK: - Endpoints

    /// A managed daemon that answers: calls go there from now on. Its share of
    /// max_total_connections is that of one instance; `connectionBudget` and `attemptObserver`
    /// as for PoolClient. `slot`: sessions are placed by slot, so a daemon's successor takes its keys.
    func addManagedEndpoint(_ endpoint: Endpoint, slot: Int, connectionBudget: Int, attemptObserver: @escaping (Int) -> Void) -> CallFailure? {
        lock.lock()
        defer { lock.unlock() }
        if closing { return CallFailure(.closed, "client is closed") }
        let share = Self.share(of: configuration, among: max(1, configuration.plannedEndpointCount))
        _ = addLocked(endpoint, max: share, managed: true, placementName: "spawn:\(slot)", connectionBudget: connectionBudget,
                      attemptObserver: attemptObserver)
        return nil
    }

    /// No new call goes to `endpoint`; what it has in flight (and calls made on its pool
    /// directly) carry on until it is removed.
    func stopRouting(_ endpoint: Endpoint) {
        lock.withLock {
            if let id = members.first(where: { $0.value.endpoint == endpoint })?.key { balancer.drain(id: id) }
        }
    }

    func setManagedAvailability(_ availability: ManagedAvailability) {
        lock.withLock {
            guard managedAvailability != availability else { return }
            managedAvailability = availability
            endpointsChanged.broadcast()
        }
    }

    /// Adds a daemon at run time. Its share of max_total_connections is what the others leave.
    public func addEndpoint(_ endpoint: Endpoint) -> CallFailure? {
        lock.lock()
        defer { lock.unlock() }
        if closing { return CallFailure(.closed, "client is closed") }
        if members.values.contains(where: { $0.endpoint == endpoint }) {
            return CallFailure(.invalid, "endpoint \(endpoint) is already in the pool")
        }
        var maxConnections = configuration.pool.maxConnections
        if configuration.maxTotalConnections > 0 {
            let used = members.values.reduce(0) { $0 + $1.maxConnections }
            maxConnections = min(maxConnections, configuration.maxTotalConnections - used)
            guard maxConnections >= 1 else {
                return CallFailure(.busy, "max_total_connections (\(configuration.maxTotalConnections)) is taken by the other endpoints")
            }
        }
        _ = addLocked(endpoint, max: maxConnections)
        return nil
    }

    /// Removes a daemon: no new calls go there; calls in flight finish for up to `drain`.
    /// A managed daemon is removed by the library only (`byLibrary`); `daemonGone`: it died, so
    /// sessions on it move without a last checkpoint there.
    public func removeEndpoint(_ endpoint: Endpoint, drain: Span, byLibrary: Bool = false, daemonGone: Bool = false) -> CallFailure? {
        lock.lock()
        guard let (id, member) = members.first(where: { $0.value.endpoint == endpoint }) else {
            lock.unlock()
            return CallFailure(.invalid, "endpoint \(endpoint) is not in the pool")
        }
        if member.managed && !byLibrary {
            lock.unlock()
            return CallFailure(.invalid, "endpoint \(endpoint) is a daemon the library manages (spawn): it replaces and stops it itself")
        }
        balancer.drain(id: id)
        lock.unlock()
        // Durable sessions move to another daemon first (checkpoint, then restore there).
        sessions.endpointRemoving(id: id, daemonGone: daemonGone)
        member.pool.close(drain: drain)
        lock.withLock {
            members[id] = nil
            balancer.forget(id: id)
        }
        return nil
    }

    // MARK: - Dispatch mode

    /// Runs queued completions and events on the calling thread (see DispatchInbox.run); nil in
    /// thread mode.
    public func dispatch(maxItems: Int) -> DispatchInbox.RunResult? {
        inbox?.run(maxItems: maxItems) { events.deliver($0) }
    }

    // MARK: - Shutdown, threads, snapshots

    public var isClosing: Bool { lock.withLock { closing } }

    /// Which endpoints may take a new session: not draining, not ejected, circuit not open.
    func sessionAvailability() -> [Int: Bool] {
        let list: [(Int, PoolClient, Bool)] = lock.withLock {
            members.map { id, member in
                let routable = balancer.member(id).map { !$0.draining && $0.ejectedUntil == nil } ?? false
                return (id, member.pool, routable && !closing)
            }
        }
        return Dictionary(uniqueKeysWithValues: list.map { ($0.0, $0.2 && $0.1.acceptsCalls) })
    }

    /// The endpoint id of `endpoint`, if it is one of this client's.
    public func endpointID(of endpoint: Endpoint) -> Int? {
        lock.withLock { members.first { $0.value.endpoint == endpoint }?.key }
    }

    public func isLibraryThread() -> Bool {
        if events.isDispatcherThread() || asyncWorkers.isWorkerThread() { return true }
        if supervisor?.isSupervisorThread() ?? false { return true }
        let pools = lock.withLock { members.values.map(\.pool) }
        return pools.contains { $0.isLibraryThread() }
    }

    /// Closes every endpoint's pool, then stops the managed daemons (SIGTERM, SIGKILL after
    /// the grace time, reaped, their files and directory removed), then the threads.
    public func close(drain: Span) {
        let pools: [PoolClient]? = lock.withLock {
            if closing { return nil }
            closing = true
            endpointsChanged.broadcast()
            return members.keys.sorted().compactMap { members[$0]?.pool }
        }
        guard let pools else { return }
        // Sessions refuse calls first; their workers are joined once the pools cannot block them.
        let sessionWorkers = sessions.beginClose()
        // Shut every endpoint down together: the drain deadline is shared, not added up.
        let threads = pools.map { pool in LibraryThread { pool.close(drain: drain) } }
        for (thread, pool) in zip(threads, pools) {
            if thread.isRunning { thread.join() } else { pool.close(drain: drain) }
        }
        for worker in sessionWorkers { worker.join() }
        supervisor?.stop()
        // Queued async calls run now and fail fast with ECLOSED (their callbacks still run once).
        asyncWorkers.stopAndJoin()
        events.stopAndJoin()
    }

    public struct EndpointSnapshot {
        public var id: Int
        public var endpoint: Endpoint
        public var pool: PoolClient.Snapshot
        public var balancer: EndpointBalancer.Member?
        public var maxConnections: Int
        /// Open sessions placed on this endpoint.
        public var sessions = 0
    }

    public struct Snapshot {
        public var endpoints: [EndpointSnapshot]
        public var inPanic: Bool
        public var eventsDelivered, eventsDropped: Int
        public var uptime: Span
        /// Dispatch mode only.
        public var dispatchQueue: DispatchInbox.Counters?
        public var sessions: SessionManager.Snapshot
        /// The managed daemons (spawn), nil without.
        public var daemons: DaemonSupervisor.Snapshot?
    }

    public func snapshot() -> Snapshot {
        let (list, balancerState) = lock.withLock { () -> ([(Int, Member)], EndpointBalancer) in
            (members.sorted { $0.key < $1.key }, balancer)
        }
        let counters = events.counters()
        let sessionState = sessions.snapshot()
        let endpoints = list.map { id, member in
            EndpointSnapshot(id: id, endpoint: member.endpoint, pool: member.pool.snapshot(), balancer: balancerState.member(id),
                             maxConnections: member.maxConnections, sessions: sessionState.perEndpoint[id] ?? 0)
        }
        return Snapshot(endpoints: endpoints, inPanic: balancerState.inPanic, eventsDelivered: counters.delivered,
                        eventsDropped: counters.dropped, uptime: Clock.now() - startedAt,
                        dispatchQueue: inbox?.counters(), sessions: sessionState, daemons: supervisor?.snapshot())
    }

    private func report(_ changes: [EndpointBalancer.Change]) {
        guard events.wants(.alert) else { return }
        let names = lock.withLock { members.mapValues { $0.endpoint.description } }
        for change in changes {
            switch change {
            case .ejected(let id, let duration):
                events.post(ClientEvent(kind: .alert, type: "endpoint_ejected", fields: [
                    ("severity", .string("warning")), ("endpoint", .string(names[id] ?? "?")),
                    ("message", .string("endpoint \(names[id] ?? "?") ejected for \(Int(duration.milliseconds)) ms (failing)")),
                    ("connection_id", .string("pool")), ("ejected_for_ms", .double(duration.milliseconds)),
                ]))
            case .readmitted(let id):
                events.post(ClientEvent(kind: .alert, type: "endpoint_readmitted", fields: [
                    ("severity", .string("info")), ("endpoint", .string(names[id] ?? "?")),
                    ("message", .string("endpoint \(names[id] ?? "?") readmitted")), ("connection_id", .string("pool")),
                ]))
            case .panic(let on):
                events.post(ClientEvent(kind: .alert, type: on ? "panic_mode" : "panic_mode_over", fields: [
                    ("severity", .string(on ? "critical" : "info")), ("connection_id", .string("pool")),
                    ("message", .string(on ? "fewer than half of the endpoints are available: using all of them"
                                           : "enough endpoints are available again")),
                ]))
            }
        }
    }
}

/// Collects the outcomes of a batch; items are claimed one at a time by whichever thread is free.
final class BatchState: @unchecked Sendable {
    private let lock = PthreadMutex()
    private let done = Condition()
    private var next = 0
    private var finished = 0
    private var outcomes: [CallOutcome?]

    init(count: Int) { outcomes = Array(repeating: nil, count: count) }

    func claim() -> Int? {
        lock.withLock {
            guard next < outcomes.count else { return nil }
            next += 1
            return next - 1
        }
    }

    func finish(_ index: Int, _ outcome: CallOutcome) {
        lock.withLock {
            outcomes[index] = outcome
            finished += 1
            if finished == outcomes.count { done.broadcast() }
        }
    }

    func waitAll() -> [CallOutcome] {
        lock.withLock {
            while finished < outcomes.count { done.wait(lock, until: nil) }
            return outcomes.map { $0 ?? .failure(CallFailure(.closed, "not run")) }
        }
    }
}
