// One accepted connection, served by its own thread: framing by bracket balance, JSON-RPC
// validation exactly like the real daemon (silent drops included), dispatch, and fault injection.
//
// Nothing read from the socket can crash this code: every buffer index is bounded, every JSON
// value is type-checked before use, and there are no force-unwraps. The only deliberate deaths
// are a non-empty batch array (the real daemon SIGSEGVs) and `refd.crash`.

import CJansson
import Glibc
import Synchronization

/// Shared, immutable JSON values (jansson's reference counts are atomic on this build).
nonisolated(unsafe) let kJSONRPCVersion: JSONRef = jString("2.0")

private let kTooLargeLine = "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32700,\"message\":\"Parse error: JSON message too large\"},\"id\":null}\n"
private let kNullIdLine = "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32603,\"message\":\"Injected\"},\"id\":null}\n"
private let kGarbageLine = "this is not json\n"
private let kEmptyBatchLine = "[]\n"

/// Dies at once, without an answer, the way the real daemon does (it SIGSEGVs; SIGKILL is the
/// same to a client and leaves no core file behind).
func crashNow() -> Never {
    kill(getpid(), SIGKILL)
    _exit(139)
}

final class Connection: @unchecked Sendable {
    static let maxRequest = 65_535

    private var fd: Int32
    let number: Int
    let unread: Bool
    /// A connection on the control socket: no faults at all, not counted in refd.stats.
    let isControl: Bool
    private let server: Server
    private var rng: SplitMix64
    private var view: FaultView

    // Input buffer and the bracket-balance scanner's state.
    private let inCap = 2 * 65_536
    private let inBuf: UnsafeMutablePointer<UInt8>
    private var inLen = 0
    private var scanPos = 0          // next byte to scan
    private var msgStart = -1        // first byte of the message being framed, -1 if none yet
    private var depth = 0
    private var inString = false
    private var escaped = false

    /// Bytes of the current message that were peeked (MSG_PEEK) but are still in the kernel's queue.
    /// Used only while reset_rate > 0: a Unix socket closed with unread data in its receive queue
    /// gives the peer ECONNRESET (SO_LINGER does not matter for AF_UNIX); without it, plain EOF.
    private var kernelPending = 0
    private let scratchCap = 16_384
    private let scratch: UnsafeMutablePointer<UInt8>

    // Output buffer for json_dumpb, grown on demand.
    private static let outDefault = 65_536
    private var outCap = Connection.outDefault
    private var outBuf: UnsafeMutablePointer<CChar>

    init(fd: Int32, number: Int, unread: Bool, control: Bool, server: Server, seed: UInt64) {
        self.fd = fd
        self.number = number
        self.unread = unread
        self.isControl = control
        self.server = server
        self.rng = SplitMix64(seed: seed)
        self.view = FaultView(server.faults)
        inBuf = .allocate(capacity: inCap)
        scratch = .allocate(capacity: scratchCap)
        outBuf = .allocate(capacity: outCap)
    }

    deinit {
        if fd >= 0 { close(fd) }
        inBuf.deallocate()
        scratch.deallocate()
        outBuf.deallocate()
    }

    func closeSocket() {
        if fd >= 0 {
            close(fd)
            fd = -1
        }
    }

    // MARK: - Thread body

    func run() {
        defer {
            closeSocket()
            if !isControl {
                server.stats.connectionClosed()
                vlog("connection #\(number) closed")
            }
        }
        if unread {
            holdUnread()
            return
        }
        serve()
    }

    /// The unread fault: accepted, held open, never read, never answered, until the peer goes away.
    private func holdUnread() {
        let rdhup: Int16 = 0x2000       // POLLRDHUP (needs _GNU_SOURCE in C; not imported)
        let gone: Int16 = rdhup | Int16(POLLHUP) | Int16(POLLERR) | Int16(POLLNVAL)
        var p = pollfd(fd: fd, events: rdhup, revents: 0)
        while true {
            let r = poll(&p, 1, -1)
            if r < 0 {
                if errno == EINTR { continue }
                return
            }
            if p.revents & gone != 0 {
                return
            }
        }
    }

