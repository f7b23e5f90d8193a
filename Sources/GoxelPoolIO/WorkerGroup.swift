import DequeModule
import Glibc

/// A fixed set of library threads running queued jobs in FIFO order. Used for async calls and
/// batch items, and (a separate group) for opening connections and health checks, so an async
/// call waiting for a connection can never block the open that would serve it.
public final class WorkerGroup: @unchecked Sendable {
    public typealias Job = () -> Void

    private let lock = PthreadMutex()
    /// Counts queued jobs (and, once stopping, one more per thread): a worker sleeps on it, not
    /// on a condition variable of `lock`, because a thread woken from pthread_cond_wait holds the
    /// mutex marked contended, and its unlock costs a system call that wakes nobody.
    private let queued: UnsafeMutablePointer<sem_t>
    private var jobs = Deque<Job>()
    private var stopping = false
    private var threads: [LibraryThread] = []
    private let capacity: Int

    /// `capacity`: most jobs queued (not running) at once; `submit` refuses beyond it.
    public init(threads count: Int, capacity: Int) {
        self.capacity = max(1, capacity)
        queued = .allocate(capacity: 1)
        sem_init(queued, 0, 0)
        for _ in 0..<max(1, count) {
            let thread = LibraryThread { [unowned self] in self.run() }
            if thread.isRunning { threads.append(thread) }
        }
    }

    deinit {
        sem_destroy(queued)
        queued.deallocate()
    }

    public var threadCount: Int { threads.count }

    /// Queues a job. False when stopped, when the queue is full, or when no thread could start.
    public func submit(_ job: @escaping Job) -> Bool {
        lock.lock()
        guard !stopping, jobs.count < capacity, !threads.isEmpty else { lock.unlock(); return false }
        jobs.append(job)
        lock.unlock()
        sem_post(queued)
        return true
    }

    /// True when the calling thread is one of this group's.
    public func isWorkerThread() -> Bool { threads.contains { LibraryThread.isCurrent($0) } }

    /// Runs what is queued, then stops and joins the threads.
    public func stopAndJoin() {
        lock.withLock { stopping = true }
        for _ in threads { sem_post(queued) }
        for thread in threads { thread.join() }
        threads.removeAll()
    }

    /// Each post is one job or, once stopping, one thread's cue to leave (after the queue is
    /// empty: jobs queued before the stop still run).
    private func run() {
        while true {
            while sem_wait(queued) != 0 {}  // EINTR only
            lock.lock()
            guard let job = jobs.popFirst() else { lock.unlock(); return }
            lock.unlock()
            job()
        }
    }
}
