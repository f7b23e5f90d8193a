import XCTest
@testable import GoxelPoolCore

final class SessionPlacementTests: XCTestCase {
    private func placement(_ names: [String], maxWaiters: Int = 10) -> SessionPlacement {
        var p = SessionPlacement(maxWaiters: maxWaiters)
        for (index, name) in names.enumerated() { XCTAssertEqual(p.addEndpoint(id: index + 1, name: name), []) }
        return p
    }

    private func request(_ key: String? = nil, exclusive: Bool = true) -> SessionPlacement.Request {
        .init(key: key, exclusive: exclusive)
    }

    func testExclusiveSessionsTakeFreeDaemonsThenWaitFIFO() {
        var p = placement(["unix:/a", "unix:/b"])
        guard case (.placed(let first), []) = p.request(SessionID(1), request()),
              case (.placed(let second), []) = p.request(SessionID(2), request()) else { return XCTFail("two free daemons") }
        XCTAssertNotEqual(first, second, "exclusive sessions never share a daemon")
        XCTAssertEqual(p.request(SessionID(3), request()).0, .queued)
        XCTAssertEqual(p.request(SessionID(4), request()).0, .queued)
        XCTAssertEqual(p.waitingCount, 2)
        // The first release serves the oldest waiter, with the daemon just freed.
        XCTAssertEqual(p.release(SessionID(2)), [.place(SessionID(3), endpoint: second)])
        XCTAssertEqual(p.release(SessionID(1)), [.place(SessionID(4), endpoint: first)])
        XCTAssertEqual(p.waitingCount, 0)
    }

    func testWaitQueueIsBoundedAndTimedOutWaitersLeave() {
        var p = placement(["unix:/a"], maxWaiters: 1)
        XCTAssertEqual(p.request(SessionID(1), request()).0, .placed(endpoint: 1))
        XCTAssertEqual(p.request(SessionID(2), request()).0, .queued)
        XCTAssertEqual(p.request(SessionID(3), request()).0, .failed(.busy))
        XCTAssertTrue(p.waiterTimedOut(SessionID(2)))
        XCTAssertFalse(p.waiterTimedOut(SessionID(2)), "already gone")
        XCTAssertEqual(p.release(SessionID(1)), [], "nobody waits any more")
        XCTAssertEqual(p.request(SessionID(4), request()).0, .placed(endpoint: 1))
    }

    func testSharedSessionsShareButNeverWithAnExclusiveOne() {
        var p = placement(["unix:/a"])
        XCTAssertEqual(p.request(SessionID(1), request(exclusive: false)).0, .placed(endpoint: 1))
        XCTAssertEqual(p.request(SessionID(2), request(exclusive: false)).0, .placed(endpoint: 1))
        XCTAssertEqual(p.request(SessionID(3), request(exclusive: true)).0, .queued)
        // A shared request arriving after the exclusive waiter may still share (it takes nothing
        // the exclusive one can use: the daemon is not free for it anyway).
        XCTAssertEqual(p.request(SessionID(4), request(exclusive: false)).0, .placed(endpoint: 1))
        XCTAssertEqual(p.release(SessionID(1)), [])
        XCTAssertEqual(p.release(SessionID(2)), [])
        XCTAssertEqual(p.release(SessionID(4)), [.place(SessionID(3), endpoint: 1)])
        XCTAssertEqual(p.request(SessionID(5), request(exclusive: false)).0, .queued, "the exclusive holder keeps shared ones out")
    }

    func testFIFOAcrossDifferentRequestsGivesADaemonToTheOldestWaiterThatCanUseIt() {
        var p = placement(["unix:/a", "unix:/b"])
        let keyA = key(for: "unix:/a", among: ["unix:/a", "unix:/b"])
        XCTAssertEqual(p.request(SessionID(1), request(keyA)).0, .placed(endpoint: 1))
        XCTAssertEqual(p.request(SessionID(2), request()).0, .placed(endpoint: 2))
        XCTAssertEqual(p.request(SessionID(3), request()).0, .queued)       // any daemon
        XCTAssertEqual(p.request(SessionID(4), request(keyA)).0, .queued)   // only /a
        // /a frees: the older waiter (3) can use it and gets it; 4 keeps waiting for /a.
        XCTAssertEqual(p.release(SessionID(1)), [.place(SessionID(3), endpoint: 1)])
        // /b frees: 4 cannot use it (its key means /a).
        XCTAssertEqual(p.release(SessionID(2)), [])
        XCTAssertEqual(p.release(SessionID(3)), [.place(SessionID(4), endpoint: 1)])
    }

