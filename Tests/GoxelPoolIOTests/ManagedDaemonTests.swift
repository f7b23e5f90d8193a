import CJansson
import Glibc
import GoxelPoolCore
import XCTest
@testable import GoxelPoolIO

/// Managed daemons (spawn) against real goxel-refd processes started by the library itself.
final class ManagedDaemonTests: XCTestCase {
    var refd = ""

    override func setUpWithError() throws {
        refd = try RefDaemon.locateBinary()
    }

    /// A client whose daemons run `command` (goxel-refd by default); `overrides` are more members
    /// of the configuration, `spawnExtra` more members of its spawn section.
    func managedClient(_ command: [String]? = nil, spawnExtra: String = "", _ overrides: String = "") throws -> MultiPoolClient {
        let argv = command ?? [refd, "--socket", "{socket}"]
        let commandJSON = "[" + argv.map { "\"\($0)\"" }.joined(separator: ", ") + "]"
        let extra = spawnExtra.isEmpty ? "" : ", " + spawnExtra
        let more = overrides.isEmpty ? "" : ", " + overrides
        let text = #"{"timeout_ms": 3000, "log_level": "debug", "reconnect": {"initial_backoff_ms": 100, "max_backoff_ms": 1000}, "spawn": {"command": \#(commandJSON)\#(extra)}\#(more)}"#
        let value = json(text)
        defer { release(value) }
        let configuration = try ClientConfiguration.parse(json: UnsafePointer(UnsafeMutablePointer(value)))
        return MultiPoolClient(configuration: configuration, endpoints: configuration.effectiveEndpoints)
    }

    func daemons(_ client: MultiPoolClient) -> [DaemonSupervisor.DaemonInfo] { client.snapshot().daemons?.daemons ?? [] }

    func testStartCallsAndNothingLeftAfterClose() throws {
        let recorder = EventRecorder()
        let client = try managedClient(spawnExtra: #""instances": 2"#)
        recorder.listen(client)
        // The first call is made at once: it waits for a daemon to answer.
        XCTAssertEqual(client.run("echo", #"["hello"]"#), Outcome(status: .ok, body: #"["hello"]"#))
        XCTAssertTrue(eventually(5) { self.daemons(client).filter { $0.state == .ready }.count == 2 })
        let running = daemons(client)
        let directory = try XCTUnwrap(client.snapshot().daemons?.directory)
        var info = stat()
        XCTAssertEqual(stat(directory, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o700, "the private directory is the user's alone")
        for daemon in running {
            let pid = try XCTUnwrap(daemon.pid)
            XCTAssertTrue(processExists(pid))
            XCTAssertTrue(daemon.endpoint.hasPrefix("unix:" + directory + "/"), daemon.endpoint)
            XCTAssertGreaterThanOrEqual(daemon.lifetimeConnections, 1)
        }
        concurrently(4) { thread in
            for i in 0..<50 { XCTAssertEqual(client.run("goxel.get_voxel", "[\(i), \(thread), 0]").status, .ok) }
        }
        // Both daemons took calls.
        let routed = client.snapshot().endpoints.map { $0.balancer?.calls ?? 0 }
        XCTAssertEqual(routed.count, 2)
        XCTAssertTrue(routed.allSatisfy { $0 > 0 }, "\(routed)")
        XCTAssertTrue(eventually(2) { recorder.types(.daemon).filter { $0 == "daemon_started" }.count == 2 }, "\(recorder.types(.daemon))")
        XCTAssertTrue(recorder.logLines.contains { $0.contains("goxel-refd listening on") }, "the daemon's stdout is a log event")

        client.close(drain: .milliseconds(1000))
        XCTAssertEqual(recorder.types(.daemon).filter { $0 == "daemon_exited" }.count, 2)
        // No child, no zombie (a zombie still has /proc/PID), no socket, no directory.
        for daemon in running { XCTAssertFalse(processExists(daemon.pid ?? 0), "pid \(daemon.pid ?? 0) still exists") }
        XCTAssertNotEqual(access(directory, F_OK), 0, "\(directory) is still there")
        XCTAssertEqual(childProcesses(), [])
        XCTAssertEqual(client.run("ping").status, .closed)
    }
}

/// Records events of a client for assertions (listener thread → test thread).
final class EventRecorder: @unchecked Sendable {
    private let lock = PthreadMutex()
    private var events: [(kind: String, type: String, text: String)] = []

    func listen(_ client: MultiPoolClient, kinds: EventKind = .all) {
        _ = client.events.add(kinds: kinds) { [self] event in
            let kind = json_object_get(event, "kind").flatMap { json_string_value($0) }.map { String(cString: $0) } ?? ""
            let type = json_object_get(event, "type").flatMap { json_string_value($0) }.map { String(cString: $0) } ?? ""
            let text = dump(OpaquePointer(event))
            lock.withLock { events.append((kind, type, text)) }
        }
    }

    func types(_ kind: EventKind) -> [String] {
        lock.withLock { events.filter { $0.kind == kind.jsonName }.map(\.type) }
    }

    func all(_ type: String) -> [String] { lock.withLock { events.filter { $0.type == type }.map(\.text) } }

    var logLines: [String] { lock.withLock { events.filter { $0.kind == "log" }.map(\.text) } }
}

extension EventKind {
    var jsonName: String {
        switch self {
        case .alert: "alert"
        case .daemon: "daemon"
        case .log: "log"
        default: "other"
        }
    }
}

/// True while /proc/PID exists (a zombie included).
func processExists(_ pid: Int32) -> Bool { pid > 0 && access("/proc/\(pid)", F_OK) == 0 }

/// This process's children, from /proc/self/task/*/children.
func childProcesses() -> [Int32] {
    var children: [Int32] = []
    guard let dir = opendir("/proc/self/task") else { return [] }
    defer { closedir(dir) }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard Int(name) != nil, let file = fopen("/proc/self/task/\(name)/children", "r") else { continue }
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, Int32(buffer.count), file) != nil {
            children += String(cString: buffer).split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        fclose(file)
    }
    return children
}
