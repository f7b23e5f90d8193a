/// The library's status codes; raw values equal the C header's goxelpool_status and are never
/// renumbered.
public enum CallStatus: Int32, Sendable, CaseIterable {
    case ok = 0, invalid = 1, timedOut = 2, closed = 3, connect = 4, io = 5, proto = 6, rpc = 7,
         busy = 8, unavailable = 9, tooBig = 10, peer = 11, noMemory = 12, lost = 13

    /// The name without prefix, as used in batch results and events ("OK", "EINVAL", ...).
    /// StaticString: the C ABI hands these out as pointers that must live forever.
    public var name: StaticString {
        switch self {
        case .ok: "OK"
        case .invalid: "EINVAL"
        case .timedOut: "ETIMEDOUT"
        case .closed: "ECLOSED"
        case .connect: "ECONNECT"
        case .io: "EIO"
        case .proto: "EPROTO"
        case .rpc: "ERPC"
        case .busy: "EBUSY"
        case .unavailable: "EUNAVAILABLE"
        case .tooBig: "ETOOBIG"
        case .peer: "EPEER"
        case .noMemory: "ENOMEM"
        case .lost: "ELOST"
        }
    }

    public var sentence: StaticString {
        switch self {
        case .ok: "success"
        case .invalid: "invalid argument or configuration"
        case .timedOut: "deadline exceeded"
        case .closed: "client is closed"
        case .connect: "could not connect to the daemon"
        case .io: "connection broke"
        case .proto: "invalid answer from the daemon (protocol error)"
        case .rpc: "the daemon answered with an error"
        case .busy: "too many waiting requests"
        case .unavailable: "daemon unavailable (circuit open)"
        case .tooBig: "message too large"
        case .peer: "peer refused: socket of another user, or TLS verification or client certificate refused"
        case .noMemory: "out of memory"
        case .lost: "the session's document was lost and could not be restored"
        }
    }
}

/// A failed call: a status and a message for goxelpool_last_error.
public struct CallFailure: Error, Sendable, Equatable {
    public var status: CallStatus
    public var message: String
    /// The request may have reached the daemon (so it must not be sent again elsewhere unless
    /// the method is idempotent).
    public var mayHaveRun: Bool
    public init(_ status: CallStatus, _ message: String, mayHaveRun: Bool = false) {
        self.status = status; self.message = message; self.mayHaveRun = mayHaveRun
    }
}