    private func serve() {
        while true {
            // Every complete message already buffered, in order, one at a time.
            while let end = scanMessage() {
                let start = msgStart
                endMessage()
                if end - start > Connection.maxRequest {
                    tooLarge()
                    return
                }
                if !handle(start, end) { return }
            }
            if msgStart >= 0 && scanPos - msgStart > Connection.maxRequest {
                tooLarge()
                return
            }
            compact()
            view.refresh(server.faults)
            let peek = !isControl && view.current.resetRate > 0
            let n = recv(fd, inBuf + inLen, inCap - inLen, peek ? Int32(MSG_PEEK) : 0)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            if n == 0 { return }
            if !peek {
                inLen += n
                continue
            }
            // Peek mode: frame from the peeked bytes and leave the current message's bytes in the
            // kernel until we know whether this request gets the reset fault.
            let oldLen = inLen
            inLen += n
            if let end = scanMessage() {
                let start = msgStart
                endMessage()
                inLen = end                   // what follows is still queued in the kernel
                kernelPending = end - oldLen
                if end - start > Connection.maxRequest {
                    _ = settleKernel()
                    tooLarge()
                    return
                }
                if !handle(start, end) { return }
                if !settleKernel() { return }
            } else {
                kernelPending = n
                if !settleKernel() { return }
            }
        }
    }

    // MARK: - Framing

    /// Scans new bytes; returns the end (exclusive) of a complete message starting at `msgStart`.
    /// Leading whitespace is skipped; anything else before the first bracket is glued to the
    /// message (which then fails to parse and gets no answer, like the real daemon).
    private func scanMessage() -> Int? {
        var i = scanPos
        let len = inLen
        while i < len {
            let c = inBuf[i]
            if msgStart < 0 {
                if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 {
                    i += 1
                    continue
                }
                msgStart = i
            }
            if depth > 0 {
                if inString {
                    if escaped {
                        escaped = false
                    } else if c == 0x5C {        // backslash
                        escaped = true
                    } else if c == 0x22 {        // quote
                        inString = false
                    }
                } else if c == 0x22 {
                    inString = true
                } else if c == 0x7B || c == 0x5B {   // { [
                    depth += 1
                } else if c == 0x7D || c == 0x5D {   // } ]
                    depth -= 1
                    if depth == 0 {
                        scanPos = i + 1
                        return i + 1
                    }
                }
            } else if c == 0x7B || c == 0x5B {
                depth = 1
            }
            i += 1
        }
        scanPos = i
        return nil
    }

    private func endMessage() {
        msgStart = -1
        depth = 0
        inString = false
        escaped = false
    }

    /// Drops consumed bytes from the front of the input buffer.
    private func compact() {
        let keepFrom = msgStart >= 0 ? msgStart : scanPos
        guard keepFrom > 0 else { return }
        let remaining = inLen - keepFrom
        if remaining > 0 {
            memmove(inBuf, inBuf + keepFrom, remaining)
        }
        inLen = remaining
        scanPos -= keepFrom
        if msgStart >= 0 { msgStart -= keepFrom }
    }

    /// Consumes from the kernel the bytes that were only peeked.
    private func settleKernel() -> Bool {
        var left = kernelPending
        kernelPending = 0
        while left > 0 {
            let n = recv(fd, scratch, min(left, scratchCap), 0)
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            if n == 0 { return false }
            left -= n
        }
        return true
    }

    // MARK: - Requests

