import XCTest
@testable import GoxelPoolCore

final class ConfigurationTests: XCTestCase {
    typealias Config = ClientConfiguration

    // MARK: Defaults

    func testDefaultsAreTheDocumentedValues() {
        let c = Config()
        XCTAssertEqual(c.socketPath, "/tmp/goxel-daemon.sock")
        XCTAssertTrue(c.pooling)
        XCTAssertEqual(c.timeoutMs, 5000)
        XCTAssertEqual(c.retryAttempts, 3)
        XCTAssertEqual(c.retryDelayMs, 1000)
        XCTAssertEqual(c.maxMessageSize, 1_048_576)
        XCTAssertTrue(c.verifyPeer)
        XCTAssertEqual(c.idempotentMethods, [])
        XCTAssertEqual(c.logLevel, .warn)
        XCTAssertEqual(c.eventQueueSize, 1024)
        XCTAssertEqual(c.callbacks, .thread)

        XCTAssertEqual(c.pool.minConnections, 2)
        XCTAssertEqual(c.pool.maxConnections, 10)
        XCTAssertEqual(c.pool.acquireTimeoutMs, 5000)
        XCTAssertEqual(c.pool.idleTimeoutMs, 60000)
        XCTAssertEqual(c.pool.maxLifetimeMs, 0)
        XCTAssertEqual(c.pool.maxRequestsPerConnection, 0)
        XCTAssertEqual(c.pool.maxWaiters, 1024)
        XCTAssertEqual(c.pool.reuseWhileWaiting, 16)
        XCTAssertEqual(c.pool.reuseGraceUs, 200)
        XCTAssertEqual(c.pool.reuseWindowUs, 3000)
        XCTAssertTrue(c.pool.fastPath)
        XCTAssertEqual(c.pool.loadBalancing, .leastUsed)
        XCTAssertEqual(c.pool.connectTimeoutMs, 1000)
        XCTAssertTrue(c.pool.validateOnConnect)

        XCTAssertEqual(c.reconnect.initialBackoffMs, 1000)
        XCTAssertEqual(c.reconnect.multiplier, 1.6)
        XCTAssertEqual(c.reconnect.jitter, 0.2)
        XCTAssertEqual(c.reconnect.maxBackoffMs, 120_000)

        XCTAssertEqual(c.health.intervalMs, 30000)
        XCTAssertEqual(c.health.timeoutMs, 5000)
        XCTAssertEqual(c.health.method, "ping")
        XCTAssertEqual(c.health.failureThreshold, 3)
        XCTAssertEqual(c.health.successThreshold, 2)
        XCTAssertEqual(c.health.healthyLatencyMs, 1000)
        XCTAssertEqual(c.health.degradedLatencyMs, 3000)
        XCTAssertTrue(c.health.trendAnalysis)
        XCTAssertEqual(c.health.trendSampleSize, 10)
        XCTAssertNil(c.spawn)
    }

    func testNullAndEmptyObjectsMeanDefaults() throws {
        XCTAssertEqual(try Config.parse(.null), Config())
        XCTAssertEqual(try Config.parse([:]), Config())
        XCTAssertEqual(try Config.parse(["pool": [:], "reconnect": [:], "health": [:]]), Config())
    }

    func testEnumRawValues() {
        XCTAssertEqual(Config.LoadBalancing.allCases.map(\.rawValue), ["least_used", "round_robin", "random"])
        XCTAssertEqual(Config.LogLevel.allCases.map(\.rawValue), ["off", "error", "warn", "info", "debug"])
        XCTAssertEqual(Config.CallbackMode.allCases.map(\.rawValue), ["thread", "dispatch"])
        XCTAssertLessThan(Config.LogLevel.off, .error)
        XCTAssertLessThan(Config.LogLevel.error, .warn)
        XCTAssertLessThan(Config.LogLevel.warn, .info)
        XCTAssertLessThan(Config.LogLevel.info, .debug)
        XCTAssertEqual(Config.LogLevel.allCases.sorted(), Config.LogLevel.allCases)
    }

    // MARK: Valid configurations

