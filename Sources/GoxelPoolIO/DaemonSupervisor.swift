import CDaemonSpawn
import CJansson
import Glibc
import GoxelPoolCore

/// Runs DaemonSupervision: starts the `spawn` daemons in a private directory, probes them,
/// makes them the client's endpoints, restarts and recycles them, and stops them at close.
///
/// Threads and processes: one supervisor thread (every daemon is started from it, so its reaper's
/// PR_SET_PDEATHSIG ties the daemons to it; it lives until close), which polls each daemon's
/// status pipe (its reaper reports the end) and output pipe and feeds the state machine; a few
/// workers for the blocking steps (readiness probes, endpoint removal with its drain); per daemon,
/// the daemon and its reaper (daemon_spawn.h). The state machine is changed on the supervisor
/// thread only; the lock guards it for snapshots. No signal handler is installed and no wait
/// but for the library's own reapers is made.
public final class DaemonSupervisor: @unchecked Sendable {
    private let configuration: ClientConfiguration
    private let spawn: ClientConfiguration.SpawnConfiguration
    private unowned let client: MultiPoolClient
    private let events: EventDispatcher
    private let lock = PthreadMutex()
    private var machine: DaemonSupervision
    private var inbox: [Message] = []
    private var openedCounts: [DaemonID: Int] = [:]
    private var stopRequested = false
    /// Supervisor thread only.
    private var processes: [DaemonID: DaemonProcess] = [:]
    private var lastAvailability: MultiPoolClient.ManagedAvailability?
    /// Per slot: the command line and last output of its last failed start, for messages.
    private var failureDetails: [Int: (command: [String], output: [String])] = [:]
    /// Under the lock: pids of the live daemons (snapshots), counters.
    private var pids: [DaemonID: Int32] = [:]
    private var alertsGenerated: [String: Int] = [:]
    private var outputLinesDropped = 0
    /// The private directory (mode 0700) holding the sockets; nil until created.
    public private(set) var directory: String?
    private let wakeFD: Int32
    private var thread: LibraryThread?
    /// Probes (bounded by a second each) and endpoint removals (bounded by the drain time) apart,
    /// so a long drain never delays a start.
    private let probes: WorkerGroup
    private let removals: WorkerGroup

    enum Message {
        case probeFinished(DaemonID, connected: Bool, answered: Bool)
        case endpointRemoved(DaemonID)
    }

    init(configuration: ClientConfiguration, client: MultiPoolClient) {
        self.configuration = configuration
        spawn = configuration.spawn ?? ClientConfiguration.SpawnConfiguration()
        self.client = client
        events = client.events
        var policy = DaemonSupervision.Policy()
        policy.instances = spawn.instances
        policy.maxConnectionsPerProcess = spawn.maxConnectionsPerProcess
        policy.poolMaxConnections = configuration.pooling ? configuration.pool.maxConnections : 1
        policy.maxAge = .milliseconds(spawn.maxAgeMs)
        policy.startTimeout = .milliseconds(spawn.startTimeoutMs)
        policy.stopGrace = .milliseconds(spawn.stopGraceMs)
        policy.drainTimeout = .milliseconds(spawn.drainTimeoutMs)
        let reconnect = configuration.reconnect
        policy.backoff = Backoff.Policy(initial: .milliseconds(reconnect.initialBackoffMs), multiplier: reconnect.multiplier,
                                        jitter: reconnect.jitter, maximum: .milliseconds(reconnect.maxBackoffMs))
        machine = DaemonSupervision(policy: policy, seed: UInt64(bitPattern: Clock.now().nanoseconds) ^ UInt64(getpid()))
        wakeFD = gxp_wakeup_fd()
        probes = WorkerGroup(threads: min(spawn.instances, 4), capacity: 4 * spawn.instances + 8)
        removals = WorkerGroup(threads: min(spawn.instances, 8), capacity: 4 * spawn.instances + 8)
        // Made now (not at the first start) so a durable session can default its checkpoints here.
        _ = makeDirectory()
        thread = LibraryThread { [unowned self] in self.run() }
        if !(thread?.isRunning ?? false) {
            client.setManagedAvailability(.failing(CallFailure(.connect, "managed daemons: cannot start the supervisor thread")))
        }
    }

