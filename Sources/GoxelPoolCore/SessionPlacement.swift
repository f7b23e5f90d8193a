import DequeModule

public struct SessionID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let value: Int
    public init(_ value: Int) { self.value = value }
    public static func < (a: Self, b: Self) -> Bool { a.value < b.value }
    public var description: String { "s\(value)" }
}

/// Which daemon (endpoint) each session lives on, as a pure state machine.
///
/// A daemon holds one document for all its connections, so sessions are placed, not balanced:
/// - a session with a `key` goes to the endpoint that rendezvous hashing (highest random weight)
///   picks for that key among the available endpoints, so sessions of one key meet on one daemon
///   and few keys move when endpoints come and go;
/// - an exclusive session needs a daemon no other session is on; a shared one a daemon with no
///   exclusive session;
/// - a request that cannot be placed waits, FIFO, bounded by `maxWaiters`; whenever a session
///   closes or an endpoint changes, waiters are served in order, each taking what it can use, so a
///   later request never takes a daemon an earlier one could have had.
/// The runner owns the lock and the waiters' deadlines (`waiterTimedOut`).
public struct SessionPlacement {
    public struct Request: Sendable, Equatable {
        public var key: String?
        public var exclusive: Bool
        /// Endpoints this request must not use (a session moving off one).
        public var excluding: Set<Int>
        public init(key: String?, exclusive: Bool, excluding: Set<Int> = []) {
            self.key = key; self.exclusive = exclusive; self.excluding = excluding
        }
    }

    public enum Failure: Error, Sendable, Equatable {
        case busy    // the wait queue is full
        case closed  // the client is closing
    }

    public enum Decision: Sendable, Equatable {
        case placed(endpoint: Int)
        case queued
        case failed(Failure)
    }

    /// For the runner: wake a waiter with where it goes, or why it does not.
    public enum Action: Sendable, Equatable {
        case place(SessionID, endpoint: Int)
        case fail(SessionID, Failure)
    }

    public struct Member: Sendable, Equatable {
        public let id: Int
        /// What the key is hashed with (the endpoint's text, stable across processes).
        public let name: String
        public fileprivate(set) var available = true
        public fileprivate(set) var exclusiveHolder: SessionID?
        public fileprivate(set) var shared: Set<SessionID> = []
        /// Sessions ever placed here: unkeyed sessions go where it is lowest, to spread them.
        public fileprivate(set) var placements = 0
        public var sessionCount: Int { shared.count + (exclusiveHolder == nil ? 0 : 1) }
    }

    struct Waiter {
        let id: SessionID
        let request: Request
    }

    public let maxWaiters: Int
    /// In the order endpoints were added (ties are broken by it, so picks are repeatable).
    public private(set) var members: [Member] = []
    public private(set) var placed: [SessionID: (endpoint: Int, exclusive: Bool)] = [:]
    private var waiters = Deque<Waiter>()
    public private(set) var isClosed = false

    public init(maxWaiters: Int) { self.maxWaiters = maxWaiters }

    public var waitingCount: Int { waiters.count }
    public func member(_ id: Int) -> Member? { members.first { $0.id == id } }
    public func endpoint(of session: SessionID) -> Int? { placed[session]?.endpoint }

    // MARK: - Endpoints

    public mutating func addEndpoint(id: Int, name: String) -> [Action] {
        guard !members.contains(where: { $0.id == id }) else { return [] }
        members.append(Member(id: id, name: name))
        return serveWaiters()
    }

    /// Drops the endpoint; returns the sessions still placed on it (the runner moves or ends
    /// them; they stay counted here until released) and what its removal let waiters do.
    public mutating func removeEndpoint(id: Int) -> (stranded: [SessionID], actions: [Action]) {
        guard let index = members.firstIndex(where: { $0.id == id }) else { return ([], []) }
        members[index].available = false
        let stranded = placed.filter { $0.value.endpoint == id }.map(\.key).sorted()
        // With sessions still on it, it lingers (unavailable) until the last one leaves.
        if stranded.isEmpty { members.remove(at: index) } else { removedIDs.insert(id) }
        return (stranded, serveWaiters())
    }

    /// An endpoint stops (draining, ejected, circuit open) or starts taking new sessions again.
    /// Sessions already there stay.
    public mutating func setAvailable(id: Int, _ available: Bool) -> [Action] {
        guard let index = members.firstIndex(where: { $0.id == id }), !removedIDs.contains(id),
              members[index].available != available else { return [] }
        members[index].available = available
        return available ? serveWaiters() : []
    }

    // MARK: - Sessions