    /// Handles one framed message. Returns false when the connection must end (it may already be closed).
    private func handle(_ start: Int, _ end: Int) -> Bool {
        let parsed = UnsafeRawPointer(inBuf + start).withMemoryRebound(to: CChar.self, capacity: end - start) {
            json_loadb($0, end - start, 0, nil)
        }
        guard let root = parsed else {
            vlog("connection #\(number): malformed JSON dropped (no answer)")
            return true
        }
        defer { json_decref(root) }

        switch jType(root) {
        case JSON_ARRAY:
            if json_array_size(root) == 0 {
                guard settleKernel() else { return false }
                return writeRaw(kEmptyBatchLine)
            }
            vlog("connection #\(number): non-empty batch array: crashing like the real daemon")
            crashNow()
        case JSON_OBJECT:
            break
        default:
            return true
        }

        guard let version = json_object_get(root, "jsonrpc"), jType(version) == JSON_STRING,
              let versionText = json_string_value(version), strcmp(versionText, "2.0") == 0 else {
            vlog("connection #\(number): missing or wrong \"jsonrpc\": dropped (no answer)")
            return true
        }
        guard let method = json_object_get(root, "method"), jType(method) == JSON_STRING,
              let methodText = json_string_value(method) else {
            vlog("connection #\(number): non-string method: dropped (no answer)")
            return true
        }
        var id: JSONRef? = nil            // nil: answered with "id": null (notification)
        if let idValue = json_object_get(root, "id") {
            switch jType(idValue) {
            case JSON_INTEGER, JSON_STRING: id = idValue
            case JSON_NULL: id = nil
            default:
                vlog("connection #\(number): float/non-scalar id: dropped (no answer)")
                return true
            }
        }
        let params = json_object_get(root, "params")
        if let params, jType(params) != JSON_ARRAY, jType(params) != JSON_OBJECT {
            // "params": null counts as a scalar too.
            vlog("connection #\(number): scalar params: dropped (no answer)")
            return true
        }
        let name = String(cString: methodText)

        // Control methods: never subject to faults (not even stall), so tests can always steer refd.
        if name.hasPrefix("refd.") {
            guard settleKernel() else { return false }
            let response = control(name, params, id)
            defer { json_decref(response) }
            return writeJSON(response)
        }

        view.refresh(server.faults)
        let f = isControl ? Faults() : view.current
        if f.stall {
            vlog("connection #\(number): stalled: \(name) not answered")
            return true
        }
        if rng.chance(f.dropRate) {
            vlog("connection #\(number): drop fault: \(name) not answered")
            return true
        }
        let reset = rng.chance(f.resetRate)
        if !reset {
            guard settleKernel() else { return false }
        }
        if f.latencyMs > 0 || f.latencyJitterMs > 0 {
            sleepMilliseconds(f.latencyMs + (f.latencyJitterMs > 0 ? rng.unit() * f.latencyJitterMs : 0))
        }

        let response: JSONRef
        if rng.chance(f.errorRate) {
            response = errorResponse(id, -32603, "Injected failure")
        } else {
            switch server.methods.call(name, params) {
            case .result(let result): response = resultResponse(id, result)
            case .error(let code, let message): response = errorResponse(id, code, message)
            }
        }
        defer { json_decref(response) }
        if f.silentNotifications && json_object_get(root, "id") == nil {
            vlog("connection #\(number): notification \(name) run, not answered (silent_notifications)")
            return true
        }

        if reset {
            return halfLineThenClose(response, reset: true)
        }
        if rng.chance(f.truncateRate) {
            return halfLineThenClose(response, reset: false)
        }
        if rng.chance(f.garbageRate) {
            vlog("connection #\(number): garbage fault")
            return writeRaw(kGarbageLine)
        }
        if rng.chance(f.oversizeRate) {
            return writeOversize(id, bytes: f.oversizeBytes)
        }
        if rng.chance(f.wrongIdRate) {
            vlog("connection #\(number): wrong-id fault")
            json_object_set_new(response, "id", wrongId(id))
            return writeJSON(response)
        }
        if rng.chance(f.nullIdRate) {
            vlog("connection #\(number): null-id fault")
            return writeRaw(kNullIdLine)
        }
        if rng.chance(f.noResultRate) {
            vlog("connection #\(number): no-result fault")
            let bare = jObject()
            defer { json_decref(bare) }
            jSet(bare, "jsonrpc", jsonAlloc(json_incref(kJSONRPCVersion)))
            jSet(bare, "id", idValue(id))
            return writeJSON(bare)
        }
        return writeJSON(response)
    }

