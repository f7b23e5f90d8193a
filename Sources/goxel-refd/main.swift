// goxel-refd: the reference Goxel daemon used by libgoxelpool's demo, tests and benchmarks.
// It speaks the real daemon's wire protocol (docs: daemon-protocol.md), including its faults, and
// injects more faults on command (flags at start, `refd.set_faults` at run time).
//
// Usage: goxel-refd [--socket PATH] [fault flags] [--seed N] [--verbose]
//                   [--supervise [--restart-delay-ms N]]
// stdout: exactly one line "goxel-refd listening on PATH" per daemon start; nothing else.

import CJansson
import Glibc

let usage = """
    usage: goxel-refd [options]
      --socket PATH                    Unix socket path (default /tmp/goxel-daemon.sock)
      --tcp HOST:PORT                  also listen on TCP (loopback for tests; [::1]:PORT for IPv6)
      --control-socket PATH            fault-free control socket (default PATH.ctl; "none": off)
      --latency-ms MS                  fixed delay added before each answer
      --latency-jitter-ms MS           extra uniform delay 0..MS
      --error-rate R                   fraction answered with -32603 "Injected failure"
      --drop-rate R                    fraction never answered (connection stays open)
      --max-lifetime-connections N     from the (N+1)-th accepted connection: accept and close
      --unread-rate R                  fraction of new connections never read
      --stall                          read requests, answer nothing (refd.* still answered)
      --truncate-rate R                half a line, then EOF
      --garbage-rate R                 answer "this is not json"
      --wrong-id-rate R                answer with id + 1000
      --null-id-rate R                 answer an error with "id": null
      --no-result-rate R               answer with neither result nor error
      --oversize-rate R                answer one valid line of --oversize-bytes bytes
      --oversize-bytes N               (default 2097152)
      --reset-rate R                   half a line, then ECONNRESET
      --crash-after-create-ms MS       die MS after the last goxel.create_project (the real daemon: 300000)
      --silent-notifications           answer no notification (JSON-RPC 2.0; the real daemon answers id null)
      --seed N                         PRNG seed for the fault rates (default: time ^ pid)
      --verbose                        log to stderr
      --supervise                      run the daemon as a child and restart it when it dies
      --restart-delay-ms MS            supervisor restart delay (default 200)
    control methods: refd.set_faults {..}, refd.get_faults, refd.reset_faults, refd.stats,
                     refd.reset_stats, refd.crash

    """

struct Options {
    var socketPath = "/tmp/goxel-daemon.sock"
    var controlSocketPath: String? = nil  // nil: socketPath + ".ctl"
    var tcpAddress: String? = nil         // "host:port" ("[::1]:port"): also listen on TCP
    var faults = Faults()
    var seed: UInt64? = nil
    var verbose = false
    var supervise = false
    var restartDelayMs: Double = 200
    var parentPid: pid_t = 0             // hidden: set by the supervisor for its child
    var childArguments: [String] = []    // the arguments without the supervisor's own flags
}

func usageError(_ message: String) -> Never {
    writeFD(2, "goxel-refd: \(message)\n\(usage)")
    exit(2)
}

