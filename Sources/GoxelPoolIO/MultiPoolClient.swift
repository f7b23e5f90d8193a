import Glibc
import GoxelPoolCore
import Synchronization

/// The client the C API drives: one `PoolClient` (sub-pool with its own health, backoff and
/// circuit breaker) per endpoint, and an `EndpointBalancer` that picks the endpoint of each call.
/// With one endpoint (the plain `socket_path` case) the balancer always picks it. DNS names
/// (`dns:name:port`) are resolved by a library thread into one endpoint per address, which
/// follows the name as its addresses change; managed daemons (`spawn`) become endpoints as they
/// answer and go as they are replaced or die.
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
    private var members: [Int: Member] = [:] {
        // The hot path of a one-endpoint client reads this instead of walking the dictionary.
        didSet {
            onlyMember = members.count == 1 ? members.first : nil
            shutSoleRoute()
        }
    }
    private var onlyMember: (key: Int, value: Member)?
    /// A client configured with one fixed endpoint (no spawn, no DNS name) sends its calls to
    /// that endpoint's pool without this client's lock and without retaining anything: every
    /// call would otherwise write the lock's and the pool's shared cache lines (a dozen atomic
    /// operations that bounce between CPUs). Set once, at the end of init; the route shuts for
    /// good at the first endpoint added or removed and at close (then calls take the lock).
    /// `soleRouteOwner` keeps the pool alive as long as a caller may still be on the route.
    private var soleRoute: Unmanaged<PoolClient>?
    private var soleRouteOwner: PoolClient?
    private let soleRouteOpen = Atomic<Bool>(false)
    private var nextMemberID = 1
    private var closing = false
    private let startedAt = Clock.now()
    /// Managed daemons (`spawn`): they become endpoints as they answer, and go as they are
    /// replaced or die. Set once, at the end of init.
    public private(set) var supervisor: DaemonSupervisor?
    /// What a call that finds no endpoint does while daemons are managed (nil: not managed).
    private var managedAvailability: ManagedAvailability?
    /// Broadcast when an endpoint is added, the managed availability changes, or at close
    /// (callers with no endpoint to go to wait for one: a DNS name not resolved yet, a managed
    /// daemon starting).
    private let endpointsChanged = Condition()
    /// Built once per client (from the `tls` section) when a TLS endpoint or the section exists,
    /// else when the first TLS endpoint is added.
    private var tls: TLSContext?
    /// DNS names and their resolution state; their resolver thread, started with the first name.
    private var names: [DNSName: DNSResolution] = [:]
    private var resolverThread: LibraryThread?
    private let resolverWakeup = Condition()
    /// Alerts raised by the client itself (endpoints, DNS), by type.
    private var alertsGenerated: [String: Int] = [:]

    struct Member {
        let endpoint: Endpoint
        let pool: PoolClient
        /// This endpoint's share of max_total_connections.
        let maxConnections: Int
        /// A daemon the library started: only the library removes it.
        let managed: Bool
        /// The DNS name this endpoint is an address of (nil: configured or added by hand).
        let origin: DNSName?
    }

    /// Set by the supervisor: a call with no endpoint to go to waits for a daemon that is
    /// starting, fails with the reason the starts failed, or fails because the client stops.
    public enum ManagedAvailability: Sendable, Equatable {
        case serving
        case starting
        case failing(CallFailure)
        case stopped
    }

    /// Builds the client of a configuration: its TLS context (EINVAL when a file of the `tls`
    /// section cannot be read or used), its endpoints and DNS names. `inbox`: dispatch mode.
    public static func make(configuration: ClientConfiguration, inbox: DispatchInbox? = nil) throws(CallFailure) -> MultiPoolClient {
        let needsTLS = configuration.tls != nil || configuration.endpoints.contains(where: \.usesTLS)
            || configuration.dnsEndpoints.contains(where: \.tls)
        let context = needsTLS ? try TLSContext(configuration.tls ?? .init()) : nil
        return MultiPoolClient(configuration: configuration, endpoints: configuration.effectiveEndpoints, inbox: inbox, tls: context)
    }

    /// `endpoints` (with `configuration.dnsEndpoints`, or `spawn`) must not be empty; each gets
    /// min/max of `configuration.pool`, within `max_total_connections` when that is set (shared
    /// out evenly; addresses of DNS names get what is left). `inbox`: dispatch mode. `tls`: needed
    /// for TLS endpoints.
    public init(configuration: ClientConfiguration, endpoints: [Endpoint], inbox: DispatchInbox? = nil, tls: TLSContext? = nil) {
        self.configuration = configuration
        self.inbox = inbox
        self.tls = tls
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
        // A DNS name counts as four endpoints here: its addresses are not known yet.
        let expected = max(1, planned + 3 * configuration.dnsEndpoints.count)
        asyncWorkers = WorkerGroup(threads: min(perEndpoint * expected, 64),
                                   capacity: max(configuration.pool.maxWaiters, 1))
        sessions = SessionManager(configuration: configuration, events: events)
        for endpoint in endpoints { _ = addLocked(endpoint, max: perEndpoint) }
        lock.withLock { for name in configuration.dnsEndpoints { addNameLocked(name) } }
        sessions.availability = { [weak self] in self?.sessionAvailability() ?? [:] }
        if configuration.spawn == nil, configuration.dnsEndpoints.isEmpty, members.count == 1, let pool = members.first?.value.pool {
            soleRoute = Unmanaged.passUnretained(pool)
            soleRouteOwner = pool
            soleRouteOpen.store(true, ordering: .releasing)
        }
        // Last: its thread starts at once and adds endpoints as daemons answer.
        if configuration.spawn != nil {
            managedAvailability = .starting
            supervisor = DaemonSupervisor(configuration: configuration, client: self)
            // Durable sessions checkpoint into the daemons' private directory by default: on
            // their machine, the user's alone, removed at close.
            sessions.defaultCheckpointDir = supervisor?.directory
        }
    }

    /// Tests: calls take the sole route (see `soleRoute`).
    var soleRouteIsOpen: Bool { soleRouteOpen.load(ordering: .acquiring) }

    /// Under the lock: calls take the lock from now on (endpoints change, or the client closes).
    private func shutSoleRoute() {
        if soleRouteOpen.load(ordering: .relaxed) { soleRouteOpen.store(false, ordering: .releasing) }
    }

    /// One endpoint's pool.max_connections within max_total_connections, shared out evenly.
    private static func share(of configuration: ClientConfiguration, among count: Int) -> Int {
        let total = configuration.maxTotalConnections
        let share = total > 0 ? max(1, total / max(1, count)) : configuration.pool.maxConnections
        return min(configuration.pool.maxConnections, share)
    }

    /// Under the lock (or from init).
    private func addLocked(_ endpoint: Endpoint, max maxConnections: Int, managed: Bool = false, origin: DNSName? = nil,
                           placementName: String? = nil, connectionBudget: Int = 0, attemptObserver: ((Int) -> Void)? = nil) -> Int {
        var settings = configuration
        // With several daemons, a broken call is retried once at once on the same one, and then
        // on the others (retry_attempts in all), rather than waiting retry_delay_ms on a daemon
        // that just failed.
        if configuration.hasSeveralEndpointSources { settings.retryAttempts = min(1, configuration.retryAttempts) }
        settings.pool.maxConnections = maxConnections
        settings.pool.minConnections = min(configuration.pool.minConnections, maxConnections)
        let id = nextMemberID
        nextMemberID += 1
        var failed: (@Sendable () -> Void)?
        if origin != nil {
            failed = { [weak self] in self?.addressFailed(id) }
        }
        let pool = PoolClient(configuration: settings, endpoint: endpoint, events: events, onDaemonIdentified: { [weak sessions] pid in
            sessions?.daemonIdentified(endpointID: id, pid: pid)
        }, connectionBudget: connectionBudget, attemptObserver: attemptObserver,
           tls: endpoint.usesTLS ? tls : nil, openFailed: failed)
        members[id] = Member(endpoint: endpoint, pool: pool, maxConnections: maxConnections, managed: managed, origin: origin)
        balancer.add(id: id, now: Clock.now())
        sessions.endpointAdded(id: id, endpoint: endpoint, pool: pool, placementName: placementName)
        endpointsChanged.broadcast()
        return id
    }

    /// Under the lock: the TLS context, built with the defaults (or the `tls` section) on first use.
    private func tlsContextLocked() -> CallFailure? {
        if tls != nil { return nil }
        do {
            tls = try TLSContext(configuration.tls ?? .init())
            return nil
        } catch {
            return error
        }
    }

    // MARK: - Calls

    public func call(method: String, params: OpaquePointer?, timeout: Span?, notification: Bool = false) -> CallOutcome {
        if soleRouteOpen.load(ordering: .acquiring), let soleRoute {
            return soleRoute._withUnsafeGuaranteedRef {
                $0.call(method: method, params: params, timeout: timeout, notification: notification)
            }
        }
        // One endpoint (the socket_path case): nothing to choose, so no balancer on the hot path.
        lock.lock()
        if let (onlyID, only) = onlyMember, !closing {
            // Managed daemons and DNS names replace endpoints at run time.
            let replaceable = managedAvailability != nil || !names.isEmpty
            lock.unlock()
            guard replaceable else {
                return only.pool.call(method: method, params: params, timeout: timeout, notification: notification)
            }
            // Its endpoint may be replaced meanwhile: a call it never ran goes on.
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

    /// The request did not reach its daemon (no connection, circuit open, queue full, refused, or
    /// the endpoint was removed while the call waited), or the method is idempotent and the
    /// connection broke or its endpoint was removed under it: another daemon may serve it.
    private func mayGoElsewhere(_ failure: CallFailure, method: String, notification: Bool) -> Bool {
        let neverSent = failure.status == .connect || failure.status == .unavailable || failure.status == .busy
            || failure.status == .peer || rerouted(failure)
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
                // Only DNS names not resolved yet: wait for their addresses, as a call made
                // before a connection opens waits for it.
                if tried.isEmpty, let unresolved = waitForAddressesLocked(until: deadline) {
                    lock.unlock()
                    if case .failure(let failure) = unresolved { return .failure(failure) }
                    continue
                }
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
            // Refused (TLS verification, client certificate, peer credentials): a configuration
            // fault, ejected at once rather than after consecutive_failures.
            let refused = failure?.status == .peer
            lock.lock()
            let changes = balancer.finished(id: picked.id, success: answered, latency: ended - began, now: ended,
                                            configurationFault: refused)
            tried.append(picked.id)
            // Another endpoint exists, or a managed daemon is on its way.
            let others = members.keys.contains { !tried.contains($0) } || managedAvailability == .starting
            lock.unlock()
            if !changes.isEmpty { report(changes, cause: refused ? failure?.message : nil) }
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

    /// Adds a daemon, or a DNS name (resolved on the resolver thread), at run time. An endpoint's
    /// share of max_total_connections is what the others leave.
    public func addEndpoint(_ target: EndpointTarget) -> CallFailure? {
        lock.lock()
        defer { lock.unlock() }
        if closing { return CallFailure(.closed, "client is closed") }
        switch target {
        case .dns(let name):
            if names[name] != nil { return CallFailure(.invalid, "\(name) is already in the pool") }
            if name.tls, let failure = tlsContextLocked() { return failure }
            addNameLocked(name)
            return nil
        case .address(let endpoint):
            if let owner = members.values.first(where: { $0.endpoint.description == endpoint.description }) {
                let from = owner.origin.map { " (an address of \($0))" } ?? ""
                return CallFailure(.invalid, "endpoint \(endpoint) is already in the pool\(from)")
            }
            if endpoint.usesTLS, let failure = tlsContextLocked() { return failure }
            switch shareLeftLocked() {
            case .success(let maxConnections): _ = addLocked(endpoint, max: maxConnections)
            case .failure(let failure): return failure
            }
            return nil
        }
    }

    public func addEndpoint(_ endpoint: Endpoint) -> CallFailure? { addEndpoint(.address(endpoint)) }

    /// A managed daemon is removed by the library only (`byLibrary`); `daemonGone`: it died, so
    /// sessions on it move without a last checkpoint there.
    public func removeEndpoint(_ endpoint: Endpoint, drain: Span, byLibrary: Bool = false, daemonGone: Bool = false) -> CallFailure? {
        removeEndpoint(.address(endpoint), drain: drain, byLibrary: byLibrary, daemonGone: daemonGone)
    }

    /// Under the lock: pool.max_connections, within what max_total_connections leaves.
    private func shareLeftLocked() -> Result<Int, CallFailure> {
        var maxConnections = configuration.pool.maxConnections
        if configuration.maxTotalConnections > 0 {
            let used = members.values.reduce(0) { $0 + $1.maxConnections }
            maxConnections = min(maxConnections, configuration.maxTotalConnections - used)
            guard maxConnections >= 1 else {
                return .failure(CallFailure(.busy, "max_total_connections (\(configuration.maxTotalConnections)) is taken by the other endpoints"))
            }
        }
        return .success(maxConnections)
    }

    /// Removes a daemon: no new calls go there; calls in flight finish for up to `drain`. A DNS
    /// name is removed with every address it brought.
    public func removeEndpoint(_ target: EndpointTarget, drain: Span, byLibrary: Bool = false, daemonGone: Bool = false) -> CallFailure? {
        lock.lock()
        let leaving: [Int]
        switch target {
        case .dns(let name):
            guard names.removeValue(forKey: name) != nil else {
                lock.unlock()
                return CallFailure(.invalid, "\(name) is not in the pool")
            }
            leaving = members.filter { $0.value.origin == name }.map(\.key)
        case .address(let endpoint):
            guard let (id, member) = members.first(where: { $0.value.endpoint == endpoint }) else {
                lock.unlock()
                return CallFailure(.invalid, "endpoint \(endpoint) is not in the pool")
            }
            if let origin = member.origin {
                lock.unlock()
                return CallFailure(.invalid, "endpoint \(endpoint) is an address of \(origin): remove that name instead")
            }
            if member.managed && !byLibrary {
                lock.unlock()
                return CallFailure(.invalid, "endpoint \(endpoint) is a daemon the library manages (spawn): it replaces and stops it itself")
            }
            leaving = [id]
        }
        lock.unlock()
        drainAndForget(leaving, drain: drain, daemonGone: daemonGone)
        return nil
    }

    /// Drains the members together (their deadline is shared) and forgets them. Durable sessions
    /// on them move to other daemons first (a checkpoint there unless `daemonGone`, then a
    /// restore elsewhere).
    private func drainAndForget(_ ids: [Int], drain: Span, daemonGone: Bool = false) {
        let pools: [(Int, PoolClient)] = lock.withLock {
            ids.compactMap { id in
                balancer.drain(id: id)
                return members[id].map { (id, $0.pool) }
            }
        }
        for (id, _) in pools { sessions.endpointRemoving(id: id, daemonGone: daemonGone) }
        let threads = pools.dropFirst().map { _, pool in LibraryThread { pool.close(drain: drain) } }
        if let (_, first) = pools.first { first.close(drain: drain) }
        for (thread, (_, pool)) in zip(threads, pools.dropFirst()) {
            if thread.isRunning { thread.join() } else { pool.close(drain: drain) }
        }
        lock.withLock {
            for (id, _) in pools {
                members[id] = nil
                balancer.forget(id: id)
            }
        }
    }

    // MARK: - DNS names

    /// Under the lock: starts resolving `name` (its first lookup is due at once).
    private func addNameLocked(_ name: DNSName) {
        shutSoleRoute()  // its addresses may replace the endpoint: calls go through the lock
        names[name] = DNSResolution(name: name, refresh: .milliseconds(configuration.dnsRefreshMs), now: Clock.now(),
                                    seed: UInt64(bitPattern: Clock.now().nanoseconds) ^ UInt64(names.count))
        if resolverThread == nil {
            resolverThread = LibraryThread { [unowned self] in self.resolverLoop() }
        }
        resolverWakeup.signal()
    }

    /// The resolver thread: runs the lookups that are due, one at a time (getaddrinfo blocks),
    /// never on a caller's thread; adds new addresses and drains vanished ones.
    private func resolverLoop() {
        lock.lock()
        while !closing {
            let now = Clock.now()
            guard let name = names.first(where: { $0.value.isDue(now: now) })?.key else {
                resolverWakeup.wait(lock, until: names.values.compactMap(\.due).min())
                continue
            }
            names[name]?.lookupStarted(now: now)
            lock.unlock()
            let found = resolveAddresses(name.host, port: name.port)
            lock.lock()
            guard !closing, names[name] != nil else { continue }
            let update: DNSResolution.Update
            switch found {
            case .found(let addresses): update = names[name]?.lookupSucceeded(addresses, now: Clock.now()) ?? .init()
            case .failed(let reason): update = names[name]?.lookupFailed(reason, now: Clock.now()) ?? .init()
            }
            lock.unlock()
            apply(update, of: name)
            lock.lock()
        }
        lock.unlock()
    }

    /// Adds what appeared, drains what vanished, says so.
    private func apply(_ update: DNSResolution.Update, of name: DNSName) {
        var added: [String] = [], skipped: [String] = []
        lock.lock()
        for address in update.added {
            let endpoint = name.endpoint(address: address)
            guard !closing, names[name] != nil else { break }
            if let owner = members.values.first(where: { $0.endpoint.description == endpoint.description }) {
                skipped.append("\(endpoint) (already in the pool\(owner.origin.map { " from \($0)" } ?? ""))")
                continue
            }
            switch shareLeftLocked() {
            case .success(let maxConnections):
                _ = addLocked(endpoint, max: maxConnections, origin: name)
                added.append(endpoint.description)
            case .failure(let failure): skipped.append("\(endpoint) (\(failure.message))")
            }
        }
        let leaving = update.removed.compactMap { address -> (Int, String)? in
            let endpoint = name.endpoint(address: address)
            return members.first { $0.value.origin == name && $0.value.endpoint == endpoint }.map { ($0.key, endpoint.description) }
        }
        let addresses = names[name]?.addresses ?? []
        endpointsChanged.broadcast()
        lock.unlock()
        if !added.isEmpty || !leaving.isEmpty || !skipped.isEmpty {
            post(ClientEvent(kind: .pool, type: "dns_updated", fields: [
                ("name", .string(name.description)), ("addresses", .strings(addresses)),
                ("added", .strings(added)), ("removed", .strings(leaving.map(\.1))), ("skipped", .strings(skipped)),
            ]))
        }
        if let failure = update.failure {
            let kept = update.kept == 0 ? "no address known yet" : "keeping the last \(update.kept) address\(update.kept == 1 ? "" : "es")"
            clientAlert("dns_resolution_failed", update.kept == 0 ? "critical" : "warning",
                        "\(name): lookup failed (\(failure)); \(kept)",
                        [("name", .string(name.description)), ("reason", .string(failure)), ("addresses", .strings(addresses))])
        }
        if update.recovered {
            clientAlert("dns_resolution_recovered", "info", "\(name) resolves again (\(addresses.count) address\(addresses.count == 1 ? "" : "es"))",
                        [("name", .string(name.description)), ("addresses", .strings(addresses))])
        }
        if !leaving.isEmpty { drainAndForget(leaving.map(\.0), drain: .milliseconds(configuration.timeoutMs)) }
    }

    /// An address of a DNS name failed to connect: when all of the name's addresses are failing,
    /// look the name up again (at most once a second).
    private func addressFailed(_ id: Int) {
        let pools: [PoolClient] = lock.withLock {
            guard !closing, let origin = members[id]?.origin else { return [] }
            return members.values.filter { $0.origin == origin }.map(\.pool)
        }
        guard !pools.isEmpty, pools.allSatisfy(\.isFailing) else { return }
        lock.withLock {
            guard let origin = members[id]?.origin else { return }
            if names[origin]?.everyAddressFailed(now: Clock.now()) == true { resolverWakeup.signal() }
        }
    }

    /// Under the lock: a call found no endpoint while a DNS name has no address yet: waits
    /// (within `deadline`) until one is added. nil: nothing to wait for; `.success`: try again;
    /// `.failure`: the deadline passed (ECONNECT with the lookup's error, or ETIMEDOUT while the
    /// first lookup runs).
    private func waitForAddressesLocked(until deadline: Instant) -> Result<Void, CallFailure>? {
        guard members.isEmpty || members.keys.allSatisfy({ balancer.member($0)?.draining ?? true }) else { return nil }
        let pending = { self.names.values.filter { !$0.hasResolved } }
        guard !pending().isEmpty else { return nil }
        let before = nextMemberID
        while nextMemberID == before && !closing {
            if !endpointsChanged.wait(lock, until: deadline) || Clock.now() >= deadline { break }
        }
        if closing { return .failure(CallFailure(.closed, "client is closed")) }
        if nextMemberID != before { return .success(()) }
        let unresolved = pending()
        if let failed = unresolved.first(where: { $0.lastError != nil }) {
            return .failure(CallFailure(.connect, "\(failed.name): cannot resolve: \(failed.lastError ?? "")"))
        }
        let list = unresolved.map(\.name.description).joined(separator: ", ")
        return .failure(CallFailure(.timedOut, "\(list.isEmpty ? "DNS names" : list) not resolved before the deadline"))
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
        let (pools, resolver) = lock.withLock { (members.values.map(\.pool), resolverThread) }
        if let resolver, LibraryThread.isCurrent(resolver) { return true }
        return pools.contains { $0.isLibraryThread() }
    }

    /// Closes every endpoint's pool, then stops the managed daemons (SIGTERM, SIGKILL after
    /// the grace time, reaped, their files and directory removed), the resolver, then the threads.
    public func close(drain: Span) {
        let state: ([PoolClient], LibraryThread?)? = lock.withLock {
            if closing { return nil }
            closing = true
            shutSoleRoute()
            endpointsChanged.broadcast()
            resolverWakeup.signal()
            return (members.keys.sorted().compactMap { members[$0]?.pool }, resolverThread)
        }
        guard let (pools, resolver) = state else { return }
        // Sessions refuse calls first; their workers are joined once the pools cannot block them.
        let sessionWorkers = sessions.beginClose()
        // Shut every endpoint down together: the drain deadline is shared, not added up (an
        // address the resolver is draining gets the shorter of the two deadlines).
        let threads = pools.map { pool in LibraryThread { pool.close(drain: drain) } }
        for (thread, pool) in zip(threads, pools) {
            if thread.isRunning { thread.join() } else { pool.close(drain: drain) }
        }
        for worker in sessionWorkers { worker.join() }
        supervisor?.stop()
        // After a lookup in progress returns (getaddrinfo cannot be interrupted).
        resolver?.join()
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
        /// The DNS name this endpoint is an address of.
        public var origin: DNSName?
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
        /// DNS names: their last good addresses and lookups.
        public var names: [DNSResolution]
        /// Alerts of the client itself (endpoint ejections, panic mode, DNS), by type.
        public var alertsGenerated: [String: Int]
        public var closed: Bool
    }

    public func snapshot() -> Snapshot {
        let (list, balancerState, resolutions, alerts, closed) = lock.withLock {
            (members.sorted { $0.key < $1.key }, balancer, names.values.sorted { $0.name.description < $1.name.description },
             alertsGenerated, closing)
        }
        let counters = events.counters()
        let sessionState = sessions.snapshot()
        let endpoints = list.map { id, member in
            EndpointSnapshot(id: id, endpoint: member.endpoint, pool: member.pool.snapshot(), balancer: balancerState.member(id),
                             maxConnections: member.maxConnections, sessions: sessionState.perEndpoint[id] ?? 0, origin: member.origin)
        }
        return Snapshot(endpoints: endpoints, inPanic: balancerState.inPanic, eventsDelivered: counters.delivered,
                        eventsDropped: counters.dropped, uptime: Clock.now() - startedAt,
                        dispatchQueue: inbox?.counters(), sessions: sessionState, daemons: supervisor?.snapshot(),
                        names: resolutions, alertsGenerated: alerts, closed: closed)
    }

    /// `cause`: why the call that ejected an endpoint failed, when it was refused (a configuration fault).
    private func report(_ changes: [EndpointBalancer.Change], cause: String? = nil) {
        let names = lock.withLock { members.mapValues { $0.endpoint.description } }
        for change in changes {
            switch change {
            case .ejected(let id, let duration):
                let why = cause.map { "refused: \($0); a configuration fault" } ?? "failing"
                clientAlert("endpoint_ejected", "warning", "endpoint \(names[id] ?? "?") ejected for \(Int(duration.milliseconds)) ms (\(why))",
                            [("endpoint", .string(names[id] ?? "?")), ("ejected_for_ms", .double(duration.milliseconds)),
                             ("configuration_fault", .bool(cause != nil))])
            case .readmitted(let id):
                clientAlert("endpoint_readmitted", "info", "endpoint \(names[id] ?? "?") readmitted", [("endpoint", .string(names[id] ?? "?"))])
            case .panic(let on):
                clientAlert(on ? "panic_mode" : "panic_mode_over", on ? "critical" : "info",
                            on ? "fewer than half of the endpoints are available: using all of them" : "enough endpoints are available again", [])
            }
        }
    }

    /// An alert of the client itself (not of one endpoint's pool), counted in alerts_generated.
    private func clientAlert(_ type: String, _ severity: String, _ message: String, _ fields: [(String, EventValue)]) {
        lock.withLock { alertsGenerated[type, default: 0] += 1 }
        post(ClientEvent(kind: .alert, type: type, fields: [
            ("severity", .string(severity)), ("message", .string(message)), ("connection_id", .string("pool")),
        ] + fields))
    }

    private func post(_ event: ClientEvent) {
        guard events.wants(event.kind) else { return }
        events.post(event)
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
