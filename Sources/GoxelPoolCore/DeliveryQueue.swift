import DequeModule

/// What waits for the application in dispatch mode (`"callbacks": "dispatch"`): the completions
/// of async calls and the events for listeners, until goxelpool_dispatch runs them on the
/// application's thread.
///
/// The two kinds have different rules, as in thread mode: a completion is never dropped (its
/// callback runs exactly once), while events are bounded by `eventCapacity` and, when full, the
/// oldest event is dropped and counted, so a loop that falls behind never makes the pool wait.
/// Items come out in the order they went in, across both kinds (a sequence number orders the
/// heads of the two queues). Pure: the I/O layer adds the lock and the eventfd. Inlinable, so
/// the I/O layer's use is specialized (unspecialized, every append and pop looked up generic
/// tuple metadata at run time: about 2 % of dispatch mode's CPU in `perf`).
public struct DeliveryQueue<Completion, Event> {
    public enum Item {
        case completion(Completion)
        case event(Event)
    }

    @usableFromInline var completions = Deque<(sequence: UInt64, value: Completion)>()
    @usableFromInline var events = Deque<(sequence: UInt64, value: Event)>()
    @usableFromInline var nextSequence: UInt64 = 0
    public let eventCapacity: Int
    @usableFromInline var dropped = 0
    @usableFromInline var mostWaiting = 0

    /// Events dropped because the queue held `eventCapacity` events already.
    public var eventsDropped: Int { dropped }
    /// The most items ever waiting at once.
    public var peak: Int { mostWaiting }

    public init(eventCapacity: Int) { self.eventCapacity = max(1, eventCapacity) }

    @inlinable public var count: Int { completions.count + events.count }
    @inlinable public var isEmpty: Bool { completions.isEmpty && events.isEmpty }

    @inlinable
    public mutating func append(completion: Completion) {
        completions.append((nextSequence, completion))
        appended()
    }

    /// Queues an event; returns the oldest event when it had to be dropped to make room (the
    /// caller releases what it holds).
    @inlinable @discardableResult
    public mutating func append(event: Event) -> Event? {
        var oldestDropped: Event?
        if events.count >= eventCapacity, let oldest = events.popFirst() {
            oldestDropped = oldest.value
            dropped += 1
        }
        events.append((nextSequence, event))
        appended()
        return oldestDropped
    }

    /// The item that went in first, of either kind.
    @inlinable
    public mutating func popFirst() -> Item? {
        switch (completions.first?.sequence, events.first?.sequence) {
        case (nil, nil):
            return nil
        case (let completion?, let event?) where event < completion:
            return events.popFirst().map { .event($0.value) }
        case (_?, _):
            return completions.popFirst().map { .completion($0.value) }
        case (nil, _?):
            return events.popFirst().map { .event($0.value) }
        }
    }

    @inlinable
    mutating func appended() {
        nextSequence &+= 1
        mostWaiting = max(mostWaiting, count)
    }
}
