import COpenSSL
import Glibc
import GoxelPoolCore

/// The client's OpenSSL context, built once per client from the `tls` section: trusted CAs (or
/// the system's store), the client certificate and key, the minimum version, verification on by
/// default. Every TLS connection of the client is made from it. Also keeps the last resumable
/// session of each endpoint, so that a reconnection resumes instead of redoing the full
/// certificate exchange (an endpoint whose server fails a resumed handshake is not offered one
/// again: some servers that ask for client certificates cannot resume, e.g. socat).
public final class TLSContext: @unchecked Sendable {
    let context: OpaquePointer
    public let settings: ClientConfiguration.TLSConfiguration
    private let lock = PthreadMutex()
    private var sessions: [String: OpaquePointer] = [:]
    private var cannotResume: Set<String> = []

    /// Fails with EINVAL naming the key and the file when a file cannot be read or used.
    public init(_ settings: ClientConfiguration.TLSConfiguration) throws(CallFailure) {
        self.settings = settings
        ERR_clear_error()
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw CallFailure(.noMemory, "tls: cannot create an OpenSSL context: \(openSSLErrors())")
        }
        self.context = context
        // Never ask for a key's passphrase on the terminal (OpenSSL's default): fail instead.
        SSL_CTX_set_default_passwd_cb(context) { _, _, _, _ in 0 }
        _ = goxelpool_ssl_ctx_set_min_version(context, settings.minVersion == .tls13 ? TLS1_3_VERSION : TLS1_2_VERSION)
        _ = SSL_CTX_set_options(context, goxelpool_ssl_client_options())
        // Partial writes: a timed-out write reports what went out; the buffer may move between retries.
        _ = goxelpool_ssl_ctx_set_mode(context, Int(SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER))
        // Read what the socket has, not one record header then one body: an answer often comes
        // as two records (the daemon writes the line and its newline apart), four recv calls
        // without this, one or two with it.
        _ = goxelpool_ssl_ctx_set_read_ahead(context, 1)
        _ = goxelpool_ssl_ctx_set_session_cache_mode(context, Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE))
        SSL_CTX_set_verify(context, settings.verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nil)
        if let caFile = settings.caFile {
            try Self.checkReadable(caFile, key: "tls.ca_file")
            guard SSL_CTX_load_verify_locations(context, caFile, nil) == 1 else {
                throw CallFailure(.invalid, "tls.ca_file: \(caFile): \(openSSLErrors())")
            }
        } else if settings.verify {
            _ = SSL_CTX_set_default_verify_paths(context)
        }
        if let certFile = settings.certFile {
            let keyFile = settings.keyFile ?? certFile
            try Self.checkReadable(certFile, key: "tls.cert_file")
            try Self.checkReadable(keyFile, key: settings.keyFile == nil ? "tls.cert_file" : "tls.key_file")
            guard SSL_CTX_use_certificate_chain_file(context, certFile) == 1 else {
                throw CallFailure(.invalid, "tls.cert_file: \(certFile): \(openSSLErrors())")
            }
            guard SSL_CTX_use_PrivateKey_file(context, keyFile, SSL_FILETYPE_PEM) == 1 else {
                throw CallFailure(.invalid, "\(settings.keyFile == nil ? "tls.cert_file (no tls.key_file)" : "tls.key_file"): \(keyFile): \(openSSLErrors())")
            }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw CallFailure(.invalid, "tls.key_file: \(keyFile) does not match tls.cert_file \(certFile): \(openSSLErrors())")
            }
        }
    }

    deinit {
        for session in sessions.values { SSL_SESSION_free(session) }
        SSL_CTX_free(context)
    }

    private static func checkReadable(_ path: String, key: String) throws(CallFailure) {
        guard let file = fopen(path, "r") else { throw CallFailure(.invalid, "\(key): cannot read \(path): \(errnoText())") }
        fclose(file)
    }

    /// The session to resume for `key` (a new reference for SSL_set_session, or nil).
    func session(for key: String) -> OpaquePointer? {
        lock.withLock {
            guard !cannotResume.contains(key), let session = sessions[key] else { return nil }
            _ = SSL_SESSION_up_ref(session)
            return session
        }
    }

    /// Keeps `session` (a reference the caller hands over) as the one to resume for `key`.
    func keep(_ session: OpaquePointer, for key: String) {
        let previous: OpaquePointer? = lock.withLock {
            if cannotResume.contains(key) { return session }
            defer { sessions[key] = session }
            return sessions[key]
        }
        if let previous { SSL_SESSION_free(previous) }
    }

    /// A handshake that offered a session failed: never offer `key` one again.
    func stopResuming(_ key: String) {
        let dropped: OpaquePointer? = lock.withLock {
            cannotResume.insert(key)
            return sessions.removeValue(forKey: key)
        }
        if let dropped { SSL_SESSION_free(dropped) }
    }
}

