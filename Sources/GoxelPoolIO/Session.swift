import CJansson
import Glibc
import GoxelPoolCore

/// One journaled call: the method and its params as compact JSON (a C string jansson wrote;
/// freed with the entry). Text, not a json_t copy: a tenth of the memory per entry. Written
/// before the call and sent as the request's params, so jansson encodes them once, not twice.
final class JournalEntry {
    let method: String
    let params: UnsafeMutablePointer<CChar>?
    /// The params' text without its terminating NUL (nil: no params).
    var encodedParams: UnsafeRawBufferPointer? {
        params.map { UnsafeRawBufferPointer(start: $0, count: strlen($0)) }
    }

    init?(method: String, params: OpaquePointer?) {
        self.method = method
        if let params {
            guard let text = json_dumps(UnsafeMutablePointer(params), Int(JSON_COMPACT)) else { return nil }
            self.params = text
        } else {
            self.params = nil
        }
    }

    deinit { free(params) }
}

/// A session: calls that belong to one document, on one daemon (see README "Sessions").
///
/// Every call goes to the session's endpoint. A durable session also journals every call that
/// changed the document (once the daemon answered it with a result), checkpoints the document
/// into `checkpoint_dir`, and restores it when its daemon is a new process: load the last
/// checkpoint, replay the journal, then run the calls that were in flight again. Checkpoints and
/// restores run on the session's own library thread while calls are held back at the gate.
public final class Session: @unchecked Sendable {
    public enum State: Equatable {
        case active
        /// Checking which daemon process is there now, restoring the document, or moving it.
        case restoring
        case lost(String)
        case closed(String)

        var isClosed: Bool { if case .closed = self { true } else { false } }

        public var name: String {
            switch self {
            case .active: "active"
            case .restoring: "restoring"
            case .lost: "lost"
            case .closed: "closed"
            }
        }
    }

    /// What the worker thread was asked to do.
    enum Recovery {
        /// Find out which daemon is there now; restore if it is a new process.
        case verify
        /// Move to another endpoint: checkpoint here first (unless the daemon is gone), then
        /// restore there.
        case move(endpointID: Int, endpoint: Endpoint, pool: PoolClient, checkpointFirst: Bool)
    }

    public let id: SessionID
    public let options: SessionOptions
    let configuration: ClientConfiguration
    /// Strong: a session handle may outlive its client (the manager drops its sessions at close).
    private let manager: SessionManager
    private let lock = PthreadMutex()
    /// Broadcast on every change of the gate (state, active calls, checkpoint wanted, recovery).
    private let changed = Condition()
    private var state = State.active
    private(set) var endpointID: Int
    private(set) var endpoint: Endpoint
    private var pool: PoolClient
    private var pid: Int64?
    private var activeCalls = 0
    private var checkpointing = false
    private var recovery: Recovery?
    /// Bumped by every restore: a call that failed before it knows its daemon was replaced.
    private var generation = 0
    private var journal: DurableJournal<JournalEntry>
    private let checkpointPaths: [String]
    private var worker: LibraryThread?
    let openedAt = Clock.now()
    private let openedWallMs = Clock.wallMilliseconds()
    private var calls = 0
    private var restores = 0
    private var moves = 0
    private var callsReplayed = 0
    private var lastCheckpointWallMs: Int64?
    private var lastError: String?