    func testFullConfigurationParsesToTheGivenValues() throws {
        let json: ConfigValue = [
            "socket_path": "/run/goxel/daemon.sock",
            "pooling": false,
            "timeout_ms": 2500,
            "retry_attempts": 0,
            "retry_delay_ms": 0,
            "max_message_size": 4096,
            "verify_peer": false,
            "idempotent_methods": ["goxel.render", "export_model"],
            "log_level": "debug",
            "event_queue_size": 1_000_000,
            "callbacks": "dispatch",
            "pool": [
                "min_connections": 0,
                "max_connections": 1024,
                "acquire_timeout_ms": 250,
                "idle_timeout_ms": 0,
                "max_lifetime_ms": 3_600_000,
                "max_requests_per_connection": 100,
                "max_waiters": 0,
                "reuse_while_waiting": 0,
                "reuse_grace_us": 1_000_000,
                "reuse_window_us": 60_000_000,
                "fast_path": false,
                "load_balancing": "round_robin",
                "connect_timeout_ms": 2147483647,
                "validate_on_connect": false,
            ],
            "reconnect": [
                "initial_backoff_ms": 50,
                "multiplier": 2,
                "jitter": 0.5,
                "max_backoff_ms": 50,
            ],
            "health": [
                "interval_ms": 10,
                "timeout_ms": 100,
                "method": "version",
                "failure_threshold": 1000,
                "success_threshold": 1,
                "healthy_latency_ms": 0,
                "degraded_latency_ms": 0,
                "trend_analysis": false,
                "trend_sample_size": 2,
            ],
        ]
        var expected = Config()
        expected.socketPath = "/run/goxel/daemon.sock"
        expected.pooling = false
        expected.timeoutMs = 2500
        expected.retryAttempts = 0
        expected.retryDelayMs = 0
        expected.maxMessageSize = 4096
        expected.verifyPeer = false
        expected.idempotentMethods = ["goxel.render", "export_model"]
        expected.logLevel = .debug
        expected.eventQueueSize = 1_000_000
        expected.callbacks = .dispatch
        expected.pool.minConnections = 0
        expected.pool.maxConnections = 1024
        expected.pool.acquireTimeoutMs = 250
        expected.pool.idleTimeoutMs = 0
        expected.pool.maxLifetimeMs = 3_600_000
        expected.pool.maxRequestsPerConnection = 100
        expected.pool.maxWaiters = 0
        expected.pool.reuseWhileWaiting = 0
        expected.pool.reuseGraceUs = 1_000_000
        expected.pool.reuseWindowUs = 60_000_000
        expected.pool.fastPath = false
        expected.pool.loadBalancing = .roundRobin
        expected.pool.connectTimeoutMs = Int(Int32.max)
        expected.pool.validateOnConnect = false
        expected.reconnect.initialBackoffMs = 50
        expected.reconnect.multiplier = 2.0
        expected.reconnect.jitter = 0.5
        expected.reconnect.maxBackoffMs = 50
        expected.health.intervalMs = 10
        expected.health.timeoutMs = 100
        expected.health.method = "version"
        expected.health.failureThreshold = 1000
        expected.health.successThreshold = 1
        expected.health.healthyLatencyMs = 0
        expected.health.degradedLatencyMs = 0
        expected.health.trendAnalysis = false
        expected.health.trendSampleSize = 2

        let parsed = try Config.parse(json)
        XCTAssertEqual(parsed, expected)
        XCTAssertNotEqual(parsed, Config())
    }

    func testBoundaryValuesAreAccepted() throws {
        let path107 = "/" + String(repeating: "s", count: 106)
        XCTAssertEqual(try Config.parse(["socket_path": .string(path107)]).socketPath, path107)
        XCTAssertEqual(try Config.parse(["timeout_ms": 2147483647]).timeoutMs, Int(Int32.max))
        XCTAssertEqual(try Config.parse(["max_message_size": .integer(1 << 30)]).maxMessageSize, 1 << 30)
        XCTAssertEqual(try Config.parse(["retry_attempts": 100]).retryAttempts, 100)
        XCTAssertEqual(try Config.parse(["log_level": "off"]).logLevel, .off)
        XCTAssertEqual(try Config.parse(["callbacks": "thread"]).callbacks, .thread)
        XCTAssertEqual(try Config.parse(["health": ["interval_ms": 0]]).health.intervalMs, 0)
        XCTAssertEqual(try Config.parse(["pool": ["load_balancing": "random"]]).pool.loadBalancing, .random)
        let equalPool = try Config.parse(["pool": ["min_connections": 7, "max_connections": 7]]).pool
        XCTAssertEqual([equalPool.minConnections, equalPool.maxConnections], [7, 7])
        let health = try Config.parse(["health": ["healthy_latency_ms": 3000]]).health
        XCTAssertEqual([health.healthyLatencyMs, health.degradedLatencyMs], [3000, 3000])
        let reconnect = try Config.parse(["reconnect": ["multiplier": 1, "jitter": 1, "max_backoff_ms": 1000]]).reconnect
        XCTAssertEqual(reconnect.multiplier, 1.0)
        XCTAssertEqual(reconnect.jitter, 1.0)
        XCTAssertEqual(reconnect.maxBackoffMs, 1000)
        XCTAssertEqual(try Config.parse(["reconnect": ["jitter": 0]]).reconnect.jitter, 0.0)
        XCTAssertEqual(try Config.parse(["idempotent_methods": []]).idempotentMethods, [])
    }

