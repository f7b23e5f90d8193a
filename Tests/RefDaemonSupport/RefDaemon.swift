// Test support: start, stop, kill and restart a `goxel-refd` on a private temporary socket, and
// talk to it with a tiny blocking JSON-RPC helper that does not depend on libgoxelpool.
//
// Self-contained (Glibc only). Compiled into test targets as an ordinary source file.
//
//     let daemon = try RefDaemon(arguments: ["--seed", "1"])
//     _ = try daemon.setFaults(#"{"drop_rate": 0.5}"#)
//     ... use daemon.socketPath with the pool ...
//     let peak = RefDaemon.intField("peak_open", in: try daemon.stats())
//
// Control calls (`setFaults`, `stats`, `control`) go to refd's control socket
// (`socketPath + ".ctl"`), which no fault applies to (not even max_lifetime_connections,
// unread_rate or stall) and which is not counted in refd.stats, so checking the daemon never
// disturbs what is being measured. `rawCall(socketPath: daemon.socketPath, ...)` talks to the
// main socket instead, like any client (faults apply, except to `refd.*` methods).

#if canImport(Glibc)
import Glibc
#endif

struct RefDaemonError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

final class RefDaemon: @unchecked Sendable {
    /// The daemon's main socket (what the pool under test connects to).
    let socketPath: String
    /// refd's fault-free control socket.
    var controlSocketPath: String { socketPath + ".ctl" }
    /// Extra command-line arguments (fault flags, `--supervise`, `--seed` ...).
    let arguments: [String]
    /// Path of the goxel-refd binary in use.
    let binaryPath: String
    /// The process started (the supervisor with `--supervise`); 0 when not running.
    var pid: pid_t = 0

    init(socketPath: String? = nil, arguments: [String] = []) throws {
        self.binaryPath = try RefDaemon.locateBinary()
        self.socketPath = socketPath ?? RefDaemon.makeSocketPath()
        self.arguments = arguments
        try start()
    }

    deinit { stop() }

    // MARK: - Life cycle

    /// SIGTERM (refd unlinks its sockets and exits 0; a supervisor stops its child first), then
    /// SIGKILL after 3 s. Idempotent.
    func stop() {
        guard pid > 0 else { return }
        kill(pid, SIGTERM)
        if !RefDaemon.waitForExit(pid, seconds: 3) {
            kill(pid, SIGKILL)
            _ = RefDaemon.waitForExit(pid, seconds: 3)
        }
        pid = 0
        unlink(socketPath)
        unlink(controlSocketPath)
    }

    /// kill -9: the daemon dies at once, leaving its socket file behind (like a crash).
    /// With `--supervise` this kills the supervisor; its child exits within ~200 ms.
    func kill9() {
        guard pid > 0 else { return }
        kill(pid, SIGKILL)
        _ = RefDaemon.waitForExit(pid, seconds: 5)
        pid = 0
    }

    /// kill -9 if running, then start again on the same socket path with the same arguments.
    func restart() throws {
        kill9()
        try start()
    }

    /// True if the started process has not exited yet.
    var isRunning: Bool {
        guard pid > 0 else { return false }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid {
            pid = 0
            return false
        }
        return true
    }

