import DequeModule

/// What waits for the application in dispatch mode (`"callbacks": "dispatch"`): the completions
/// of async calls and the events for listeners, until goxelpool_dispatch runs them on the
/// application's thread.
///
/// The two kinds have different rules, as in thread mode: a completion is never dropped (its
/// callback runs exactly once), while events are bounded by `eventCapacity` and, when full, the
/// oldest event is dropped and counted, so a loop that falls behind never makes the pool wait.
/// Items come out in the order they went in, across both kinds (a sequence number orders the
/// heads of the two queues). Pure: the I/O layer adds the lock and the eventfd.
public struct DeliveryQueue<Completion, Event> {
    public enum Item {
        case completion(Completion)
        case event(Event)
    }

    private var completions = Deque<(sequence: UInt64, value: Completion)>()
    private var events = Deque<(sequence: UInt64, value: Event)>()
    private var nextSequence: UInt64 = 0
    public let eventCapacity: Int
    /// Events dropped because the queue held `eventCapacity` events already.
    public private(set) var eventsDropped = 0
    /// The most items ever waiting at once.
    public private(set) var peak = 0

    public init(eventCapacity: Int) { self.eventCapacity = max(1, eventCapacity) }

    public var count: Int { completions.count + events.count }
    public var isEmpty: Bool { completions.isEmpty && events.isEmpty }

    public mutating func append(completion: Completion) {
        completions.append((nextSequence, completion))
        appended()
    }

    /// Queues an event; returns the oldest event when it had to be dropped to make room (the
    /// caller releases what it holds).
    @discardableResult
    public mutating func append(event: Event) -> Event? {
        var dropped: Event?
        if events.count >= eventCapacity, let oldest = events.popFirst() {
            dropped = oldest.value
            eventsDropped += 1
        }
        events.append((nextSequence, event))
        appended()
        return dropped
    }

    /// The item that went in first, of either kind.
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

    private mutating func appended() {
        nextSequence &+= 1
        peak = max(peak, count)
    }
}
