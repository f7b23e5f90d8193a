import CJansson
import Glibc
import GoxelPoolCore

/// Runs the session placement state machine for a client: opens (with their FIFO wait), closes,
/// endpoint changes, and the events sessions report. Lock order: the client's lock before this
/// one; this lock is never held while calling into the client, a pool or a session's I/O.
public final class SessionManager: @unchecked Sendable {
    let configuration: ClientConfiguration
    let events: EventDispatcher
    private let lock = PthreadMutex()
    private var placement: SessionPlacement
    private var endpoints: [Int: (endpoint: Endpoint, pool: PoolClient)] = [:]
    private var sessions: [SessionID: Session] = [:]
    private var waiters: [SessionID: PlacementWaiter] = [:]
    /// Broadcast when an endpoint is added or a session leaves one (relocations wait for it).
    private let endpointsChanged = Condition()
    private var nextID = 1
    /// Makes checkpoint file names unique to this client: host pid, a clock reading, an address.
    private let token: String
    /// Which endpoints may take a new session now (not draining, not ejected, circuit not open);
    /// set by the client, called without this lock held.
    var availability: (() -> [Int: Bool])?
    /// A durable session naming no checkpoint_dir uses this (managed daemons' private directory).
    public var defaultCheckpointDir: String?
    private var counters = Counters()

    struct Counters {
        var opened = 0, closed = 0, restores = 0, lost = 0, moves = 0, rejectedBusy = 0, timedOut = 0
        var checkpoints = 0, checkpointFailures = 0
        var alerts: [String: Int] = [:]
    }

    final class PlacementWaiter {
        let wakeup = Condition()
        var result: Result<Int, SessionPlacement.Failure>?
    }

    init(configuration: ClientConfiguration, events: EventDispatcher) {
        self.configuration = configuration
        self.events = events
        placement = SessionPlacement(maxWaiters: configuration.pool.maxWaiters)
        var seed = SplitMix64(seed: UInt64(bitPattern: Clock.now().nanoseconds) ^ UInt64(getpid()) << 32)
        token = "\(getpid())-\(String(seed.next() & 0xFFFF_FFFF_FFFF, radix: 16))"
    }

    // MARK: - Endpoints (called by the client, under its lock)

    /// `placementName` is what keys are hashed with: the endpoint's text, or for a managed daemon
    /// its slot (a restarted or replacement daemon has a new socket, and keys must not move).
    func endpointAdded(id: Int, endpoint: Endpoint, pool: PoolClient, placementName: String? = nil) {
        lock.withLock {
            endpoints[id] = (endpoint, pool)
            apply(placement.addEndpoint(id: id, name: placementName ?? endpoint.description))
            endpointsChanged.broadcast()
        }
    }

    /// The endpoint is being removed: durable sessions on it move to another daemon (a
    /// checkpoint there first unless `daemonGone`, then a restore on the new one), waiting up to
    /// their restore_timeout_ms for one to be free; the others end. Returns when every one of
    /// them has moved or ended.
    func endpointRemoving(id: Int, daemonGone: Bool = false) {
        refreshAvailability()
        let (stranded, oldPool): ([Session], PoolClient?) = lock.withLock {
            let (ids, actions) = placement.removeEndpoint(id: id)
            apply(actions)
            return (ids.compactMap { sessions[$0] }, endpoints[id]?.pool)
        }
        var moving: [Session] = []
        for session in stranded {
            let reason = daemonGone ? "its daemon died" : "its endpoint was removed"
            if relocate(session, reason: reason, checkpointFirst: !daemonGone) { moving.append(session) }
            // Its calls waiting for a connection there come back (not sent) and wait for the move.
            oldPool?.failWaiters()
        }
        for session in moving { session.waitUntilSettled() }
        lock.withLock { endpoints[id] = nil }
    }