    func testKeysAreStableAndMoveOnlyWhenTheirEndpointGoes() {
        let names = (1...5).map { "unix:/tmp/d\($0).sock" }
        let keys = (0..<400).map { "user-\($0)" }
        func targets(_ endpoints: [String]) -> [String: String] {
            var out: [String: String] = [:]
            for key in keys { out[key] = endpoints.max { SessionPlacement.weight(key: key, endpoint: $0) < SessionPlacement.weight(key: key, endpoint: $1) } }
            return out
        }
        let all = targets(names)
        XCTAssertEqual(Set(all.values).count, 5)
        for name in names { XCTAssertGreaterThan(all.values.filter { $0 == name }.count, 40, "spread: \(name)") }
        // Removing one endpoint moves only the keys it had.
        let without = targets(names.filter { $0 != names[2] })
        for key in keys where all[key] != names[2] { XCTAssertEqual(without[key], all[key], key) }
        // The hash is a pure function of its inputs (the same in every process).
        XCTAssertEqual(SessionPlacement.weight(key: "k", endpoint: "unix:/x"), SessionPlacement.weight(key: "k", endpoint: "unix:/x"))
        // Pinned: a change of the hash would move every key of every deployment on upgrade.
        XCTAssertEqual(SessionPlacement.weight(key: "abc", endpoint: "tcp:10.0.0.1:7000"), 0x0658_1a6a_a398_36c8, "FNV-1a + SplitMix64, computed independently")
    }

    func testKeyedSessionsGoToTheirEndpointAndWaitForIt() {
        let names = ["unix:/a", "unix:/b", "unix:/c"]
        var p = placement(names)
        let k = key(for: "unix:/b", among: names)
        XCTAssertEqual(p.request(SessionID(1), request(k)).0, .placed(endpoint: 2))
        XCTAssertEqual(p.request(SessionID(2), request(k)).0, .queued, "same key, exclusive: waits for the same daemon")
        XCTAssertEqual(p.request(SessionID(3), request(k, exclusive: false)).0, .queued)
        XCTAssertEqual(p.release(SessionID(1)), [.place(SessionID(2), endpoint: 2)])
    }

    func testUnavailableEndpointsTakeNoNewSessionsAndKeysFollowTheAvailableOnes() {
        let names = ["unix:/a", "unix:/b"]
        var p = placement(names)
        let k = key(for: "unix:/a", among: names)
        XCTAssertEqual(p.setAvailable(id: 1, false), [])
        XCTAssertEqual(p.request(SessionID(1), request(k)).0, .placed(endpoint: 2), "rendezvous over the available endpoints")
        XCTAssertEqual(p.request(SessionID(2), request()).0, .queued)
        XCTAssertEqual(p.setAvailable(id: 1, true), [.place(SessionID(2), endpoint: 1)])
    }

    func testRemovedEndpointStrandsItsSessionsAndRelocationPicksAnother() {
        var p = placement(["unix:/a", "unix:/b"])
        XCTAssertEqual(p.request(SessionID(1), request()).0, .placed(endpoint: 1))
        let (stranded, actions) = p.removeEndpoint(id: 1)
        XCTAssertEqual(stranded, [SessionID(1)])
        XCTAssertEqual(actions, [])
        XCTAssertNotNil(p.member(1), "lingers while a session is on it")
        let (target, moved) = p.relocate(SessionID(1), request())
        XCTAssertEqual(target, 2)
        XCTAssertEqual(moved, [])
        XCTAssertNil(p.member(1), "gone once its last session left")
        XCTAssertEqual(p.endpoint(of: SessionID(1)), 2)
        XCTAssertEqual(p.relocate(SessionID(1), request()).endpoint, nil, "nowhere else to go: it stays")
        XCTAssertEqual(p.endpoint(of: SessionID(1)), 2)
    }

