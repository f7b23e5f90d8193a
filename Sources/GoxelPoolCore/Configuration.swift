// Configuration model and parser: the `config` argument of goxelpool_client_new (see
// include/goxelpool.h and README "Configuration"). Pure: no Foundation, no jansson, no I/O.
// Nothing here traps on caller input: every value is type- and range-checked before use.

// MARK: - JSON values

/// One member of a JSON object, in document order.
public struct ConfigMember: Sendable, Equatable {
    public var key: String
    public var value: ConfigValue

    public init(_ key: String, _ value: ConfigValue) {
        self.key = key
        self.value = value
    }
}

/// A JSON value as the configuration parser sees it (the I/O layer converts jansson's json_t
/// into this). Objects keep their members in order, duplicates included: the parser rejects
/// duplicate keys.
public indirect enum ConfigValue: Sendable, Equatable {
    case object([ConfigMember])
    case array([ConfigValue])
    case string(String)
    case integer(Int64)
    case real(Double)
    case bool(Bool)
    case null

    /// The JSON type's name as used in error messages ("object", "integer", ...).
    public var typeName: String {
        switch self {
        case .object: "object"
        case .array: "array"
        case .string: "string"
        case .integer: "integer"
        case .real: "real"
        case .bool: "boolean"
        case .null: "null"
        }
    }
}

