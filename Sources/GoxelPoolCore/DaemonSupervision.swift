/// The life of the daemons a client starts itself (`spawn`), as a pure state machine: events go
/// in with the current instant, actions come out; the runner (GoxelPoolIO's DaemonSupervisor)
/// starts and signals processes, probes sockets, adds and removes endpoints.
///
/// Each of the `instances` slots has at most one *current* daemon (ready, taking calls) and at
/// most one *pending* one (starting: spawned, not yet answering `ping`). A pending daemon that
/// becomes ready while its slot has a current one replaces it: the current one retires (no new
/// calls; what it has in flight drains), then gets SIGTERM and, after `stopGrace`, SIGKILL.
///
/// - A start fails when the command cannot be run, exits before answering, or does not answer
///   within `startTimeout`; the slot then retries after the reconnect backoff.
/// - A current daemon that exits is restarted at once; if daemons of the slot keep dying within
///   `stableUptime` of being ready, restarts wait for the backoff (a crash loop, alerted once).
///   A daemon that stays up for `stableUptime` resets the backoff.
/// - Recycling: when the connections opened to a daemon reach `recycleThreshold`, or it reaches
///   its age limit, its replacement is started; the pool never opens more than
///   `maxConnectionsPerProcess` to it (PoolStateMachine.Settings.maxConnectionAttempts), so a
///   replacement slower than the headroom makes calls wait, never fail.
public struct DaemonSupervision {
    public struct Policy: Sendable, Equatable {
        public var instances = 1
        /// Connections one process may get in its life (probes included); 0: no limit.
        public var maxConnectionsPerProcess = 240
        /// The most connections one daemon's pool may hold at once (pool.max_connections).
        public var poolMaxConnections = 10
        /// 0: no age limit.
        public var maxAge = Span.zero
        public var startTimeout = Span.milliseconds(10_000)
        public var stopGrace = Span.milliseconds(2000)
        public var drainTimeout = Span.milliseconds(60_000)
        public var backoff = Backoff.Policy.grpcDefault
        /// Up this long after being ready: the backoff of its slot is reset.
        public var stableUptime = Span.milliseconds(10_000)
        /// Readiness probes: the first this long after the start, then twice as long each time,
        /// up to `maxProbeInterval`.
        public var firstProbeDelay = Span.milliseconds(5)
        public var maxProbeInterval = Span.milliseconds(100)
        /// A probe's own deadline (connect + ping), within what is left of startTimeout.
        public var probeTimeout = Span.milliseconds(1000)
        public init() {}

        /// Connections kept in reserve for the time the replacement takes to start: twice a full
        /// pool or an eighth of the limit, whichever is more, but at most half of the limit.
        public var recycleHeadroom: Int {
            guard maxConnectionsPerProcess > 0 else { return 0 }
            let wanted = max(2 * poolMaxConnections, (maxConnectionsPerProcess + 7) / 8)
            return min(wanted, maxConnectionsPerProcess / 2)
        }

        /// Lifetime connections at which the replacement of a daemon is started (0: never).
        public var recycleThreshold: Int {
            maxConnectionsPerProcess > 0 ? maxConnectionsPerProcess - recycleHeadroom : 0
        }
    }

    public enum State: String, Sendable, Equatable {
        /// Spawned; probed until it answers `ping`.
        case starting
        /// Taking calls.
        case ready
        /// Replaced: no new calls; its calls in flight drain.
        case retiring
        /// Asked to exit (SIGTERM, then SIGKILL after the grace time), or killed after a failed start.
        case stopping
    }

