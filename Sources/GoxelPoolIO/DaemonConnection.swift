import CJansson
import Glibc
import GoxelPoolCore

/// The daemon refuses requests larger than this (it answers -32700 and falls out of step).
public let daemonMaxRequestBytes = 65_535

/// What one request/answer exchange on a connection produced.
public enum Exchange {
    /// `result` is a new reference owned by the receiver.
    case result(OpaquePointer)
    /// The daemon's error object, a new reference. `inStep` is false when the daemon answered
    /// with `id: null` (it could not read our request, and the stream may be out of step).
    case rpcError(OpaquePointer, inStep: Bool)
    /// A notification's answer was read and dropped.
    case notified
    /// The exchange failed. `written` tells whether the request may have reached the daemon.
    case failed(CallFailure, written: Bool)
}

/// One persistent connection to the daemon: one request in flight, whole requests in one write,
/// answers read to `\n` with a bounded buffer, ids checked. Not thread-safe: the pool hands it to
/// one thread at a time.
public final class DaemonConnection {
    public let id: ConnectionID
    private let socket: StreamSocket
    private var framer: LineFramer
    private var writeBuffer: UnsafeMutableRawBufferPointer
    private let maxRequestBytes: Int
    private var nextRequestID: Int64 = 1
    /// Answers still owed to notifications sent on this connection. The real daemon answers a
    /// notification with `"id": null`; a JSON-RPC 2.0 daemon sends nothing. A notification never
    /// waits for its answer: the next exchange skips null-id lines while any are owed.
    private var owedNotificationAnswers = 0
    /// Its pool's fast path for it (nil: its releases always go through the pool's lock). Set
    /// under the pool's lock before the connection is first leased.
    var fastLane: FastLane?
    /// The daemon process on the other end (its `status` pid), once learned: a connection is
    /// bound to one process for life, so a new pid on a new connection means a restarted daemon.
    public internal(set) var daemonPid: Int64?
    /// Bytes moved since the last `takeByteCounts`, for the statistics.
    private var bytesSent = 0
    private var bytesReceived = 0

    func takeByteCounts() -> (sent: Int, received: Int) {
        defer { bytesSent = 0; bytesReceived = 0 }
        return (bytesSent, bytesReceived)
    }

    init(id: ConnectionID, socket: StreamSocket, maxMessageSize: Int) {
        self.id = id
        self.socket = socket
        framer = LineFramer(maxLineLength: maxMessageSize)
        maxRequestBytes = min(maxMessageSize, daemonMaxRequestBytes)
        writeBuffer = .allocate(byteCount: 1024, alignment: 1)
    }

    deinit { writeBuffer.deallocate() }

    /// Opens a connection: connect within `connectTimeout`, check who serves the socket, and
    /// (when `validateMethod` is set) make one call so that a connection the daemon never reads,
    /// or an exhausted daemon that closes it at once, is found before a caller gets it.
    /// A TLS endpoint (`tls` its context) is connected and its handshake done within
    /// `connectTimeout`; the validation call is where a TLS 1.3 server refuses a client
    /// certificate, which is EPEER like a failed verification. With `identify`, the validation
    /// call is `status` and the daemon's pid is learned with it.
    public static func open(id: ConnectionID, endpoint: Endpoint, connectTimeout: Span, maxMessageSize: Int,
                            verifyPeer: Bool, validateMethod: String?, identify: Bool = false,
                            tls: TLSContext? = nil) throws(CallFailure) -> DaemonConnection {
        let socket = try StreamSocket.connect(endpoint, timeout: connectTimeout, tls: tls)
        // Peer credentials exist for Unix sockets only (TCP is loopback or trusted network).
        if verifyPeer, case .unix(let path) = endpoint {
            guard let uid = socket.peerUID() else { throw CallFailure(.peer, "cannot read the peer credentials of \(path)") }
            let me = getuid()
            if uid != me && uid != 0 {
                throw CallFailure(.peer, "\(path) is served by uid \(uid), not by this user (\(me)) or root: refusing to talk to it")
            }
        }
        let connection = DaemonConnection(id: id, socket: socket, maxMessageSize: maxMessageSize)
        if identify {
            if case .failure(let failure) = connection.identify(deadline: Clock.now() + connectTimeout) {
                if failure.status == .peer { throw CallFailure(.peer, "\(endpoint) refused the connection: \(failure.message)") }
                throw CallFailure(.connect, "new connection failed its first call: \(failure.message)")
            }
        } else if let validateMethod {
            switch connection.exchange(method: validateMethod, params: nil, notification: false,
                                       deadline: Clock.now() + connectTimeout) {
            case .result(let value): json_decref(UnsafeMutablePointer(value))
            case .rpcError(let value, _):
                json_decref(UnsafeMutablePointer(value))
                throw CallFailure(.connect, "validation call '\(validateMethod)' answered with an error")
            case .notified: break
            case .failed(let failure, _):
                if failure.status == .peer { throw CallFailure(.peer, "\(endpoint) refused the connection: \(failure.message)") }
                throw CallFailure(.connect, "new connection failed its first call: \(failure.message)")
            }
        }
        return connection
    }

