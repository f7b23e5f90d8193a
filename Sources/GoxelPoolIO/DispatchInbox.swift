import CLinux
import Glibc
import GoxelPoolCore

/// Dispatch mode (`"callbacks": "dispatch"`): library threads put async-call completions and
/// listener events here instead of running them; the application runs them with `run` (C:
/// goxelpool_dispatch) on a thread of its own, typically its event loop's, when `fd` is readable.
///
/// `fd` is an eventfd whose counter is 1 while something is queued: written when an item arrives
/// and the fd is not readable yet, read (reset to 0) when `run` returns with the queue empty, both
/// under the lock. So outside `run` it is readable exactly while something is queued, for a
/// level-triggered poll, epoll or uv_poll_t; inside `run` it may stay readable while the queue is
/// momentarily empty, which saves two system calls per item under load (the loop would find
/// nothing, or what arrived meanwhile). One thread runs items at a time.
public final class DispatchInbox: @unchecked Sendable {
    /// An async call's outcome and what runs it (stored as is: no closure is allocated per item on
    /// the library thread only to be freed on the application's).
    public struct Completion {
        let outcome: CallOutcome
        let run: (CallOutcome) -> Void
    }

    private let lock = PthreadMutex()
    private var queue: DeliveryQueue<Completion, ClientEvent>
    /// The eventfd; closed when the inbox is released (goxelpool_client_free).
    public let fd: Int32
    /// The eventfd's counter is 1.
    private var signalled = false
    /// The thread inside `run`, if any.
    private var runner: pthread_t?
    private var stopRequested = false

    /// nil when no eventfd can be made (out of file descriptors or memory).
    public init?(eventCapacity: Int) {
        let fd = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        guard fd >= 0 else { return nil }
        self.fd = fd
        queue = DeliveryQueue(eventCapacity: eventCapacity)
    }

    deinit { Glibc.close(fd) }

    public func post(_ outcome: CallOutcome, to run: @escaping (CallOutcome) -> Void) {
        lock.withLock {
            queue.append(completion: Completion(outcome: outcome, run: run))
            signal()
        }
    }

    public func post(_ event: ClientEvent) {
        lock.withLock {
            queue.append(event: event)
            signal()
        }
    }

    public enum RunResult: Equatable {
        case ran(Int)
        /// Called from inside an item this inbox is running (on the same thread).
        case nested
        /// Another thread is running items.
        case busy
    }

    /// Runs up to `maxItems` items (`<= 0`: those queued when the call starts) on the calling
    /// thread, in order, never under the lock; events go to `deliver`.
    public func run(maxItems: Int, deliver: (ClientEvent) -> Void) -> RunResult {
        let me = pthread_self()
        lock.lock()
        if let runner {
            lock.unlock()
            return pthread_equal(runner, me) != 0 ? .nested : .busy
        }
        runner = me
        stopRequested = false
        let budget = maxItems > 0 ? maxItems : queue.count
        var ran = 0
        while ran < budget, !stopRequested, let item = queue.popFirst() {
            lock.unlock()
            switch item {
            case .completion(let completion): completion.run(completion.outcome)
            case .event(let event): deliver(event)
            }
            ran += 1
            lock.lock()
        }
        runner = nil
        if queue.isEmpty { unsignal() }
        lock.unlock()
        return .ran(ran)
    }

    /// True on the thread that is inside `run` (so in a callback it runs).
    public func isRunnerThread() -> Bool {
        lock.withLock { runner.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }

    /// Makes the current `run` return once the item it is running returns (a deferred free).
    public func stopAfterCurrentItem() { lock.withLock { stopRequested = true } }

    public struct Counters: Sendable {
        public var depth, peak, eventsDropped: Int
    }

    public func counters() -> Counters {
        lock.withLock {
            Counters(depth: queue.count, peak: queue.peak, eventsDropped: queue.eventsDropped)
        }
    }

    /// Under the lock: something is queued; makes the fd readable if it is not.
    private func signal() {
        guard !signalled else { return }
        var one: UInt64 = 1
        while write(fd, &one, 8) < 0 && errno == EINTR {}
        signalled = true
    }

    /// Under the lock, the queue empty: makes the fd unreadable (reading resets the counter to 0).
    private func unsignal() {
        guard signalled else { return }
        var value: UInt64 = 0
        while read(fd, &value, 8) < 0 && errno == EINTR {}
        signalled = false
    }
}