    /// How a process ended, as waitpid reported it.
    public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)
        /// Not ours to know: someone else reaped it (a host calling waitpid with __WALL).
        case unknown

        public var description: String {
            switch self {
            case .exited(let code): "exit status \(code)"
            case .signaled(let signal): "signal \(signal)\(Self.signalNames[signal].map { " (\($0))" } ?? "")"
            case .unknown: "unknown status (reaped elsewhere)"
            }
        }

        private static let signalNames: [Int32: String] = [
            1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE",
            9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM",
        ]
    }

    public enum RecycleReason: String, Sendable, Equatable {
        case connections, age
    }

    /// Why a start failed.
    public enum StartFailure: Sendable, Equatable {
        /// The command could not be run (not found, not executable, no private directory ...).
        case spawnFailed(String)
        /// It exited before answering `ping`.
        case exited(ExitStatus, after: Span)
        /// It did not answer `ping` within startTimeout (it is killed).
        case timedOut(Span)
    }

    public enum Signal: Sendable, Equatable { case terminate, kill }

    /// The runner's work.
    public enum Action: Sendable, Equatable {
        /// Start a process for this daemon, then report `spawned` or `spawnFailed`.
        case spawn(DaemonID, slot: Int)
        /// Connect to its socket and call `ping` within `timeout`, then report `probeFinished`.
        case probe(DaemonID, timeout: Span)
        /// Route calls to it. `connectionBudget`: connections its pool may open (0: no limit).
        case addEndpoint(DaemonID, slot: Int, connectionBudget: Int)
        /// Stop routing to `old`, run the retirement hook (sessions move here), then remove its
        /// endpoint with this drain time and report `endpointRemoved`.
        case retire(DaemonID, replacement: DaemonID, drain: Span)
        /// It exited unexpectedly: remove its endpoint at once (calls waiting there go elsewhere).
        case removeEndpoint(DaemonID)
        case signal(DaemonID, Signal)
        indirect case event(Event)
    }

    public enum Event: Sendable, Equatable {
        case started(DaemonID, slot: Int, startup: Span, replaces: DaemonID?)
        case exited(DaemonID, slot: Int, status: ExitStatus, expected: Bool, uptime: Span?)
        case recycling(DaemonID, slot: Int, reason: RecycleReason, lifetimeConnections: Int, age: Span)
        case retired(DaemonID, slot: Int, replacedBy: DaemonID?)
        /// Alert: a start failed; the next attempt is in `retryIn`.
        case startFailed(DaemonID, slot: Int, failure: StartFailure, consecutiveFailures: Int, retryIn: Span)
        /// Alert: a ready daemon exited unexpectedly; restarted in `restartIn` (zero: at once).
        case crashed(DaemonID, slot: Int, status: ExitStatus, uptime: Span, restartIn: Span)
        /// Alert: daemons of this slot keep dying soon after their start.
        case crashLoop(slot: Int, consecutiveExits: Int, retryIn: Span)
    }

    /// One daemon process, from its spawn to its exit.
    public struct Daemon: Sendable, Equatable {
        public let id: DaemonID
        public let slot: Int
        public internal(set) var state: State = .starting
        public internal(set) var pid: Int32?
        public let spawnedAt: Instant
        public internal(set) var readyAt: Instant?
        /// Connections opened by readiness probes and by its pool.
        public internal(set) var probeConnections = 0
        public internal(set) var poolConnections = 0
        public internal(set) var recycleReason: RecycleReason?
        public internal(set) var replacedBy: DaemonID?
        var startDeadline: Instant
        var probeAt: Instant?
        var probeInterval: Span
        var probing = false
        var retireAt: Instant?
        var killAt: Instant?
        var stable = false
        /// The library asked it to go (or killed it after a failed start): its exit is no crash.
        var exitExpected = false
        /// Its endpoint is in the client (from ready until removed).
        var routed = false

        public var lifetimeConnections: Int { probeConnections + poolConnections }
    }

    /// One of the `instances` places a daemon runs in; its counters outlive the daemons.
    public struct Slot: Sendable, Equatable {
        public let index: Int
        /// Starts after an unexpected exit or a failed start (not replacements for recycling).
        public internal(set) var restarts = 0
        public internal(set) var recycles = 0
        public internal(set) var startFailures = 0
        public internal(set) var crashes = 0
        /// The last failed start (nil once a daemon of the slot is ready).
        public internal(set) var lastFailure: LastFailure?
        var backoff: Backoff
        var restartAt: Instant?
        var quickExits = 0
        var crashLoopReported = false
        /// The next start follows an unexpected exit or a failure (counted in `restarts`).
        var nextStartIsRestart = false
    }

    public struct LastFailure: Sendable, Equatable {
        public let daemon: DaemonID
        public let failure: StartFailure
    }

    /// What a call that finds no endpoint to go to should do.
    public enum Availability: Sendable, Equatable {
        /// Every slot has a ready daemon: no other endpoint is coming.
        case serving
        /// A slot has no ready daemon and its start is under way or due: wait for it (within
        /// the call's deadline).
        case starting
        /// No slot has a ready daemon and the last start of each failed: fail now with this.
        case failing(DaemonID, slot: Int, StartFailure)
        case stopped
    }

    public let policy: Policy
    public private(set) var daemons: [DaemonID: Daemon] = [:]
    public private(set) var slots: [Slot]
    public private(set) var isStopping = false
    public private(set) var daemonsStarted = 0
    private var nextDaemonNumber = 1
    private var random: SplitMix64

    public init(policy: Policy, seed: UInt64 = 0xDAE) {
        self.policy = policy
        slots = (0..<max(1, policy.instances)).map { Slot(index: $0, backoff: Backoff(policy: policy.backoff)) }
        random = SplitMix64(seed: seed)
    }

    // MARK: - Queries

    /// The ready, not retiring daemon of a slot.
    public func current(ofSlot slot: Int) -> Daemon? {
        daemons.values.first { $0.slot == slot && $0.state == .ready }
    }

    /// The daemon of a slot that is starting.
    public func pending(ofSlot slot: Int) -> Daemon? {
        daemons.values.first { $0.slot == slot && $0.state == .starting && !$0.exitExpected }
    }

    /// Every daemon not yet reaped, by id.
    public var liveDaemons: [Daemon] { daemons.keys.sorted().compactMap { daemons[$0] } }

    /// Stopping and every daemon reaped: the runner may clean up and leave.
    public var isFinished: Bool { isStopping && daemons.isEmpty }

    public var availability: Availability {
        if isStopping { return .stopped }
        let waitingForADaemon = slots.filter { current(ofSlot: $0.index) == nil }
        if waitingForADaemon.isEmpty { return .serving }
        if waitingForADaemon.contains(where: { $0.lastFailure == nil }) { return .starting }
        if waitingForADaemon.count == slots.count, let slot = waitingForADaemon.first, let last = slot.lastFailure {
            return .failing(last.daemon, slot: slot.index, last.failure)
        }
        // Some serve, the others keep failing: calls go to those that serve.
        return .serving
    }

    /// The earliest instant at which `tick` has something to do.
    public func nextDeadline() -> Instant? {
        var next: Instant?
        func consider(_ instant: Instant?) {
            guard let instant else { return }
            if let current = next, current <= instant { return }
            next = instant
        }
        for daemon in daemons.values {
            switch daemon.state {
            case .starting:
                if !daemon.exitExpected { consider(daemon.startDeadline) }
                if !daemon.probing { consider(daemon.probeAt) }
            case .ready:
                if daemon.recycleReason == nil { consider(daemon.retireAt) }
                if !daemon.stable, let ready = daemon.readyAt { consider(ready + policy.stableUptime) }
            case .retiring: break
            case .stopping: consider(daemon.killAt)
            }
        }
        for slot in slots { consider(slot.restartAt) }
        return next
    }

    // MARK: - Events

    /// Starts every slot's first daemon.
    public mutating func start(now: Instant) -> [Action] {
        var actions: [Action] = []
        for index in slots.indices { spawn(slot: index, now: now, into: &actions) }
        return actions
    }

    /// The process of `id` runs with this pid.
    public mutating func spawned(_ id: DaemonID, pid: Int32, now: Instant) -> [Action] {
        guard var daemon = daemons[id], daemon.pid == nil else { return [] }
        daemon.pid = pid
        daemon.probeAt = now + policy.firstProbeDelay
        // Spawned while stopping (the stop came in meanwhile): it serves nothing, killed at once.
        if isStopping {
            daemon.state = .stopping
            daemon.exitExpected = true
        }
        daemons[id] = daemon
        return isStopping ? [.signal(id, .kill)] : []
    }

    /// No process could be started for `id`.
    public mutating func spawnFailed(_ id: DaemonID, reason: String, now: Instant) -> [Action] {
        guard let daemon = daemons.removeValue(forKey: id) else { return [] }
        var actions: [Action] = []
        startFailed(daemon, .spawnFailed(reason), now: now, into: &actions)
        return actions
    }

    /// A readiness probe finished. `connected`: it opened a connection (one of the daemon's
    /// lifetime connections); `answered`: the daemon answered `ping`.
    public mutating func probeFinished(_ id: DaemonID, connected: Bool, answered: Bool, now: Instant) -> [Action] {
        guard var daemon = daemons[id] else { return [] }
        daemon.probing = false
        if connected { daemon.probeConnections += 1 }
        guard daemon.state == .starting, !daemon.exitExpected else {
            daemons[id] = daemon
            return []
        }
        guard answered else {
            daemon.probeInterval = min(Span(nanoseconds: daemon.probeInterval.nanoseconds.addingSaturating(daemon.probeInterval.nanoseconds)),
                                       policy.maxProbeInterval)
            daemon.probeAt = now + daemon.probeInterval
            daemons[id] = daemon
            return []
        }
        return becameReady(daemon, now: now)
    }

    /// The pool of `id` has opened `count` connections in all.
    public mutating func connectionsOpened(_ id: DaemonID, count: Int, now: Instant) -> [Action] {
        guard var daemon = daemons[id], count > daemon.poolConnections else { return [] }
        daemon.poolConnections = count
        daemons[id] = daemon
        var actions: [Action] = []
        let threshold = policy.recycleThreshold
        if threshold > 0, daemon.lifetimeConnections >= threshold {
            recycle(id, reason: .connections, now: now, into: &actions)
        }
        return actions
    }

    /// The process of `id` was reaped.
    public mutating func exited(_ id: DaemonID, status: ExitStatus, now: Instant) -> [Action] {
        guard let daemon = daemons.removeValue(forKey: id) else { return [] }
        var actions: [Action] = []
        let uptime = daemon.readyAt.map { now - $0 }
        let expected = daemon.exitExpected || isStopping
        actions.append(.event(.exited(id, slot: daemon.slot, status: status, expected: expected, uptime: uptime)))
        switch daemon.state {
        case .starting where !daemon.exitExpected && !isStopping:
            startFailed(daemon, .exited(status, after: now - daemon.spawnedAt), now: now, into: &actions)
        case .ready where !isStopping:
            crashed(daemon, status: status, now: now, into: &actions)
        case .retiring, .stopping:
            if daemon.replacedBy != nil || daemon.state == .retiring {
                actions.append(.event(.retired(id, slot: daemon.slot, replacedBy: daemon.replacedBy)))
            }
        default:
            break
        }
        // Still routed (it died while retiring, or at shutdown): its endpoint goes.
        if daemon.routed && daemon.state == .ready { actions.insert(.removeEndpoint(id), at: 0) }
        return actions
    }

    /// The endpoint of a retiring daemon is gone (its calls drained): it is asked to exit.
    public mutating func endpointRemoved(_ id: DaemonID, now: Instant) -> [Action] {
        guard var daemon = daemons[id] else { return [] }
        daemon.routed = false
        daemons[id] = daemon
        guard daemon.state == .retiring else { return [] }
        return stop(id, now: now)
    }

    /// Timers: start deadlines, probes, age limits, restarts after backoff, SIGKILL after grace.
    public mutating func tick(now: Instant) -> [Action] {
        var actions: [Action] = []
        for id in daemons.keys.sorted() {
            guard var daemon = daemons[id] else { continue }
            switch daemon.state {
            case .starting:
                if daemon.exitExpected { break }
                if now >= daemon.startDeadline {
                    // Never answered: killed at once (it serves nothing), and the slot backs off.
                    daemon.exitExpected = true
                    daemon.state = .stopping
                    daemons[id] = daemon
                    startFailed(daemon, .timedOut(policy.startTimeout), now: now, into: &actions)
                    if daemon.pid != nil { actions.append(.signal(id, .kill)) }
                } else if !daemon.probing, daemon.pid != nil, let due = daemon.probeAt, due <= now {
                    daemon.probing = true
                    daemon.probeAt = nil
                    daemons[id] = daemon
                    let left = daemon.startDeadline - now
                    actions.append(.probe(id, timeout: min(left, policy.probeTimeout)))
                }
            case .ready:
                if !daemon.stable, let ready = daemon.readyAt, now - ready >= policy.stableUptime {
                    daemon.stable = true
                    daemons[id] = daemon
                    slots[daemon.slot].backoff.succeeded()
                    slots[daemon.slot].quickExits = 0
                    slots[daemon.slot].crashLoopReported = false
                }
                if daemon.recycleReason == nil, let due = daemon.retireAt, due <= now {
                    recycle(id, reason: .age, now: now, into: &actions)
                }
            case .retiring:
                break
            case .stopping:
                if let due = daemon.killAt, due <= now {
                    daemon.killAt = nil
                    daemons[id] = daemon
                    actions.append(.signal(id, .kill))
                }
            }
        }
        for index in slots.indices {
            guard let due = slots[index].restartAt, due <= now else { continue }
            slots[index].restartAt = nil
            if isStopping { continue }
            // Still needed: no daemon at all, or one whose replacement failed to start.
            let current = self.current(ofSlot: index)
            if pending(ofSlot: index) == nil && (current == nil || current?.recycleReason != nil) {
                spawn(slot: index, now: now, into: &actions)
            }
        }
        return actions
    }

    /// Stops everything: SIGTERM to every daemon (SIGKILL after the grace time), no restarts.
    public mutating func stopAll(now: Instant) -> [Action] {
        guard !isStopping else { return [] }
        isStopping = true
        var actions: [Action] = []
        for index in slots.indices { slots[index].restartAt = nil }
        for id in daemons.keys.sorted() { actions += stop(id, now: now) }
        return actions
    }

    // MARK: - Rules

    private mutating func spawn(slot index: Int, now: Instant, into actions: inout [Action]) {
        let id = DaemonID(nextDaemonNumber)
        nextDaemonNumber += 1
        daemonsStarted += 1
        if slots[index].nextStartIsRestart {
            slots[index].nextStartIsRestart = false
            slots[index].restarts += 1
        }
        daemons[id] = Daemon(id: id, slot: index, spawnedAt: now, startDeadline: now + policy.startTimeout,
                             probeInterval: policy.firstProbeDelay)
        actions.append(.spawn(id, slot: index))
    }

    private mutating func becameReady(_ started: Daemon, now: Instant) -> [Action] {
        var daemon = started
        var actions: [Action] = []
        let slot = daemon.slot
        let previous = current(ofSlot: slot)
        daemon.state = .ready
        daemon.readyAt = now
        daemon.routed = true
        if policy.maxAge > .zero {
            // Up to 10 % early, so daemons started together are not replaced together.
            let early = Double(policy.maxAge.nanoseconds) * 0.1 * random.nextUnit()
            daemon.retireAt = now + Span(nanoseconds: policy.maxAge.nanoseconds - Int64(early))
        }
        daemons[daemon.id] = daemon
        slots[slot].lastFailure = nil
        let budget = policy.maxConnectionsPerProcess > 0 ? max(1, policy.maxConnectionsPerProcess - daemon.lifetimeConnections) : 0
        actions.append(.addEndpoint(daemon.id, slot: slot, connectionBudget: budget))
        actions.append(.event(.started(daemon.id, slot: slot, startup: now - daemon.spawnedAt, replaces: previous?.id)))
        if var old = previous {
            old.state = .retiring
            old.replacedBy = daemon.id
            daemons[old.id] = old
            slots[slot].recycles += 1
            actions.append(.retire(old.id, replacement: daemon.id, drain: policy.drainTimeout))
        }
        return actions
    }

    private mutating func recycle(_ id: DaemonID, reason: RecycleReason, now: Instant, into actions: inout [Action]) {
        guard var daemon = daemons[id], daemon.state == .ready, daemon.recycleReason == nil, !isStopping else { return }
        daemon.recycleReason = reason
        daemons[id] = daemon
        actions.append(.event(.recycling(id, slot: daemon.slot, reason: reason, lifetimeConnections: daemon.lifetimeConnections,
                                         age: now - (daemon.readyAt ?? daemon.spawnedAt))))
        // A start already under way (or waiting for its backoff) will be the replacement.
        guard pending(ofSlot: daemon.slot) == nil, slots[daemon.slot].restartAt == nil else { return }
        spawn(slot: daemon.slot, now: now, into: &actions)
    }

    private mutating func startFailed(_ daemon: Daemon, _ failure: StartFailure, now: Instant, into actions: inout [Action]) {
        let index = daemon.slot
        slots[index].startFailures += 1
        slots[index].lastFailure = LastFailure(daemon: daemon.id, failure: failure)
        guard !isStopping else { return }
        let delay = slots[index].backoff.failed(random: &random)
        slots[index].restartAt = now + delay
        slots[index].nextStartIsRestart = true
        actions.append(.event(.startFailed(daemon.id, slot: index, failure: failure,
                                           consecutiveFailures: slots[index].backoff.consecutiveFailures, retryIn: delay)))
    }

    private mutating func crashed(_ daemon: Daemon, status: ExitStatus, now: Instant, into actions: inout [Action]) {
        let index = daemon.slot
        let uptime = now - (daemon.readyAt ?? now)
        slots[index].crashes += 1
        var delay = Span.zero
        if daemon.stable {
            slots[index].quickExits = 0
        } else {
            slots[index].quickExits += 1
            // The first quick death is restarted at once; the ones after wait for the backoff.
            if slots[index].quickExits > 1 { delay = slots[index].backoff.failed(random: &random) }
        }
        actions.append(.event(.crashed(daemon.id, slot: index, status: status, uptime: uptime, restartIn: delay)))
        if delay > .zero && !slots[index].crashLoopReported {
            slots[index].crashLoopReported = true
            actions.append(.event(.crashLoop(slot: index, consecutiveExits: slots[index].quickExits, retryIn: delay)))
        }
        // A replacement already starting takes over.
        guard pending(ofSlot: index) == nil, slots[index].restartAt == nil else { return }
        slots[index].nextStartIsRestart = true
        if delay > .zero {
            slots[index].restartAt = now + delay
        } else {
            spawn(slot: index, now: now, into: &actions)
        }
    }

    /// SIGTERM now (SIGKILL after the grace time); a daemon still starting is killed at once.
    private mutating func stop(_ id: DaemonID, now: Instant) -> [Action] {
        guard var daemon = daemons[id] else { return [] }
        let wasStarting = daemon.state == .starting
        let alreadyStopping = daemon.state == .stopping
        daemon.exitExpected = true
        daemon.state = .stopping
        var actions: [Action] = []
        if daemon.pid != nil && !alreadyStopping {
            if wasStarting || policy.stopGrace <= .zero {
                actions.append(.signal(id, .kill))
            } else {
                actions.append(.signal(id, .terminate))
                daemon.killAt = now + policy.stopGrace
            }
        }
        daemons[id] = daemon
        return actions
    }
}

