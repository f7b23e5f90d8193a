import DequeModule

/// A fixed set of library threads running queued jobs in FIFO order. Used for async calls and
/// batch items, and (a separate group) for opening connections and health checks, so an async
/// call waiting for a connection can never block the open that would serve it.
public final class WorkerGroup: @unchecked Sendable {
    public typealias Job = () -> Void

    private let lock = PthreadMutex()
    private let wakeup = Condition()
    private var jobs = Deque<Job>()
    private var stopping = false
    private var threads: [LibraryThread] = []
    private let capacity: Int

    /// `capacity`: most jobs queued (not running) at once; `submit` refuses beyond it.
    public init(threads count: Int, capacity: Int) {
        self.capacity = max(1, capacity)
        for _ in 0..<max(1, count) {
            let thread = LibraryThread { [unowned self] in self.run() }
            if thread.isRunning { threads.append(thread) }
        }
    }

    public var threadCount: Int { threads.count }

    /// Queues a job. False when stopped, when the queue is full, or when no thread could start.
    public func submit(_ job: @escaping Job) -> Bool {
        lock.lock()
        guard !stopping, jobs.count < capacity, !threads.isEmpty else { lock.unlock(); return false }
        jobs.append(job)
        lock.unlock()
        wakeup.signal()
        return true
    }

    /// True when the calling thread is one of this group's.
    public func isWorkerThread() -> Bool { threads.contains { LibraryThread.isCurrent($0) } }

    /// Runs what is queued, then stops and joins the threads.
    public func stopAndJoin() {
        lock.withLock { stopping = true }
        wakeup.broadcast()
        for thread in threads { thread.join() }
        threads.removeAll()
    }

    private func run() {
        while true {
            lock.lock()
            while jobs.isEmpty && !stopping { wakeup.wait(lock, until: nil) }
            guard let job = jobs.popFirst() else { lock.unlock(); return }
            lock.unlock()
            job()
        }
    }
}
