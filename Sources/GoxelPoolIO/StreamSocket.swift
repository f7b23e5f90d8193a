import Glibc
import GoxelPoolCore

/// A connected stream socket (Unix or TCP) with deadline-bounded blocking I/O.
///
/// Blocking calls with SO_RCVTIMEO instead of poll()+recv(): one system call per read on the hot
/// path. The timeout is only lowered when the remaining time is shorter than the one set, and set
/// to half the remaining time so the next calls rarely need to touch it; an early wake-up just
/// loops.
final class StreamSocket {
    private(set) var fd: Int32
    /// Orders close and shutdown from different threads (the I/O itself stays lock-free: only the
    /// owner of a leased connection reads and writes it).
    private let closing = PthreadMutex()
    private var receiveTimeout = Span(nanoseconds: -1)
    /// Set for `tls:` endpoints once the handshake is done.
    private var tls: TLSSession?
    /// Interrupted by another thread (drain timeout): its owner may still be inside OpenSSL, so
    /// `close` must not touch the TLS state.
    private var interrupted = false
    /// For the TLS BIO: the errno of the last failed send/recv, EOF seen, and whether sends must
    /// not block (close_notify at close).
    var lastErrno: Int32 = 0
    var sawEOF = false
    private var sendsMustNotBlock = false
    var receivesMustNotBlock = false

    private init(fd: Int32) { self.fd = fd }

    deinit { close() }