    /// Asks a durable session to move to a free daemon, waiting up to its restore_timeout_ms for
    /// one; ends the others. True when a move was asked for.
    private func relocate(_ session: Session, reason: String, checkpointFirst: Bool) -> Bool {
        guard session.options.durable else {
            session.end("the session's daemon is gone (\(reason)); a session that is not durable has no document to carry")
            return false
        }
        // Waits for a free daemon (a managed daemon's successor, a session closing elsewhere).
        let deadline = Clock.now() + .milliseconds(session.options.restoreTimeoutMs)
        var target: (Int, Endpoint, PoolClient)?
        while target == nil {
            refreshAvailability()
            let closing = lock.withLock { () -> Bool in
                if placement.isClosed { return true }
                let request = SessionPlacement.Request(key: session.options.key, exclusive: session.options.exclusive)
                let (chosen, actions) = placement.relocate(session.id, request)
                apply(actions)
                if let chosen, let entry = endpoints[chosen] {
                    counters.moves += 1
                    target = (chosen, entry.endpoint, entry.pool)
                } else if Clock.now() < deadline {
                    endpointsChanged.wait(lock, until: min(deadline, Clock.now() + .milliseconds(250)))
                }
                return false
            }
            if closing { return false }
            if target == nil && Clock.now() >= deadline { break }
        }
        guard let (targetID, endpoint, pool) = target else {
            let why = "\(reason), and no other daemon became free to take the session within restore_timeout_ms (\(session.options.restoreTimeoutMs) ms)"
            session.end(why)
            lost(session, reason: why)
            return false
        }
        pool.setIdentifying(true)
        return session.requestMove(to: targetID, endpoint: endpoint, pool: pool, checkpointFirst: checkpointFirst)
    }

    /// Told by a pool: a new connection to endpoint `id` reached daemon `pid`.
    func daemonIdentified(endpointID id: Int, pid: Int64) {
        let list = lock.withLock { sessions.values.filter { $0.currentEndpointID == id } }
        for session in list { session.daemonIdentified(pid) }
    }

    // MARK: - Open and close

    public func open(options: SessionOptions, timeout: Span?) -> Result<Session, CallFailure> {
        let deadline = Clock.now() + (timeout ?? .milliseconds(configuration.timeoutMs))
        refreshAvailability()
        lock.lock()
        let id = SessionID(nextID)
        nextID += 1
        let (decision, actions) = placement.request(id, .init(key: options.key, exclusive: options.exclusive))
        apply(actions)
        var placedOn: Int
        switch decision {
        case .placed(let endpoint): placedOn = endpoint
        case .failed(let failure):
            if failure == .busy { counters.rejectedBusy += 1 }
            lock.unlock()
            return .failure(describe(failure))
        case .queued:
            let waiter = PlacementWaiter()
            waiters[id] = waiter
            while waiter.result == nil {
                let now = Clock.now()
                if now >= deadline {
                    if placement.waiterTimedOut(id) {
                        waiters[id] = nil
                        counters.timedOut += 1
                        let held = placement.members.filter { $0.sessionCount > 0 }.count
                        lock.unlock()
                        return .failure(CallFailure(.timedOut, "no daemon became free for the session before the deadline (\(held) of the client's daemons hold sessions)"))
                    }
                    continue
                }
                // Wake now and then to see endpoints that came back (readmitted, circuit closed).
                if !waiter.wakeup.wait(lock, until: min(deadline, now + .milliseconds(250))) && waiter.result == nil {
                    lock.unlock()
                    refreshAvailability()
                    lock.lock()
                }
            }
            waiters[id] = nil
            switch waiter.result {
            case .success(let endpoint)?: placedOn = endpoint
            case .failure(let failure)?:
                lock.unlock()
                return .failure(describe(failure))
            case nil:
                lock.unlock()
                return .failure(CallFailure(.closed, "client is closed"))
            }
        }
        guard let entry = endpoints[placedOn] else {
            apply(placement.release(id))
            lock.unlock()
            return .failure(CallFailure(.unavailable, "the session's endpoint was removed while it opened"))
        }
        let (endpoint, pool) = (entry.endpoint, entry.pool)
        lock.unlock()

        // Learn which daemon process holds the document from now on.
        pool.setIdentifying(true)
        var pid: Int64?
        switch pool.call(method: "ping", params: nil, timeout: deadline - Clock.now(), check: .learn) {
        case .done(.result(let value), let learned):
            json_decref(UnsafeMutablePointer(value))
            pid = learned
        case .done(.failure(let failure), _):
            releasePlacement(id)
            return .failure(CallFailure(failure.status, "cannot open a session on \(endpoint): \(failure.message)"))
        case .done(let other, _):
            if case .rpcError(let value) = other { json_decref(UnsafeMutablePointer(value)) }
            releasePlacement(id)
            return .failure(CallFailure(.proto, "cannot open a session on \(endpoint): ping was not answered with a result"))
        case .daemonChanged:
            releasePlacement(id)
            return .failure(CallFailure(.proto, "internal error: a daemon check without an expected pid"))
        }
        if options.durable && pid == nil {
            releasePlacement(id)
            return .failure(CallFailure(.proto, "the daemon at \(endpoint) does not report its pid (status), so its restarts cannot be seen: a durable session needs it"))
        }
        let session = Session(id: id, options: options, configuration: configuration, manager: self, endpointID: placedOn,
                              endpoint: endpoint, pool: pool, pid: pid, checkpointToken: "\(token)-\(id.value)")
        if let failure = session.start(deadline: deadline) {
            _ = session.markClosed("open failed")
            releasePlacement(id)
            return .failure(failure)
        }
        let closing = lock.withLock { () -> Bool in
            if placement.isClosed { return true }
            sessions[id] = session
            counters.opened += 1
            return false
        }
        if closing {
            session.markClosed("client is closed")?.join()
            return .failure(CallFailure(.closed, "client is closed"))
        }
        post(session, "session_opened", [("daemon_pid", pid.map { .int($0) } ?? .null), ("durable", .bool(options.durable)),
                                         ("exclusive", .bool(options.exclusive)), ("key", options.key.map { .string($0) } ?? .null)])
        return .success(session)
    }