    func testIsIdempotent() throws {
        let c = try Config.parse(["idempotent_methods": ["goxel.render"]])
        for method in ["ping", "version", "status", "echo", "list_methods", "goxel.get_voxel",
                       "goxel.list_layers", "goxel.render"] {
            XCTAssertTrue(c.isIdempotent(method: method), method)
        }
        for method in ["goxel.set_voxel", "goxel.get", "goxel.lister", "render", "Ping", "", "goxel.export"] {
            XCTAssertFalse(c.isIdempotent(method: method), method)
        }
        XCTAssertFalse(Config().isIdempotent(method: "goxel.render"))
    }

    // MARK: Invalid configurations

    struct Bad {
        let config: ConfigValue
        let key: String
        /// The exact description, when the test pins it.
        let description: String?
        let line: UInt
        init(_ config: ConfigValue, _ key: String, _ description: String? = nil, line: UInt = #line) {
            self.config = config
            self.key = key
            self.description = description
            self.line = line
        }
    }

    static let tooLongPath = "/" + String(repeating: "x", count: 107)

    static let invalid: [Bad] = [
        // The document itself.
        Bad([1, 2], "config", "config: expected an object, got array"),
        Bad("config.json", "config", "config: expected an object, got string"),
        Bad(5, "config"),
        Bad(true, "config"),
        // Top-level keys.
        Bad(["socket_path": 5], "socket_path", "socket_path: expected a string, got integer"),
        Bad(["socket_path": ""], "socket_path", "socket_path: must not be empty"),
        Bad(["socket_path": .string(tooLongPath)], "socket_path", "socket_path: longer than 107 bytes"),
        Bad(["socket_path": .string(String(repeating: "é", count: 54))], "socket_path", "socket_path: longer than 107 bytes"),
        Bad(["socket_path": "/tmp/a\u{0}b"], "socket_path", "socket_path: must not contain NUL"),
        Bad(["pooling": "yes"], "pooling", "pooling: expected a boolean, got string"),
        Bad(["pooling": 1], "pooling"),
        Bad(["timeout_ms": 0], "timeout_ms", "timeout_ms: must be between 1 and 2147483647, got 0"),
        Bad(["timeout_ms": -5], "timeout_ms", "timeout_ms: must be between 1 and 2147483647, got -5"),
        Bad(["timeout_ms": "5000"], "timeout_ms", "timeout_ms: expected an integer, got string"),
        Bad(["timeout_ms": 5000.0], "timeout_ms", "timeout_ms: expected an integer, got real"),
        Bad(["timeout_ms": .integer(.max)], "timeout_ms",
            "timeout_ms: must be between 1 and 2147483647, got 9223372036854775807"),
        Bad(["timeout_ms": .integer(.min)], "timeout_ms"),
        Bad(["timeout_ms": 2147483648], "timeout_ms"),
        Bad(["timeout_ms": .null], "timeout_ms", "timeout_ms: expected an integer, got null"),
        Bad(["retry_attempts": 101], "retry_attempts", "retry_attempts: must be between 0 and 100, got 101"),
        Bad(["retry_attempts": -1], "retry_attempts"),
        Bad(["retry_delay_ms": -1], "retry_delay_ms"),
        Bad(["retry_delay_ms": [1]], "retry_delay_ms", "retry_delay_ms: expected an integer, got array"),
        Bad(["max_message_size": 1023], "max_message_size"),
        Bad(["max_message_size": .integer((1 << 30) + 1)], "max_message_size"),
        Bad(["verify_peer": "true"], "verify_peer"),
        Bad(["idempotent_methods": "ping"], "idempotent_methods", "idempotent_methods: expected an array, got string"),
        Bad(["idempotent_methods": ["a", "b", 3]], "idempotent_methods[2]",
            "idempotent_methods[2]: expected a string, got integer"),
        Bad(["idempotent_methods": ["a", ""]], "idempotent_methods[1]", "idempotent_methods[1]: must not be empty"),
        Bad(["idempotent_methods": [.null]], "idempotent_methods[0]"),
        Bad(["log_level": "verbose"], "log_level",
            "log_level: must be one of off, error, warn, info, debug, got \"verbose\""),
        Bad(["log_level": "WARN"], "log_level"),
        Bad(["log_level": 3], "log_level", "log_level: expected a string, got integer"),
        Bad(["event_queue_size": 0], "event_queue_size"),
        Bad(["event_queue_size": 1_000_001], "event_queue_size"),
        Bad(["callbacks": "threads"], "callbacks", "callbacks: must be one of thread, dispatch, got \"threads\""),
        Bad(["callbacks": "DISPATCH"], "callbacks"),
        Bad(["callbacks": ""], "callbacks", "callbacks: must not be empty"),
        Bad(["callbacks": true], "callbacks", "callbacks: expected a string, got boolean"),
        Bad(["callbacks": .null], "callbacks", "callbacks: expected a string, got null"),
        Bad(["foo": 1], "foo", "foo: unknown key"),
        Bad(["timeoutMs": 1000], "timeoutMs", "timeoutMs: unknown key"),
        Bad(["timeout_ms": 1000, "timeout_ms": 2000], "timeout_ms", "timeout_ms: duplicate key"),
        // Sections.
        Bad(["pool": .null], "pool", "pool: expected an object, got null"),
        Bad(["pool": []], "pool", "pool: expected an object, got array"),
        Bad(["reconnect": 1], "reconnect", "reconnect: expected an object, got integer"),
        Bad(["health": "on"], "health", "health: expected an object, got string"),
        Bad(["pool": [:], "pool": [:]], "pool", "pool: duplicate key"),
        // pool
        Bad(["pool": ["foo": 1]], "pool.foo", "pool.foo: unknown key"),
        Bad(["pool": ["min_connections": 1025]], "pool.min_connections"),
        Bad(["pool": ["min_connections": -1]], "pool.min_connections"),
        Bad(["pool": ["min_connections": "2"]], "pool.min_connections",
            "pool.min_connections: expected an integer, got string"),
        Bad(["pool": ["max_connections": 0]], "pool.max_connections",
            "pool.max_connections: must be between 1 and 1024, got 0"),
        Bad(["pool": ["max_connections": 1025]], "pool.max_connections"),
        Bad(["pool": ["max_connections": "ten"]], "pool.max_connections",
            "pool.max_connections: expected an integer, got string"),
        Bad(["pool": ["min_connections": 5, "max_connections": 2]], "pool.min_connections",
            "pool.min_connections: 5 is greater than pool.max_connections (2)"),
        Bad(["pool": ["min_connections": 11]], "pool.min_connections",
            "pool.min_connections: 11 is greater than pool.max_connections (10)"),
        Bad(["pool": ["acquire_timeout_ms": 0]], "pool.acquire_timeout_ms"),
        Bad(["pool": ["idle_timeout_ms": -1]], "pool.idle_timeout_ms"),
        Bad(["pool": ["max_lifetime_ms": .integer(.max)]], "pool.max_lifetime_ms"),
        Bad(["pool": ["max_requests_per_connection": -1]], "pool.max_requests_per_connection"),
        Bad(["pool": ["max_waiters": 1_000_001]], "pool.max_waiters"),
        Bad(["pool": ["max_waiters": -1]], "pool.max_waiters"),
        Bad(["pool": ["reuse_while_waiting": -1]], "pool.reuse_while_waiting"),
        Bad(["pool": ["reuse_grace_us": 0]], "pool.reuse_grace_us"),
        Bad(["pool": ["reuse_grace_us": 1_000_001]], "pool.reuse_grace_us"),
        Bad(["pool": ["reuse_window_us": 0]], "pool.reuse_window_us"),
        Bad(["pool": ["reuse_window_us": 60_000_001]], "pool.reuse_window_us"),
        Bad(["pool": ["load_balancing": "fastest"]], "pool.load_balancing",
            "pool.load_balancing: must be one of least_used, round_robin, random, got \"fastest\""),
        Bad(["pool": ["load_balancing": "leastUsed"]], "pool.load_balancing"),
        Bad(["pool": ["connect_timeout_ms": 0]], "pool.connect_timeout_ms"),
        Bad(["pool": ["fast_path": "yes"]], "pool.fast_path", "pool.fast_path: expected a boolean, got string"),
        Bad(["pool": ["validate_on_connect": 0]], "pool.validate_on_connect",
            "pool.validate_on_connect: expected a boolean, got integer"),
        Bad(["pool": ["max_connections": 3, "max_connections": 4]], "pool.max_connections",
            "pool.max_connections: duplicate key"),
        // reconnect
        Bad(["reconnect": ["initial_backoff_ms": 0]], "reconnect.initial_backoff_ms"),
        Bad(["reconnect": ["multiplier": 0.5]], "reconnect.multiplier",
            "reconnect.multiplier: must be between 1.0 and 100.0, got 0.5"),
        Bad(["reconnect": ["multiplier": 101]], "reconnect.multiplier"),
        Bad(["reconnect": ["multiplier": "1.5"]], "reconnect.multiplier",
            "reconnect.multiplier: expected a number, got string"),
        Bad(["reconnect": ["multiplier": .real(.nan)]], "reconnect.multiplier"),
        Bad(["reconnect": ["jitter": 1.5]], "reconnect.jitter"),
        Bad(["reconnect": ["jitter": -0.1]], "reconnect.jitter"),
        Bad(["reconnect": ["jitter": .real(.infinity)]], "reconnect.jitter"),
        Bad(["reconnect": ["max_backoff_ms": 500]], "reconnect.max_backoff_ms",
            "reconnect.max_backoff_ms: 500 is less than reconnect.initial_backoff_ms (1000)"),
        Bad(["reconnect": ["max_backoff_ms": 0]], "reconnect.max_backoff_ms"),
        Bad(["reconnect": ["bar": true]], "reconnect.bar", "reconnect.bar: unknown key"),
        // health
        Bad(["health": ["interval_ms": 5]], "health.interval_ms",
            "health.interval_ms: must be 0 or between 10 and 2147483647, got 5"),
        Bad(["health": ["interval_ms": -1]], "health.interval_ms"),
        Bad(["health": ["timeout_ms": 0]], "health.timeout_ms"),
        Bad(["health": ["method": ""]], "health.method", "health.method: must not be empty"),
        Bad(["health": ["method": 1]], "health.method", "health.method: expected a string, got integer"),
        Bad(["health": ["failure_threshold": 0]], "health.failure_threshold"),
        Bad(["health": ["success_threshold": 1001]], "health.success_threshold"),
        Bad(["health": ["healthy_latency_ms": -1]], "health.healthy_latency_ms"),
        Bad(["health": ["degraded_latency_ms": 500]], "health.degraded_latency_ms",
            "health.degraded_latency_ms: 500 is less than health.healthy_latency_ms (1000)"),
        Bad(["health": ["healthy_latency_ms": 4000]], "health.degraded_latency_ms"),
        Bad(["health": ["trend_analysis": "yes"]], "health.trend_analysis"),
        Bad(["health": ["trend_sample_size": 1]], "health.trend_sample_size"),
        Bad(["health": ["trend_sample_size": 10001]], "health.trend_sample_size"),
        Bad(["health": ["baz": 1, "interval_ms": 1000]], "health.baz", "health.baz: unknown key"),
    ]