    func testCloseFailsEveryWaiter() {
        var p = placement(["unix:/a"])
        _ = p.request(SessionID(1), request())
        _ = p.request(SessionID(2), request())
        XCTAssertEqual(p.close(), [.fail(SessionID(2), .closed)])
        XCTAssertEqual(p.request(SessionID(3), request()).0, .failed(.closed))
    }

    /// A key whose rendezvous winner among `names` is `wanted`.
    private func key(for wanted: String, among names: [String]) -> String {
        for n in 0..<10_000 {
            let key = "k\(n)"
            if names.max(by: { SessionPlacement.weight(key: key, endpoint: $0) < SessionPlacement.weight(key: key, endpoint: $1) }) == wanted { return key }
        }
        XCTFail("no key found")
        return ""
    }
}

final class DurableJournalTests: XCTestCase {
    private let t0 = Instant.milliseconds(1_000)

    func testCheckpointIsDueByCountByAgeAndAfterCreateProject() {
        var j = DurableJournal<Int>(policy: .init(every: 3, interval: .milliseconds(500), maxEntries: 10))
        XCTAssertFalse(j.checkpointDue(now: t0), "nothing journaled")
        j.append(1, method: "goxel.add_voxel", now: t0)
        j.append(2, method: "goxel.add_voxel", now: t0 + .milliseconds(10))
        XCTAssertFalse(j.checkpointDue(now: t0 + .milliseconds(20)))
        XCTAssertEqual(j.nextCheckpointByAge(), t0 + .milliseconds(500))
        XCTAssertTrue(j.checkpointDue(now: t0 + .milliseconds(500)), "by age of the oldest entry")
        j.append(3, method: "goxel.add_voxel", now: t0 + .milliseconds(30))
        XCTAssertTrue(j.checkpointDue(now: t0 + .milliseconds(30)), "by count")
        j.checkpointSucceeded(slot: j.nextSlot, folded: 3, now: t0 + .milliseconds(40))
        XCTAssertEqual(j.count, 0)
        XCTAssertEqual(j.checkpoint, .init(slot: 0, at: t0 + .milliseconds(40)))
        j.append(4, method: "goxel.create_project", now: t0 + .milliseconds(50))
        XCTAssertTrue(j.checkpointDue(now: t0 + .milliseconds(50)), "create_project is folded at once")
    }

    func testSlotsAlternateSoAFailedCheckpointNeverOverwritesTheLastGoodOne() {
        var j = DurableJournal<Int>(policy: .init(every: 1, interval: .zero, maxEntries: 10))
        XCTAssertEqual(j.nextSlot, 0)
        j.checkpointSucceeded(slot: 0, folded: 0, now: t0)
        XCTAssertEqual(j.nextSlot, 1)
        j.append(1, method: "m", now: t0)
        j.checkpointFailed(now: t0)
        XCTAssertEqual(j.nextSlot, 1, "still the other file")
        XCTAssertEqual(j.checkpoint?.slot, 0)
        XCTAssertEqual(j.count, 1, "the journal stays until a checkpoint holds it")
        j.checkpointSucceeded(slot: 1, folded: 1, now: t0 + .milliseconds(5))
        XCTAssertEqual(j.nextSlot, 0)
    }

