// The `options` argument of goxelpool_session_open (see include/goxelpool.h, README "Sessions").
// Pure: parsed from ConfigValue with the same rules as the client configuration.

/// What a session asks for: where it goes, whether it holds its daemon alone, and whether its
/// document is journaled and restored across daemon restarts.
public struct SessionOptions: Sendable, Equatable {
    /// Sessions with the same key go to the same daemon (rendezvous hashing); nil: any daemon.
    public var key: String?
    /// No other session shares this session's daemon while it is open.
    public var exclusive = true
    /// Journal + checkpoints; the document is restored after the daemon restarts.
    public var durable = false
    /// Where the daemon writes checkpoints (a directory on the daemon's machine).
    public var checkpointDir: String?
    /// A checkpoint after this many journaled calls ...
    public var checkpointEvery = 10_000
    /// ... or when the oldest journaled call is this old (0: by count only).
    public var checkpointIntervalMs = 60_000
    /// Journaled calls kept at most while checkpoints fail; past it, changing calls are refused.
    public var maxJournalEntries = 100_000
    /// How long a restore may wait for the daemon to come back before the session is lost.
    public var restoreTimeoutMs = 30_000

    public init() {}

    /// Checkpoint paths are `<dir>/<name>`; the daemon's paths are kept well under PATH_MAX.
    public static let maxCheckpointDirBytes = 3000

    /// Parses `options` (`.null` for all defaults). `defaultCheckpointDir` is used for a durable
    /// session that names none (managed daemons have a private directory); without one a durable
    /// session must name its `checkpoint_dir`.
    public static func parse(_ value: ConfigValue, defaultCheckpointDir: String? = nil) throws(ConfigurationError) -> SessionOptions {
        var o = SessionOptions()
        let members: [ConfigMember]
        switch value {
        case .null: members = []
        case .object(let list): members = list
        default: throw ConfigurationError(key: "options", message: "expected an object or NULL, got \(value.typeName)")
        }
        var seen: Set<String> = []
        for member in members {
            guard seen.insert(member.key).inserted else { throw ConfigurationError(key: member.key, message: "duplicate key") }
            let key = member.key
            let v = member.value
            func int(_ range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
                guard case .integer(let i) = v else { throw ConfigurationError(key: key, message: "expected an integer, got \(v.typeName)") }
                guard let n = Int(exactly: i), range.contains(n) else {
                    throw ConfigurationError(key: key, message: "must be between \(range.lowerBound) and \(range.upperBound), got \(i)")
                }
                return n
            }
            func bool() throws(ConfigurationError) -> Bool {
                guard case .bool(let b) = v else { throw ConfigurationError(key: key, message: "expected a boolean, got \(v.typeName)") }
                return b
            }
            func string(maxBytes: Int) throws(ConfigurationError) -> String {
                guard case .string(let s) = v else { throw ConfigurationError(key: key, message: "expected a string, got \(v.typeName)") }
                if s.isEmpty { throw ConfigurationError(key: key, message: "must not be empty") }
                if s.utf8.contains(0) { throw ConfigurationError(key: key, message: "must not contain NUL") }
                if s.utf8.count > maxBytes { throw ConfigurationError(key: key, message: "longer than \(maxBytes) bytes") }
                return s
            }
            switch key {
            case "key": o.key = try string(maxBytes: 4096)
            case "exclusive": o.exclusive = try bool()
            case "durable": o.durable = try bool()
            case "checkpoint_dir":
                let dir = try string(maxBytes: maxCheckpointDirBytes)
                guard dir.hasPrefix("/") else { throw ConfigurationError(key: key, message: "must be an absolute path, got \"\(dir)\"") }
                o.checkpointDir = dir
            case "checkpoint_every": o.checkpointEvery = try int(1...10_000_000)
            case "checkpoint_interval_ms": o.checkpointIntervalMs = try int(0...Int(Int32.max))
            case "max_journal_entries": o.maxJournalEntries = try int(1...100_000_000)
            case "restore_timeout_ms": o.restoreTimeoutMs = try int(0...Int(Int32.max))
            default:
                throw ConfigurationError(key: key.isEmpty ? "\"\"" : key, message: "unknown key")
            }
        }
        if o.durable {
            // A daemon holds one document: two sessions sharing it cannot each restore "their" copy.
            guard o.exclusive else {
                throw ConfigurationError(key: "exclusive", message: "a durable session must be exclusive (a daemon holds one document for all its connections)")
            }
            if o.checkpointDir == nil { o.checkpointDir = defaultCheckpointDir }
            guard o.checkpointDir != nil else {
                throw ConfigurationError(key: "checkpoint_dir", message: "a durable session needs a checkpoint_dir (a directory the daemon can write)")
            }
            guard o.checkpointEvery <= o.maxJournalEntries else {
                throw ConfigurationError(key: "checkpoint_every", message: "\(o.checkpointEvery) is greater than max_journal_entries (\(o.maxJournalEntries))")
            }
        }
        return o
    }
}