    func testInvalidConfigurationsAreRejectedWithTheirKey() {
        XCTAssertGreaterThanOrEqual(Self.invalid.count, 45)
        assertRejected(Self.invalid)
    }

    /// Each configuration fails to parse, with its key and, where given, its exact description.
    func assertRejected(_ list: [Bad]) {
        for bad in list {
            do {
                let parsed = try Config.parse(bad.config)
                XCTFail("accepted \(bad.config) as \(parsed)", line: bad.line)
            } catch {
                XCTAssertEqual(error.key, bad.key, "\(error)", line: bad.line)
                XCTAssertTrue(error.description.hasPrefix(bad.key + ": "), error.description, line: bad.line)
                XCTAssertFalse(error.message.isEmpty, line: bad.line)
                if let description = bad.description {
                    XCTAssertEqual(error.description, description, line: bad.line)
                }
            }
        }
    }

    // MARK: spawn (managed daemons)

    static let refd: ConfigValue = ["goxel-refd", "--socket", "{socket}"]

    func testSpawnDefaults() throws {
        let c = try Config.parse(["spawn": ["command": ConfigurationTests.refd]])
        let spawn = try XCTUnwrap(c.spawn)
        XCTAssertEqual(spawn.command, ["goxel-refd", "--socket", "{socket}"])
        XCTAssertEqual(spawn.instances, 1)
        XCTAssertEqual(spawn.environment, [])
        XCTAssertEqual(spawn.maxConnectionsPerProcess, 240)
        XCTAssertEqual(spawn.maxAgeMs, 0)
        XCTAssertEqual(spawn.startTimeoutMs, 10_000)
        XCTAssertEqual(spawn.stopGraceMs, 2000)
        XCTAssertEqual(spawn.drainTimeoutMs, 60_000)
        XCTAssertEqual(spawn.output, .log)
        // The managed daemons are the endpoints: none is configured up front.
        XCTAssertEqual(c.effectiveEndpoints, [])
        XCTAssertEqual(c.plannedEndpointCount, 1)
        XCTAssertTrue(c.hasSeveralEndpointSources)
        XCTAssertEqual(Config.SpawnConfiguration.Output.allCases.map(\.rawValue), ["log", "null"])
    }