    deinit { if wakeFD >= 0 { close(wakeFD) } }

    public func isSupervisorThread() -> Bool {
        (thread.map(LibraryThread.isCurrent) ?? false) || probes.isWorkerThread() || removals.isWorkerThread()
    }

    /// Stops every daemon (SIGTERM, SIGKILL after stop_grace_ms), reaps them, removes their
    /// files and the private directory, joins the threads. Called by the client's close, after
    /// its pools are closed. Idempotent.
    public func stop() {
        lock.withLock { stopRequested = true }
        wake()
        thread?.join()
        thread = nil
        probes.stopAndJoin()
        removals.stopAndJoin()
    }

    // MARK: - Snapshot

    public struct DaemonInfo {
        public var slot: Int
        public var pid: Int32?
        public var endpoint: String
        public var state: DaemonSupervision.State
        public var startedAt: Instant
        public var readyAt: Instant?
        public var lifetimeConnections: Int
        public var connectionLimit: Int
        public var recycleReason: DaemonSupervision.RecycleReason?
    }

    public struct Snapshot {
        public var directory: String?
        public var daemons: [DaemonInfo]
        public var slots: [DaemonSupervision.Slot]
        public var daemonsStarted: Int
        public var outputLinesDropped: Int
        public var alertsGenerated: [String: Int]
        public var recycleThreshold: Int
        public var now: Instant
    }

    public func snapshot() -> Snapshot {
        lock.withLock {
            let limit = machine.policy.maxConnectionsPerProcess
            let daemons = machine.liveDaemons.map { daemon in
                DaemonInfo(slot: daemon.slot, pid: pids[daemon.id], endpoint: endpoint(of: daemon.id).description, state: daemon.state,
                           startedAt: daemon.spawnedAt, readyAt: daemon.readyAt, lifetimeConnections: daemon.lifetimeConnections,
                           connectionLimit: limit, recycleReason: daemon.recycleReason)
            }
            return Snapshot(directory: directory, daemons: daemons, slots: machine.slots, daemonsStarted: machine.daemonsStarted,
                            outputLinesDropped: outputLinesDropped, alertsGenerated: alertsGenerated,
                            recycleThreshold: machine.policy.recycleThreshold, now: Clock.now())
        }
    }

    // MARK: - The supervisor thread

    private func run() {
        modify { $0.start(now: Clock.now()) }
        var stopping = false
        var giveUpAt: Instant?
        while true {
            let (deadline, finished) = lock.withLock { (machine.nextDeadline(), machine.isFinished) }
            if finished { break }
            if let giveUpAt, Clock.now() >= giveUpAt {
                log(.error, "managed daemons: \(processes.count) did not exit after SIGKILL; leaving them")
                break
            }
            waitForActivity(until: [deadline, giveUpAt].compactMap { $0 }.min())
            if !stopping && lock.withLock({ stopRequested }) {
                stopping = true
                modify { $0.stopAll(now: Clock.now()) }
                giveUpAt = Clock.now() + .milliseconds(spawn.stopGraceMs) + .milliseconds(5000)
            }
            collectOutputAndExits()
            let (messages, counts) = lock.withLock { () -> ([Message], [DaemonID: Int]) in
                defer { inbox = []; openedCounts = [:] }
                return (inbox, openedCounts)
            }
            for message in messages {
                switch message {
                case .probeFinished(let id, let connected, let answered):
                    modify { $0.probeFinished(id, connected: connected, answered: answered, now: Clock.now()) }
                case .endpointRemoved(let id):
                    modify { $0.endpointRemoved(id, now: Clock.now()) }
                }
            }
            for (id, count) in counts { modify { $0.connectionsOpened(id, count: count, now: Clock.now()) } }
            modify { $0.tick(now: Clock.now()) }
        }
        for process in processes.values { process.release() }
        processes.removeAll()
        removeDirectory()
    }

