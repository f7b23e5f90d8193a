// The listening socket and the accept loop: one detached thread per accepted connection.

import CJansson
import Glibc
import Synchronization

final class ServerStats: Sendable {
    let accepted = Atomic<Int>(0)    // every accepted connection of this process's lifetime
    let open = Atomic<Int>(0)        // connections currently held open by a connection thread
    let peakOpen = Atomic<Int>(0)    // max of `open`
    let requests = Atomic<Int>(0)    // requests answered (any line written, faulty or not)

    func connectionOpened() {
        let now = open.add(1, ordering: .acquiringAndReleasing).newValue
        var peak = peakOpen.load(ordering: .relaxed)
        while now > peak {
            let (exchanged, original) = peakOpen.compareExchange(
                expected: peak, desired: now, ordering: .acquiringAndReleasing)
            if exchanged { break }
            peak = original
        }
    }

    func connectionClosed() {
        open.subtract(1, ordering: .acquiringAndReleasing)
    }
}

final class Server: @unchecked Sendable {
    let socketPath: String
    let controlSocketPath: String?
    let faults: FaultStore
    let stats = ServerStats()
    let methods: Methods
    let seed: UInt64
    private var listenFD: Int32 = -1
    private var controlFD: Int32 = -1

    init(socketPath: String, controlSocketPath: String?, faults: Faults, seed: UInt64) {
        self.socketPath = socketPath
        self.controlSocketPath = controlSocketPath
        self.faults = FaultStore(faults)
        self.seed = seed
        self.methods = Methods(stats: stats, faults: self.faults)
    }

    /// Unlinks whatever is at the path, binds, chmod 0660, listens (backlog 128).
    func listen() {
        listenFD = Server.bindAndListen(socketPath)
        if let controlPath = controlSocketPath {
            controlFD = Server.bindAndListen(controlPath)
        }
    }

    static func bindAndListen(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { errorExit("socket: \(String(cString: strerror(errno)))", code: 1) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            errorExit("socket path too long (max \(capacity - 1) bytes): \(path)", code: 1)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        unlink(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else { errorExit("bind \(path): \(String(cString: strerror(errno)))", code: 1) }
        chmod(path, 0o660)
        guard Glibc.listen(fd, 128) == 0 else {
            errorExit("listen: \(String(cString: strerror(errno)))", code: 1)
        }
        return fd
    }

    /// The control socket: its connections get no fault of any kind (not even accept-time faults
    /// such as max_lifetime_connections or unread_rate) and are not counted in refd.stats.
    func startControlAcceptLoop() {
        guard controlFD >= 0 else { return }
        let fd = controlFD
        startDetachedThread(stackSize: 256 * 1024) { [self] in
            var number = 0
            while true {
                let cfd = accept(fd, nil, nil)
                if cfd < 0 {
                    if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM {
                        sleepMilliseconds(10)
                    }
                    continue
                }
                number += 1
                let conn = Connection(fd: cfd, number: number, unread: false, control: true, server: self, seed: 0)
                if !startDetachedThread({ conn.run() }) { conn.closeSocket() }
            }
        }
    }

    /// Listens on TCP too (the same daemon, the same faults and statistics): `host:port` or
    /// `[v6]:port`. For the library's TCP endpoints; tests bind loopback only.
    func startTCPAcceptLoop(_ address: String) {
        var host = address, port = ""
        if address.hasPrefix("["), let close = address.firstIndex(of: "]") {
            host = String(address[address.index(after: address.startIndex)..<close])
            port = String(address[address.index(after: close)...].dropFirst())
        } else if let colon = address.lastIndex(of: ":") {
            host = String(address[..<colon])
            port = String(address[address.index(after: colon)...])
        }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, port, &hints, &list) == 0, let info = list else { errorExit("--tcp \(address): cannot resolve", code: 2) }
        defer { freeaddrinfo(list) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { errorExit("socket: \(String(cString: strerror(errno)))", code: 1) }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0, Glibc.listen(fd, 128) == 0 else {
            errorExit("--tcp \(address): \(String(cString: strerror(errno)))", code: 1)
        }
        startDetachedThread(stackSize: 256 * 1024) { [self] in acceptLoop(on: fd, tcp: true) }
    }

    func acceptLoop() -> Never {
        acceptLoop(on: listenFD, tcp: false)
    }

    func acceptLoop(on listenFD: Int32, tcp: Bool) -> Never {
        var rng = SplitMix64(seed: seed ^ (tcp ? 0x7C9 : 0))
        var view = FaultView(faults)
        while true {
            let cfd = accept(listenFD, nil, nil)   // refd never execs, so no CLOEXEC needed
            if cfd < 0 {
                switch errno {
                case EINTR, ECONNABORTED, EAGAIN: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    vlog("accept: \(String(cString: strerror(errno))); retrying")
                    sleepMilliseconds(10)
                    continue
                default:
                    errorExit("accept: \(String(cString: strerror(errno)))", code: 1)
                }
            }
            if tcp {
                var on: Int32 = 1
                setsockopt(cfd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
            }
            let n = stats.accepted.add(1, ordering: .acquiringAndReleasing).newValue
            view.refresh(faults)
            let f = view.current
            if f.maxLifetimeConnections > 0 && n > f.maxLifetimeConnections {
                vlog("connection #\(n): over max_lifetime_connections=\(f.maxLifetimeConnections), closing at once")
                close(cfd)
                continue
            }
            let unread = rng.chance(f.unreadRate)
            stats.connectionOpened()
            let conn = Connection(fd: cfd, number: n, unread: unread, control: false, server: self,
                                  seed: seed ^ (UInt64(n) &* 0xD1B5_4A32_D192_ED03))
            vlog("connection #\(n) accepted\(unread ? " (unread fault: never read)" : "")")
            if !startDetachedThread({ conn.run() }) {
                vlog("connection #\(n): cannot start a thread; closing")
                conn.closeSocket()
                stats.connectionClosed()
            }
        }
    }
}