    /// Asks the daemon for its pid (`status`) and remembers it. `.success(nil)`: the daemon's
    /// status has no pid (then restarts cannot be told apart from reconnects).
    public func identify(deadline: Instant) -> Result<Int64?, CallFailure> {
        switch exchange(method: "status", params: nil, notification: false, deadline: deadline) {
        case .result(let value):
            defer { json_decref(UnsafeMutablePointer(value)) }
            let pid = json_object_get(UnsafeMutablePointer(value), "pid")
            if let pid, pid.pointee.type == JSON_INTEGER {
                daemonPid = Int64(json_integer_value(pid))
            }
            return .success(daemonPid)
        case .rpcError(let value, _):
            json_decref(UnsafeMutablePointer(value))
            return .failure(CallFailure(.proto, "the daemon answered 'status' with an error"))
        case .notified:
            return .failure(CallFailure(.proto, "'status' was not answered"))
        case .failed(let failure, _):
            return .failure(failure)
        }
    }

    /// Sends one request and reads its answer by `deadline`. After any `.failed` (and after an
    /// `id: null` error) the connection must not be reused: its state is unknown.
    /// `encodedParams`: `params` as jansson already wrote them (compact), used instead of
    /// writing them again (a durable session's journal entry is that text).
    public func exchange(method: String, params: OpaquePointer?, encodedParams: UnsafeRawBufferPointer? = nil,
                         notification: Bool, deadline: Instant) -> Exchange {
        let requestID = nextRequestID
        nextRequestID &+= 1
        let length: Int
        switch encode(method: method, params: params, encodedParams: encodedParams, id: notification ? nil : requestID) {
        case .success(let count): length = count
        case .failure(let failure): return .failed(failure, written: false)
        }
        do {
            try socket.sendAll(UnsafeRawBufferPointer(rebasing: writeBuffer[0..<length]), deadline: deadline)
        } catch {
            switch error {
            case .timedOut(let written): return .failed(CallFailure(.timedOut, "deadline passed while sending"), written: written)
            case .failed(let message, let written): return .failed(CallFailure(.io, message), written: written)
            case .rejected(let message): return .failed(CallFailure(.peer, message), written: false)
            }
        }
        bytesSent &+= length
        if notification {
            owedNotificationAnswers += 1
            return .notified
        }
        return readAnswer(expecting: requestID, deadline: deadline)
    }

    private func readAnswer(expecting requestID: Int64?, deadline: Instant) -> Exchange {
        while true {
            switch framer.next() {
            case .line(let range):
                let line = framer.bytes(range)
                bytesReceived &+= line.count + 1
                if owedNotificationAnswers > 0 {
                    if Self.hasNullID(line) {
                        owedNotificationAnswers -= 1
                        continue
                    }
                    // Answers come in order: this daemon does not answer notifications.
                    owedNotificationAnswers = 0
                }
                return Self.decodeAnswer(line, expecting: requestID)
            case .tooLong:
                return .failed(CallFailure(.tooBig, "answer longer than max_message_size (\(framer.maxLineLength) bytes)"), written: true)
            case .needMore:
                let space = framer.writableSpace()
                let count: Int
                do {
                    count = try socket.receive(into: space, deadline: deadline)
                } catch {
                    switch error {
                    case .timedOut: return .failed(CallFailure(.timedOut, "no answer from the daemon before the deadline"), written: true)
                    case .failed(let message, _): return .failed(CallFailure(.io, message), written: true)
                    // The terminator refused us before passing anything on: nothing ran.
                    case .rejected(let message): return .failed(CallFailure(.peer, message), written: false)
                    }
                }
                if count == 0 {
                    let detail = framer.bufferedCount > 0 ? " in the middle of an answer (truncated)" : ""
                    return .failed(CallFailure(.io, "the daemon closed the connection\(detail)"), written: true)
                }
                framer.didReceive(count)
            }
        }
    }