    init(id: SessionID, options: SessionOptions, configuration: ClientConfiguration, manager: SessionManager,
         endpointID: Int, endpoint: Endpoint, pool: PoolClient, pid: Int64?, checkpointToken: String) {
        self.id = id
        self.options = options
        self.configuration = configuration
        self.manager = manager
        self.endpointID = endpointID
        self.endpoint = endpoint
        self.pool = pool
        self.pid = pid
        journal = DurableJournal(policy: .init(every: options.checkpointEvery, interval: .milliseconds(options.checkpointIntervalMs),
                                               maxEntries: options.maxJournalEntries))
        let dir = options.checkpointDir.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 } ?? ""
        checkpointPaths = options.durable ? (0...1).map { "\(dir)/goxelpool-\(checkpointToken)-\($0).gox" } : []
    }

    /// Durable sessions: the first checkpoint (so a restore never depends on what a fresh daemon
    /// happens to hold), then the worker. Nil, or the failure that makes the open fail.
    func start(deadline: Instant) -> CallFailure? {
        guard options.durable else { return nil }
        switch runCheckpoint(deadline: deadline) {
        case .saved: break
        case .rejected(let message):
            return CallFailure(.invalid, "checkpoint_dir: the daemon could not write \(checkpointPaths[0]): \(message)")
        case .failed(let failure): return failure
        case .daemonChanged: return CallFailure(.unavailable, "the daemon at \(endpoint) restarted while the session opened")
        }
        let thread = LibraryThread { [self] in workerLoop() }
        guard thread.isRunning else { return CallFailure(.noMemory, "cannot start the session's thread") }
        lock.withLock { worker = thread }
        return nil
    }

    // MARK: - Calls

    public func call(method: String, params: OpaquePointer?, timeout: Span?) -> CallOutcome {
        let deadline = Clock.now() + (timeout ?? .milliseconds(configuration.timeoutMs))
        let changes = options.durable && !configuration.isIdempotent(method: method)
        // Serialized once, outside the lock (the lock is the session's: its threads queue on it),
        // and sent as the request's params on every attempt. nil (out of memory, or params jansson
        // cannot encode): the call encodes its params itself, and fails if they cannot be.
        let entry = changes ? JournalEntry(method: method, params: params) : nil
        let unjournaled = changes && entry == nil
        lock.lock()
        while true {
            // The gate: wait while the document is being checkpointed, checked or restored.
            while true {
                switch state {
                case .closed(let why): lock.unlock(); return .failure(CallFailure(.closed, why))
                case .lost(let why): lock.unlock(); return .failure(CallFailure(.lost, why))
                case .active where !checkpointing: break
                default:
                    if !changed.wait(lock, until: deadline) && Clock.now() >= deadline {
                        let what = state == .restoring ? "the session's document to be restored" : "the session's checkpoint"
                        lock.unlock()
                        return .failure(CallFailure(.timedOut, "deadline passed waiting for \(what)"))
                    }
                    continue
                }
                break
            }
            if changes && journal.isFull {
                let count = journal.count, why = lastError ?? "see checkpoint_failed alerts"
                lock.unlock()
                return .failure(CallFailure(.busy, "the session's journal holds \(count) calls (max_journal_entries) because checkpoints fail: \(why)"))
            }
            activeCalls += 1
            calls += 1
            let pool = self.pool, expected = pid, before = generation
            lock.unlock()

            let remaining = deadline - Clock.now()
            let outcome: PinnedOutcome
            if options.durable, let expected {
                outcome = withExtendedLifetime(entry) {
                    pool.call(method: method, params: params, encodedParams: entry?.encodedParams, timeout: remaining,
                              check: .expect(expected))
                }
            } else {
                outcome = .done(pool.call(method: method, params: params, timeout: remaining), pid: nil)
            }

            lock.lock()
            activeCalls -= 1
            // Only the worker waits for the last call (to checkpoint or restore): no wake-up otherwise.
            if activeCalls == 0 && (checkpointing || state == .restoring) { changed.broadcast() }
            switch outcome {
            case .daemonChanged(let newPid):
                // Nothing was sent: restore first, then run it on the restored document.
                requestRecovery(.verify, reason: "daemon at \(endpoint) is a new process (pid \(newPid))")
                continue
            case .done(let result, _):
                switch result {
                case .result:
                    if let entry {
                        let now = Clock.now()
                        journal.append(entry, method: method, now: now)
                        if journal.checkpointDue(now: now) { changed.broadcast() }
                    } else if unjournaled {
                        // Out of memory for the entry: the daemon's document is ahead of the journal.
                        journal.requestCheckpoint()
                        changed.broadcast()
                    }
                    lock.unlock()
                    return result
                case .rpcError, .notified:
                    lock.unlock()
                    return result
                case .failure(let failure):
                    guard options.durable else { lock.unlock(); return result }
                    switch failure.status {
                    case .connect, .unavailable:
                        // The daemon is down: wait for it within the deadline. The connection that
                        // reaches its successor learns the new pid, and the restore runs first.
                        guard Clock.now() + .milliseconds(20) < deadline else { lock.unlock(); return result }
                        lock.unlock()
                        sleepBriefly(until: deadline)
                        lock.lock()
                        continue
                    case .closed where !failure.mayHaveRun && (self.pool !== pool || state == .restoring):
                        // Not sent: its endpoint is being removed and the session moves (or has).
                        continue
                    case .io, .proto:
                        // The connection broke: was it the daemon dying? The worker finds out
                        // (and restores); if it did, the document is back to before this call,
                        // which runs again: exactly once.
                        if generation == before { requestRecovery(.verify, reason: failure.message) }
                        while state == .restoring && Clock.now() < deadline { changed.wait(lock, until: deadline) }
                        if generation != before { continue }
                        if state == .restoring { lock.unlock(); return result }
                        if !failure.mayHaveRun || !changes { continue }
                        // Same daemon, and the call may have run: its outcome is unknown.
                        journal.requestCheckpoint()
                        changed.broadcast()
                        lock.unlock()
                        return result
                    case .timedOut:
                        if changes && failure.mayHaveRun {
                            journal.requestCheckpoint()
                            changed.broadcast()
                        }
                        lock.unlock()
                        return result
                    default:
                        lock.unlock()
                        return result
                    }
                }
            }
        }
    }

    /// Under the lock. A pending move is kept (it restores too).
    private func requestRecovery(_ what: Recovery, reason: String) {
        switch state {
        case .active, .restoring: break
        default: return
        }
        if recovery == nil { recovery = what }
        state = .restoring
        lastError = reason
        changed.broadcast()
    }

    /// Told by the manager: a new connection to this session's endpoint reached daemon `newPid`.
    func daemonIdentified(_ newPid: Int64) {
        lock.withLock {
            guard options.durable else { pid = newPid; return }
            if let pid, pid != newPid { requestRecovery(.verify, reason: "daemon at \(endpoint) is a new process (pid \(newPid))") }
        }
    }

    /// Asks the worker to move this durable session to another endpoint and returns at once
    /// (false: the session is lost or closed). The worker does it after what it is doing now.
    func requestMove(to endpointID: Int, endpoint: Endpoint, pool: PoolClient, checkpointFirst: Bool) -> Bool {
        lock.withLock {
            switch state {
            case .active, .restoring: break
            default: return false
            }
            recovery = .move(endpointID: endpointID, endpoint: endpoint, pool: pool, checkpointFirst: checkpointFirst)
            state = .restoring
            changed.broadcast()
            return true
        }
    }

    /// Waits until the session is no longer restoring (moved, restored, lost or closed).
    func waitUntilSettled() {
        lock.withLock { while state == .restoring { changed.wait(lock, until: nil) } }
    }

    /// A non-durable session whose endpoint was removed: it ends (there is no document to carry).
    func end(_ why: String) {
        lock.withLock {
            if case .closed = state { return }
            state = .lost(why)
            lastError = why
            changed.broadcast()
        }
    }

    private func sleepBriefly(until deadline: Instant) {
        let wake = min(deadline, Clock.now() + .milliseconds(20))
        let remaining = wake - Clock.now()
        guard remaining > .zero else { return }
        var spec = timespec(tv_sec: 0, tv_nsec: Int(remaining.nanoseconds))
        var left = timespec()
        while nanosleep(&spec, &left) != 0 && errno == EINTR { spec = left }
    }

    // MARK: - The worker: checkpoints and restores

    private func workerLoop() {
        lock.lock()
        while true {
            if case .closed = state { break }
            if case .lost = state { break }
            if recovery != nil {
                // Calls in flight come back first (they fail or finish and are journaled).
                while activeCalls > 0 { changed.wait(lock, until: nil) }
                // Read after the wait, which lets go of the lock: a move asked for meanwhile
                // replaces a pending verify, and taking the one read before would drop the move
                // (the session then waited for its dead daemon until restore_timeout_ms).
                guard let what = recovery else { continue }
                recovery = nil  // taken: a request arriving meanwhile runs after this one
                lock.unlock()
                recover(what)
                lock.lock()
                continue
            }
            if journal.checkpointDue(now: Clock.now()) {
                checkpointing = true
                while activeCalls > 0 { changed.wait(lock, until: nil) }
                lock.unlock()
                let result = runCheckpoint(deadline: Clock.now() + .milliseconds(configuration.timeoutMs))
                lock.lock()
                checkpointing = false
                changed.broadcast()
                switch result {
                case .saved: break
                case .rejected, .failed: break
                case .daemonChanged: requestRecovery(.verify, reason: "daemon at \(endpoint) is a new process")
                }
                if case .failed(let failure) = result, failure.status == .io || failure.status == .connect || failure.status == .unavailable {
                    requestRecovery(.verify, reason: failure.message)
                }
                continue
            }
            changed.wait(lock, until: journal.nextCheckpointByAge())
        }
        lock.unlock()
    }

    enum CheckpointResult {
        case saved
        /// The daemon answered an error (e.g. it cannot write the directory).
        case rejected(String)
        case failed(CallFailure)
        case daemonChanged
    }

    /// `goxel.save_project` into the slot the journal names; folds the journal on success. Runs
    /// with no call in flight (the gate is closed, or the session is not yet open).
    /// `quiet`: a failure is not reported nor backed off (an optional checkpoint before a move).
    private func runCheckpoint(deadline: Instant, quiet: Bool = false) -> CheckpointResult {
        let (slot, folded, expected, pool) = lock.withLock { (journal.nextSlot, journal.count, pid, self.pool) }
        guard let expected else { return .failed(CallFailure(.proto, "the daemon's pid is unknown")) }
        let path = checkpointPaths[slot]
        let began = Clock.now()
        let outcome = withParams(path) { pool.call(method: "goxel.save_project", params: $0, timeout: deadline - Clock.now(), check: .expect(expected)) }
        switch outcome {
        case .daemonChanged: return .daemonChanged
        case .done(let result, _):
            switch result {
            case .result(let value):
                json_decref(UnsafeMutablePointer(value))
                let ms = (Clock.now() - began).milliseconds
                lock.withLock {
                    journal.checkpointSucceeded(slot: slot, folded: folded, now: Clock.now())
                    lastCheckpointWallMs = Clock.wallMilliseconds()
                }
                manager.checkpointed(self, path: path, folded: folded, milliseconds: ms)
                return .saved
            case .rpcError(let value):
                let message = rpcMessage(value)
                json_decref(UnsafeMutablePointer(value))
                if !quiet { checkpointFailed(path: path, message: message) }
                return .rejected(message)
            case .notified:
                return .saved
            case .failure(let failure):
                if !quiet { checkpointFailed(path: path, message: failure.message) }
                return .failed(failure)
            }
        }
    }

    private func checkpointFailed(path: String, message: String) {
        lock.withLock {
            journal.checkpointFailed(now: Clock.now())
            lastError = "checkpoint to \(path) failed: \(message)"
        }
        manager.checkpointFailed(self, path: path, message: message)
    }

    /// Finds the daemon now at the endpoint (or the one moved to) and, if it is a new process,
    /// loads the last checkpoint there and replays the journal. Retries until restore_timeout_ms,
    /// starting over whenever the daemon changes under it; a rejected load or replay loses the
    /// session.
    private func recover(_ what: Recovery) {
        let began = Clock.now()
        let deadline = began + .milliseconds(options.restoreTimeoutMs)
        var force = false
        if case .move(let newID, let newEndpoint, let newPool, let checkpointFirst) = what {
            // Fold the journal on the old daemon while it still answers: a shorter replay.
            // Best effort: the old daemon may have no connection left to give (its budget spent).
            if checkpointFirst { _ = runCheckpoint(deadline: min(deadline, Clock.now() + .milliseconds(1000)), quiet: true) }
            lock.withLock {
                self.endpointID = newID
                self.endpoint = newEndpoint
                self.pool = newPool
                self.moves += 1
            }
            force = true
        }
        // lastError too under the lock: calls and daemonIdentified write it meanwhile.
        let (pool, before, checkpoint, entries, reason) = lock.withLock {
            (self.pool, pid, journal.checkpoint, journal.entries, lastError)
        }
        var lastFailure = reason ?? "no answer"
        attempt: while Clock.now() < deadline {
            // Closed, or asked to move meanwhile (the daemon this restore waits for is gone):
            // the worker takes the new request next.
            let (closed, superseded) = lock.withLock { (state.isClosed, recovery != nil) }
            if closed || superseded { return }
            // Which process is there now?
            // At most a second per probe, so a close is noticed.
            let probe = pool.call(method: "ping", params: nil, timeout: min(deadline - Clock.now(), .milliseconds(1000)), check: .learn)
            guard case .done(let pingResult, let current) = probe else { continue }
            if case .failure(let failure) = pingResult {
                lastFailure = failure.message
                if failure.status == .closed { return }
                if failure.status == .proto && current == nil { break attempt }
                sleepBriefly(until: deadline)
                continue
            }
            release(pingResult)
            guard let current else { lastFailure = "the daemon does not report its pid (status)"; break attempt }
            if current == before && !force {
                // The same process: the document is intact (a connection broke, not the daemon).
                finishRecovery()
                return
            }
            manager.restoring(self, pidBefore: before, pidAfter: current)
            var replayed = 0
            if let checkpoint {
                let path = checkpointPaths[checkpoint.slot]
                switch replay(pool, "goxel.load_project", path: path, expected: current, deadline: deadline) {
                case .ok: break
                case .retry(let why): lastFailure = why; continue attempt
                case .rejected(let why):
                    return lose("checkpoint \(path) could not be loaded: \(why)")
                }
            }
            for (index, entry) in entries.enumerated() {
                var parseError = json_error_t()
                let params = entry.params.flatMap { json_loads($0, 0, &parseError) }
                defer { if let params { json_decref(params) } }
                if entry.params != nil && params == nil { return lose("journal entry \(index + 1) (\(entry.method)) cannot be read back") }
                switch replay(pool, entry.method, params: params.map { OpaquePointer($0) }, expected: current, deadline: deadline) {
                case .ok: replayed += 1
                case .retry(let why): lastFailure = why; continue attempt
                case .rejected(let why):
                    return lose("replayed call \(index + 1) of \(entries.count) (\(entry.method)) was rejected by the daemon: \(why)")
                }
            }
            let ms = (Clock.now() - began).milliseconds
            lock.withLock {
                pid = current
                generation += 1
                restores += 1
                callsReplayed += replayed
            }
            manager.restored(self, pidBefore: before, pidAfter: current, replayed: replayed, milliseconds: ms, moved: force)
            finishRecovery()
            return
        }
        lose("the daemon at \(lock.withLock { endpoint }) did not come back within restore_timeout_ms (\(options.restoreTimeoutMs) ms): \(lastFailure)")
    }

    enum ReplayStep {
        case ok
        /// The daemon went away or changed: start the restore over.
        case retry(String)
        /// The daemon refused it: the document cannot be rebuilt.
        case rejected(String)
    }

    private func replay(_ pool: PoolClient, _ method: String, path: String, expected: Int64, deadline: Instant) -> ReplayStep {
        withParams(path) { replay(pool, method, params: $0, expected: expected, deadline: deadline) }
    }

    private func replay(_ pool: PoolClient, _ method: String, params: OpaquePointer?, expected: Int64, deadline: Instant) -> ReplayStep {
        switch pool.call(method: method, params: params, timeout: deadline - Clock.now(), check: .expect(expected)) {
        case .daemonChanged(let pid): return .retry("the daemon changed again (pid \(pid)) during the restore")
        case .done(let result, _):
            switch result {
            case .result(let value):
                json_decref(UnsafeMutablePointer(value))
                return .ok
            case .notified: return .ok
            case .rpcError(let value):
                let message = rpcMessage(value)
                json_decref(UnsafeMutablePointer(value))
                return .rejected(message)
            case .failure(let failure):
                switch failure.status {
                case .io, .connect, .unavailable, .timedOut, .proto, .busy, .closed: return .retry(failure.message)
                default: return .rejected(failure.message)
                }
            }
        }
    }

    private func finishRecovery() {
        lock.withLock {
            // Still restoring if another request came meanwhile: the worker takes it next.
            if state == .restoring && recovery == nil { state = .active }
            changed.broadcast()
        }
    }

    private func lose(_ why: String) {
        lock.withLock {
            recovery = nil
            if case .closed = state { return }
            state = .lost(why)
            lastError = why
            changed.broadcast()
        }
        manager.lost(self, reason: why)
    }

    private func release(_ outcome: CallOutcome) {
        switch outcome {
        case .result(let value), .rpcError(let value): json_decref(UnsafeMutablePointer(value))
        default: break
        }
    }

    // MARK: - Close, info

    /// Ends the session: calls waiting at the gate fail with ECLOSED at once. Returns the worker
    /// thread to join once the pools no longer block it (nil: none, or this is that thread).
    func markClosed(_ why: String) -> LibraryThread? {
        lock.withLock {
            if case .closed = state { return nil }
            state = .closed(why)
            recovery = nil
            changed.broadcast()
            defer { worker = nil }
            return worker.flatMap { LibraryThread.isCurrent($0) ? nil : $0 }
        }
    }

    var currentEndpointID: Int { lock.withLock { endpointID } }

    /// The files a durable session's checkpoints go to (on the daemon's machine).
    var checkpointFiles: [String] { checkpointPaths }

    public struct Info {
        public var id: SessionID
        public var key: String?
        public var endpoint: Endpoint
        public var pid: Int64?
        public var state: State
        public var exclusive, durable: Bool
        public var calls, restores, moves, callsReplayed: Int
        public var journalLength, checkpoints, checkpointFailures: Int
        public var lastCheckpointWallMs: Int64?
        public var checkpointPath: String?
        public var openedWallMs: Int64
        public var lastError: String?
    }

    public func info() -> Info {
        lock.withLock {
            Info(id: id, key: options.key, endpoint: endpoint, pid: pid, state: state, exclusive: options.exclusive,
                 durable: options.durable, calls: calls, restores: restores, moves: moves, callsReplayed: callsReplayed,
                 journalLength: journal.count, checkpoints: journal.checkpoints, checkpointFailures: journal.checkpointFailures,
                 lastCheckpointWallMs: lastCheckpointWallMs, checkpointPath: journal.checkpoint.map { checkpointPaths[$0.slot] },
                 openedWallMs: openedWallMs, lastError: lastError)
        }
    }
}

/// A JSON array holding one string, for the duration of `body`.
func withParams<R>(_ path: String, _ body: (OpaquePointer?) -> R) -> R {
    let params = json_array()
    if let params { json_array_append_new(params, json_stringn(path, path.utf8.count)) }
    defer { if let params { json_decref(params) } }
    return body(params.map { OpaquePointer($0) })
}

func rpcMessage(_ error: OpaquePointer) -> String {
    let object = UnsafeMutablePointer<json_t>(error)
    let code = json_object_get(object, "code").map { json_integer_value($0) } ?? 0
    let message = json_object_get(object, "message").flatMap { json_string_value($0) }.map { String(cString: $0) } ?? ""
    return "daemon error \(code): \(message)"
}
