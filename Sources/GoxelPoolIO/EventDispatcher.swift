import CJansson
import DequeModule
import Glibc
import GoxelPoolCore
import Synchronization

/// Event kinds: bit values equal the header's GOXELPOOL_EVENT_*.
public struct EventKind: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let alert = EventKind(rawValue: 1 << 0)
    public static let health = EventKind(rawValue: 1 << 1)
    public static let connection = EventKind(rawValue: 1 << 2)
    public static let pool = EventKind(rawValue: 1 << 3)
    public static let request = EventKind(rawValue: 1 << 4)
    public static let log = EventKind(rawValue: 1 << 5)
    public static let session = EventKind(rawValue: 1 << 6)
    public static let daemon = EventKind(rawValue: 1 << 7)
    public static let all = EventKind(rawValue: 0xff)

    var name: String {
        switch self {
        case .alert: "alert"
        case .health: "health"
        case .connection: "connection"
        case .pool: "pool"
        case .request: "request"
        case .session: "session"
        case .daemon: "daemon"
        default: "log"
        }
    }
}

/// A field value of an event, turned into JSON on the event thread (not under the pool's lock).
public enum EventValue: Sendable {
    case int(Int64), double(Double), string(String), bool(Bool), null
    case strings([String])

    func json() -> UnsafeMutablePointer<json_t>? {
        switch self {
        case .int(let value): json_integer(json_int_t(value))
        case .double(let value): value.isFinite ? json_real(value) : json_null()
        case .string(let value): json_stringn(value, value.utf8.count)
        case .bool(let value): value ? json_true() : json_false()
        case .null: json_null()
        case .strings(let values):
            json_array().map { array in
                for value in values { json_array_append_new(array, json_stringn(value, value.utf8.count)) }
                return array
            }
        }
    }
}

public struct ClientEvent: Sendable {
    public var kind: EventKind
    public var type: String
    public var timestampMs: Int64
    public var fields: [(String, EventValue)]

    public init(kind: EventKind, type: String, fields: [(String, EventValue)]) {
        self.kind = kind
        self.type = type
        self.timestampMs = Clock.wallMilliseconds()
        self.fields = fields
    }

    func json() -> UnsafeMutablePointer<json_t>? {
        guard let object = json_object() else { return nil }
        json_object_set_new(object, "kind", json_string(kind.name))
        json_object_set_new(object, "type", json_stringn(type, type.utf8.count))
        json_object_set_new(object, "timestamp_ms", json_integer(json_int_t(timestampMs)))
        for (key, value) in fields { json_object_set_new(object, key, value.json()) }
        return object
    }
}

/// Delivers events to listeners on one library thread, in order, never under the pool's lock.
/// The queue is bounded: when listeners fall behind, the oldest events are dropped and counted,
/// so a blocked listener can never stall the pool. In dispatch mode there is no event thread:
/// events wait in the client's DispatchInbox (bounded the same way) and are delivered by
/// `deliver` on the thread that runs goxelpool_dispatch.
public final class EventDispatcher: @unchecked Sendable {
    public typealias Callback = (UnsafeMutablePointer<json_t>) -> Void

    struct Listener {
        let id: Int
        let kinds: EventKind
        let callback: Callback
    }

    private let lock = PthreadMutex()
    private let wakeup = Condition()
    private let idle = Condition()
    private var queue = Deque<ClientEvent>()
    private let capacity: Int
    private var listeners: [Listener] = []
    private var nextListenerID = 1
    private var runningListener: Int?
    /// The thread running `runningListener` (the event thread, or a thread in goxelpool_dispatch).
    private var runningOn = pthread_t()
    private var stopping = false
    private var thread: LibraryThread?
    /// Kinds some listener wants: read without the lock on hot paths (a stale value only means
    /// one event more or less is built).
    private let subscribedKinds = Atomic<UInt32>(0)
    public private(set) var dropped = 0
    public private(set) var delivered = 0
    /// Set when the client is freed from a callback: nothing more is delivered.
    private var suppressed = false
    /// Dispatch mode: events go there instead of to the event thread.
    private let inbox: DispatchInbox?

