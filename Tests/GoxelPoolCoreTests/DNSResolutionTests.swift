import XCTest
@testable import GoxelPoolCore

final class DNSResolutionTests: XCTestCase {
    let fleet = DNSName(host: "fleet.test", port: 7000, tls: false)

    func testEndpointForms() {
        XCTAssertEqual(try Endpoint.parse("tls:goxel.example:7443").get(), .tls(host: "goxel.example", port: 7443))
        XCTAssertEqual(try Endpoint.parse("tls:[::1]:7443").get(), .tls(host: "::1", port: 7443))
        XCTAssertEqual(Endpoint.tls(host: "::1", port: 7443).description, "tls:[::1]:7443")
        XCTAssertTrue(Endpoint.tls(host: "h", port: 1).usesTLS)
        XCTAssertFalse(Endpoint.tcp(host: "h", port: 1).usesTLS)
        XCTAssertEqual(try EndpointTarget.parse("dns:fleet.test:7000").get(), .dns(fleet))
        XCTAssertEqual(try EndpointTarget.parse("dnstls:fleet.test:7000").get(), .dns(DNSName(host: "fleet.test", port: 7000, tls: true)))
        XCTAssertEqual(try EndpointTarget.parse("unix:/tmp/a.sock").get(), .address(.unix(path: "/tmp/a.sock")))
        XCTAssertEqual(try EndpointTarget.parse("tls:h:1").get().description, "tls:h:1")
        XCTAssertEqual(DNSName(host: "fleet.test", port: 7000, tls: true).description, "dnstls:fleet.test:7000")
        // An address of a dnstls: name is verified against the name, not the address.
        XCTAssertEqual(DNSName(host: "fleet.test", port: 7000, tls: true).endpoint(address: "10.0.0.7"),
                       .tls(host: "10.0.0.7", port: 7000, verifyName: "fleet.test"))
        XCTAssertEqual(fleet.endpoint(address: "fd00::7"), .tcp(host: "fd00::7", port: 7000))
        for bad in ["tls:host", "tls::1", "tls:h:0", "tls:::1:7000", "dns:fleet", "dns::7000", "dnstls:h:70000",
                    "dns:" + String(repeating: "a", count: 254) + ":1", "dns:a\u{0}:1"] {
            XCTAssertThrowsError(try EndpointTarget.parse(bad).get(), bad)
        }
        XCTAssertThrowsError(try Endpoint.parse("dns:fleet:7000").get(), "a name is not one address")
    }

    func testFirstLookupIsDueAtOnceThenEveryRefresh() {
        var name = DNSResolution(name: fleet, refresh: .milliseconds(30_000), now: at(0))
        XCTAssertTrue(name.isDue(now: at(0)))
        name.lookupStarted(now: at(0))
        XCTAssertFalse(name.isDue(now: at(0)), "one lookup at a time")
        let update = name.lookupSucceeded(["10.0.0.2", "10.0.0.1", "10.0.0.2"], now: at(5))
        XCTAssertEqual(update.added, ["10.0.0.1", "10.0.0.2"], "sorted, duplicates (A records per socket type) merged")
        XCTAssertEqual(update.removed, [])
        XCTAssertNil(update.failure)
        XCTAssertTrue(name.hasResolved)
        XCTAssertEqual(name.due, at(30_005))
        XCTAssertFalse(name.isDue(now: at(30_004)))
        XCTAssertTrue(name.isDue(now: at(30_005)))
    }

    func testTheSetFollowsTheName() {
        var name = DNSResolution(name: fleet, refresh: .milliseconds(1000), now: at(0))
        name.lookupStarted(now: at(0))
        _ = name.lookupSucceeded(["10.0.0.1", "10.0.0.2"], now: at(1))
        name.lookupStarted(now: at(1001))
        let update = name.lookupSucceeded(["10.0.0.2", "10.0.0.3"], now: at(1002))
        XCTAssertEqual(update.added, ["10.0.0.3"])
        XCTAssertEqual(update.removed, ["10.0.0.1"])
        XCTAssertEqual(name.addresses, ["10.0.0.2", "10.0.0.3"])
        name.lookupStarted(now: at(2002))
        XCTAssertEqual(name.lookupSucceeded(["10.0.0.3", "10.0.0.2"], now: at(2003)), DNSResolution.Update(), "nothing changed")
    }

    func testAFailedOrEmptyLookupKeepsTheLastSetAndSaysSoOncePerStreak() {
        var name = DNSResolution(name: fleet, refresh: .milliseconds(30_000), now: at(0))
        name.lookupStarted(now: at(0))
        _ = name.lookupSucceeded(["10.0.0.1", "10.0.0.2"], now: at(1))
        name.lookupStarted(now: at(30_001))
        let failed = name.lookupFailed("Name or service not known", now: at(30_002))
        XCTAssertEqual(failed.failure, "Name or service not known")
        XCTAssertEqual(failed.kept, 2)
        XCTAssertEqual(failed.removed, [], "the last good set stays")
        XCTAssertEqual(name.addresses, ["10.0.0.1", "10.0.0.2"])
        // Retried after a backoff (1 s, then 2 s, ±10 %), not after the 30 s refresh.
        XCTAssertTrue((at(30_902)...at(31_102)).contains(name.due ?? at(0)), "\(String(describing: name.due))")
        name.lookupStarted(now: at(31_002))
        let empty = name.lookupSucceeded([], now: at(31_003))
        XCTAssertNil(empty.failure, "the same outage: no second alert")
        XCTAssertEqual(name.lastError, "the name resolved to no address")
        XCTAssertTrue((at(32_803)...at(33_203)).contains(name.due ?? at(0)), "\(String(describing: name.due))")
        XCTAssertEqual(name.lookupFailures, 2)
        name.lookupStarted(now: at(33_003))
        let back = name.lookupSucceeded(["10.0.0.2"], now: at(33_004))
        XCTAssertTrue(back.recovered)
        XCTAssertEqual(back.removed, ["10.0.0.1"])
        XCTAssertNil(name.lastError)
        XCTAssertEqual(name.due, at(63_004))
    }

    func testEveryAddressFailingBringsTheLookupForwardAtMostOnceASecond() {
        var name = DNSResolution(name: fleet, refresh: .milliseconds(60_000), now: at(0))
        name.lookupStarted(now: at(0))
        _ = name.lookupSucceeded(["10.0.0.1"], now: at(1))
        XCTAssertTrue(name.everyAddressFailed(now: at(400)))
        XCTAssertEqual(name.due, at(1000), "not within a second of the last lookup")
        XCTAssertFalse(name.everyAddressFailed(now: at(500)), "already brought forward")
        name.lookupStarted(now: at(1000))
        XCTAssertFalse(name.everyAddressFailed(now: at(1001)), "a lookup is running")
        _ = name.lookupSucceeded(["10.0.0.1"], now: at(1002))
        XCTAssertTrue(name.everyAddressFailed(now: at(5000)))
        XCTAssertEqual(name.due, at(5000), "long after the last lookup: at once")
    }

    func testRefreshZeroLooksUpOnlyWhenAddressesFail() {
        var name = DNSResolution(name: fleet, refresh: .zero, now: at(0))
        name.lookupStarted(now: at(0))
        _ = name.lookupSucceeded(["10.0.0.1"], now: at(1))
        XCTAssertNil(name.due)
        XCTAssertTrue(name.everyAddressFailed(now: at(2000)))
        XCTAssertEqual(name.due, at(2000))
    }
}