    /// Closes a session: its daemon is free for the next one, and the checkpoint files this
    /// process can reach are removed.
    public func close(_ session: Session) {
        session.markClosed("session is closed")?.join()
        let endpoint = lock.withLock { () -> Endpoint? in
            guard sessions.removeValue(forKey: session.id) != nil else { return nil }
            apply(placement.release(session.id))
            endpointsChanged.broadcast()
            counters.closed += 1
            return session.info().endpoint
        }
        guard let endpoint else { return }
        // The daemon wrote them; on a Unix socket it runs on this machine, so they can be removed
        // here (a daemon running as another user may own them: then they stay).
        if case .unix = endpoint { for path in session.checkpointFiles { unlink(path) } }
        post(session, "session_closed", [])
    }

    private func releasePlacement(_ id: SessionID) {
        lock.withLock {
            apply(placement.release(id))
            endpointsChanged.broadcast()
        }
    }

    /// Client shutdown, step 1: waiting opens fail, sessions refuse calls. Returns their worker
    /// threads, to be joined once the pools are closed (so nothing blocks on a daemon).
    func beginClose() -> [LibraryThread] {
        let list: [Session] = lock.withLock {
            apply(placement.close())
            endpointsChanged.broadcast()
            defer { sessions.removeAll() }
            return Array(sessions.values)
        }
        return list.compactMap { $0.markClosed("client is closed") }
    }

    // MARK: - Reports from sessions

    func checkpointed(_ session: Session, path: String, folded: Int, milliseconds: Double) {
        lock.withLock { counters.checkpoints += 1 }
        post(session, "checkpoint", [("path", .string(path)), ("calls_folded", .int(Int64(folded))), ("duration_ms", .double(milliseconds))])
    }

    func checkpointFailed(_ session: Session, path: String, message: String) {
        lock.withLock {
            counters.checkpointFailures += 1
            counters.alerts["checkpoint_failed", default: 0] += 1
        }
        alert(session, "checkpoint_failed", "warning", "checkpoint of session \(session.id.value) to \(path) failed: \(message)",
              [("path", .string(path))])
    }

    func restoring(_ session: Session, pidBefore: Int64?, pidAfter: Int64) {
        post(session, "session_restoring", [("pid_before", pidBefore.map { .int($0) } ?? .null), ("pid_after", .int(pidAfter))])
    }