func parseOptions(_ args: [String]) -> Options {
    var o = Options()
    var i = 0
    func value(_ name: String, _ inline: String?) -> String {
        if let inline { return inline }
        i += 1
        guard i < args.count else { usageError("\(name) needs a value") }
        return args[i]
    }
    while i < args.count {
        let raw = args[i]
        var name = raw
        var inline: String? = nil
        if raw.hasPrefix("--"), let eq = raw.firstIndex(of: "=") {
            name = String(raw[..<eq])
            inline = String(raw[raw.index(after: eq)...])
        }
        let start = i
        var childCopy = true
        switch name {
        case "-h", "--help":
            writeFD(1, usage)
            exit(0)
        case "--socket":
            o.socketPath = value(name, inline)
        case "--tcp":
            o.tcpAddress = value(name, inline)
        case "--control-socket":
            o.controlSocketPath = value(name, inline)
        case "--seed":
            let v = value(name, inline)
            guard let s = UInt64(v) ?? Int64(v).map({ UInt64(bitPattern: $0) }) else { usageError("bad --seed: \(v)") }
            o.seed = s
        case "--verbose":
            o.verbose = true
        case "--supervise":
            o.supervise = true
            childCopy = false
        case "--restart-delay-ms":
            let v = value(name, inline)
            guard let d = Double(v), d >= 0, d <= 3_600_000 else { usageError("bad --restart-delay-ms: \(v)") }
            o.restartDelayMs = d
            childCopy = false
        case "--parent-pid":
            let v = value(name, inline)
            guard let p = Int32(v) else { usageError("bad --parent-pid: \(v)") }
            o.parentPid = p
            childCopy = false
        default:
            guard let entry = Faults.keys.first(where: { $0.flag == name }) else {
                usageError("unknown option: \(raw)")
            }
            if entry.kind == .flag {
                // --stall, --silent-notifications: on; --flag=true|false|1|0 sets it.
                if let inline, !["true", "false", "1", "0"].contains(inline) { usageError("bad \(name) value: \(inline)") }
                o.faults.set(entry.key, number: 0, flag: inline.map { $0 == "true" || $0 == "1" } ?? true)
                break
            }
            let v = value(name, inline)
            guard let d = Double(v) else { usageError("bad \(name): \(v)") }
            if let problem = Faults.validate(d, kind: entry.kind) { usageError("\(name) \(problem)") }
            o.faults.set(entry.key, number: d, flag: false)
        }
        i += 1
        if childCopy { o.childArguments.append(contentsOf: args[start..<i]) }
    }
    return o
}

// MARK: - Signals

nonisolated(unsafe) var gSocketPathC: UnsafeMutablePointer<CChar>? = nil
nonisolated(unsafe) var gControlPathC: UnsafeMutablePointer<CChar>? = nil
nonisolated(unsafe) var gSocketInode: ino_t = 0
nonisolated(unsafe) var gControlInode: ino_t = 0

/// Unlinks `path` only if it is still the socket this process bound (a newer daemon may have
/// taken the path since). Async-signal-safe: stat and unlink only.
func unlinkIfOurs(_ path: UnsafeMutablePointer<CChar>?, _ inode: ino_t) {
    guard let path, inode != 0 else { return }
    var st = stat()
    if stat(path, &st) == 0 && st.st_ino == inode { unlink(path) }
}

func inodeOf(_ path: String) -> ino_t {
    var st = stat()
    return stat(path, &st) == 0 ? st.st_ino : 0
}

/// Closes every descriptor above stderr inherited from whoever started us (a test process's
/// client sockets, for instance), so that refd never keeps a peer's connection alive.
func closeInheritedDescriptors() {
    guard let dir = opendir("/proc/self/fd") else { return }
    let own = dirfd(dir)
    var fds: [Int32] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        if let fd = Int32(name), fd > 2, fd != own { fds.append(fd) }
    }
    closedir(dir)
    for fd in fds { close(fd) }
}
nonisolated(unsafe) var gStopRequested: sig_atomic_t = 0
nonisolated(unsafe) var gChildPid: pid_t = 0

func installDaemonSignals() {
    signal(SIGPIPE, SIG_IGN)
    let onTerm: @convention(c) (Int32) -> Void = { _ in
        unlinkIfOurs(gSocketPathC, gSocketInode)
        unlinkIfOurs(gControlPathC, gControlInode)
        _exit(0)
    }
    signal(SIGTERM, onTerm)
    signal(SIGINT, onTerm)
}

/// With --parent-pid (set by the supervisor): exit when the supervisor is gone.
func watchParent(_ parent: pid_t) {
    startDetachedThread(stackSize: 64 * 1024) {
        while true {
            if getppid() != parent {
                unlinkIfOurs(gSocketPathC, gSocketInode)
                unlinkIfOurs(gControlPathC, gControlInode)
                _exit(0)
            }
            sleepMilliseconds(200)
        }
    }
}