/// One TLS connection over a StreamSocket's blocking descriptor. The socket's own deadline logic
/// (SO_RCVTIMEO / SO_SNDTIMEO) bounds every wait: a timed-out send or receive comes back from
/// OpenSSL as WANT_WRITE / WANT_READ and is retried, with the same arguments, until the deadline.
/// I/O goes through a BIO of ours so that writes use MSG_NOSIGNAL (OpenSSL's socket BIO uses
/// write(2): a peer that closed would raise SIGPIPE in the host program). Used by one thread at a
/// time, like the connection that owns it.
final class TLSSession {
    let ssl: OpaquePointer
    private let context: TLSContext
    /// The socket owns this session, so it always outlives it.
    private unowned(unsafe) let socket: StreamSocket
    /// Where the session is kept for resumption (endpoint and the name it was verified for).
    private let sessionKey: String
    private var sessionKept = false
    /// Set after a fatal error: no close_notify may follow one.
    private var failed = false
    private(set) var resumed = false
    /// A session was offered for resumption.
    private(set) var offeredSession = false

    /// `name`: the server name to verify and to send as SNI (nil: verify nothing by name).
    init(context: TLSContext, socket: StreamSocket, name: String?, sessionKey: String) throws(CallFailure) {
        ERR_clear_error()
        guard let ssl = SSL_new(context.context) else { throw CallFailure(.noMemory, "tls: out of memory (\(openSSLErrors()))") }
        guard let bio = BIO_new(socketBIO.method) else {
            SSL_free(ssl)
            throw CallFailure(.noMemory, "tls: out of memory (\(openSSLErrors()))")
        }
        self.ssl = ssl
        self.context = context
        self.socket = socket
        self.sessionKey = sessionKey
        // The socket owns this session: it outlives the BIO, which holds it unretained.
        BIO_set_data(bio, Unmanaged.passUnretained(socket).toOpaque())
        SSL_set_bio(ssl, bio, bio)
        if let name {
            // SNI only for names: RFC 6066 forbids literal IP addresses in it.
            if !isIPAddress(name) { _ = goxelpool_ssl_set_sni(ssl, name) }
            if context.settings.verify {
                let parameters = SSL_get0_param(ssl)
                let set = isIPAddress(name) ? X509_VERIFY_PARAM_set1_ip_asc(parameters, name) : X509_VERIFY_PARAM_set1_host(parameters, name, 0)
                guard set == 1 else { throw CallFailure(.invalid, "tls: cannot verify against the name '\(name)': \(openSSLErrors())") }
            }
        }
        if let session = context.session(for: sessionKey) {
            offeredSession = SSL_set_session(ssl, session) == 1
            SSL_SESSION_free(session)
        }
    }

    deinit { SSL_free(ssl) }

    enum Outcome {
        case done(Int)
        /// Try again with the same arguments (the socket's timeout passed, or EINTR).
        case again
        case eof
        case failed(String)
        /// The peer refused us: a certificate problem on either side.
        case rejected(String)
    }

    /// One step of the handshake. `.rejected` carries OpenSSL's reason (and the verification
    /// result: untrusted chain, host name mismatch, ...).
    func handshakeStep() -> Outcome {
        prepare()
        let result = SSL_connect(ssl)
        if result == 1 {
            resumed = SSL_session_reused(ssl) == 1
            return .done(0)
        }
        switch classify(result, duringHandshake: true) {
        case .eof: return .failed("the server closed the connection during the TLS handshake")
        case let other: return other
        }
    }

    func read(_ base: UnsafeMutableRawPointer, _ count: Int) -> Outcome {
        prepare()
        var got = 0
        let result = SSL_read_ex(ssl, base, count, &got)
        guard result == 1 else { return classify(result, duringHandshake: false) }
        // TLS 1.3 tickets arrive after the handshake: the first answer brings them.
        if !sessionKept { keepSession() }
        return .done(got)
    }

    func write(_ base: UnsafeRawPointer, _ count: Int) -> Outcome {
        prepare()
        var written = 0
        let result = SSL_write_ex(ssl, base, count, &written)
        guard result == 1 else { return classify(result, duringHandshake: false) }
        return .done(written)
    }

    /// After a failed write: the server may have refused us and reset the connection before the
    /// write (a TLS 1.3 server refuses a client certificate only after the handshake, and our
    /// request then reaches a closed socket). Its alert may still be readable: its reason, or nil.
    func refusalAfterFailedWrite() -> String? {
        var scratch = [UInt8](repeating: 0, count: 512)
        socket.receivesMustNotBlock = true
        defer { socket.receivesMustNotBlock = false }
        let outcome = scratch.withUnsafeMutableBytes { raw in raw.baseAddress.map { read($0, raw.count) } }
        if case .rejected(let reason)? = outcome { return reason }
        return nil
    }

