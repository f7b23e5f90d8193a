import Glibc
import GoxelPoolCore

/// A connected Unix stream socket with deadline-bounded blocking I/O.
///
/// Blocking calls with SO_RCVTIMEO instead of poll()+recv(): one system call per read on the hot
/// path. The timeout is only lowered when the remaining time is shorter than the one set, and set
/// to half the remaining time so the next calls rarely need to touch it; an early wake-up just
/// loops.
final class UnixSocket {
    private(set) var fd: Int32
    private var receiveTimeout = Span(nanoseconds: -1)

    private init(fd: Int32) { self.fd = fd }

    deinit { close() }

    /// Connects, bounded by `timeout` (Linux applies the send timeout to a Unix connect).
    static func connect(path: String, timeout: Span) throws(CallFailure) -> UnixSocket {
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
        let sock = UnixSocket(fd: fd)
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
            let n = recv(fd, base, buffer.count, 0)
            if n >= 0 { return n }
            let code = errno
            if code == EINTR || code == EAGAIN || code == EWOULDBLOCK { continue }
            throw .failed("recv: \(errnoText(code))", written: true)
        }
    }

    /// Wakes a thread blocked on this socket (used when a drain times out).
    func shutdownBoth() {
        if fd >= 0 { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
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
}

func errnoText(_ code: Int32 = errno) -> String {
    guard let text = strerror(code) else { return "errno \(code)" }
    return String(cString: text)
}