extension ConfigValue: ExpressibleByDictionaryLiteral, ExpressibleByArrayLiteral,
    ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral
{
    /// Keeps the literal's order and its duplicate keys (so they can be rejected).
    public init(dictionaryLiteral elements: (String, ConfigValue)...) {
        self = .object(elements.map { ConfigMember($0.0, $0.1) })
    }
    public init(arrayLiteral elements: ConfigValue...) { self = .array(elements) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(floatLiteral value: Double) { self = .real(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

// MARK: - Errors

/// A configuration problem. `key` is the dotted path of the offending value ("timeout_ms",
/// "pool.max_connections", "idempotent_methods[2]", or "config" for the document itself);
/// `description` is "<key>: <message>", the text goxelpool_client_new reports.
public struct ConfigurationError: Error, Equatable, CustomStringConvertible {
    public let key: String
    public let message: String

    public init(key: String, message: String) {
        self.key = key
        self.message = message
    }

    public var description: String { "\(key): \(message)" }

    /// For the I/O layer: the JSON document is nested deeper than it converts.
    public static let nestedTooDeeply = ConfigurationError(key: "config", message: "nested too deeply")
}

// MARK: - Model

/// The validated configuration of a client. `parse(_:)` guarantees every documented range and
/// cross-field rule; the stored properties are `var` so callers can derive variants, which they
/// must then keep within the same rules. Every `*Ms` value is within 0...Int32.max.
public struct ClientConfiguration: Sendable, Equatable {
    /// The pool's own policy type (PoolStateMachine.swift), so no mapping is needed.
    public typealias LoadBalancing = GoxelPoolCore.LoadBalancing

    /// Ordered by verbosity: a log line of level L is emitted when L <= the configured level
    /// (and the configured level is not `.off`).
    public enum LogLevel: String, Sendable, Equatable, CaseIterable, Comparable {
        case off, error, warn, info, debug

        private var rank: Int {
            switch self {
            case .off: 0
            case .error: 1
            case .warn: 2
            case .info: 3
            case .debug: 4
            }
        }

        public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool { lhs.rank < rhs.rank }
    }

    /// Where async-call callbacks and listeners run: on library threads (`thread`, the default),
    /// or only inside goxelpool_dispatch on the application's own thread (`dispatch`, for event
    /// loops: the client then has an eventfd that is readable while something waits).
    public enum CallbackMode: String, Sendable, Equatable, CaseIterable {
        case thread, dispatch
    }

    /// The `pool` section.
    public struct PoolConfiguration: Sendable, Equatable {
        public var minConnections = 2
        public var maxConnections = 10
        public var acquireTimeoutMs = 5000
        /// 0: idle connections are never closed.
        public var idleTimeoutMs = 60000
        /// 0: connections live as long as they work.
        public var maxLifetimeMs = 0
        /// 0: unlimited. The default used to be 1000, but the real goxel-daemon accepts only 256
        /// connections in its whole lifetime: rotating a connection every 1000 requests would
        /// exhaust it within minutes under load. Only set this for a daemon that can take it.
        public var maxRequestsPerConnection = 0
        /// Calls that may wait for a free connection; 0: fail at once with EBUSY when none is free.
        public var maxWaiters = 1024
        /// See PoolStateMachine.Settings.reuseWhileWaiting, reuseWindow and reuseGrace.
        public var reuseWhileWaiting = 16
        public var reuseGraceUs = 200
        public var reuseWindowUs = 3000
        /// A thread's last connection is taken and given back without the pool's lock while
        /// nobody waits (PoolClient, "The fast path"). False: every call goes through the lock.
        public var fastPath = true
        public var loadBalancing = LoadBalancing.leastUsed
        public var connectTimeoutMs = 1000
        public var validateOnConnect = true

        public init() {}
    }

    /// The `reconnect` section: backoff between connection attempts.
    public struct ReconnectConfiguration: Sendable, Equatable {
        public var initialBackoffMs = 1000
        public var multiplier = 1.6
        /// Fraction of the delay randomised, 0...1.
        public var jitter = 0.2
        public var maxBackoffMs = 120_000

        public init() {}
    }

    /// The `health` section.
    public struct HealthConfiguration: Sendable, Equatable {
        /// 0: health checks are off; else at least 10.
        public var intervalMs = 30000
        public var timeoutMs = 5000
        public var method = "ping"
        public var failureThreshold = 3
        public var successThreshold = 2
        public var healthyLatencyMs = 1000
        /// At least `healthyLatencyMs`.
        public var degradedLatencyMs = 3000
        public var trendAnalysis = true
        public var trendSampleSize = 10
        /// latency_spike alert: a latency at least this many times the recent average.
        public var latencySpikeFactor = 3.0

        public init() {}
    }

    /// The `outlier_detection` section: when an endpoint of several is ejected (EndpointBalancer).
    public struct OutlierDetectionConfiguration: Sendable, Equatable {
        public var consecutiveFailures = 5
        public var successRate = 0.5
        public var window = 20
        public var minimumCalls = 10
        public var baseEjectionMs = 1000
        public var maxEjectionMs = 30_000
        public var panicThreshold = 0.5

        public init() {}
    }

    /// The `circuit_breaker` section (see CircuitBreaker).
    public struct CircuitBreakerConfiguration: Sendable, Equatable {
        public var enabled = true
        /// Opens after this many connection attempts failed in a row.
        public var consecutiveConnectFailures = 5
        /// Opens when this share of the last `windowSize` calls failed (with at least `minimumCalls`).
        public var failureRate = 0.5
        public var windowSize = 20
        public var minimumCalls = 10
        /// How long calls fail fast before a probe is let through.
        public var cooldownMs = 5000

        public init() {}
    }

    /// The `spawn` section: daemons the library starts, supervises and recycles itself (README
    /// "Managed daemons"). Present: the client's endpoints are these daemons, not socket_path.
    public struct SpawnConfiguration: Sendable, Equatable {
        /// Where the daemons' stdout and stderr go: log events (kind `log`), or /dev/null.
        public enum Output: String, Sendable, Equatable, CaseIterable { case log, null }

        /// One `env` entry: added to the environment the daemon inherits, or replacing a variable
        /// of the same name.
        public struct EnvironmentVariable: Sendable, Equatable {
            public var name: String
            public var value: String
            public init(_ name: String, _ value: String) { self.name = name; self.value = value }
        }

        /// Replaced by the daemon's socket path in `command` and in `env` values.
        public static let socketPlaceholder = "{socket}"

        /// argv of the daemon; `command[0]` without a `/` is looked up in PATH.
        public var command: [String] = []
        public var instances = 1
        public var environment: [EnvironmentVariable] = []
        /// Connections the library opens to one daemon process in its whole life, at most (the
        /// real daemon accepts 256); the replacement starts before. 0: no limit.
        public var maxConnectionsPerProcess = 240
        /// A daemon is replaced after this long (up to 10 % earlier); 0: never for its age.
        public var maxAgeMs = 0
        /// From the start of the process to its first answered `ping`.
        public var startTimeoutMs = 10_000
        /// SIGTERM, then SIGKILL after this long.
        public var stopGraceMs = 2000
        /// How long calls in flight on a daemon being replaced may still run.
        public var drainTimeoutMs = 60_000
        public var output = Output.log

        public init() {}
    }

    /// The `tls` section: how `tls:` and `dnstls:` endpoints are secured (an OpenSSL context built
    /// once per client from these files).
    public struct TLSConfiguration: Sendable, Equatable {
        public enum Version: String, Sendable, Equatable, CaseIterable {
            case tls12 = "1.2", tls13 = "1.3"
        }

        /// PEM file of the CAs that may sign the server's certificate; nil: the system's store.
        public var caFile: String?
        /// PEM certificate (chain) sent to the server; nil: none.
        public var certFile: String?
        /// PEM private key of `certFile`; nil: read from `certFile`.
        public var keyFile: String?
        /// The name the server's certificate must carry, sent as SNI; nil: each endpoint's host
        /// (the DNS name for `dnstls:`).
        public var serverName: String?
        /// Verify the server's chain and name. Off only for tests: anyone on the path could then
        /// read and send every call.
        public var verify = true
        public var minVersion = Version.tls12

        public init() {}
    }

    /// At most 107 bytes of UTF-8 (sockaddr_un.sun_path less its NUL), no NUL.
    public var socketPath = "/tmp/goxel-daemon.sock"
    public var pooling = true
    public var timeoutMs = 5000
    public var retryAttempts = 3
    public var retryDelayMs = 1000
    public var maxMessageSize = 1_048_576
    public var verifyPeer = true
    /// Methods that are safe to retry besides the built-in ones (see `isIdempotent(method:)`).
    public var idempotentMethods: [String] = []
    public var logLevel = LogLevel.warn
    public var eventQueueSize = 1024
    public var callbacks = CallbackMode.thread
    public var pool = PoolConfiguration()
    public var reconnect = ReconnectConfiguration()
    public var health = HealthConfiguration()
    public var circuitBreaker = CircuitBreakerConfiguration()
    /// Several daemons behind one pool (`unix:/path`, `tcp:host:port`); empty: just socket_path.
    public var endpoints: [Endpoint] = []
    /// Cap on connections across all endpoints; 0: none (each endpoint has pool.max_connections).
    public var maxTotalConnections = 0
    public var outlierDetection = OutlierDetectionConfiguration()
    /// Managed daemons (`spawn`); nil: connect to socket_path or endpoints.
    public var spawn: SpawnConfiguration?
    /// `dns:name:port` and `dnstls:name:port` entries of `endpoints`: resolved by the client.
    public var dnsEndpoints: [DNSName] = []
    /// How often DNS names are resolved again (also when every address of a name failed).
    /// 0: only when every address of a name failed.
    public var dnsRefreshMs = 30_000
    /// The `tls` section; nil when absent (TLS endpoints then use the defaults).
    public var tls: TLSConfiguration?

    /// The endpoints to connect to: `endpoints`, or else `socket_path` (when no DNS name is given
    /// either); none with `spawn` (the managed daemons are added as they become ready).
    public var effectiveEndpoints: [Endpoint] {
        if spawn != nil { return [] }
        return endpoints.isEmpty && dnsEndpoints.isEmpty ? [.unix(path: socketPath)] : endpoints
    }

    /// How many endpoints the client normally has: the managed daemons, or the effective
    /// endpoints and the DNS names (one each, before they are resolved).
    public var plannedEndpointCount: Int { spawn?.instances ?? effectiveEndpoints.count + dnsEndpoints.count }

    /// Several daemons behind the client (listed endpoints, DNS names or managed daemons).
    public var hasSeveralEndpointSources: Bool { !endpoints.isEmpty || !dnsEndpoints.isEmpty || spawn != nil }

    /// All defaults.
    public init() {}

    /// Whether a call of `method` may be retried after its connection broke: ping, version,
    /// status, echo, list_methods, goxel.get_*, goxel.list_* and the configured idempotent_methods.
    public func isIdempotent(method: String) -> Bool {
        Self.builtinIdempotentMethods.contains(method)
            || method.hasPrefix("goxel.get_") || method.hasPrefix("goxel.list_")
            || idempotentMethods.contains(method)
    }

    private static let builtinIdempotentMethods: Set<String> = ["ping", "version", "status", "echo", "list_methods"]

    /// The longest socket path that fits sockaddr_un.sun_path with its terminating NUL.
    public static let maxSocketPathBytes = 107

    /// Validates a configuration document: `.null` or an object (every key optional, unknown and
    /// duplicate keys rejected). The first problem found is thrown.
    public static func parse(_ value: ConfigValue) throws(ConfigurationError) -> ClientConfiguration {
        var c = ClientConfiguration()
        if case .null = value { return c }
        var top = try ConfigObject(value, path: "config", prefix: "")

        c.socketPath = try top.string("socket_path", c.socketPath, maxBytes: maxSocketPathBytes)
        c.pooling = try top.bool("pooling", c.pooling)
        c.timeoutMs = try top.int("timeout_ms", c.timeoutMs, 1...msMax)
        c.retryAttempts = try top.int("retry_attempts", c.retryAttempts, 0...100)
        c.retryDelayMs = try top.int("retry_delay_ms", c.retryDelayMs, 0...msMax)
        c.maxMessageSize = try top.int("max_message_size", c.maxMessageSize, 1024...(1 << 30))
        c.verifyPeer = try top.bool("verify_peer", c.verifyPeer)
        c.idempotentMethods = try top.stringArray("idempotent_methods", c.idempotentMethods)
        c.logLevel = try top.choice("log_level", c.logLevel)
        c.eventQueueSize = try top.int("event_queue_size", c.eventQueueSize, 1...1_000_000)
        c.callbacks = try top.choice("callbacks", c.callbacks)
        let endpointTexts = try top.stringArray("endpoints", [])
        for (index, text) in endpointTexts.enumerated() {
            switch EndpointTarget.parse(text) {
            case .success(let target):
                if c.endpoints.map(EndpointTarget.address).contains(target) || c.dnsEndpoints.map(EndpointTarget.dns).contains(target) {
                    throw ConfigurationError(key: "endpoints[\(index)]", message: "'\(text)' is listed twice")
                }
                switch target {
                case .address(let endpoint): c.endpoints.append(endpoint)
                case .dns(let name): c.dnsEndpoints.append(name)
                }
            case .failure(let error): throw ConfigurationError(key: "endpoints[\(index)]", message: error.message)
            }
        }
        if top.has("endpoints") && c.endpoints.isEmpty && c.dnsEndpoints.isEmpty {
            throw ConfigurationError(key: "endpoints", message: "must list at least one endpoint")
        }
        if top.has("endpoints") && top.has("socket_path") {
            throw ConfigurationError(key: "endpoints", message: "give either socket_path or endpoints, not both")
        }
        c.maxTotalConnections = try top.int("max_total_connections", c.maxTotalConnections, 0...1_000_000)
        c.dnsRefreshMs = try top.int("dns_refresh_ms", c.dnsRefreshMs, 0...msMax, except: 1...99)
        if top.has("tls") {
            var t = try top.section("tls")
            var tls = TLSConfiguration()
            tls.caFile = try t.optionalString("ca_file", maxBytes: pathMax)
            tls.certFile = try t.optionalString("cert_file", maxBytes: pathMax)
            tls.keyFile = try t.optionalString("key_file", maxBytes: pathMax)
            tls.serverName = try t.optionalString("server_name", maxBytes: 253)
            tls.verify = try t.bool("verify", tls.verify)
            tls.minVersion = try t.choice("min_version", tls.minVersion)
            try t.finish()
            if tls.keyFile != nil && tls.certFile == nil {
                throw ConfigurationError(key: "tls.key_file", message: "given without tls.cert_file")
            }
            c.tls = tls
        }

        var p = try top.section("pool")
        c.pool.minConnections = try p.int("min_connections", c.pool.minConnections, 0...1024)
        c.pool.maxConnections = try p.int("max_connections", c.pool.maxConnections, 1...1024)
        c.pool.acquireTimeoutMs = try p.int("acquire_timeout_ms", c.pool.acquireTimeoutMs, 1...msMax)
        c.pool.idleTimeoutMs = try p.int("idle_timeout_ms", c.pool.idleTimeoutMs, 0...msMax)
        c.pool.maxLifetimeMs = try p.int("max_lifetime_ms", c.pool.maxLifetimeMs, 0...msMax)
        c.pool.maxRequestsPerConnection = try p.int(
            "max_requests_per_connection", c.pool.maxRequestsPerConnection, 0...countMax)
        c.pool.maxWaiters = try p.int("max_waiters", c.pool.maxWaiters, 0...1_000_000)
        c.pool.reuseWhileWaiting = try p.int("reuse_while_waiting", c.pool.reuseWhileWaiting, 0...1_000_000)
        c.pool.reuseGraceUs = try p.int("reuse_grace_us", c.pool.reuseGraceUs, 1...1_000_000)
        c.pool.reuseWindowUs = try p.int("reuse_window_us", c.pool.reuseWindowUs, 1...60_000_000)
        c.pool.fastPath = try p.bool("fast_path", c.pool.fastPath)
        c.pool.loadBalancing = try p.choice("load_balancing", c.pool.loadBalancing)
        c.pool.connectTimeoutMs = try p.int("connect_timeout_ms", c.pool.connectTimeoutMs, 1...msMax)
        c.pool.validateOnConnect = try p.bool("validate_on_connect", c.pool.validateOnConnect)
        try p.finish()
        try p.notGreater("min_connections", c.pool.minConnections, than: "max_connections", c.pool.maxConnections)

        var r = try top.section("reconnect")
        c.reconnect.initialBackoffMs = try r.int("initial_backoff_ms", c.reconnect.initialBackoffMs, 1...msMax)
        c.reconnect.multiplier = try r.number("multiplier", c.reconnect.multiplier, 1.0...100.0)
        c.reconnect.jitter = try r.number("jitter", c.reconnect.jitter, 0.0...1.0)
        c.reconnect.maxBackoffMs = try r.int("max_backoff_ms", c.reconnect.maxBackoffMs, 1...msMax)
        try r.finish()
        try r.notGreater("initial_backoff_ms", c.reconnect.initialBackoffMs,
                         than: "max_backoff_ms", c.reconnect.maxBackoffMs, reportSecond: true)

        var h = try top.section("health")
        c.health.intervalMs = try h.int("interval_ms", c.health.intervalMs, 0...msMax, except: 1...9)
        c.health.timeoutMs = try h.int("timeout_ms", c.health.timeoutMs, 1...msMax)
        c.health.method = try h.string("method", c.health.method)
        c.health.failureThreshold = try h.int("failure_threshold", c.health.failureThreshold, 1...1000)
        c.health.successThreshold = try h.int("success_threshold", c.health.successThreshold, 1...1000)
        c.health.healthyLatencyMs = try h.int("healthy_latency_ms", c.health.healthyLatencyMs, 0...msMax)
        c.health.degradedLatencyMs = try h.int("degraded_latency_ms", c.health.degradedLatencyMs, 0...msMax)
        c.health.trendAnalysis = try h.bool("trend_analysis", c.health.trendAnalysis)
        c.health.trendSampleSize = try h.int("trend_sample_size", c.health.trendSampleSize, 2...10000)
        c.health.latencySpikeFactor = try h.number("latency_spike_factor", c.health.latencySpikeFactor, 1.0...1000.0)
        try h.finish()
        try h.notGreater("healthy_latency_ms", c.health.healthyLatencyMs,
                         than: "degraded_latency_ms", c.health.degradedLatencyMs, reportSecond: true)

        var b = try top.section("circuit_breaker")
        c.circuitBreaker.enabled = try b.bool("enabled", c.circuitBreaker.enabled)
        c.circuitBreaker.consecutiveConnectFailures = try b.int(
            "consecutive_connect_failures", c.circuitBreaker.consecutiveConnectFailures, 1...1000)
        c.circuitBreaker.failureRate = try b.number("failure_rate", c.circuitBreaker.failureRate, 0.01...1.0)
        c.circuitBreaker.windowSize = try b.int("window_size", c.circuitBreaker.windowSize, 1...10000)
        c.circuitBreaker.minimumCalls = try b.int("minimum_calls", c.circuitBreaker.minimumCalls, 1...10000)
        c.circuitBreaker.cooldownMs = try b.int("cooldown_ms", c.circuitBreaker.cooldownMs, 1...msMax)
        try b.finish()
        try b.notGreater("minimum_calls", c.circuitBreaker.minimumCalls, than: "window_size", c.circuitBreaker.windowSize)

        var o = try top.section("outlier_detection")
        c.outlierDetection.consecutiveFailures = try o.int("consecutive_failures", c.outlierDetection.consecutiveFailures, 1...1000)
        c.outlierDetection.successRate = try o.number("success_rate", c.outlierDetection.successRate, 0.0...1.0)
        c.outlierDetection.window = try o.int("window", c.outlierDetection.window, 1...10000)
        c.outlierDetection.minimumCalls = try o.int("minimum_calls", c.outlierDetection.minimumCalls, 1...10000)
        c.outlierDetection.baseEjectionMs = try o.int("base_ejection_ms", c.outlierDetection.baseEjectionMs, 1...msMax)
        c.outlierDetection.maxEjectionMs = try o.int("max_ejection_ms", c.outlierDetection.maxEjectionMs, 1...msMax)
        c.outlierDetection.panicThreshold = try o.number("panic_threshold", c.outlierDetection.panicThreshold, 0.0...1.0)
        try o.finish()
        try o.notGreater("minimum_calls", c.outlierDetection.minimumCalls, than: "window", c.outlierDetection.window)
        try o.notGreater("base_ejection_ms", c.outlierDetection.baseEjectionMs,
                         than: "max_ejection_ms", c.outlierDetection.maxEjectionMs, reportSecond: true)

        if top.has("spawn") {
            c.spawn = try parseSpawn(top.section("spawn"), pool: c.pool)
            if let other = ["socket_path", "endpoints"].first(where: top.has) {
                throw ConfigurationError(key: "spawn", message: "give either spawn or \(other), not both")
            }
        }

        try top.finish()
        if c.maxTotalConnections > 0 && c.maxTotalConnections < c.plannedEndpointCount {
            throw ConfigurationError(key: "max_total_connections",
                                     message: "\(c.maxTotalConnections) is fewer than one connection per endpoint (\(c.plannedEndpointCount))")
        }
        return c
    }

    /// The `spawn` section. Every key is checked for its type and range before the cross-field
    /// rules, so a wrong value is reported under its own key.
    private static func parseSpawn(_ section: ConfigObject, pool: PoolConfiguration) throws(ConfigurationError) -> SpawnConfiguration {
        var s = section
        var spawn = SpawnConfiguration()
        spawn.command = try s.stringArray("command", [])
        spawn.instances = try s.int("instances", spawn.instances, 1...64)
        spawn.environment = try s.stringMap("env").map { SpawnConfiguration.EnvironmentVariable($0.0, $0.1) }
        spawn.maxConnectionsPerProcess = try s.int("max_connections_per_process", spawn.maxConnectionsPerProcess, 0...1_000_000)
        spawn.maxAgeMs = try s.int("max_age_ms", spawn.maxAgeMs, 0...msMax, except: 1...999)
        spawn.startTimeoutMs = try s.int("start_timeout_ms", spawn.startTimeoutMs, 1...msMax)
        spawn.stopGraceMs = try s.int("stop_grace_ms", spawn.stopGraceMs, 0...msMax)
        spawn.drainTimeoutMs = try s.int("drain_timeout_ms", spawn.drainTimeoutMs, 0...msMax)
        spawn.output = try s.choice("output", spawn.output)
        try s.finish()
        // After it is ready a daemon has had its readiness probe and the pool's min_connections;
        // recycling starts at most half-way to the limit, so the limit must leave room for both.
        let least = 2 * (pool.minConnections + 2)
        if spawn.maxConnectionsPerProcess != 0 && spawn.maxConnectionsPerProcess < least {
            throw s.fail("max_connections_per_process",
                         "must be 0 (no limit) or at least \(least) (twice pool.min_connections + 2, so that a daemon is replaced in time), got \(spawn.maxConnectionsPerProcess)")
        }
        if !s.has("command") { throw s.fail("command", "required: the daemon's argv, e.g. [\"goxel-daemon\", \"--foreground\", \"--socket\", \"{socket}\"]") }
        if spawn.command.isEmpty { throw s.fail("command", "must not be empty") }
        let placeholder = SpawnConfiguration.socketPlaceholder
        if !spawn.command.contains(where: { $0.contains(placeholder) }) && !spawn.environment.contains(where: { $0.value.contains(placeholder) }) {
            throw s.fail("command", "no argument (nor env value) contains \(placeholder): the daemon would not listen on the socket the library chose")
        }
        return spawn
    }

    /// PATH_MAX less its NUL.
    private static let pathMax = 4095

    /// Milliseconds are handed to C as `int`.
    private static let msMax = Int(Int32.max)
    private static let countMax = Int(Int32.max)
}

// MARK: - Parser helpers

/// One JSON object being read: each reader takes a key, its default and its rule; `finish()`
/// rejects the keys nobody read.
private struct ConfigObject {
    let prefix: String
    let members: [ConfigMember]
    var read: Set<String> = []

    /// `path` names the object in errors; `prefix` is prepended to its keys ("" or "pool.").
    init(_ value: ConfigValue, path: String, prefix: String) throws(ConfigurationError) {
        guard case .object(let members) = value else {
            throw ConfigurationError(key: path, message: "expected an object, got \(value.typeName)")
        }
        var seen: Set<String> = []
        for member in members where !seen.insert(member.key).inserted {
            throw ConfigurationError(key: prefix + Self.shown(member.key), message: "duplicate key")
        }
        self.prefix = prefix
        self.members = members
    }

    func path(_ key: String) -> String { prefix + key }

    func fail(_ key: String, _ message: String) -> ConfigurationError {
        ConfigurationError(key: path(key), message: message)
    }

    /// The value of `key` (keys are unique), marking it read.
    mutating func value(_ key: String) -> ConfigValue? {
        read.insert(key)
        return members.first { $0.key == key }?.value
    }

    /// Whether the document sets `key` at all.
    func has(_ key: String) -> Bool { members.contains { $0.key == key } }

    func typeError(_ key: String, _ expected: String, _ got: ConfigValue) -> ConfigurationError {
        fail(key, "expected \(expected), got \(got.typeName)")
    }

    /// An integer in `range` and not in `excluded`.
    mutating func int(_ key: String, _ def: Int, _ range: ClosedRange<Int>,
                      except excluded: ClosedRange<Int>? = nil) throws(ConfigurationError) -> Int {
        guard let v = value(key) else { return def }
        guard case .integer(let i) = v else { throw typeError(key, "an integer", v) }
        if let n = Int(exactly: i), range.contains(n), !(excluded?.contains(n) ?? false) { return n }
        var allowed = "between \(range.lowerBound) and \(range.upperBound)"
        if let excluded, excluded.lowerBound > range.lowerBound {
            allowed = "\(range.lowerBound) or between \(excluded.upperBound + 1) and \(range.upperBound)"
        }
        throw fail(key, "must be \(allowed), got \(i)")
    }

    /// A number (integer or real) in `range`.
    mutating func number(_ key: String, _ def: Double, _ range: ClosedRange<Double>) throws(ConfigurationError) -> Double {
        let d: Double
        switch value(key) {
        case nil: return def
        case .integer(let i)?: d = Double(i)
        case .real(let r)?: d = r
        case let other?: throw typeError(key, "a number", other)
        }
        guard range.contains(d) else {
            throw fail(key, "must be between \(range.lowerBound) and \(range.upperBound), got \(d)")
        }
        return d
    }

    mutating func bool(_ key: String, _ def: Bool) throws(ConfigurationError) -> Bool {
        guard let v = value(key) else { return def }
        guard case .bool(let b) = v else { throw typeError(key, "a boolean", v) }
        return b
    }

    mutating func string(_ key: String, _ def: String, maxBytes: Int? = nil) throws(ConfigurationError) -> String {
        guard let v = value(key) else { return def }
        return try Self.checkedString(v, key: path(key), maxBytes: maxBytes)
    }

    /// A string when the key is present, else nil.
    mutating func optionalString(_ key: String, maxBytes: Int? = nil) throws(ConfigurationError) -> String? {
        guard let v = value(key) else { return nil }
        return try Self.checkedString(v, key: path(key), maxBytes: maxBytes)
    }

    /// An array of non-empty strings without NUL.
    mutating func stringArray(_ key: String, _ def: [String]) throws(ConfigurationError) -> [String] {
        guard let v = value(key) else { return def }
        guard case .array(let items) = v else { throw typeError(key, "an array", v) }
        var out: [String] = []
        for (index, item) in items.enumerated() {
            out.append(try Self.checkedString(item, key: "\(path(key))[\(index)]", maxBytes: nil))
        }
        return out
    }

    /// An object of strings (an environment): names non-empty, without `=` or NUL; values
    /// without NUL (empty allowed). In document order.
    mutating func stringMap(_ key: String) throws(ConfigurationError) -> [(String, String)] {
        guard let v = value(key) else { return [] }
        let map = try ConfigObject(v, path: path(key), prefix: path(key) + ".")
        var out: [(String, String)] = []
        for member in map.members {
            let name = map.path(Self.shown(member.key))
            if member.key.isEmpty { throw ConfigurationError(key: name, message: "a variable name must not be empty") }
            if member.key.utf8.contains(0) || member.key.contains("=") {
                throw ConfigurationError(key: name, message: "a variable name must not contain '=' or NUL")
            }
            guard case .string(let text) = member.value else {
                throw ConfigurationError(key: name, message: "expected a string, got \(member.value.typeName)")
            }
            if text.utf8.contains(0) { throw ConfigurationError(key: name, message: "must not contain NUL") }
            out.append((member.key, text))
        }
        return out
    }

    /// A string naming one case of `E`.
    mutating func choice<E: RawRepresentable & CaseIterable>(_ key: String, _ def: E) throws(ConfigurationError) -> E
    where E.RawValue == String {
        let name = try string(key, def.rawValue)
        guard let e = E(rawValue: name) else {
            let names = E.allCases.map(\.rawValue).joined(separator: ", ")
            throw fail(key, "must be one of \(names), got \"\(name)\"")
        }
        return e
    }

    /// A nested section: absent means all defaults, anything but an object is rejected.
    mutating func section(_ key: String) throws(ConfigurationError) -> ConfigObject {
        try ConfigObject(value(key) ?? .object([]), path: path(key), prefix: path(key) + ".")
    }

    /// Rejects the first key that no reader asked for.
    func finish() throws(ConfigurationError) {
        if let unknown = members.first(where: { !read.contains($0.key) }) {
            throw fail(Self.shown(unknown.key), "unknown key")
        }
    }

    /// A document's own key as errors name it: as is, or quoted with control characters escaped
    /// when it is empty or holds any (found by fuzzing: `{"":1}` gave ": unknown key", and a NUL
    /// in a key cut the message short at the C boundary).
    static func shown(_ key: String) -> String {
        func isControl(_ s: Unicode.Scalar) -> Bool { s.value < 0x20 || s.value == 0x7F }
        guard key.isEmpty || key.unicodeScalars.contains(where: isControl) else { return key }
        var out = "\""
        for s in key.unicodeScalars {
            if isControl(s) {
                let hex = String(s.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else if s == "\"" || s == "\\" {
                out += "\\" + String(s)
            } else {
                out.unicodeScalars.append(s)
            }
        }
        return out + "\""
    }

    /// Requires `first <= second`; the error names `second` when `reportSecond`, else `first`.
    func notGreater(_ firstKey: String, _ first: Int, than secondKey: String, _ second: Int,
                    reportSecond: Bool = false) throws(ConfigurationError) {
        guard first > second else { return }
        if reportSecond {
            throw fail(secondKey, "\(second) is less than \(path(firstKey)) (\(first))")
        }
        throw fail(firstKey, "\(first) is greater than \(path(secondKey)) (\(second))")
    }

    /// A non-empty string without NUL, of at most `maxBytes` UTF-8 bytes.
    static func checkedString(_ v: ConfigValue, key: String, maxBytes: Int?) throws(ConfigurationError) -> String {
        guard case .string(let s) = v else {
            throw ConfigurationError(key: key, message: "expected a string, got \(v.typeName)")
        }
        let problem: String? =
            if s.isEmpty { "must not be empty" }
            else if s.utf8.contains(0) { "must not contain NUL" }
            else if let maxBytes, s.utf8.count > maxBytes { "longer than \(maxBytes) bytes" }
            else { nil }
        if let problem { throw ConfigurationError(key: key, message: problem) }
        return s
    }
}