    /// Sleeps in poll until a deadline, a wake-up, output, or an exit.
    private func waitForActivity(until deadline: Instant?) {
        var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        for process in processes.values {
            if process.outputFD >= 0 { fds.append(pollfd(fd: process.outputFD, events: Int16(POLLIN), revents: 0)) }
            if process.exitFD >= 0 { fds.append(pollfd(fd: process.exitFD, events: Int16(POLLIN), revents: 0)) }
        }
        var timeout: Int32 = -1
        if let deadline {
            let ms = (deadline - Clock.now()).nanoseconds / 1_000_000 + 1
            timeout = Int32(clamping: max(0, ms))
        }
        // Without the wake-up descriptor, messages are picked up every 50 ms.
        if wakeFD < 0 { timeout = timeout < 0 ? 50 : min(timeout, 50) }
        _ = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), timeout) }
        var counter: UInt64 = 0
        _ = read(wakeFD, &counter, 8)
    }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    private func post(_ message: Message) {
        lock.withLock { inbox.append(message) }
        wake()
    }

    /// Output lines become log events; exited processes are reaped and reported (their last
    /// output read first, so a start failure can quote it).
    private func collectOutputAndExits() {
        let now = Clock.now()
        for id in processes.keys.sorted() {
            guard let process = processes[id] else { continue }
            emitOutput(process, process.readOutput(), now: now)
            guard let status = process.reap() else { continue }
            emitOutput(process, process.readOutput(), now: now)
            lock.withLock { pids[id] = nil }
            modify { $0.exited(id, status: status, now: Clock.now()) }
            process.release()
            processes[id] = nil
            removeFiles(of: id)
        }
    }

    private func emitOutput(_ process: DaemonProcess, _ lines: [String], now: Instant) {
        guard !lines.isEmpty else { return }
        for line in lines {
            switch process.limiter.admit(now: now) {
            case .drop:
                lock.withLock { outputLinesDropped += 1 }
            case .emit(let dropped):
                let fields: [(String, EventValue)] = [("pid", .int(Int64(process.pid))), ("endpoint", .string(endpoint(of: process.id).description)),
                                                      ("source", .string("daemon"))]
                if dropped > 0 { log(.info, "(\(dropped) lines of output of pid \(process.pid) dropped: more than 20 lines a second)", fields) }
                log(.info, line, fields)
            }
        }
    }

    // MARK: - Actions

    /// Runs a state machine event under the lock, then performs its actions (on this thread).
    private func modify(_ body: (inout DaemonSupervision) -> [DaemonSupervision.Action]) {
        let (actions, availability) = lock.withLock { () -> ([DaemonSupervision.Action], DaemonSupervision.Availability) in
            let actions = body(&machine)
            return (actions, machine.availability)
        }
        // Calls must never see "serving" without an endpoint: a daemon lost is published before
        // its endpoint goes, a daemon ready after its endpoint is added.
        if availability != .serving { publish(availability) }
        for action in actions { perform(action) }
        publish(availability)
    }

    private func perform(_ action: DaemonSupervision.Action) {
        switch action {
        case .spawn(let id, let slot):
            start(id, slot: slot)
        case .probe(let id, let timeout):
            let path = socketPath(of: id)
            let method = configuration.health.method
            if !probes.submit({ [self] in
                let stopping = lock.withLock { stopRequested }
                let (connected, answered) = stopping ? (false, false) : Self.probe(path, method: method, timeout: timeout)
                post(.probeFinished(id, connected: connected, answered: answered))
            }) {
                post(.probeFinished(id, connected: false, answered: false))
            }
        case .addEndpoint(let id, let slot, let budget):
            _ = client.addManagedEndpoint(endpoint(of: id), slot: slot, connectionBudget: budget) { [weak self] count in
                self?.connectionsOpened(id, count)
            }
        case .retire(let old, _, let drain):
            // The replacement already takes the routed calls. Removing the old endpoint moves its
            // durable sessions (a checkpoint on it, a restore on the replacement), then drains it.
            schedule(removal: old) { [client] in
                client.stopRouting(self.endpoint(of: old))
                _ = client.removeEndpoint(self.endpoint(of: old), drain: drain, byLibrary: true)
            }
        case .removeEndpoint(let id):
            // It died: its durable sessions wait for its successor (restore_timeout_ms) and are
            // restored there from their last checkpoint and journal.
            schedule(removal: id) { [client] in
                _ = client.removeEndpoint(self.endpoint(of: id), drain: .zero, byLibrary: true, daemonGone: true)
            }
        case .signal(let id, let signal):
            processes[id]?.signal(signal == .terminate ? SIGTERM : SIGKILL)
        case .event(let event):
            report(event)
        }
    }

    private func schedule(removal id: DaemonID, _ body: @escaping () -> Void) {
        if !removals.submit({ [self] in body(); post(.endpointRemoved(id)) }) {
            body()
            post(.endpointRemoved(id))
        }
    }

    /// From a pool's thread: coalesced, handled on the supervisor thread.
    private func connectionsOpened(_ id: DaemonID, _ count: Int) {
        lock.withLock { openedCounts[id] = max(openedCounts[id] ?? 0, count) }
        wake()
    }

    private func start(_ id: DaemonID, slot: Int) {
        let now = Clock.now()
        guard directory != nil || makeDirectory() != nil else {
            modify { $0.spawnFailed(id, reason: "cannot create a private directory for the sockets: \(errnoText())", now: Clock.now()) }
            return
        }
        let path = socketPath(of: id)
        guard path.utf8.count <= Endpoint.maxUnixPathBytes else {
            modify { $0.spawnFailed(id, reason: "socket path \(path) is longer than \(Endpoint.maxUnixPathBytes) bytes", now: Clock.now()) }
            return
        }
        let command = spawn.command.map { substitute($0, socket: path) }
        let (environment, searchPath) = environmentBlock(socket: path)
        switch DaemonProcess.spawn(id: id, command: command, environment: environment, searchPath: searchPath, socketPath: path,
                                   captureOutput: spawn.output == .log, now: now) {
        case .success(let process):
            processes[id] = process
            lock.withLock { pids[id] = process.pid }
            log(.debug, "managed daemon \(id.value) (slot \(slot)) started as pid \(process.pid): \(Self.shellLine(command))")
            modify { $0.spawned(id, pid: process.pid, now: Clock.now()) }
        case .failure(let error):
            failureDetails[slot] = (command, [])
            modify { $0.spawnFailed(id, reason: error.message, now: Clock.now()) }
        }
    }

    private func substitute(_ text: String, socket: String) -> String {
        text.replacing(ClientConfiguration.SpawnConfiguration.socketPlaceholder, with: socket)
    }

    /// The inherited environment with `env` added or replacing (placeholders substituted), and
    /// the PATH the command is looked up in.
    private func environmentBlock(socket: String) -> (CStringArray, String) {
        let overrides = spawn.environment.map { ($0.name, substitute($0.value, socket: socket)) }
        let names = Set(overrides.map(\.0))
        var inherited: [UnsafePointer<CChar>] = []
        var path = getenv("PATH").map { String(cString: $0) }
        if var entry = gxp_environment() {
            while let item = entry.pointee {
                let name = String(cString: item).split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
                if !names.contains(name) { inherited.append(UnsafePointer(item)) }
                entry += 1
            }
        }
        for (name, value) in overrides where name == "PATH" { path = value }
        let block = CStringArray(overrides.map { "\($0.0)=\($0.1)" }, raw: inherited)
        return (block, path ?? "/usr/local/bin:/usr/bin:/bin")
    }

    /// A client's own directory: `$TMPDIR` (when the sockets' paths fit) or /tmp, mode 0700.
    private func makeDirectory() -> String? {
        var base = "/tmp"
        if let tmp = getenv("TMPDIR").map({ String(cString: $0) }), tmp.hasPrefix("/"), tmp.utf8.count <= 60 {
            base = tmp.hasSuffix("/") ? String(tmp.dropLast()) : tmp
        }
        var template = Array((base + "/goxelpool-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } } != nil
        guard made else { return nil }
        let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        _ = chmod(path, 0o700)
        lock.withLock { directory = path }
        return path
    }

    /// The socket and whatever the daemon put beside it under the same name (goxel-refd's
    /// `.ctl` control socket).
    private func removeFiles(of id: DaemonID) {
        guard let directory else { return }
        let name = "d\(id.value).sock"
        for entry in Self.entries(of: directory) where entry == name || entry.hasPrefix(name + ".") {
            _ = unlink(directory + "/" + entry)
        }
    }

    private func removeDirectory() {
        guard let directory else { return }
        for entry in Self.entries(of: directory) { _ = unlink(directory + "/" + entry) }
        if rmdir(directory) != 0 {
            log(.warn, "managed daemons: cannot remove \(directory): \(errnoText()) (a daemon left a directory in it?)")
        }
    }

    private static func entries(of directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            // Byte by byte up to the NUL: what follows it in d_name is not initialised.
            var bytes: [UInt8] = []
            withUnsafeBytes(of: entry.pointee.d_name) { raw in
                for byte in raw { if byte == 0 { break }; bytes.append(byte) }
            }
            let name = String(decoding: bytes, as: UTF8.self)
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    func socketPath(of id: DaemonID) -> String { (directory ?? "/tmp") + "/d\(id.value).sock" }

    func endpoint(of id: DaemonID) -> Endpoint { .unix(path: socketPath(of: id)) }

    /// Connects and calls `method` (ping) within `timeout`. `connected`: a connection was made
    /// (it counts against the daemon's lifetime connections).
    private static func probe(_ path: String, method: String, timeout: Span) -> (connected: Bool, answered: Bool) {
        let deadline = Clock.now() + timeout
        guard let socket = try? StreamSocket.connect(path: path, timeout: timeout) else { return (false, false) }
        let connection = DaemonConnection(id: ConnectionID(0), socket: socket, maxMessageSize: 65_536)
        defer { connection.close() }
        switch connection.exchange(method: method, params: nil, notification: false, deadline: deadline) {
        case .result(let value): json_decref(UnsafeMutablePointer(value)); return (true, true)
        case .rpcError(let value, _): json_decref(UnsafeMutablePointer(value)); return (true, false)
        case .notified: return (true, true)
        case .failed: return (true, false)
        }
    }

    // MARK: - Availability, events

    /// Tells the client what a call with no endpoint should do (only when it changes).
    private func publish(_ availability: DaemonSupervision.Availability) {
        let mapped: MultiPoolClient.ManagedAvailability
        switch availability {
        case .serving: mapped = .serving
        case .starting: mapped = .starting
        case .stopped: mapped = .stopped
        case .failing(let id, let slot, let failure):
            mapped = .failing(CallFailure(.connect, "no managed daemon is running: " + describe(id, slot: slot, failure)))
        }
        guard mapped != lastAvailability else { return }
        lastAvailability = mapped
        client.setManagedAvailability(mapped)
    }

    /// A start failure as a sentence: the command, the exit status and the last output.
    private func describe(_ id: DaemonID, slot: Int, _ failure: DaemonSupervision.StartFailure) -> String {
        // The process, while it is still known (its exit is being handled), else what was kept.
        let detail = processes[id].map { (command: $0.commandLine, output: Array($0.lastLines)) } ?? failureDetails[slot]
        let command = Self.shellLine(detail?.command ?? spawn.command)
        let output: String
        if spawn.output == .null {
            output = " (its output goes to /dev/null: spawn.output is \"null\")"
        } else if let lines = detail?.output, !lines.isEmpty {
            output = "; its last output: " + lines.suffix(5).map { "\"\($0)\"" }.joined(separator: " / ")
        } else {
            output = "; it printed nothing"
        }
        switch failure {
        case .spawnFailed(let reason):
            return "\(id) (slot \(slot)) could not start `\(command)`: \(reason)"
        case .exited(let status, let after):
            return "\(id) (slot \(slot)): `\(command)` exited with \(status) \(Int(after.milliseconds)) ms after its start, before answering \(configuration.health.method)" + output
        case .timedOut(let limit):
            return "\(id) (slot \(slot)): `\(command)` did not answer \(configuration.health.method) within \(Int(limit.milliseconds)) ms (spawn.start_timeout_ms); killed" + output
        }
    }

    /// The command as a shell would take it (quoted where needed), cut at 300 bytes.
    static func shellLine(_ command: [String]) -> String {
        let plain = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%{}")
        let line = command.map { argument in
            argument.allSatisfy(plain.contains) && !argument.isEmpty
                ? argument : "'" + argument.replacing("'", with: "'\\''") + "'"
        }.joined(separator: " ")
        return line.utf8.count > 300 ? String(line.prefix(300)) + "..." : line
    }

    private func report(_ event: DaemonSupervision.Event) {
        func pid(_ id: DaemonID) -> EventValue { processes[id].map { .int(Int64($0.pid)) } ?? .null }
        func name(_ id: DaemonID) -> EventValue { .string(endpoint(of: id).description) }
        switch event {
        case .started(let id, let slot, let startup, let replaces):
            post(ClientEvent(kind: .daemon, type: "daemon_started", fields: [
                ("pid", pid(id)), ("endpoint", name(id)), ("slot", .int(Int64(slot))), ("daemon_id", .int(Int64(id.value))),
                ("startup_ms", .double(startup.milliseconds)), ("replaces", replaces.map(name) ?? .null),
            ]))
            log(.info, "managed daemon pid \(processes[id]?.pid ?? 0) ready on \(endpoint(of: id)) in \(Int(startup.milliseconds)) ms"
                + (replaces.map { ", replacing \($0)" } ?? ""))
        case .exited(let id, let slot, let status, let expected, let uptime):
            let fields: [(String, EventValue)] = [
                ("pid", pid(id)), ("endpoint", name(id)), ("slot", .int(Int64(slot))), ("daemon_id", .int(Int64(id.value))),
                ("status", .string(status.description)), ("expected", .bool(expected)),
                ("uptime_ms", uptime.map { .double($0.milliseconds) } ?? .null),
            ]
            post(ClientEvent(kind: .daemon, type: "daemon_exited", fields: fields + Self.exitFields(status)))
            log(expected ? .info : .warn, "managed daemon pid \(processes[id]?.pid ?? 0) (\(endpoint(of: id))) exited: \(status)")
        case .recycling(let id, let slot, let reason, let connections, let age):
            post(ClientEvent(kind: .daemon, type: "daemon_recycling", fields: [
                ("pid", pid(id)), ("endpoint", name(id)), ("slot", .int(Int64(slot))), ("daemon_id", .int(Int64(id.value))),
                ("reason", .string(reason.rawValue)), ("lifetime_connections", .int(Int64(connections))), ("age_ms", .double(age.milliseconds)),
            ]))
            log(.info, "managed daemon pid \(processes[id]?.pid ?? 0) is being replaced (\(reason.rawValue): \(connections) connections, \(Int(age.milliseconds)) ms old)")
        case .retired(let id, let slot, let replacedBy):
            post(ClientEvent(kind: .daemon, type: "daemon_retired", fields: [
                ("pid", pid(id)), ("endpoint", name(id)), ("slot", .int(Int64(slot))), ("daemon_id", .int(Int64(id.value))),
                ("replaced_by", replacedBy.map(name) ?? .null),
            ]))
        case .startFailed(let id, let slot, let failure, let failures, let retryIn):
            let process = processes[id]
            failureDetails[slot] = (process?.commandLine ?? failureDetails[slot]?.command ?? spawn.command, process.map { Array($0.lastLines) } ?? [])
            let message = describe(id, slot: slot, failure) + "; retrying in \(Int(retryIn.milliseconds)) ms"
            var fields: [(String, EventValue)] = [
                ("slot", .int(Int64(slot))), ("daemon_id", .int(Int64(id.value))), ("endpoint", name(id)), ("pid", pid(id)),
                ("consecutive_failures", .int(Int64(failures))), ("retry_in_ms", .double(retryIn.milliseconds)),
                ("command", .string(Self.shellLine(failureDetails[slot]?.command ?? spawn.command))),
                ("output", .string((failureDetails[slot]?.output ?? []).joined(separator: "\n"))),
            ]
            if case .exited(let status, _) = failure { fields += Self.exitFields(status) }
            alert("daemon_start_failed", "critical", message, fields)
            log(.error, message)
        case .crashed(let id, let slot, let status, let uptime, let restartIn):
            let when = restartIn > .zero ? "restarting in \(Int(restartIn.milliseconds)) ms" : "restarting now"
            alert("daemon_crashed", "warning", "managed daemon pid \(processes[id]?.pid ?? 0) (\(endpoint(of: id))) exited unexpectedly with \(status) after \(Int(uptime.milliseconds)) ms; \(when)", [
                ("pid", pid(id)), ("endpoint", name(id)), ("slot", .int(Int64(slot))), ("status", .string(status.description)),
                ("uptime_ms", .double(uptime.milliseconds)), ("restart_in_ms", .double(restartIn.milliseconds)),
            ])
        case .crashLoop(let slot, let exits, let retryIn):
            alert("daemon_crash_loop", "critical",
                  "managed daemons of slot \(slot) keep dying soon after they start (\(exits) in a row); restarts now wait for the backoff (\(Int(retryIn.milliseconds)) ms)",
                  [("slot", .int(Int64(slot))), ("consecutive_exits", .int(Int64(exits))), ("retry_in_ms", .double(retryIn.milliseconds))])
        }
    }

    /// "exit_status" and "signal" of an event (one of them null).
    private static func exitFields(_ status: DaemonSupervision.ExitStatus) -> [(String, EventValue)] {
        switch status {
        case .exited(let code): [("exit_status", .int(Int64(code))), ("signal", .null)]
        case .signaled(let signal): [("exit_status", .null), ("signal", .int(Int64(signal)))]
        case .unknown: [("exit_status", .null), ("signal", .null)]
        }
    }

    private func alert(_ type: String, _ severity: String, _ message: String, _ fields: [(String, EventValue)]) {
        lock.withLock { alertsGenerated[type, default: 0] += 1 }
        post(ClientEvent(kind: .alert, type: type, fields: [
            ("severity", .string(severity)), ("message", .string(message)), ("connection_id", .string("pool")),
        ] + fields))
    }

    private func post(_ event: ClientEvent) { events.post(event) }

    private func log(_ level: ClientConfiguration.LogLevel, _ message: @autoclosure () -> String, _ fields: [(String, EventValue)] = []) {
        guard level != .off, level <= configuration.logLevel, events.wants(.log) else { return }
        events.post(ClientEvent(kind: .log, type: "log", fields: [("level", .string(level.rawValue)), ("message", .string(message()))] + fields))
    }
}
