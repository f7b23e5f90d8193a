import Glibc
import GoxelPoolCore

/// A pthread mutex. Used instead of Synchronization.Mutex because ThreadSanitizer and helgrind
/// understand pthreads, and because waits need a condition variable on the same lock.
public final class PthreadMutex: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        pointer = .allocate(capacity: 1)
        pointer.initialize(to: pthread_mutex_t())
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        // glibc's PTHREAD_MUTEX_ADAPTIVE_NP (3; not imported into Swift): spins briefly before
        // sleeping, since the pool's lock is held for well under a microsecond.
        pthread_mutexattr_settype(&attributes, 3)
        pthread_mutex_init(pointer, &attributes)
        pthread_mutexattr_destroy(&attributes)
    }

    deinit {
        pthread_mutex_destroy(pointer)
        pointer.deallocate()
    }

    @inline(__always) public func lock() { pthread_mutex_lock(pointer) }
    @inline(__always) public func unlock() { pthread_mutex_unlock(pointer) }

    @inline(__always) public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(pointer)
        defer { pthread_mutex_unlock(pointer) }
        return try body()
    }
}

/// A condition variable on the monotonic clock (wall-clock jumps must not stretch deadlines).
public final class Condition: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        pointer = .allocate(capacity: 1)
        pointer.initialize(to: pthread_cond_t())
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(pointer, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(pointer)
        pointer.deallocate()
    }

    public func signal() { pthread_cond_signal(pointer) }
    public func broadcast() { pthread_cond_broadcast(pointer) }

    /// Waits (the mutex held) until signalled or `deadline` (nil: no deadline). Returns false on timeout.
    @discardableResult
    public func wait(_ mutex: PthreadMutex, until deadline: Instant?) -> Bool {
        guard let deadline else {
            pthread_cond_wait(pointer, mutex.pointer)
            return true
        }
        var spec = timespec(tv_sec: Int(deadline.nanoseconds / 1_000_000_000),
                            tv_nsec: Int(deadline.nanoseconds % 1_000_000_000))
        if deadline.nanoseconds < 0 { spec = timespec(tv_sec: 0, tv_nsec: 0) }
        return pthread_cond_timedwait(pointer, mutex.pointer, &spec) != ETIMEDOUT
    }
}

public enum Clock {
    /// Now on the monotonic clock.
    @inline(__always) public static func now() -> Instant {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Instant(nanoseconds: Int64(spec.tv_sec) &* 1_000_000_000 &+ Int64(spec.tv_nsec))
    }

    /// Unix time in milliseconds, for event timestamps.
    public static func wallMilliseconds() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) &* 1000 &+ Int64(spec.tv_nsec / 1_000_000)
    }

    /// Converts a monotonic instant to Unix milliseconds.
    public static func wallMilliseconds(of instant: Instant) -> Int64 {
        wallMilliseconds() &- (now().nanoseconds &- instant.nanoseconds) / 1_000_000
    }
}

/// A thread that runs a closure; joined explicitly.
public final class LibraryThread: @unchecked Sendable {
    private var thread = pthread_t()
    private var started = false

    public init(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(ThreadBody(body: body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        // Small stacks: these threads only run the library's loops and user callbacks.
        pthread_attr_setstacksize(&attributes, 512 * 1024)
        started = pthread_create(&thread, &attributes, { raw in
            guard let raw else { return nil }
            let body = Unmanaged<ThreadBody>.fromOpaque(raw).takeRetainedValue()
            body.body()
            return nil
        }, box) == 0
        pthread_attr_destroy(&attributes)
        if !started { Unmanaged<ThreadBody>.fromOpaque(box).release() }
    }

    public var isRunning: Bool { started }

    /// Starts a thread nobody joins (used to free a client from one of its own callbacks).
    @discardableResult
    public static func detached(_ body: @escaping @Sendable () -> Void) -> Bool {
        let thread = LibraryThread(body)
        guard thread.started else { return false }
        thread.started = false
        return pthread_detach(thread.thread) == 0
    }

    public func join() {
        guard started else { return }
        started = false
        pthread_join(thread, nil)
    }

    public static func isCurrent(_ thread: LibraryThread) -> Bool {
        thread.started && pthread_equal(thread.thread, pthread_self()) != 0
    }
}

private final class ThreadBody {
    let body: @Sendable () -> Void
    init(body: @escaping @Sendable () -> Void) { self.body = body }
}