// MARK: - Supervisor

func runSupervisor(_ o: Options) -> Never {
    signal(SIGPIPE, SIG_IGN)
    var sa = sigaction()
    sa.__sigaction_handler.sa_handler = { _ in
        gStopRequested = 1
        if gChildPid > 0 { kill(gChildPid, SIGTERM) }
    }
    sigemptyset(&sa.sa_mask)
    sa.sa_flags = 0                     // no SA_RESTART: waitpid returns EINTR
    sigaction(SIGTERM, &sa, nil)
    sigaction(SIGINT, &sa, nil)

    let exe = "/proc/self/exe"
    let argv0 = CommandLine.arguments.first ?? "goxel-refd"
    let childArgs = [argv0] + o.childArguments + ["--parent-pid", String(getpid())]

    while gStopRequested == 0 {
        var cargs: [UnsafeMutablePointer<CChar>?] = childArgs.map { strdup($0) }
        cargs.append(nil)
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, nil, nil, cargs, environ)
        for p in cargs { free(p) }
        if rc != 0 {
            writeFD(2, "goxel-refd: supervisor: cannot start the daemon: \(String(cString: strerror(rc)))\n")
            sleepMilliseconds(max(o.restartDelayMs, 100))
            continue
        }
        gChildPid = pid
        if gStopRequested != 0 { kill(pid, SIGTERM) }
        vlog("supervisor: daemon started, pid \(pid)")
        var status: Int32 = 0
        var killDeadline: Double? = nil
        while true {
            let r = waitpid(pid, &status, gStopRequested != 0 ? WNOHANG : 0)
            if r == pid { break }
            if r < 0 && errno != EINTR { break }
            if gStopRequested != 0 {
                // Asked to stop: give the daemon 2 s to exit on SIGTERM, then SIGKILL.
                let now = monotonicSeconds()
                if let deadline = killDeadline {
                    if now > deadline { kill(pid, SIGKILL) }
                } else {
                    killDeadline = now + 2
                }
                sleepMilliseconds(10)
            }
        }
        gChildPid = 0
        if gStopRequested != 0 { break }
        vlog("supervisor: daemon \(pid) died (status \(status)); restarting in \(o.restartDelayMs) ms")
        var waited = 0.0
        while waited < o.restartDelayMs && gStopRequested == 0 {
            let step = min(10, o.restartDelayMs - waited)
            sleepMilliseconds(step)
            waited += step
        }
    }
    exit(0)
}

// MARK: - Main

let options = parseOptions(Array(CommandLine.arguments.dropFirst()))
closeInheritedDescriptors()
gVerbose = options.verbose

if options.supervise {
    runSupervisor(options)
}

_ = kJSONRPCVersion              // initialise jansson (hash seed) before any thread starts
let controlPath: String? = {
    let p = options.controlSocketPath ?? options.socketPath + ".ctl"
    return p.isEmpty || p == "none" ? nil : p
}()
gSocketPathC = strdup(options.socketPath)
if let controlPath { gControlPathC = strdup(controlPath) }
installDaemonSignals()
if options.parentPid > 0 { watchParent(options.parentPid) }

let seed = options.seed ?? (UInt64(UInt(bitPattern: time(nil))) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(getpid()))
let server = Server(socketPath: options.socketPath, controlSocketPath: controlPath, faults: options.faults, seed: seed)
server.listen()
gSocketInode = inodeOf(options.socketPath)
if let controlPath { gControlInode = inodeOf(controlPath) }
server.startControlAcceptLoop()
if let address = options.tcpAddress {
    server.startTCPAcceptLoop(address)
    writeFD(1, "goxel-refd listening on tcp:\(address)\n")
}
writeFD(1, "goxel-refd listening on \(options.socketPath)\n")
vlog("control socket \(controlPath ?? "none"); seed \(seed); faults \(options.faults)")
server.acceptLoop()