    // MARK: - Control methods (refd.*)

    private func control(_ name: String, _ params: JSONRef?, _ id: JSONRef?) -> JSONRef {
        switch name {
        case "refd.set_faults":
            if let params, jType(params) != JSON_OBJECT {
                return errorResponse(id, -32602, "Invalid params: refd.set_faults takes an object")
            }
            var problem: String? = nil
            let settings = server.faults.update { f -> JSONRef in
                if let params { problem = f.apply(json: params) }
                return f.toJSON()
            }
            if let problem {
                json_decref(settings)
                return errorResponse(id, -32602, "Invalid params: \(problem)")
            }
            vlog("faults set: \(problem ?? "ok")")
            return resultResponse(id, settings)
        case "refd.get_faults":
            return resultResponse(id, server.faults.snapshot().toJSON())
        case "refd.reset_faults":
            let settings = server.faults.update { f -> JSONRef in
                f = Faults()
                return f.toJSON()
            }
            return resultResponse(id, settings)
        case "refd.stats":
            let s = server.stats
            let o = jObject()
            jSet(o, "accepted", jInt(s.accepted.load(ordering: .acquiring)))
            jSet(o, "open", jInt(s.open.load(ordering: .acquiring)))
            jSet(o, "peak_open", jInt(s.peakOpen.load(ordering: .acquiring)))
            jSet(o, "requests", jInt(s.requests.load(ordering: .acquiring)))
            jSet(o, "pid", jInt(Int(getpid())))
            return resultResponse(id, o)
        case "refd.reset_stats":
            let s = server.stats
            s.requests.store(0, ordering: .releasing)
            s.peakOpen.store(s.open.load(ordering: .acquiring), ordering: .releasing)
            let o = jObject()
            jSet(o, "success", jBool(true))
            return resultResponse(id, o)
        case "refd.crash":
            vlog("refd.crash: dying now")
            crashNow()
        default:
            return errorResponse(id, -32601, "Method not found: \(name)")
        }
    }

    // MARK: - Responses

    private func idValue(_ id: JSONRef?) -> JSONRef {
        if let id { return jsonAlloc(json_incref(id)) }
        return jNull()
    }

    private func wrongId(_ id: JSONRef?) -> JSONRef {
        guard let id else { return jInt(1000) }
        if jType(id) == JSON_INTEGER {
            return jsonAlloc(json_integer(json_integer_value(id) &+ 1000))
        }
        return jString((jStringValue(id) ?? "") + "+1000")
    }

    /// {"jsonrpc":"2.0","result":<result>,"id":<id>}; steals `result`.
    private func resultResponse(_ id: JSONRef?, _ result: JSONRef) -> JSONRef {
        let o = jObject()
        jSet(o, "jsonrpc", jsonAlloc(json_incref(kJSONRPCVersion)))
        jSet(o, "result", result)
        jSet(o, "id", idValue(id))
        return o
    }

    private func errorResponse(_ id: JSONRef?, _ code: Int, _ message: String) -> JSONRef {
        let e = jObject()
        jSet(e, "code", jInt(code))
        jSet(e, "message", jString(message))
        let o = jObject()
        jSet(o, "jsonrpc", jsonAlloc(json_incref(kJSONRPCVersion)))
        jSet(o, "error", e)
        jSet(o, "id", idValue(id))
        return o
    }

    // MARK: - Writing

    /// Serialises `value` plus "\n" into the output buffer; returns the line length.
    private func dump(_ value: JSONRef) -> Int? {
        let flags = Int(JSON_COMPACT)
        var n = json_dumpb(value, outBuf, outCap, flags)
        if n == 0 { return nil }
        if n + 1 > outCap {
            outBuf.deallocate()
            outCap = n + 1
            outBuf = .allocate(capacity: outCap)
            n = json_dumpb(value, outBuf, outCap, flags)
            if n == 0 || n + 1 > outCap { return nil }
        }
        outBuf[n] = 0x0A
        return n + 1
    }