    /// Connects, bounded by `timeout` (Linux applies the send timeout to a Unix connect).
    static func connect(path: String, timeout: Span) throws(CallFailure) -> StreamSocket {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !pathBytes.isEmpty, pathBytes.count < capacity, !pathBytes.contains(0) else {
            throw CallFailure(.invalid, "socket path must be 1 to \(capacity - 1) bytes without NUL")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw CallFailure(errno == ENOMEM || errno == ENOBUFS ? .noMemory : .connect, "socket(): \(errnoText())") }
        let sock = StreamSocket(fd: fd)
        sock.setTimeout(SO_SNDTIMEO, timeout)
        let length = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count + 1)
        var result: Int32
        repeat {
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) }
            }
        } while result != 0 && errno == EINTR
        guard result == 0 else {
            let code = errno
            let text = code == EAGAIN || code == EINPROGRESS ? "connect timed out (daemon backlog full)" : errnoText(code)
            throw CallFailure(.connect, "connect(\(path)): \(text)")
        }
        // Writes of a whole request must not block long: the daemon drops half-read requests.
        sock.setTimeout(SO_SNDTIMEO, timeout)
        return sock
    }

    /// Connects to `endpoint` within `timeout`, the TLS handshake of a `tls:` endpoint included.
    /// A handshake refused for a certificate (either side's) or a name is EPEER; a server that is
    /// not there, closes or is too slow is ECONNECT.
    static func connect(_ endpoint: Endpoint, timeout: Span, tls context: TLSContext? = nil) throws(CallFailure) -> StreamSocket {
        switch endpoint {
        case .unix(let path): return try connect(path: path, timeout: timeout)
        case .tcp(let host, let port): return try connectTCP(host: host, port: port, timeout: timeout)
        case .tls(let host, let port, let verifyName):
            let deadline = Clock.now() + timeout
            guard let context else { throw CallFailure(.invalid, "\(endpoint): no TLS context") }
            let name = context.settings.serverName ?? verifyName ?? host
            let key = "\(endpoint) \(name)"
            var sock = try connectTCP(host: host, port: port, timeout: timeout)
            do {
                try sock.startTLS(context, name: name, sessionKey: key, deadline: deadline, endpoint: endpoint, sendTimeout: timeout)
            } catch where sock.tlsOfferedSession && Clock.now() < deadline {
                // Some servers fail a resumed handshake (socat asking for client certificates:
                // "session id context uninitialized"): once more without a session, and never
                // offer this endpoint one again.
                context.stopResuming(key)
                sock.close()
                sock = try connectTCP(host: host, port: port, timeout: deadline - Clock.now())
                try sock.startTLS(context, name: name, sessionKey: key, deadline: deadline, endpoint: endpoint, sendTimeout: timeout)
            }
            return sock
        }
    }

    /// The TLS handshake under way or done offered a session to resume.
    private var tlsOfferedSession: Bool { (tls ?? handshaking)?.offeredSession ?? false }
    /// The session while its handshake runs (kept after a failure, to tell whether it offered one).
    private var handshaking: TLSSession?

    private func startTLS(_ context: TLSContext, name: String, sessionKey: String, deadline: Instant,
                          endpoint: Endpoint, sendTimeout: Span) throws(CallFailure) {
        let session = try TLSSession(context: context, socket: self, name: name, sessionKey: sessionKey)
        handshaking = session
        while true {
            let remaining = deadline - Clock.now()
            guard remaining > .zero else { throw CallFailure(.connect, "TLS handshake with \(endpoint) timed out") }
            setTimeout(SO_RCVTIMEO, remaining)
            setTimeout(SO_SNDTIMEO, remaining)
            switch session.handshakeStep() {
            case .done:
                tls = session
                handshaking = nil
                receiveTimeout = Span(nanoseconds: -1)
                setTimeout(SO_SNDTIMEO, sendTimeout)
                return
            case .again:
                continue
            case .eof:
                throw CallFailure(.connect, "TLS handshake with \(endpoint) failed: the server closed the connection")
            case .failed(let reason):
                throw CallFailure(.connect, "TLS handshake with \(endpoint) failed: \(reason)")
            case .rejected(let reason):
                throw CallFailure(.peer, "TLS handshake with \(endpoint) (name '\(name)') refused: \(reason)")
            }
        }
    }

    /// Whether the TLS session of this connection was resumed (no full certificate exchange).
    var tlsResumed: Bool { tls?.resumed ?? false }

    /// For the TLS BIO: one send that never raises SIGPIPE.
    func rawSend(_ base: UnsafeRawPointer, _ count: Int) -> Int {
        let n = send(fd, base, count, Int32(MSG_NOSIGNAL) | (sendsMustNotBlock ? Int32(MSG_DONTWAIT) : 0))
        if n < 0 { lastErrno = errno }
        return n
    }

    /// For the TLS BIO: one receive; 0 at EOF.
    func rawReceive(_ base: UnsafeMutableRawPointer, _ count: Int) -> Int {
        let n = recv(fd, base, count, receivesMustNotBlock ? Int32(MSG_DONTWAIT) : 0)
        if n < 0 { lastErrno = errno } else if n == 0 { sawEOF = true }
        return n
    }

    /// Resolves `host` (numeric addresses need no lookup) and tries each address until one
    /// connects within the deadline. TCP_NODELAY (one small request per round trip) and
    /// keepalive (a dead peer is noticed on idle connections too).
    static func connectTCP(host: String, port: UInt16, timeout: Span) throws(CallFailure) -> StreamSocket {
        let deadline = Clock.now() + timeout
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let resolved = getaddrinfo(host, String(port), &hints, &list)
        guard resolved == 0, let list else {
            let reason = gai_strerror(resolved).map { String(cString: $0) } ?? "error \(resolved)"
            throw CallFailure(.connect, "cannot resolve \(host): \(reason)")
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var current: UnsafeMutablePointer<addrinfo>? = list
        while let info = current {
            current = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { lastError = errnoText(); continue }
            let sock = StreamSocket(fd: fd)
            if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) != 0 {
                guard errno == EINPROGRESS else { lastError = errnoText(); continue }
                var pending = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                var ready: Int32 = 0
                repeat {
                    let remaining = max(0, (deadline - Clock.now()).nanoseconds / 1_000_000)
                    ready = poll(&pending, 1, Int32(min(remaining, Int64(Int32.max))))
                } while ready < 0 && errno == EINTR
                guard ready > 0 else { lastError = "connect timed out"; continue }
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                guard error == 0 else { lastError = errnoText(error); continue }
            }
            let flags = fcntl(fd, F_GETFL)
            _ = fcntl(fd, F_SETFL, flags & ~Int32(O_NONBLOCK))
            var on: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, socklen_t(MemoryLayout<Int32>.size))
            sock.setTimeout(SO_SNDTIMEO, timeout)
            return sock
        }
        throw CallFailure(.connect, "connect(tcp:\(host):\(port)): \(lastError)")
    }

    /// The uid of the process serving the socket.
    func peerUID() -> uid_t? {
        var credentials = PeerCredentials()
        var length = socklen_t(MemoryLayout<PeerCredentials>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else { return nil }
        return credentials.uid
    }

    private func setTimeout(_ option: Int32, _ span: Span) {
        let clamped = max(span.nanoseconds, 1000)
        var value = timeval(tv_sec: Int(clamped / 1_000_000_000), tv_usec: Int((clamped % 1_000_000_000) / 1000))
        setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Writes all of `bytes` (one send for any request the daemon accepts). Returns how many bytes
    /// were written before a failure so the caller knows whether the request may have arrived.
    func sendAll(_ bytes: UnsafeRawBufferPointer, deadline: Instant) throws(SocketError) {
        if let tls { return try tlsSendAll(tls, bytes, deadline: deadline) }
        var offset = 0
        while offset < bytes.count {
            guard let base = bytes.baseAddress else { return }
            let n = send(fd, base + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if n > 0 { offset += n; continue }
            let code = errno
            if n < 0 && code == EINTR { continue }
            if n < 0 && (code == EAGAIN || code == EWOULDBLOCK) && Clock.now() < deadline { continue }
            if n < 0 && (code == EAGAIN || code == EWOULDBLOCK) { throw .timedOut(written: offset > 0) }
            throw .failed("send: \(errnoText(code))", written: offset > 0)
        }
    }

    /// As `sendAll`, through TLS: a write that timed out (WANT_WRITE) is repeated with the same
    /// bytes until the deadline; with partial writes on, whole records are counted as written
    /// (a record cut short cannot be decrypted, so it never reached the daemon).
    private func tlsSendAll(_ tls: TLSSession, _ bytes: UnsafeRawBufferPointer, deadline: Instant) throws(SocketError) {
        var offset = 0
        while offset < bytes.count {
            guard let base = bytes.baseAddress else { return }
            switch tls.write(base + offset, bytes.count - offset) {
            case .done(let n): offset += n
            case .again:
                if Clock.now() >= deadline { throw .timedOut(written: offset > 0) }
            case .eof: throw .failed("send: the peer closed the TLS connection", written: offset > 0)
            case .failed(let message):
                if offset == 0, let refusal = tls.refusalAfterFailedWrite() { throw .rejected(refusal) }
                throw .failed("send: \(message)", written: offset > 0)
            case .rejected(let message): throw .rejected(message)
            }
        }
    }

    /// Reads what is available into `buffer`, waiting until `deadline`. Returns 0 at EOF.
    func receive(into buffer: UnsafeMutableRawBufferPointer, deadline: Instant) throws(SocketError) -> Int {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
        while true {
            let remaining = deadline - Clock.now()
            guard remaining > .zero else { throw .timedOut(written: true) }
            if receiveTimeout.nanoseconds < 0 || receiveTimeout > remaining {
                receiveTimeout = Span(nanoseconds: max(remaining.nanoseconds / 2, 1_000_000))
                if receiveTimeout > remaining { receiveTimeout = remaining }
                setTimeout(SO_RCVTIMEO, receiveTimeout)
            }
            if let tls {
                switch tls.read(base, buffer.count) {
                case .done(let n): return n
                case .again: continue
                case .eof: return 0
                case .failed(let message): throw .failed("recv: \(message)", written: true)
                case .rejected(let message): throw .rejected(message)
                }
            }
            let n = recv(fd, base, buffer.count, 0)
            if n >= 0 { return n }
            let code = errno
            if code == EINTR || code == EAGAIN || code == EWOULDBLOCK { continue }
            throw .failed("recv: \(errnoText(code))", written: true)
        }
    }

    /// Wakes a thread blocked on this socket (used when a drain times out). Called from another
    /// thread than the owner's, so it and `close` take `closing`: a shutdown must never reach a
    /// descriptor that was closed meanwhile (its number may already belong to another file).
    func shutdownBoth() {
        closing.withLock {
            interrupted = true
            if fd >= 0 { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    /// Closes the descriptor; a TLS connection first says close_notify, unless another thread
    /// interrupted it (its owner may still be inside OpenSSL). The TLS state itself is freed with
    /// this object, when no thread holds the connection any more.
    func close() {
        closing.withLock {
            if fd >= 0 {
                if let tls, !interrupted {
                    sendsMustNotBlock = true
                    tls.closeNotify()
                }
                Glibc.close(fd)
            }
            fd = -1
        }
    }
}

/// Linux's `struct ucred` (glibc declares it only under _GNU_SOURCE, which Swift does not set).
private struct PeerCredentials {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

enum SocketError: Error {
    case timedOut(written: Bool)
    case failed(String, written: Bool)
    /// The TLS peer refused us (a client certificate refused after the handshake): nothing the
    /// daemon could have run.
    case rejected(String)
}

func errnoText(_ code: Int32 = errno) -> String {
    guard let text = strerror(code) else { return "errno \(code)" }
    return String(cString: text)
}