    /// The request, `{"jsonrpc":"2.0","method":M,"params":P,"id":N}` and `\n`, in the reusable
    /// write buffer. The envelope is constant text around what jansson writes: the method as a
    /// JSON string (cached: callers repeat a few methods) and the params (json_dumpb straight
    /// into the buffer), so no request object is built, hashed and walked per call (callgrind:
    /// ~9 000 instructions less per call, see Tests/bench/README.md). Every value from the caller
    /// still goes through jansson.
    private func encode(method: String, params: OpaquePointer?, encodedParams: UnsafeRawBufferPointer?,
                        id: Int64?) -> Result<Int, CallFailure> {
        guard let methodJSON = encodedMethod(method) else {
            return .failure(CallFailure(.invalid, "method is not valid UTF-8, or out of memory"))
        }
        var length = 0
        append(Self.envelopeStart, at: &length)
        append(methodJSON, at: &length)
        if let encodedParams {
            append(Self.paramsKey, at: &length)
            append(encodedParams, at: &length)
        } else if let params {
            append(Self.paramsKey, at: &length)
            var needed = dumpParams(params, at: length)
            if needed > writeBuffer.count - length - 1 && needed <= maxRequestBytes {
                grow(to: length + needed + 64)
                needed = dumpParams(params, at: length)
            }
            guard needed > 0 else { return .failure(CallFailure(.invalid, "params cannot be encoded as JSON")) }
            length += needed
        }
        if let id {
            append(Self.idKey, at: &length)
            appendDecimal(id, at: &length)
        }
        append(Self.envelopeEnd, at: &length)
        guard length <= maxRequestBytes else {
            return .failure(CallFailure(.tooBig, "request is \(length) bytes; the daemon accepts at most \(maxRequestBytes)"))
        }
        append([0x0A], at: &length)
        return .success(length)
    }