    /// `inbox`: dispatch mode (no event thread).
    public init(capacity: Int, inbox: DispatchInbox? = nil) {
        self.capacity = max(1, capacity)
        self.inbox = inbox
        if inbox == nil { thread = LibraryThread { [unowned self] in self.run() } }
    }

    public func wants(_ kind: EventKind) -> Bool {
        subscribedKinds.load(ordering: .relaxed) & kind.rawValue != 0
    }

    public func isDispatcherThread() -> Bool { thread.map(LibraryThread.isCurrent) ?? false }

    public func post(_ event: ClientEvent) {
        lock.lock()
        guard !stopping, listeners.contains(where: { $0.kinds.contains(event.kind) }) else { lock.unlock(); return }
        if let inbox {
            lock.unlock()
            inbox.post(event)
            return
        }
        if queue.count >= capacity {
            queue.removeFirst()
            dropped += 1
        }
        queue.append(event)
        lock.unlock()
        wakeup.signal()
    }

    public func add(kinds: EventKind, callback: @escaping Callback) -> Int {
        lock.withLock {
            let id = nextListenerID
            nextListenerID += 1
            listeners.append(Listener(id: id, kinds: kinds, callback: callback))
            updateMask()
            return id
        }
    }

    /// Removes a listener; waits until it is not running unless called from the event thread.
    public func remove(id: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard let index = listeners.firstIndex(where: { $0.id == id }) else { return false }
        listeners.remove(at: index)
        updateMask()
        while runningListener == id && !runningHere() { idle.wait(lock, until: nil) }
        return true
    }

    /// No listener runs after this returns (except one already running on the calling thread).
    public func suppress() {
        lock.lock()
        suppressed = true
        while runningListener != nil && !runningHere() { idle.wait(lock, until: nil) }
        lock.unlock()
    }

    /// Under the lock: the running listener (if any) runs on the calling thread.
    private func runningHere() -> Bool { runningListener != nil && pthread_equal(runningOn, pthread_self()) != 0 }

    public func counters() -> (delivered: Int, dropped: Int) {
        let inboxDropped = inbox?.counters().eventsDropped ?? 0
        return lock.withLock { (delivered, dropped + inboxDropped) }
    }

    /// Delivers what is queued, then stops the thread (dispatch mode: only stops taking events;
    /// those already in the inbox wait for goxelpool_dispatch).
    public func stopAndJoin() {
        lock.withLock { stopping = true }
        wakeup.broadcast()
        thread?.join()
        thread = nil
    }

    private func updateMask() {
        let mask = listeners.reduce(UInt32(0)) { $0 | $1.kinds.rawValue }
        subscribedKinds.store(mask, ordering: .relaxed)
    }

    private func run() {
        lock.lock()
        while true {
            while queue.isEmpty && !stopping { wakeup.wait(lock, until: nil) }
            guard let event = queue.popFirst() else { break }
            lock.unlock()
            deliver(event)
            lock.lock()
        }
        lock.unlock()
    }

    /// Calls the listeners that want `event`, on the calling thread (the event thread, or in
    /// dispatch mode the thread in goxelpool_dispatch), never under the lock.
    public func deliver(_ event: ClientEvent) {
        let targets = lock.withLock { listeners.filter { $0.kinds.contains(event.kind) } }
        let json = targets.isEmpty ? nil : event.json()
        for listener in targets {
            lock.lock()
            // Removed meanwhile, or the client was freed from a callback: skip it.
            let stillThere = listeners.contains { $0.id == listener.id } && !suppressed
            if stillThere {
                runningListener = listener.id
                runningOn = pthread_self()
            }
            lock.unlock()
            guard stillThere, let json else { continue }
            listener.callback(json)
            lock.lock()
            runningListener = nil
            delivered += 1
            lock.unlock()
            idle.broadcast()
        }
        if let json { json_decref(json) }
    }
}