    func testFailedCheckpointsBackOffAndTheJournalIsBounded() {
        var j = DurableJournal<Int>(policy: .init(every: 2, interval: .zero, maxEntries: 4))
        for n in 0..<2 { j.append(n, method: "m", now: t0) }
        XCTAssertTrue(j.checkpointDue(now: t0))
        j.checkpointFailed(now: t0)
        XCTAssertFalse(j.checkpointDue(now: t0 + .milliseconds(999)), "waits 1 s")
        XCTAssertTrue(j.checkpointDue(now: t0 + .milliseconds(1000)))
        j.checkpointFailed(now: t0 + .milliseconds(1000))
        XCTAssertFalse(j.checkpointDue(now: t0 + .milliseconds(2999)), "then 2 s")
        XCTAssertTrue(j.checkpointDue(now: t0 + .milliseconds(3000)))
        XCTAssertEqual(j.checkpointFailures, 2)
        XCTAssertFalse(j.isFull)
        for n in 2..<4 { j.append(n, method: "m", now: t0) }
        XCTAssertTrue(j.isFull)
        j.checkpointSucceeded(slot: 0, folded: 4, now: t0 + .milliseconds(3000))
        XCTAssertFalse(j.isFull)
        XCTAssertFalse(j.checkpointDue(now: t0 + .milliseconds(3000)))
    }

    func testAnUncertainOutcomeAsksForACheckpointEvenWithAnEmptyJournal() {
        var j = DurableJournal<Int>(policy: .init(every: 100, interval: .zero, maxEntries: 1000))
        j.requestCheckpoint()
        XCTAssertTrue(j.checkpointDue(now: t0))
        j.checkpointSucceeded(slot: 0, folded: 0, now: t0)
        XCTAssertFalse(j.checkpointDue(now: t0))
    }
}

final class SessionOptionsTests: XCTestCase {
    func testDefaultsAndEveryKey() throws {
        XCTAssertEqual(try SessionOptions.parse(.null), SessionOptions())
        let o = try SessionOptions.parse(["key": "u1", "exclusive": true, "durable": true, "checkpoint_dir": "/var/tmp/cp",
                                          "checkpoint_every": 50, "checkpoint_interval_ms": 0, "max_journal_entries": 500,
                                          "restore_timeout_ms": 2000])
        XCTAssertEqual(o.key, "u1")
        XCTAssertTrue(o.durable)
        XCTAssertEqual(o.checkpointDir, "/var/tmp/cp")
        XCTAssertEqual(o.checkpointEvery, 50)
        XCTAssertEqual(o.checkpointIntervalMs, 0)
        XCTAssertEqual(o.maxJournalEntries, 500)
        XCTAssertEqual(o.restoreTimeoutMs, 2000)
    }

    func testRejectsWhatCannotWork() {
        func message(_ value: ConfigValue, _ fallback: String? = nil) -> String {
            do { _ = try SessionOptions.parse(value, defaultCheckpointDir: fallback); return "accepted" } catch { return error.description }
        }
        XCTAssertEqual(message(["durable": true]), "checkpoint_dir: a durable session needs a checkpoint_dir (a directory the daemon can write)")
        XCTAssertEqual(message(["durable": true], "/run/x"), "accepted", "managed daemons give a default")
        XCTAssertEqual(message(["durable": true, "exclusive": false, "checkpoint_dir": "/tmp"]),
                       "exclusive: a durable session must be exclusive (a daemon holds one document for all its connections)")
        XCTAssertEqual(message(["checkpoint_dir": "relative/dir"]), "checkpoint_dir: must be an absolute path, got \"relative/dir\"")
        XCTAssertEqual(message(["nope": 1]), "nope: unknown key")
        XCTAssertEqual(message(["key": 5]), "key: expected a string, got integer")
        XCTAssertEqual(message(["key": ""]), "key: must not be empty")
        XCTAssertEqual(message(["exclusive": "yes"]), "exclusive: expected a boolean, got string")
        XCTAssertEqual(message(["checkpoint_every": 0]), "checkpoint_every: must be between 1 and 10000000, got 0")
        XCTAssertEqual(message(["restore_timeout_ms": -1]), "restore_timeout_ms: must be between 0 and 2147483647, got -1")
        XCTAssertEqual(message(["durable": true, "checkpoint_dir": "/tmp", "checkpoint_every": 10, "max_journal_entries": 5]),
                       "checkpoint_every: 10 is greater than max_journal_entries (5)")
        XCTAssertEqual(message(.array([])), "options: expected an object or NULL, got array")
        XCTAssertEqual(message(.object([ConfigMember("key", "a"), ConfigMember("key", "b")])), "key: duplicate key")
    }
}
