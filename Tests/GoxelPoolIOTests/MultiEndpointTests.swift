import CJansson
import Glibc
import GoxelPoolCore
import XCTest
@testable import GoxelPoolIO

/// Several reference daemons behind one client: two on Unix sockets, one on TCP loopback.
final class MultiEndpointTests: XCTestCase {
    var daemons: [RefDaemon] = []
    var tcpPort: UInt16 = 0

    override func setUpWithError() throws {
        tcpPort = try freeLoopbackPort()
        daemons = [try RefDaemon(), try RefDaemon(), try RefDaemon(arguments: ["--tcp", "127.0.0.1:\(tcpPort)"])]
    }

    override func tearDown() {
        daemons.forEach { $0.stop() }
        daemons = []
    }

    var endpoints: [String] {
        ["unix:\(daemons[0].socketPath)", "unix:\(daemons[1].socketPath)", "tcp:127.0.0.1:\(tcpPort)"]
    }

    func client(_ extra: String = "") throws -> MultiPoolClient {
        let list = endpoints.map { "\"\($0)\"" }.joined(separator: ", ")
        let configuration = try ClientConfiguration.fromJSON(#"{"endpoints": [\#(list)], "timeout_ms": 2000, "pool": {"min_connections": 1, "max_connections": 4}, "reconnect": {"initial_backoff_ms": 50, "max_backoff_ms": 200}, "outlier_detection": {"consecutive_failures": 3, "base_ejection_ms": 300}\#(extra)}"#)
        return MultiPoolClient(configuration: configuration, endpoints: configuration.effectiveEndpoints)
    }

    func requests(_ daemon: RefDaemon) -> Int { (try? RefDaemon.intField("requests", in: daemon.stats())).flatMap { $0 } ?? -1 }

    func testTrafficSpreadsOverUnixAndTCPDaemons() throws {
        let client = try client()
        defer { client.close(drain: .zero) }
        daemons.forEach { try? $0.setFaults(#"{"latency_ms": 1}"#) }
        concurrently(8) { _ in for _ in 0..<60 { XCTAssertEqual(client.run("ping").status, .ok) } }
        let counts = daemons.map(requests)
        for (index, count) in counts.enumerated() {
            XCTAssertGreaterThan(count, 480 / 8, "daemon \(index) got \(count) of 480: \(counts)")
        }
        let snapshot = client.snapshot()
        XCTAssertEqual(snapshot.endpoints.map(\.endpoint.description), endpoints)
        XCTAssertGreaterThan(snapshot.endpoints[2].pool.statistics.totalRequestsServed, 0, "TCP endpoint served calls")
    }

    func testSlowDaemonReceivesLessTraffic() throws {
        let client = try client()
        defer { client.close(drain: .zero) }
        try daemons[0].setFaults(#"{"latency_ms": 25}"#)
        try daemons[1].setFaults(#"{"latency_ms": 1}"#)
        try daemons[2].setFaults(#"{"latency_ms": 1}"#)
        concurrently(6) { _ in for _ in 0..<80 { _ = client.run("ping") } }
        let counts = daemons.map(requests)
        XCTAssertLessThan(counts[0] * 3, min(counts[1], counts[2]), "slow daemon's share: \(counts)")
    }

    func testKilledDaemonIsEjectedAndReadmitted() throws {
        let client = try client()
        defer { client.close(drain: .zero) }
        let alerts = OrderLogStrings()
        _ = client.events.add(kinds: .alert) { event in alerts.append(eventType(event)) }
        concurrently(3) { _ in for _ in 0..<20 { XCTAssertEqual(client.run("ping").status, .ok) } }
        daemons[0].kill9()
        let failures = Counter()
        let failed = OrderLogStrings()
        let load = { concurrently(3) { _ in for _ in 0..<20 {
            let outcome = client.run("version")
            if outcome.status != .ok { failures.add(); failed.append(outcome.description) }
        } } }
        // Calls that find the dead daemon fail over; after a few failures it is ejected.
        XCTAssertTrue(eventually(5) { load(); return alerts.values.contains("endpoint_ejected") }, "\(alerts.values)")
        XCTAssertEqual(failures.value, 0, "calls fail over to the other daemons: \(failed.values)")
        try daemons[0].restart()
        try daemons[0].resetStats()
        // Readmission is decided when a call is routed, so keep calling.
        XCTAssertTrue(eventually(5) { load(); return alerts.values.contains("endpoint_readmitted") }, "\(alerts.values)")
        try daemons[0].resetStats()
        XCTAssertTrue(eventually(5) { load(); return self.requests(self.daemons[0]) > 0 }, "readmitted daemon gets traffic again")
        XCTAssertEqual(failures.value, 0)
    }

    func testRemovalDrainsInFlightCalls() throws {
        let client = try client(#", "pool": {"min_connections": 1, "max_connections": 1}"#)
        defer { client.close(drain: .zero) }
        XCTAssertTrue(eventually { client.snapshot().endpoints.allSatisfy { $0.pool.total == 1 } })
        daemons.forEach { try? $0.setFaults(#"{"latency_ms": 300}"#) }
        let results = OrderLog()
        let callers = (0..<3).map { _ in LibraryThread { results.append(Int(client.run("ping").status.rawValue)) } }
        usleep(100_000)
        let removal = elapsedMs { XCTAssertNil(client.removeEndpoint(.unix(path: daemons[0].socketPath), drain: .milliseconds(2000))) }
        callers.forEach { $0.join() }
        XCTAssertEqual(results.values, [0, 0, 0], "in-flight calls finished")
        XCTAssertLessThan(removal, 1500)
        XCTAssertEqual(client.snapshot().endpoints.count, 2)
        try daemons[0].resetStats()
        daemons.forEach { try? $0.resetFaults() }
        for _ in 0..<30 { XCTAssertEqual(client.run("ping").status, .ok) }
        XCTAssertEqual(requests(daemons[0]), 0, "no traffic after removal")
        XCTAssertNotNil(client.removeEndpoint(.unix(path: daemons[0].socketPath), drain: .zero), "already removed")
    }

    /// A client of one fixed endpoint sends its calls past its lock (the sole route); the route
    /// shuts when an endpoint is added, so calls follow the endpoints from then on, and at close.
    func testAOneEndpointClientFollowsItsEndpointsWhenTheyChange() throws {
        let configuration = try ClientConfiguration.fromJSON(#"{"socket_path": "\#(daemons[0].socketPath)", "timeout_ms": 2000}"#)
        let client = MultiPoolClient(configuration: configuration, endpoints: configuration.effectiveEndpoints)
        defer { client.close(drain: .zero) }
        XCTAssertTrue(client.soleRouteIsOpen)
        concurrently(4) { _ in for _ in 0..<50 { XCTAssertEqual(client.run("ping").status, .ok) } }
        XCTAssertGreaterThanOrEqual(requests(daemons[0]), 200, "the calls (and the pool's own checks)")
        XCTAssertNil(client.addEndpoint(.unix(path: daemons[1].socketPath)))
        XCTAssertFalse(client.soleRouteIsOpen)
        XCTAssertNil(client.removeEndpoint(.unix(path: daemons[0].socketPath), drain: .milliseconds(2000)))
        try daemons[0].resetStats()
        concurrently(4) { _ in for _ in 0..<50 { XCTAssertEqual(client.run("ping").status, .ok) } }
        XCTAssertEqual(requests(daemons[0]), 0, "the removed endpoint gets nothing")
        XCTAssertGreaterThanOrEqual(requests(daemons[1]), 200)
        client.close(drain: .zero)
        XCTAssertEqual(client.run("ping").status, .closed)
    }

    /// A DNS name added to a one-endpoint client may bring endpoints that replace it: its calls
    /// go through the lock from then on, which can send them elsewhere.
    func testAOneEndpointClientShutsItsRouteWhenANameIsAdded() throws {
        let configuration = try ClientConfiguration.fromJSON(#"{"socket_path": "\#(daemons[0].socketPath)", "timeout_ms": 2000}"#)
        let client = MultiPoolClient(configuration: configuration, endpoints: configuration.effectiveEndpoints)
        defer { client.close(drain: .zero) }
        XCTAssertTrue(client.soleRouteIsOpen)
        guard case .success(let name) = EndpointTarget.parse("dns:gxp-test.invalid:7000") else { return XCTFail("parse") }
        XCTAssertNil(client.addEndpoint(name))
        XCTAssertFalse(client.soleRouteIsOpen)
        XCTAssertEqual(client.run("ping").status, .ok, "still served by the endpoint it has")
    }

    /// Closed, a one-endpoint client refuses calls as any client does (its route shut first).
    func testAOneEndpointClientRefusesCallsOnceClosed() throws {
        let configuration = try ClientConfiguration.fromJSON(#"{"socket_path": "\#(daemons[0].socketPath)", "timeout_ms": 2000}"#)
        let client = MultiPoolClient(configuration: configuration, endpoints: configuration.effectiveEndpoints)
        XCTAssertEqual(client.run("ping").status, .ok)
        client.close(drain: .zero)
        XCTAssertFalse(client.soleRouteIsOpen)
        let outcome = client.call(method: "ping", params: nil, timeout: nil)
        guard case .failure(let failure) = outcome else { return XCTFail("a closed client answered") }
        XCTAssertEqual(failure.status, .closed)
        XCTAssertEqual(failure.message, "client is closed")
    }

    func testEndpointsAddedAtRunTimeShareTheTotalCap() throws {
        let client = try client(#", "max_total_connections": 5, "pool": {"min_connections": 1, "max_connections": 4}"#)
        defer { client.close(drain: .zero) }
        // 5 over 3 endpoints: 1 each, so 2 are left for an endpoint added later.
        XCTAssertEqual(client.snapshot().endpoints.map(\.maxConnections), [1, 1, 1])
        let extra = try RefDaemon()
        defer { extra.stop() }
        XCTAssertNil(client.addEndpoint(.unix(path: extra.socketPath)))
        XCTAssertEqual(client.snapshot().endpoints.last?.maxConnections, 2)
        XCTAssertEqual(client.addEndpoint(.unix(path: "/tmp/gxp-nothing-here.sock"))?.status, .busy, "the cap is taken")
        XCTAssertEqual(client.addEndpoint(.unix(path: extra.socketPath))?.status, .invalid, "already present")
        concurrently(8) { _ in for _ in 0..<20 { XCTAssertEqual(client.run("ping").status, .ok) } }
        let open = client.snapshot().endpoints.reduce(0) { $0 + $1.pool.total + $1.pool.opening }
        XCTAssertLessThanOrEqual(open, 5)
    }

    func testIPv6Loopback() throws {
        guard let port = try? freeLoopbackPort(ipv6: true) else { throw XCTSkip("no IPv6 loopback here") }
        let daemon = try RefDaemon(arguments: ["--tcp", "[::1]:\(port)"])
        defer { daemon.stop() }
        let configuration = try ClientConfiguration.fromJSON(#"{"endpoints": ["tcp:[::1]:\#(port)"]}"#)
        let client = MultiPoolClient(configuration: configuration, endpoints: configuration.effectiveEndpoints)
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("version").status, .ok)
    }
}

extension ClientConfiguration {
    /// Parses a complete configuration object.
    static func fromJSON(_ text: String) throws -> ClientConfiguration {
        let value = json(text)
        defer { release(value) }
        return try ClientConfiguration.parse(json: UnsafePointer(UnsafeMutablePointer(value)))
    }
}

final class OrderLogStrings: @unchecked Sendable {
    private let lock = PthreadMutex()
    private var items: [String] = []
    func append(_ value: String) { lock.withLock { items.append(value) } }
    var values: [String] { lock.withLock { items } }
}

func eventType(_ event: UnsafeMutablePointer<json_t>) -> String {
    guard let type = json_object_get(event, "type"), let text = json_string_value(type) else { return "?" }
    return String(cString: text)
}

/// A TCP port on loopback that is free right now (bound, read, released).
func freeLoopbackPort(ipv6: Bool = false) throws -> UInt16 {
    let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw CallFailure(.io, "socket") }
    defer { close(fd) }
    var storage = sockaddr_storage()
    var length: socklen_t
    if ipv6 {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_addr = in6addr_loopback
        length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: address, as: sockaddr_in6.self) }
    } else {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: address, as: sockaddr_in.self) }
    }
    let bound = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    guard bound == 0 else { throw CallFailure(.io, "bind") }
    let named = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    guard named == 0 else { throw CallFailure(.io, "getsockname") }
    return withUnsafeBytes(of: &storage) { raw in
        UInt16(bigEndian: ipv6 ? raw.load(as: sockaddr_in6.self).sin6_port : raw.load(as: sockaddr_in.self).sin_port)
    }
}
