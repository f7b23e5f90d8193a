import CDaemonSpawn
import DequeModule
import Glibc
import GoxelPoolCore

/// One managed daemon process, under its reaper (see daemon_spawn.h): started by `spawn`, its
/// output read line by line, signalled and reaped by the supervisor thread only (not thread-safe).
final class DaemonProcess {
    let id: DaemonID
    let pid: pid_t
    let socketPath: String
    /// argv as run, for messages.
    let commandLine: [String]
    private var handle: gxp_daemon
    private var released = false
    /// Readable once the daemon has ended (its reaper's report).
    var exitFD: Int32 { released ? -1 : handle.status_fd }
    /// The read end of its stdout + stderr pipe (-1: output to /dev/null, or EOF seen).
    private(set) var outputFD: Int32
    private var partialLine: [UInt8] = []
    /// Its last lines of output, for start-failure reports.
    private(set) var lastLines = Deque<String>()
    var limiter: LineRateLimiter
    private(set) var exitStatus: DaemonSupervision.ExitStatus?

    static let keptLines = 20
    static let maxLineBytes = 1024

    private init(id: DaemonID, handle: gxp_daemon, socketPath: String, commandLine: [String], outputFD: Int32, now: Instant) {
        self.id = id; self.handle = handle; pid = handle.pid; self.socketPath = socketPath; self.commandLine = commandLine
        self.outputFD = outputFD
        limiter = LineRateLimiter(now: now)
    }

    /// Starts `command` (placeholders already substituted) with `environment`; a command name
    /// without `/` is looked up in `searchPath`. The error is a sentence for start-failure reports.
    static func spawn(id: DaemonID, command: [String], environment: CStringArray, searchPath: String, socketPath: String,
                      captureOutput: Bool, now: Instant) -> Result<DaemonProcess, SpawnError> {
        guard let name = command.first else { return .failure(SpawnError("empty command")) }
        let path: String
        switch resolve(name, searchPath: searchPath) {
        case .success(let found): path = found
        case .failure(let error): return .failure(error)
        }
        guard let input = openAbove2("/dev/null", O_RDONLY) else {
            return .failure(SpawnError("cannot open /dev/null: \(errnoText())"))
        }
        defer { close(input) }
        var readEnd: Int32 = -1, writeEnd: Int32 = -1
        if captureOutput {
            var ends: [Int32] = [-1, -1]
            guard gxp_pipe_cloexec(&ends) == 0 else { return .failure(SpawnError("cannot create a pipe: \(errnoText())")) }
            readEnd = ends[0]
            writeEnd = above2(ends[1])
            // Only our end is non-blocking: the daemon's writes must block, not fail, when it is full.
            _ = fcntl(readEnd, F_SETFL, fcntl(readEnd, F_GETFL) | O_NONBLOCK)
        } else {
            writeEnd = openAbove2("/dev/null", O_WRONLY) ?? -1
        }
        guard writeEnd >= 3 else {
            if readEnd >= 0 { close(readEnd) }
            return .failure(SpawnError("cannot set up the daemon's output: \(errnoText())"))
        }
        let argv = CStringArray(command)
        guard argv.complete && environment.complete else {
            close(writeEnd)
            if readEnd >= 0 { close(readEnd) }
            return .failure(SpawnError("out of memory"))
        }
        var request = gxp_spawn_request(path: nil, argv: nil, envp: nil, stdin_fd: input, stdout_fd: writeEnd, stderr_fd: writeEnd)
        var handle = gxp_daemon()
        let rc = path.withCString { cPath in
            request.path = cPath
            request.argv = UnsafePointer(argv.pointer)
            request.envp = UnsafePointer(environment.pointer)
            return gxp_spawn(&request, &handle)
        }
        close(writeEnd)
        guard rc == 0 else {
            if readEnd >= 0 { close(readEnd) }
            return .failure(SpawnError("cannot run \(path): \(errnoText(rc))"))
        }
        return .success(DaemonProcess(id: id, handle: handle, socketPath: socketPath, commandLine: command, outputFD: readEnd, now: now))
    }

    struct SpawnError: Error, Equatable {
        let message: String
        init(_ message: String) { self.message = message }
    }