    private static let envelopeStart = Array(#"{"jsonrpc":"2.0","method":"#.utf8)
    private static let paramsKey = Array(#","params":"#.utf8)
    private static let idKey = Array(#","id":"#.utf8)
    private static let envelopeEnd = Array("}".utf8)

    /// The last methods' JSON strings, as jansson writes them (a handful: linear search).
    private var methodCache: [(method: String, json: [UInt8])] = []

    private func encodedMethod(_ method: String) -> [UInt8]? {
        if let hit = methodCache.first(where: { $0.method == method }) { return hit.json }
        guard let string = method.withCString({ json_string($0) }) else { return nil }
        defer { json_decref(string) }
        let flags = Int(JSON_COMPACT | JSON_ENCODE_ANY)
        let size = json_dumpb(string, nil, 0, flags)
        guard size > 0 else { return nil }
        var bytes = [UInt8](repeating: 0, count: size)
        let written = bytes.withUnsafeMutableBytes { json_dumpb(string, $0.baseAddress?.assumingMemoryBound(to: CChar.self), size, flags) }
        guard written == size else { return nil }
        if methodCache.count >= 8 { methodCache.removeFirst() }
        methodCache.append((method, bytes))
        return bytes
    }

    /// The params' compact JSON at `offset`; returns the size jansson needs (0: cannot encode),
    /// which may be more than fits (nothing is then written past the buffer).
    private func dumpParams(_ params: OpaquePointer, at offset: Int) -> Int {
        let room = max(0, writeBuffer.count - offset - 1)
        let target = writeBuffer.baseAddress.map { ($0 + offset).assumingMemoryBound(to: CChar.self) }
        return json_dumpb(UnsafeMutablePointer(params), target, room, Int(JSON_COMPACT))
    }

    private func grow(to capacity: Int) {
        guard capacity > writeBuffer.count else { return }
        let larger = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 1)
        if let base = writeBuffer.baseAddress, let target = larger.baseAddress { target.copyMemory(from: base, byteCount: writeBuffer.count) }
        writeBuffer.deallocate()
        writeBuffer = larger
    }

    private func append(_ bytes: [UInt8], at length: inout Int) {
        bytes.withUnsafeBytes { append($0, at: &length) }
    }

    private func append(_ source: UnsafeRawBufferPointer, at length: inout Int) {
        if length + source.count > writeBuffer.count { grow(to: max(2 * writeBuffer.count, length + source.count)) }
        if let base = source.baseAddress, let target = writeBuffer.baseAddress { (target + length).copyMemory(from: base, byteCount: source.count) }
        length += source.count
    }

    /// The request id in decimal, written in place (no allocation).
    private func appendDecimal(_ value: Int64, at length: inout Int) {
        if length + 21 > writeBuffer.count { grow(to: max(2 * writeBuffer.count, length + 21)) }
        guard let base = writeBuffer.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
        if value < 0 {
            base[length] = UInt8(ascii: "-")
            length += 1
        }
        let start = length
        var magnitude = value.magnitude
        repeat {
            base[length] = UInt8(ascii: "0") + UInt8(magnitude % 10)
            length += 1
            magnitude /= 10
        } while magnitude > 0
        var low = start, high = length - 1
        while low < high {
            (base[low], base[high]) = (base[high], base[low])
            low += 1
            high -= 1
        }
    }

    /// Checks one answer line: valid JSON object, JSON-RPC 2.0, the id we sent, exactly one of
    /// result and error. Static and internal so the fuzz target (Tests/fuzz) can reach it.
    static func decodeAnswer(_ line: UnsafeRawBufferPointer, expecting requestID: Int64?) -> Exchange {
        var error = json_error_t()
        guard let base = line.baseAddress,
              let root = json_loadb(base.assumingMemoryBound(to: CChar.self), line.count, 0, &error) else {
            return .failed(CallFailure(.proto, "answer is not valid JSON: \(jsonErrorText(&error))"), written: true)
        }
        defer { json_decref(root) }
        guard root.pointee.type == JSON_OBJECT else {
            return .failed(CallFailure(.proto, "answer is not a JSON object"), written: true)
        }
        let version = json_object_get(root, "jsonrpc")
        guard let version, version.pointee.type == JSON_STRING, let text = json_string_value(version),
              strcmp(text, "2.0") == 0 else {
            return .failed(CallFailure(.proto, "answer lacks \"jsonrpc\": \"2.0\""), written: true)
        }
        let idValue = json_object_get(root, "id")
        let result = json_object_get(root, "result")
        let rpcError = json_object_get(root, "error")
        if result != nil && rpcError != nil {
            return .failed(CallFailure(.proto, "answer has both result and error"), written: true)
        }
        let idIsNull = idValue == nil || idValue?.pointee.type == JSON_NULL
        if idIsNull {
            if requestID == nil { return .notified }
            if let rpcError, isErrorObject(rpcError) {
                json_incref(rpcError)
                return .rpcError(OpaquePointer(rpcError), inStep: false)
            }
            return .failed(CallFailure(.proto, "answer has id null but no error object"), written: true)
        }
        guard let requestID else {
            return .failed(CallFailure(.proto, "a notification was answered with an id"), written: true)
        }
        guard let idValue, idValue.pointee.type == JSON_INTEGER, json_integer_value(idValue) == requestID else {
            return .failed(CallFailure(.proto, "answer carries the wrong id (expected \(requestID))"), written: true)
        }
        if let result {
            json_incref(result)
            return .result(OpaquePointer(result))
        }
        if let rpcError, isErrorObject(rpcError) {
            json_incref(rpcError)
            return .rpcError(OpaquePointer(rpcError), inStep: true)
        }
        return .failed(CallFailure(.proto, rpcError == nil ? "answer has neither result nor error" : "error is not an object with an integer code"), written: true)
    }

    /// An answer to a notification: a JSON object whose id is null or missing.
    static func hasNullID(_ line: UnsafeRawBufferPointer) -> Bool {
        guard let base = line.baseAddress,
              let root = json_loadb(base.assumingMemoryBound(to: CChar.self), line.count, 0, nil) else { return false }
        defer { json_decref(root) }
        guard root.pointee.type == JSON_OBJECT else { return false }
        let id = json_object_get(root, "id")
        return id == nil || id?.pointee.type == JSON_NULL
    }

    private static func isErrorObject(_ value: UnsafeMutablePointer<json_t>) -> Bool {
        guard value.pointee.type == JSON_OBJECT, let code = json_object_get(value, "code") else { return false }
        return code.pointee.type == JSON_INTEGER
    }

    /// Whether this connection's TLS session was resumed rather than fully negotiated.
    public var tlsResumed: Bool { socket.tlsResumed }

    /// Wakes a thread blocked on this connection (drain timeout at close).
    public func interrupt() { socket.shutdownBoth() }

    public func close() { socket.close() }
}

func jsonErrorText(_ error: inout json_error_t) -> String {
    withUnsafeBytes(of: &error.text) { raw in
        let bytes = raw.prefix { $0 != 0 }
        return String(decoding: bytes, as: UTF8.self)
    }
}