    private func shrinkOutput() {
        if outCap > 1 << 20 {
            outBuf.deallocate()
            outCap = Connection.outDefault
            outBuf = .allocate(capacity: outCap)
        }
    }

    private func sendAll(_ base: UnsafeRawPointer, _ count: Int) -> Bool {
        var off = 0
        while off < count {
            let n = send(fd, base + off, count - off, Int32(MSG_NOSIGNAL))
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            off += n
        }
        return true
    }

    private func writeJSON(_ value: JSONRef) -> Bool {
        guard let len = dump(value) else { return false }
        let ok = sendAll(outBuf, len)
        shrinkOutput()
        if ok && !isControl { server.stats.requests.add(1, ordering: .relaxed) }
        return ok
    }

    private func writeRaw(_ line: String) -> Bool {
        var line = line
        let ok = line.withUTF8 { buf -> Bool in
            guard let base = buf.baseAddress else { return true }
            return sendAll(base, buf.count)
        }
        if ok && !isControl { server.stats.requests.add(1, ordering: .relaxed) }
        return ok
    }

    /// truncate fault: half the line, then EOF. reset fault: half the line, then ECONNRESET.
    private func halfLineThenClose(_ value: JSONRef, reset: Bool) -> Bool {
        if let len = dump(value) {
            let half = max(1, (len - 1) / 2)
            if sendAll(outBuf, half) && !isControl { server.stats.requests.add(1, ordering: .relaxed) }
        }
        if reset {
            // The peer gets ECONNRESET because the request's bytes are still unread in our queue
            // (kernelPending > 0). SO_LINGER 0 as well, for good measure.
            var lg = linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, socklen_t(MemoryLayout<linger>.size))
            vlog("connection #\(number): reset fault\(kernelPending > 0 ? "" : " (no unread bytes: the peer may see EOF)")")
        } else {
            _ = settleKernel()
            shutdown(fd, Int32(SHUT_WR))
            vlog("connection #\(number): truncate fault")
        }
        closeSocket()
        return false
    }

    /// oversize fault: one valid JSON line of exactly `bytes` bytes (newline included).
    private func writeOversize(_ id: JSONRef?, bytes: Int) -> Bool {
        let o = jObject()
        defer { json_decref(o) }
        jSet(o, "jsonrpc", jsonAlloc(json_incref(kJSONRPCVersion)))
        jSet(o, "result", jString(""))
        jSet(o, "id", idValue(id))
        guard let overhead = dump(o) else { return false }
        let fill = max(0, bytes - overhead)
        let filler = UnsafeMutablePointer<CChar>.allocate(capacity: max(1, fill))
        memset(filler, 0x78, fill)        // "xxxx..."
        json_object_set_new(o, "result", jsonAlloc(json_stringn_nocheck(filler, fill)))
        filler.deallocate()
        vlog("connection #\(number): oversize fault (\(overhead + fill) bytes)")
        return writeJSON(o)
    }

    /// Request larger than 65,535 bytes: the real daemon's -32700 line, then close. The rest of the
    /// request is drained briefly first so that the client can read the line instead of getting
    /// EPIPE/ECONNRESET in the middle of its write.
    private func tooLarge() {
        vlog("connection #\(number): request larger than \(Connection.maxRequest) bytes")
        _ = writeRaw(kTooLargeLine)
        shutdown(fd, Int32(SHUT_WR))
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let deadline = monotonicSeconds() + 1.0
        while monotonicSeconds() < deadline {
            let n = recv(fd, scratch, scratchCap, 0)
            if n == 0 { break }
            if n < 0 && errno != EINTR { break }
        }
        closeSocket()
    }
}