    /// Waits until the control socket answers `ping` (e.g. after `refd.crash` under `--supervise`).
    func waitUntilReady(timeout: Double = 5) throws {
        let deadline = RefDaemon.now() + timeout
        var lastError: Error = RefDaemonError("timed out")
        while RefDaemon.now() < deadline {
            do {
                let line = try RefDaemon.rawCall(socketPath: controlSocketPath,
                                                 #"{"jsonrpc":"2.0","method":"ping","id":1}"#, timeout: 1)
                if line.contains("\"pong\"") { return }
            } catch {
                lastError = error
            }
            RefDaemon.sleep(seconds: 0.01)
        }
        throw RefDaemonError("goxel-refd on \(socketPath) not ready after \(timeout) s: \(lastError)")
    }

    // MARK: - Control

    /// One JSON-RPC request on a new connection to the control socket; returns the answer line.
    func control(_ json: String, timeout: Double = 5) throws -> String {
        try RefDaemon.rawCall(socketPath: controlSocketPath, json, timeout: timeout)
    }

    /// `refd.set_faults` with a JSON object of settings, e.g. `{"drop_rate":0.5,"stall":false}`.
    /// Returns the answer line (the full settings). Throws if refd answers an error.
    @discardableResult
    func setFaults(_ settingsObject: String) throws -> String {
        let line = try control(#"{"jsonrpc":"2.0","method":"refd.set_faults","params":"# + settingsObject + #","id":1}"#)
        if line.contains("\"error\"") { throw RefDaemonError("refd.set_faults failed: \(line)") }
        return line
    }

    /// `refd.reset_faults`: every fault off.
    @discardableResult
    func resetFaults() throws -> String {
        try control(#"{"jsonrpc":"2.0","method":"refd.reset_faults","id":1}"#)
    }

    /// `refd.stats` answer line: {"accepted","open","peak_open","requests","pid"}; read fields
    /// with `RefDaemon.intField`.
    func stats() throws -> String {
        try control(#"{"jsonrpc":"2.0","method":"refd.stats","id":1}"#)
    }

    /// `refd.reset_stats`: requests := 0, peak_open := open (accepted is never reset).
    func resetStats() throws {
        _ = try control(#"{"jsonrpc":"2.0","method":"refd.reset_stats","id":1}"#)
    }

    /// `refd.crash`: the daemon dies at once (no answer). Under `--supervise` it comes back.
    func crash() {
        _ = try? RefDaemon.rawCall(socketPath: controlSocketPath,
                                   #"{"jsonrpc":"2.0","method":"refd.crash","id":1}"#, timeout: 0.5)
    }

    /// The integer value of `"name":` in a compact JSON line (refd's output), or nil.
    static func intField(_ name: String, in line: String) -> Int? {
        let key = Array("\"\(name)\":".utf8)
        let text = Array(line.utf8)
        guard text.count >= key.count else { return nil }
        for start in 0...(text.count - key.count) where text[start..<(start + key.count)].elementsEqual(key) {
            var i = start + key.count
            while i < text.count && text[i] == 0x20 { i += 1 }
            var digits: [UInt8] = []
            if i < text.count && text[i] == 0x2D { digits.append(0x2D); i += 1 }
            while i < text.count && text[i] >= 0x30 && text[i] <= 0x39 { digits.append(text[i]); i += 1 }
            return Int(String(decoding: digits, as: UTF8.self))
        }
        return nil
    }

    // MARK: - Raw JSON-RPC

    /// Connects to `socketPath`, writes `json` (plus "\n" if missing) in one write, reads one line
    /// and returns it without its "\n". Throws on connect failure, EOF or timeout (default 5 s).
    static func rawCall(socketPath: String, _ json: String, timeout: Double = 5) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RefDaemonError("socket: \(errnoText())") }
        defer { close(fd) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        try connectUnix(fd, socketPath)

        var request = Array(json.utf8)
        if request.last != 0x0A { request.append(0x0A) }
        var off = 0
        while off < request.count {
            let n = request.withUnsafeBytes { buf -> Int in
                guard let base = buf.baseAddress else { return 0 }
                return send(fd, base + off, buf.count - off, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw RefDaemonError("send to \(socketPath): \(errnoText())")
            }
            off += n
        }

        var line: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        let deadline = now() + timeout
        while true {
            let n = chunk.withUnsafeMutableBytes { buf -> Int in
                guard let base = buf.baseAddress else { return 0 }
                return recv(fd, base, buf.count, 0)
            }
            if n < 0 {
                if errno == EINTR && now() < deadline { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    throw RefDaemonError("no answer from \(socketPath) within \(timeout) s")
                }
                throw RefDaemonError("recv from \(socketPath): \(errnoText())")
            }
            if n == 0 {
                throw RefDaemonError("EOF from \(socketPath) before a full line (got \(line.count) bytes)")
            }
            if let nl = chunk[0..<n].firstIndex(of: 0x0A) {
                line.append(contentsOf: chunk[0..<nl])
                return String(decoding: line, as: UTF8.self)
            }
            line.append(contentsOf: chunk[0..<n])
            if now() > deadline { throw RefDaemonError("no full line from \(socketPath) within \(timeout) s") }
        }
    }

    // MARK: - Internals

    private static let counter = Counter()

    private final class Counter: @unchecked Sendable {
        private let mutex: UnsafeMutablePointer<pthread_mutex_t>
        private var value = 0
        init() {
            mutex = .allocate(capacity: 1)
            mutex.initialize(to: pthread_mutex_t())
            pthread_mutex_init(mutex, nil)
        }
        func next() -> Int {
            pthread_mutex_lock(mutex)
            defer { pthread_mutex_unlock(mutex) }
            value += 1
            return value
        }
    }

    /// `/tmp/gxp-<pid>-<counter>.sock` (short: sun_path holds 107 bytes).
    static func makeSocketPath() -> String {
        "/tmp/gxp-\(getpid())-\(counter.next()).sock"
    }

    /// `GOXEL_REFD`; else `goxel-refd` next to the running test binary (its directory and up to
    /// 3 parents); else `.build/debug/goxel-refd`.
    static func locateBinary() throws -> String {
        if let env = getenv("GOXEL_REFD") {
            let path = String(cString: env)
            guard isExecutableFile(path) else {
                throw RefDaemonError("GOXEL_REFD=\(path) is not an executable file")
            }
            return path
        }
        if let arg0 = CommandLine.arguments.first, let resolved = realpath(arg0, nil) {
            var dir = String(cString: resolved)
            free(resolved)
            for _ in 0...3 {
                guard let slash = dir.lastIndex(of: "/") else { break }
                dir = String(dir[..<slash])
                if dir.isEmpty { dir = "/" }
                let candidate = (dir == "/" ? "" : dir) + "/goxel-refd"
                if isExecutableFile(candidate) { return candidate }
                if dir == "/" { break }
            }
        }
        let fallback = ".build/debug/goxel-refd"
        if isExecutableFile(fallback) { return fallback }
        throw RefDaemonError("goxel-refd not found: set GOXEL_REFD or build it (swift build --product goxel-refd)")
    }

    private static func isExecutableFile(_ path: String) -> Bool {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return false }
        return access(path, X_OK) == 0
    }

    /// Spawns refd (stdout to a pipe) and waits up to 5 s for its "listening" line.
    private func start() throws {
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else { throw RefDaemonError("pipe: \(RefDaemon.errnoText())") }
        let readFD = pipeFDs[0], writeFD = pipeFDs[1]
        _ = fcntl(readFD, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeFD, F_SETFD, FD_CLOEXEC)
        defer { close(readFD) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, writeFD, 1)

        let argv = [binaryPath, "--socket", socketPath] + arguments
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cArgs.append(nil)
        defer { for p in cArgs { free(p) } }

        var child: pid_t = 0
        let rc = posix_spawn(&child, binaryPath, &actions, nil, cArgs, environ)
        close(writeFD)
        guard rc == 0 else {
            throw RefDaemonError("posix_spawn \(binaryPath): \(String(cString: strerror(rc)))")
        }
        pid = child

        // Wait for "goxel-refd listening on PATH\n".
        let deadline = RefDaemon.now() + 5
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 512)
        while true {
            if output.contains(0x0A) {
                let text = String(decoding: output, as: UTF8.self)
                if text.contains("listening on") { return }
            }
            let remaining = deadline - RefDaemon.now()
            if remaining <= 0 { break }
            var pfd = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, Int32(max(1, remaining * 1000)))
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { break }
            let n = buffer.withUnsafeMutableBytes { buf -> Int in
                guard let base = buf.baseAddress else { return 0 }
                return read(readFD, base, buf.count)
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }  // EOF: the daemon exited (bad flag, bind failure ...)
            output.append(contentsOf: buffer[0..<n])
        }
        // Not ready: it exited (bad flag, bind failure ...; its stderr says why) or it hangs.
        var status: Int32 = 0
        var exited = false
        let reapDeadline = RefDaemon.now() + 1
        while !exited && RefDaemon.now() < reapDeadline {
            exited = waitpid(child, &status, WNOHANG) == child
            if !exited { RefDaemon.sleep(seconds: 0.005) }
        }
        if !exited {
            kill(child, SIGKILL)
            _ = RefDaemon.waitForExit(child, seconds: 5)
        }
        pid = 0
        throw RefDaemonError("goxel-refd did not start on \(socketPath)"
            + (exited ? " (it exited, wait status \(status))" : " within 5 s (killed)"))
    }

    /// waitpid with a deadline; true once the process has been reaped (or is not our child).
    private static func waitForExit(_ pid: pid_t, seconds: Double) -> Bool {
        let deadline = now() + seconds
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid || (r < 0 && errno == ECHILD) { return true }
            if r < 0 && errno != EINTR { return true }
            if now() > deadline { return false }
            sleep(seconds: 0.005)
        }
    }

    private static func connectUnix(_ fd: Int32, _ path: String) throws {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw RefDaemonError("socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else { throw RefDaemonError("connect \(path): \(errnoText())") }
    }

    private static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    private static func sleep(seconds: Double) {
        var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
        var rem = timespec()
        while nanosleep(&ts, &rem) != 0 && errno == EINTR { ts = rem }
    }

    private static func errnoText() -> String { String(cString: strerror(errno)) }
}
