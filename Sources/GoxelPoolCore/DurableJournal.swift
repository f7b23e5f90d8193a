/// The journal of a durable session and its checkpoint decisions, as a pure value.
///
/// Like a database's write-ahead log after a checkpoint: only calls the daemon acknowledged with a
/// result are journaled, in the order their answers arrived; a checkpoint (`goxel.save_project`
/// into one of two files, alternately, so a checkpoint that fails half-way never destroys the last
/// good one) folds the journal away; a restore is "load the last checkpoint, replay the journal".
/// Entries are opaque to the core (the runner stores method and params).
public struct DurableJournal<Entry> {
    public struct Policy: Sendable, Equatable {
        /// Checkpoint after this many journaled calls ...
        public var every: Int
        /// ... or once the oldest journaled call is this old (zero: by count only).
        public var interval: Span
        /// Refuse changing calls past this many entries (checkpoints are failing).
        public var maxEntries: Int
        public init(every: Int, interval: Span, maxEntries: Int) {
            self.every = every; self.interval = interval; self.maxEntries = maxEntries
        }
    }

    /// The last good checkpoint: which of the two files, and when.
    public struct Checkpoint: Sendable, Equatable {
        public var slot: Int
        public var at: Instant
    }

    public let policy: Policy
    public private(set) var entries: [Entry] = []
    public private(set) var firstEntryAt: Instant?
    public private(set) var checkpoint: Checkpoint?
    public private(set) var checkpoints = 0
    public private(set) var checkpointFailures = 0
    /// Set when the journal may no longer match the daemon's document (a changing call whose
    /// outcome is unknown), or when a replay would re-run a call best not re-run: checkpoint at once.
    public private(set) var checkpointRequested = false
    private var retryAfter: Instant?
    private var failureBackoff = Backoff(policy: .init(initial: .milliseconds(1000), multiplier: 2, jitter: 0,
                                                      maximum: .milliseconds(60_000)))

    public init(policy: Policy) { self.policy = policy }

    /// `goxel.create_project` arms the real daemon's crash timer (300 s): a restore that replayed it
    /// would arm it again on the new daemon, so the journal is folded into a checkpoint right after
    /// it (a restore loads a checkpoint, which does not arm the timer).
    public static func checkpointsAtOnce(after method: String) -> Bool { method == "goxel.create_project" }

    public var isFull: Bool { entries.count >= policy.maxEntries }
    public var count: Int { entries.count }

    public mutating func append(_ entry: Entry, method: String, now: Instant) {
        if entries.isEmpty { firstEntryAt = now }
        entries.append(entry)
        if Self.checkpointsAtOnce(after: method) { checkpointRequested = true }
    }

    /// A changing call may or may not have run on a live daemon (a timeout, a broken connection):
    /// the daemon's document is the truth now, so take a checkpoint of it soon.
    public mutating func requestCheckpoint() { checkpointRequested = true }

    public func checkpointDue(now: Instant) -> Bool {
        if let retryAfter, now < retryAfter { return false }
        if checkpointRequested { return true }
        guard let first = firstEntryAt, !entries.isEmpty else { return false }
        if entries.count >= policy.every { return true }
        return policy.interval > .zero && now - first >= policy.interval
    }

    /// When the next checkpoint is due by age alone (nil: not by age).
    public func nextCheckpointByAge() -> Instant? {
        guard policy.interval > .zero, let first = firstEntryAt, !entries.isEmpty else { return nil }
        let due = first + policy.interval
        if let retryAfter, retryAfter > due { return retryAfter }
        return due
    }

    /// The file the next checkpoint writes: never the one holding the last good checkpoint.
    public var nextSlot: Int { checkpoint.map { 1 - $0.slot } ?? 0 }

    /// The checkpoint into `slot` succeeded with the first `folded` entries in it (the runner holds
    /// new calls back while it saves, so that is all of them).
    public mutating func checkpointSucceeded(slot: Int, folded: Int, now: Instant) {
        entries.removeFirst(min(max(folded, 0), entries.count))
        firstEntryAt = entries.isEmpty ? nil : now
        checkpoint = Checkpoint(slot: slot, at: now)
        checkpoints += 1
        checkpointRequested = false
        retryAfter = nil
        failureBackoff.succeeded()
    }

    /// A checkpoint failed: the journal stays, the next attempt waits (1 s doubling to 60 s).
    public mutating func checkpointFailed(now: Instant) {
        checkpointFailures += 1
        var noJitter = SplitMix64(seed: 0)
        retryAfter = now + failureBackoff.failed(random: &noJitter)
    }
}