    func testSpawnFullConfiguration() throws {
        let c = try Config.parse([
            "pool": ["min_connections": 1],
            "max_total_connections": 3,
            "spawn": [
                "command": ["/usr/bin/goxel-daemon", "--foreground", "--socket", "{socket}"],
                "instances": 3,
                "env": ["GOXEL_RENDER_DIR": "/tmp/renders", "EMPTY": "", "SOCK": "{socket}"],
                "max_connections_per_process": 6,
                "max_age_ms": 1000,
                "start_timeout_ms": 1,
                "stop_grace_ms": 0,
                "drain_timeout_ms": 0,
                "output": "null",
            ],
        ])
        var expected = Config.SpawnConfiguration()
        expected.command = ["/usr/bin/goxel-daemon", "--foreground", "--socket", "{socket}"]
        expected.instances = 3
        expected.environment = [.init("GOXEL_RENDER_DIR", "/tmp/renders"), .init("EMPTY", ""), .init("SOCK", "{socket}")]
        expected.maxConnectionsPerProcess = 6
        expected.maxAgeMs = 1000
        expected.startTimeoutMs = 1
        expected.stopGraceMs = 0
        expected.drainTimeoutMs = 0
        expected.output = .null
        XCTAssertEqual(c.spawn, expected)
        XCTAssertEqual(c.plannedEndpointCount, 3)
        // The socket may be handed over in the environment only.
        let byEnv = try Config.parse(["spawn": ["command": ["daemon"], "env": ["DAEMON_SOCKET": "{socket}"]]])
        XCTAssertEqual(byEnv.spawn?.command, ["daemon"])
        // No limit on connections per process.
        XCTAssertEqual(try Config.parse(["spawn": ["command": ConfigurationTests.refd, "max_connections_per_process": 0]]).spawn?.maxConnectionsPerProcess, 0)
        XCTAssertEqual(try Config.parse(["spawn": ["command": ConfigurationTests.refd, "instances": 64]]).spawn?.instances, 64)
    }