    /// Sends close_notify without waiting for the peer's (the socket must not block here).
    func closeNotify() {
        guard !failed else { return }
        failed = true
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    /// SSL_get_error reads this thread's error queue and our saved errno: both start clean.
    private func prepare() {
        ERR_clear_error()
        socket.lastErrno = 0
    }

    private func keepSession() {
        sessionKept = true
        guard let session = SSL_get1_session(ssl) else { return }
        if SSL_SESSION_is_resumable(session) == 1 { context.keep(session, for: sessionKey) } else { SSL_SESSION_free(session) }
    }

    private func classify(_ result: Int32, duringHandshake: Bool) -> Outcome {
        let code = SSL_get_error(ssl, result)
        switch code {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .again
        case SSL_ERROR_ZERO_RETURN:
            return .eof
        case SSL_ERROR_SYSCALL:
            failed = true
            let saved = socket.lastErrno
            if saved == 0 || socket.sawEOF { return .eof }
            return .failed("TLS: \(errnoText(saved))")
        default:
            failed = true
            var reasons: [Int32] = []
            let text = openSSLErrors(reasons: &reasons)
            if reasons.contains(SSL_R_UNEXPECTED_EOF_WHILE_READING) { return .eof }
            if duringHandshake {
                let verification = SSL_get_verify_result(ssl)
                if verification != X509_V_OK {
                    let why = X509_verify_cert_error_string(verification).map { String(cString: $0) } ?? "error \(verification)"
                    return .rejected("certificate verify failed: \(why) (\(text))")
                }
                return .rejected(text)
            }
            // After the handshake: a TLS 1.3 server refuses a client certificate only now.
            if reasons.contains(where: refusalAlerts.contains) { return .rejected("the server refused the client certificate: \(text)") }
            return .failed("TLS: \(text)")
        }
    }
}

/// Alerts a server sends when it refuses who we are.
private let refusalAlerts: Set<Int32> = [
    SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE, SSL_R_SSLV3_ALERT_BAD_CERTIFICATE, SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE,
    SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED, SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED, SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN,
    SSL_R_TLSV1_ALERT_UNKNOWN_CA, SSL_R_TLSV1_ALERT_ACCESS_DENIED, SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED,
]

/// OpenSSL's error queue of this thread as text (and emptied), e.g. "error:0A000086:SSL
/// routines::certificate verify failed".
func openSSLErrors() -> String {
    var ignored: [Int32] = []
    return openSSLErrors(reasons: &ignored)
}

private func openSSLErrors(reasons: inout [Int32]) -> String {
    var parts: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        reasons.append(goxelpool_err_reason(code))
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        parts.append(cString(buffer))
    }
    return parts.isEmpty ? "no OpenSSL error reported" : parts.joined(separator: "; ")
}

private func isIPAddress(_ text: String) -> Bool {
    var v4 = in_addr(), v6 = in6_addr()
    return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
}

/// The BIO between OpenSSL and a StreamSocket: send with MSG_NOSIGNAL, recv, and the retry flags
/// for a timed-out or interrupted call. Created once per process, never changed after.
private final class SocketBIOMethod: @unchecked Sendable {
    let method: OpaquePointer? = makeSocketBIOMethod()
}

private let socketBIO = SocketBIOMethod()

private func makeSocketBIOMethod() -> OpaquePointer? {
    guard let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "goxelpool socket") else { return nil }
    _ = BIO_meth_set_write_ex(method) { bio, data, length, written in
        guard let bio, let data, let written, let raw = BIO_get_data(bio) else { return 0 }
        let socket = Unmanaged<StreamSocket>.fromOpaque(raw).takeUnretainedValue()
        goxelpool_bio_clear_retry(bio)
        let n = socket.rawSend(data, length)
        if n >= 0 { written.pointee = n; return 1 }
        if socket.lastErrno == EAGAIN || socket.lastErrno == EWOULDBLOCK || socket.lastErrno == EINTR { goxelpool_bio_set_retry_write(bio) }
        return 0
    }
    _ = BIO_meth_set_read_ex(method) { bio, data, length, readBytes in
        guard let bio, let data, let readBytes, let raw = BIO_get_data(bio) else { return 0 }
        let socket = Unmanaged<StreamSocket>.fromOpaque(raw).takeUnretainedValue()
        goxelpool_bio_clear_retry(bio)
        let n = socket.rawReceive(data, length)
        if n > 0 { readBytes.pointee = n; return 1 }
        if n < 0 && (socket.lastErrno == EAGAIN || socket.lastErrno == EWOULDBLOCK || socket.lastErrno == EINTR) {
            goxelpool_bio_set_retry_read(bio)
        }
        return 0
    }
    _ = BIO_meth_set_ctrl(method) { bio, command, _, _ in
        switch command {
        case BIO_CTRL_FLUSH: return 1
        case BIO_CTRL_EOF:
            guard let bio, let raw = BIO_get_data(bio) else { return 1 }
            return Unmanaged<StreamSocket>.fromOpaque(raw).takeUnretainedValue().sawEOF ? 1 : 0
        default: return 0
        }
    }
    _ = BIO_meth_set_create(method) { bio in
        BIO_set_init(bio, 1)
        return 1
    }
    _ = BIO_meth_set_destroy(method) { _ in 1 }
    return method
}