    /// A session asks for a daemon. `.queued`: it waits for a `.place`/`.fail` action naming it,
    /// or its deadline (then `waiterTimedOut`).
    public mutating func request(_ id: SessionID, _ request: Request) -> (Decision, [Action]) {
        if isClosed { return (.failed(.closed), []) }
        // Earlier waiters were served at every change, so what is free now is free for this one.
        if let endpoint = choose(request) {
            assign(id, to: endpoint, exclusive: request.exclusive)
            return (.placed(endpoint: endpoint), [])
        }
        guard waiters.count < maxWaiters else { return (.failed(.busy), []) }
        waiters.append(Waiter(id: id, request: request))
        return (.queued, [])
    }

    /// A waiter's deadline passed: true if it was still waiting (it is removed); false if it was
    /// placed meanwhile (the runner then releases that placement).
    public mutating func waiterTimedOut(_ id: SessionID) -> Bool {
        guard let index = waiters.firstIndex(where: { $0.id == id }) else { return false }
        waiters.remove(at: index)
        return true
    }

    /// A session closed: its daemon is free for waiters.
    public mutating func release(_ id: SessionID) -> [Action] {
        guard unassign(id) else { return [] }
        return serveWaiters()
    }

    /// Moves a placed session to another endpoint chosen as for `request` (nil: none can take it
    /// now, and it stays where it is).
    public mutating func relocate(_ id: SessionID, _ request: Request) -> (endpoint: Int?, actions: [Action]) {
        guard let current = placed[id] else { return (nil, []) }
        var wanted = request
        wanted.excluding.insert(current.endpoint)
        guard let target = choose(wanted) else { return (nil, []) }
        unassign(id)
        assign(id, to: target, exclusive: request.exclusive)
        return (target, serveWaiters())
    }

    /// Shutdown: every waiter fails.
    public mutating func close() -> [Action] {
        isClosed = true
        var actions: [Action] = []
        while let waiter = waiters.popFirst() { actions.append(.fail(waiter.id, .closed)) }
        return actions
    }

    // MARK: - Rules

    /// Endpoints removed while sessions were still on them.
    private var removedIDs: Set<Int> = []

    @discardableResult
    private mutating func unassign(_ id: SessionID) -> Bool {
        guard let place = placed.removeValue(forKey: id) else { return false }
        if let index = members.firstIndex(where: { $0.id == place.endpoint }) {
            if members[index].exclusiveHolder == id { members[index].exclusiveHolder = nil }
            members[index].shared.remove(id)
            // A removed endpoint lingers until its last session leaves.
            if members[index].sessionCount == 0 && removedIDs.remove(place.endpoint) != nil { members.remove(at: index) }
        }
        return true
    }

    private mutating func assign(_ id: SessionID, to endpoint: Int, exclusive: Bool) {
        guard let index = members.firstIndex(where: { $0.id == endpoint }) else { return }
        if exclusive { members[index].exclusiveHolder = id } else { members[index].shared.insert(id) }
        members[index].placements += 1
        placed[id] = (endpoint, exclusive)
    }

    private func fits(_ member: Member, exclusive: Bool) -> Bool {
        exclusive ? member.sessionCount == 0 : member.exclusiveHolder == nil
    }

    /// Where `request` goes now, or nil (it must wait).
    private func choose(_ request: Request) -> Int? {
        let candidates = members.filter { $0.available && !request.excluding.contains($0.id) }
        if let key = request.key {
            // The key's endpoint, even if it is busy: sessions of one key must meet on one daemon.
            guard let target = candidates.max(by: { Self.weight(key: key, endpoint: $0.name) < Self.weight(key: key, endpoint: $1.name) }) else {
                return nil
            }
            return fits(target, exclusive: request.exclusive) ? target.id : nil
        }
        var best: Member?
        for member in candidates where fits(member, exclusive: request.exclusive) {
            guard let current = best else { best = member; continue }
            if (member.sessionCount, member.placements) < (current.sessionCount, current.placements) { best = member }
        }
        return best?.id
    }

    /// Serves waiters in FIFO order; each takes what it can use now.
    private mutating func serveWaiters() -> [Action] {
        guard !waiters.isEmpty else { return [] }
        var actions: [Action] = []
        var remaining = Deque<Waiter>()
        while let waiter = waiters.popFirst() {
            if let endpoint = choose(waiter.request) {
                assign(waiter.id, to: endpoint, exclusive: waiter.request.exclusive)
                actions.append(.place(waiter.id, endpoint: endpoint))
            } else {
                remaining.append(waiter)
            }
        }
        waiters = remaining
        return actions
    }

    /// Rendezvous (highest random weight) hashing: a stable 64-bit hash of key and endpoint, the
    /// same in every process (Swift's Hasher is seeded per process, so it is not used).
    public static func weight(key: String, endpoint: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in key.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        hash = (hash ^ 0xFF) &* 0x0000_0100_0000_01B3
        for byte in endpoint.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        // FNV-1a mixes its last bytes poorly: finish with SplitMix64's mixer.
        var z = hash &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