    /// `name` as execvp would find it: as is when it has a `/`, else in `searchPath`.
    static func resolve(_ name: String, searchPath: String) -> Result<String, SpawnError> {
        if name.contains("/") { return .success(name) }
        for directory in searchPath.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (directory.isEmpty ? "." : String(directory)) + "/" + name
            var info = stat()
            if stat(candidate, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 {
                return .success(candidate)
            }
        }
        return .failure(SpawnError("command not found: \(name) (searched PATH=\(searchPath))"))
    }

    // MARK: - Output

    /// Reads what is available; returns the complete lines (a line longer than maxLineBytes is
    /// cut there). At EOF the last partial line is returned too and the descriptor closed.
    func readOutput() -> [String] {
        guard outputFD >= 0 else { return [] }
        var lines: [String] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(outputFD, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
            }
            if n <= 0 {
                if !partialLine.isEmpty { lines.append(takeLine()) }
                close(outputFD)
                outputFD = -1
                break
            }
            for byte in buffer[0..<n] {
                if byte == 0x0A {
                    lines.append(takeLine())
                } else if partialLine.count < Self.maxLineBytes {
                    partialLine.append(byte)
                } else if partialLine.count == Self.maxLineBytes {
                    lines.append(takeLine() + " [cut]")
                    partialLine = [byte]
                }
            }
        }
        for line in lines {
            lastLines.append(line)
            if lastLines.count > Self.keptLines { lastLines.removeFirst() }
        }
        return lines
    }

    private func takeLine() -> String {
        var bytes = partialLine
        partialLine = []
        if bytes.last == 0x0D { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: - Signals and exit

    /// Signals its process group (a shell wrapper's children too). Safe until it is released:
    /// its reaper keeps it unreaped until then, so the pid cannot have been reused.
    func signal(_ signal: Int32) {
        guard !released, exitStatus == nil else { return }
        if kill(-pid, signal) != 0 { _ = kill(pid, signal) }
    }

    /// How it ended, once its reaper has said so (nil: still running).
    func reap() -> DaemonSupervision.ExitStatus? {
        if let exitStatus { return exitStatus }
        guard !released else { return .unknown }
        var exited: Int32 = 0, value: Int32 = 0
        switch gxp_daemon_poll(&handle, &exited, &value) {
        case 0: return nil
        case 1: exitStatus = exited != 0 ? .exited(value) : .signaled(value)
        default: exitStatus = .unknown
        }
        return exitStatus
    }

    /// Lets the reaper go and closes the pipes (after the exit, once its output has been read;
    /// a daemon still running is killed).
    func release() {
        if !released {
            released = true
            gxp_daemon_release(&handle)
        }
        if outputFD >= 0 { close(outputFD); outputFD = -1 }
    }

    deinit { release() }

    // MARK: - Helpers

    /// The child's 0, 1, 2 are made from these: they must not be 0, 1 or 2 themselves (a host
    /// with its standard descriptors closed gets those numbers back from open or pipe).
    private static func above2(_ fd: Int32) -> Int32 {
        guard fd >= 0, fd < 3 else { return fd }
        let moved = fcntl(fd, F_DUPFD_CLOEXEC, 3)
        close(fd)
        return moved
    }

    private static func openAbove2(_ path: String, _ flags: Int32) -> Int32? {
        let fd = above2(open(path, flags | O_CLOEXEC))
        return fd >= 3 ? fd : nil
    }
}

/// A NULL-terminated array of C strings (argv, envp), freed with it.
final class CStringArray {
    let pointer: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
    let count: Int
    /// False when a copy failed (out of memory): the array is then shorter than asked.
    private(set) var complete = true

    /// `strings`, or raw C strings copied byte for byte (an inherited environment need not be UTF-8).
    init(_ strings: [String], raw: [UnsafePointer<CChar>] = []) {
        count = raw.count + strings.count
        pointer = .allocate(capacity: count + 1)
        var index = 0
        for item in raw {
            if let copy = strdup(item) { pointer[index] = copy; index += 1 } else { complete = false }
        }
        for item in strings {
            if let copy = strdup(item) { pointer[index] = copy; index += 1 } else { complete = false }
        }
        for rest in index...count { pointer[rest] = nil }
    }

    deinit {
        for index in 0..<count { free(pointer[index]) }
        pointer.deallocate()
    }
}