/// One daemon process's identity: a new one for every start (restarts and replacements included).
public struct DaemonID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let value: Int
    public init(_ value: Int) { self.value = value }
    public static func < (a: Self, b: Self) -> Bool { a.value < b.value }
    public var description: String { "daemon \(value)" }
}

/// Turns a daemon's output lines into log events at a bounded rate (a token bucket: `burst`
/// lines at once, `perSecond` after), so a chatty daemon cannot flood the listeners. What is
/// dropped is counted and said with the next line let through.
public struct LineRateLimiter: Sendable, Equatable {
    public enum Decision: Sendable, Equatable {
        /// Emit the line; `droppedBefore` lines were dropped since the last one emitted.
        case emit(droppedBefore: Int)
        case drop
    }

    public let burst: Int
    public let perSecond: Double
    private var tokens: Double
    private var updatedAt: Instant
    private var droppedSinceEmit = 0
    public private(set) var droppedTotal = 0

    public init(burst: Int = 50, perSecond: Double = 20, now: Instant) {
        self.burst = max(1, burst)
        self.perSecond = max(0, perSecond)
        tokens = Double(self.burst)
        updatedAt = now
    }

    public mutating func admit(now: Instant) -> Decision {
        let elapsed = Double(max(0, (now - updatedAt).nanoseconds)) / 1e9
        tokens = min(Double(burst), tokens + elapsed * perSecond)
        updatedAt = now
        guard tokens >= 1 else {
            droppedSinceEmit += 1
            droppedTotal += 1
            return .drop
        }
        tokens -= 1
        defer { droppedSinceEmit = 0 }
        return .emit(droppedBefore: droppedSinceEmit)
    }
}