    static let invalidSpawn: [Bad] = [
        Bad(["spawn": .null], "spawn", "spawn: expected an object, got null"),
        Bad(["spawn": ["goxel-refd"]], "spawn", "spawn: expected an object, got array"),
        Bad(["spawn": [:]], "spawn.command"),
        Bad(["spawn": ["instances": 2]], "spawn.command"),
        Bad(["spawn": ["command": []]], "spawn.command", "spawn.command: must not be empty"),
        Bad(["spawn": ["command": "goxel-refd --socket {socket}"]], "spawn.command",
            "spawn.command: expected an array, got string"),
        Bad(["spawn": ["command": ["goxel-refd", ""]]], "spawn.command[1]", "spawn.command[1]: must not be empty"),
        Bad(["spawn": ["command": ["goxel-refd", 1]]], "spawn.command[1]"),
        Bad(["spawn": ["command": ["goxel-refd", "--socket", "/tmp/goxel-daemon.sock"]]], "spawn.command"),
        Bad(["spawn": ["command": ["goxel-refd", "--socket", "{socket}\u{0}"]]], "spawn.command[2]"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "instances": 0]], "spawn.instances",
            "spawn.instances: must be between 1 and 64, got 0"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "instances": 65]], "spawn.instances"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "instances": "2"]], "spawn.instances"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "env": ["A", "B"]]], "spawn.env", "spawn.env: expected an object, got array"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "env": ["A": 1]]], "spawn.env.A", "spawn.env.A: expected a string, got integer"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "env": ["A": .null]]], "spawn.env.A"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "env": ["": "x"]]], "spawn.env.\"\""),
        Bad(["spawn": ["command": ConfigurationTests.refd, "env": ["A=B": "x"]]], "spawn.env.A=B"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "env": ["A": "x\u{0}y"]]], "spawn.env.A", "spawn.env.A: must not contain NUL"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "env": ["A": "x", "A": "y"]]], "spawn.env.A", "spawn.env.A: duplicate key"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "max_connections_per_process": -1]], "spawn.max_connections_per_process"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "max_connections_per_process": 7]], "spawn.max_connections_per_process",
            "spawn.max_connections_per_process: must be 0 (no limit) or at least 8 (twice pool.min_connections + 2, so that a daemon is replaced in time), got 7"),
        Bad(["pool": ["min_connections": 4], "spawn": ["command": ConfigurationTests.refd, "max_connections_per_process": 11]],
            "spawn.max_connections_per_process"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "max_connections_per_process": 1_000_001]], "spawn.max_connections_per_process"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "max_age_ms": 999]], "spawn.max_age_ms",
            "spawn.max_age_ms: must be 0 or between 1000 and 2147483647, got 999"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "max_age_ms": -1]], "spawn.max_age_ms"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "start_timeout_ms": 0]], "spawn.start_timeout_ms"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "stop_grace_ms": -1]], "spawn.stop_grace_ms"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "stop_grace_ms": 2147483648]], "spawn.stop_grace_ms"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "drain_timeout_ms": -1]], "spawn.drain_timeout_ms"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "output": "stderr"]], "spawn.output",
            "spawn.output: must be one of log, null, got \"stderr\""),
        Bad(["spawn": ["command": ConfigurationTests.refd, "output": false]], "spawn.output"),
        Bad(["spawn": ["command": ConfigurationTests.refd, "socket": "/tmp/x"]], "spawn.socket", "spawn.socket: unknown key"),
        Bad(["spawn": ["command": ConfigurationTests.refd], "socket_path": "/tmp/x.sock"], "spawn",
            "spawn: give either spawn or socket_path, not both"),
        Bad(["endpoints": ["unix:/tmp/a.sock"], "spawn": ["command": ConfigurationTests.refd]], "spawn",
            "spawn: give either spawn or endpoints, not both"),
        Bad(["max_total_connections": 1, "spawn": ["command": ConfigurationTests.refd, "instances": 2]], "max_total_connections",
            "max_total_connections: 1 is fewer than one connection per endpoint (2)"),
    ]

    func testInvalidSpawnConfigurationsAreRejectedWithTheirKey() {
        assertRejected(Self.invalidSpawn)
    }

    func testErrorsAreReportedInTheOrderTheyAreFound() {
        // A valid value after an invalid one does not hide it; the first problem is reported.
        XCTAssertThrowsError(try Config.parse(["timeout_ms": "x", "pool": ["max_connections": 0]])) { error in
            XCTAssertEqual((error as? ConfigurationError)?.key, "timeout_ms")
        }
        // Duplicate keys in a section are found even if the section is otherwise fine.
        XCTAssertThrowsError(try Config.parse(["health": ["method": "ping", "method": "ping"]])) { error in
            XCTAssertEqual((error as? ConfigurationError)?.key, "health.method")
        }
    }

    func testErrorDescription() {
        let error = ConfigurationError(key: "pool.max_connections", message: "expected an integer, got string")
        XCTAssertEqual(error.description, "pool.max_connections: expected an integer, got string")
        XCTAssertEqual("\(ConfigurationError.nestedTooDeeply)", "config: nested too deeply")
    }

    // MARK: TLS and DNS endpoints (issue 13)

    func testTLSSectionDefaultsAndValues() throws {
        XCTAssertNil(Config().tls, "no tls section: TLS endpoints use the defaults")
        XCTAssertEqual(Config().dnsRefreshMs, 30_000)
        let defaults = try XCTUnwrap(try Config.parse(["tls": [:]]).tls)
        XCTAssertEqual(defaults, Config.TLSConfiguration())
        XCTAssertTrue(defaults.verify)
        XCTAssertEqual(defaults.minVersion, .tls12)
        XCTAssertNil(defaults.caFile)
        let full = try XCTUnwrap(try Config.parse(["tls": [
            "ca_file": "/etc/goxel/ca.pem", "cert_file": "/etc/goxel/client.pem", "key_file": "/etc/goxel/client.key",
            "server_name": "goxel.internal", "verify": false, "min_version": "1.3",
        ]]).tls)
        XCTAssertEqual(full.caFile, "/etc/goxel/ca.pem")
        XCTAssertEqual(full.certFile, "/etc/goxel/client.pem")
        XCTAssertEqual(full.keyFile, "/etc/goxel/client.key")
        XCTAssertEqual(full.serverName, "goxel.internal")
        XCTAssertFalse(full.verify)
        XCTAssertEqual(full.minVersion, .tls13)
        XCTAssertNil(try Config.parse(["tls": ["cert_file": "/both.pem"]]).tls?.keyFile, "the key may be in the certificate file")
        XCTAssertEqual(try Config.parse(["dns_refresh_ms": 0]).dnsRefreshMs, 0)
        XCTAssertEqual(try Config.parse(["dns_refresh_ms": 100]).dnsRefreshMs, 100)
    }

    func testDNSAndTLSEndpointsInTheList() throws {
        let c = try Config.parse(["endpoints": ["dns:fleet.goxel.svc:7000", "dnstls:secure.example:7443", "tls:10.0.0.5:7443",
                                                "tcp:[::1]:7000"]])
        XCTAssertEqual(c.dnsEndpoints, [DNSName(host: "fleet.goxel.svc", port: 7000, tls: false),
                                        DNSName(host: "secure.example", port: 7443, tls: true)])
        XCTAssertEqual(c.endpoints, [.tls(host: "10.0.0.5", port: 7443), .tcp(host: "::1", port: 7000)])
        let only = try Config.parse(["endpoints": ["dns:fleet:7000"]])
        XCTAssertEqual(only.effectiveEndpoints, [], "only a DNS name: no socket_path fallback")
        XCTAssertEqual(try Config.parse(["endpoints": ["dns:a:1", "dns:b:1"], "max_total_connections": 2]).maxTotalConnections, 2)
    }

    static let invalidTLSAndDNS: [Bad] = [
        Bad(["tls": true], "tls", "tls: expected an object, got boolean"),
        Bad(["tls": ["ca_file": 5]], "tls.ca_file", "tls.ca_file: expected a string, got integer"),
        Bad(["tls": ["ca_file": ""]], "tls.ca_file", "tls.ca_file: must not be empty"),
        Bad(["tls": ["cert_file": "/a\u{0}b"]], "tls.cert_file", "tls.cert_file: must not contain NUL"),
        Bad(["tls": ["key_file": "/k.pem"]], "tls.key_file", "tls.key_file: given without tls.cert_file"),
        Bad(["tls": ["server_name": .string(String(repeating: "n", count: 254))]], "tls.server_name",
            "tls.server_name: longer than 253 bytes"),
        Bad(["tls": ["verify": "yes"]], "tls.verify", "tls.verify: expected a boolean, got string"),
        Bad(["tls": ["min_version": "1.1"]], "tls.min_version", "tls.min_version: must be one of 1.2, 1.3, got \"1.1\""),
        Bad(["tls": ["min_version": 1.2]], "tls.min_version", "tls.min_version: expected a string, got real"),
        Bad(["tls": ["ciphers": "ALL"]], "tls.ciphers", "tls.ciphers: unknown key"),
        Bad(["dns_refresh_ms": 50], "dns_refresh_ms", "dns_refresh_ms: must be 0 or between 100 and 2147483647, got 50"),
        Bad(["dns_refresh_ms": -1], "dns_refresh_ms"),
        Bad(["dns_refresh_ms": "30s"], "dns_refresh_ms", "dns_refresh_ms: expected an integer, got string"),
        Bad(["endpoints": ["dns:fleet:7000", "dns:fleet:7000"]], "endpoints[1]", "endpoints[1]: 'dns:fleet:7000' is listed twice"),
        Bad(["endpoints": ["dns:fleet"]], "endpoints[0]", "endpoints[0]: 'dns:fleet': expected dns:host:port"),
        Bad(["endpoints": ["dnstls::7000"]], "endpoints[0]", "endpoints[0]: 'dnstls::7000': empty host"),
        Bad(["endpoints": ["tls:h:0"]], "endpoints[0]", "endpoints[0]: 'tls:h:0': port must be 1 to 65535"),
        Bad(["endpoints": ["dns:a:1", "dns:b:1"], "max_total_connections": 1], "max_total_connections",
            "max_total_connections: 1 is fewer than one connection per endpoint (2)"),
    ]

    func testInvalidTLSAndDNSConfigurationsAreRejectedWithTheirKey() {
        assertRejected(Self.invalidTLSAndDNS)
    }
}