    func restored(_ session: Session, pidBefore: Int64?, pidAfter: Int64, replayed: Int, milliseconds: Double, moved: Bool) {
        lock.withLock { counters.restores += 1 }
        post(session, "session_restored", [("pid_before", pidBefore.map { .int($0) } ?? .null), ("pid_after", .int(pidAfter)),
                                           ("calls_replayed", .int(Int64(replayed))), ("duration_ms", .double(milliseconds)),
                                           ("moved", .bool(moved))])
    }

    func lost(_ session: Session, reason: String) {
        lock.withLock {
            counters.lost += 1
            counters.alerts["session_lost", default: 0] += 1
        }
        alert(session, "session_lost", "critical", "session \(session.id.value) lost its document: \(reason)", [])
    }

    // MARK: - Snapshot

    public struct Snapshot {
        public var open, exclusive, durable, waiting: Int
        public var opened, closed, restores, lost, moves, rejectedBusy, timedOut, checkpoints, checkpointFailures: Int
        public var journalEntries: Int
        public var alerts: [String: Int]
        /// Sessions per endpoint id.
        public var perEndpoint: [Int: Int]
        public var sessions: [Session.Info]
    }

    public func snapshot() -> Snapshot {
        let (list, waiting, counts, perEndpoint) = lock.withLock {
            (sessions.values.sorted { $0.id < $1.id }, placement.waitingCount, counters,
             Dictionary(uniqueKeysWithValues: placement.members.map { ($0.id, $0.sessionCount) }))
        }
        let infos = list.map { $0.info() }
        return Snapshot(open: infos.count, exclusive: infos.filter(\.exclusive).count, durable: infos.filter(\.durable).count,
                        waiting: waiting, opened: counts.opened, closed: counts.closed, restores: counts.restores, lost: counts.lost,
                        moves: counts.moves, rejectedBusy: counts.rejectedBusy, timedOut: counts.timedOut,
                        checkpoints: counts.checkpoints, checkpointFailures: counts.checkpointFailures,
                        journalEntries: infos.reduce(0) { $0 + $1.journalLength }, alerts: counts.alerts,
                        perEndpoint: perEndpoint, sessions: infos)
    }

    // MARK: - Internals

    /// Under the lock: hands waiters their endpoint or their failure.
    private func apply(_ actions: [SessionPlacement.Action]) {
        for action in actions {
            switch action {
            case .place(let id, let endpoint):
                guard let waiter = waiters[id] else { continue }
                waiter.result = .success(endpoint)
                waiter.wakeup.signal()
            case .fail(let id, let failure):
                guard let waiter = waiters[id] else { continue }
                waiter.result = .failure(failure)
                waiter.wakeup.signal()
            }
        }
    }

    private func refreshAvailability() {
        guard let current = availability?() else { return }
        lock.withLock {
            for (id, available) in current.sorted(by: { $0.key < $1.key }) { apply(placement.setAvailable(id: id, available)) }
        }
    }

    private func describe(_ failure: SessionPlacement.Failure) -> CallFailure {
        switch failure {
        case .busy: CallFailure(.busy, "\(configuration.pool.maxWaiters) session opens are already waiting (pool.max_waiters)")
        case .closed: CallFailure(.closed, "client is closed")
        }
    }

    private func post(_ session: Session, _ type: String, _ fields: [(String, EventValue)]) {
        guard events.wants(.session) else { return }
        let info = session.info()
        events.post(ClientEvent(kind: .session, type: type, fields: [
            ("session_id", .int(Int64(session.id.value))), ("endpoint", .string(info.endpoint.description)),
        ] + fields))
    }

    private func alert(_ session: Session, _ type: String, _ severity: String, _ message: String, _ fields: [(String, EventValue)]) {
        guard events.wants(.alert) else { return }
        let info = session.info()
        events.post(ClientEvent(kind: .alert, type: type, fields: [
            ("severity", .string(severity)), ("message", .string(message)), ("connection_id", .string("pool")),
            ("session_id", .int(Int64(session.id.value))), ("endpoint", .string(info.endpoint.description)),
        ] + fields))
    }
}
