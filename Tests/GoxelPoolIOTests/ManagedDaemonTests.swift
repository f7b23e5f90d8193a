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
        let commandJSON = "[" + argv.map(jsonString).joined(separator: ", ") + "]"
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

    // MARK: Crash and recovery

    func testKill9OfAManagedDaemonIsRecoveredAndIdempotentCallsDoNotFail() throws {
        let recorder = EventRecorder()
        let client = try managedClient(nil, #""pool": {"min_connections": 2, "max_connections": 4}"#)
        defer { client.close(drain: .zero) }
        recorder.listen(client)
        XCTAssertEqual(client.run("ping").status, .ok)
        let victim = try XCTUnwrap(daemons(client).first?.pid)
        let socket = try XCTUnwrap(daemons(client).first?.endpoint).dropFirst(5)
        let failures = Counter(), calls = Counter()
        let stop = Flag()
        let threads = (0..<4).map { thread in
            LibraryThread {
                var i = 0
                while !stop.isSet {
                    let outcome = client.run("goxel.get_voxel", "[\(i % 10), \(thread), 0]")
                    calls.add()
                    if outcome.status != .ok { failures.add(); print("failed:", outcome) }
                    i += 1
                }
            }
        }
        usleep(300_000)
        XCTAssertEqual(kill(victim, SIGKILL), 0)
        XCTAssertTrue(eventually(5) { self.daemons(client).contains { $0.state == .ready && $0.pid != victim } })
        usleep(300_000)
        stop.set()
        for thread in threads { thread.join() }
        XCTAssertEqual(failures.value, 0, "of \(calls.value) idempotent calls across the kill")
        XCTAssertGreaterThan(calls.value, 100)
        print("managed kill -9: \(calls.value) calls from 4 threads across the kill, \(failures.value) failed")
        // The library reaped it (no zombie), with its real status, and removed its socket.
        XCTAssertFalse(processExists(victim))
        XCTAssertNotEqual(access(String(socket), F_OK), 0)
        XCTAssertTrue(eventually(2) { !recorder.all("daemon_crashed").isEmpty })
        let exited = recorder.all("daemon_exited")
        XCTAssertTrue(exited.contains { $0.contains("\"signal\":9") && $0.contains("\"expected\":false") && $0.contains("\"pid\":\(victim)") }, "\(exited)")
        let spawn = try XCTUnwrap(client.snapshot().daemons)
        XCTAssertEqual(spawn.slots.first?.restarts, 1)
        XCTAssertEqual(spawn.slots.first?.crashes, 1)
        // Writes work again on the restarted daemon.
        XCTAssertEqual(client.run("goxel.add_voxel", "[1, 2, 3, 255, 0, 0, 255, 0]").status, .ok)
    }

    // MARK: Recycling

    func testRecyclingAfterMaxConnectionsPerProcessFailsNoCall() throws {
        let recorder = EventRecorder()
        // refd refuses (accepts and closes) from its 13th connection, as the real daemon does
        // from its 257th: a library that went past the limit would see failed opens.
        let client = try managedClient([refd, "--socket", "{socket}", "--max-lifetime-connections", "12"],
                                       spawnExtra: #""max_connections_per_process": 12"#,
                                       #""pool": {"min_connections": 1, "max_connections": 2, "max_requests_per_connection": 3}"#)
        defer { client.close(drain: .zero) }
        recorder.listen(client)
        XCTAssertEqual(client.snapshot().daemons?.recycleThreshold, 8)
        let failures = Counter()
        concurrently(4) { thread in
            for i in 0..<150 {
                // Writes (never retried) and reads.
                let outcome = i % 2 == 0 ? client.run("goxel.add_voxel", "[\(i), \(thread), 0, 255, 0, 0, 255, 0]")
                                         : client.run("goxel.get_voxel", "[\(i), \(thread), 0]")
                if outcome.status != .ok { failures.add(); print("failed:", outcome) }
            }
        }
        XCTAssertEqual(failures.value, 0, "no call fails because of a recycle")
        let recycles = client.snapshot().daemons?.slots.first?.recycles ?? 0
        print("managed recycling: 600 calls (300 writes) from 4 threads, \(failures.value) failed, \(recycles) recycles")
        XCTAssertGreaterThanOrEqual(recycles, 3, "driven past several recycles")
        XCTAssertTrue(eventually(5) { recorder.all("daemon_retired").count >= recycles - 1 })
        XCTAssertTrue(recorder.all("daemon_recycling").allSatisfy { $0.contains("\"reason\":\"connections\"") })
        XCTAssertEqual(recorder.logLines.filter { $0.contains("failed to open") }, [], "never past a daemon's limit")
        // Every retired daemon is gone (reaped), and nothing of theirs is left in the directory.
        let live = Set(daemons(client).compactMap(\.pid))
        for text in recorder.all("daemon_retired") {
            guard let pid = RefDaemon.intField("pid", in: text) else { continue }
            XCTAssertTrue(eventually(3) { !processExists(Int32(pid)) || live.contains(Int32(pid)) }, "retired pid \(pid) still exists")
        }
    }

    func testAgeLimitRecyclesWithoutFailingACall() throws {
        let recorder = EventRecorder()
        let client = try managedClient(spawnExtra: #""max_age_ms": 1000"#, #""pool": {"min_connections": 1, "max_connections": 2}"#)
        defer { client.close(drain: .zero) }
        recorder.listen(client)
        var failures = 0
        let until = Clock.now() + .milliseconds(2600)
        while Clock.now() < until {
            if client.run("goxel.add_voxel", "[1, 1, 1, 255, 0, 0, 255, 0]").status != .ok { failures += 1 }
            usleep(5000)
        }
        XCTAssertEqual(failures, 0)
        // The second recycle comes after both daemons' start-up plus 0.9-1 s each: on a loaded
        // machine that may be after the loop; the event then comes through the event thread.
        XCTAssertTrue(eventually(5) { recorder.all("daemon_recycling").count >= 2 }, "\(recorder.all("daemon_recycling"))")
        let recycling = recorder.all("daemon_recycling")
        XCTAssertTrue(recycling.allSatisfy { $0.contains("\"reason\":\"age\"") })
    }

    // MARK: Start failures

    func testCommandThatDoesNotExistFailsCallsWithTheReasonAndIsRetriedWithBackoff() throws {
        let recorder = EventRecorder()
        let client = try managedClient(["/nonexistent/goxel-daemon", "--socket", "{socket}"])
        defer { client.close(drain: .zero) }
        recorder.listen(client)
        let started = Clock.now()
        let outcome = client.run("ping", timeoutMs: 2000)
        let failedAfter = (Clock.now() - started).milliseconds
        XCTAssertEqual(outcome.status, .connect, outcome.message)
        XCTAssertLessThan(failedAfter, 1000, "fails fast once the start failed")
        XCTAssertTrue(outcome.message.contains("/nonexistent/goxel-daemon"), outcome.message)
        XCTAssertTrue(outcome.message.contains("No such file or directory"), outcome.message)
        // No busy loop: backoff 100 ms x1.6 (±20 %) gives about 6 attempts in 1.5 s, not thousands.
        usleep(1_500_000)
        // One alert per failed start, in order, numbered by consecutive_failures. The first start
        // is tried inside the client's init, so its alert may come before listen(); alerts reach
        // the listener on the event thread, so the last one is waited for.
        func numbers() -> [Int64] {
            recorder.all("daemon_start_failed").map { text in
                let event = json(text)
                defer { release(event) }
                return json_integer_value(json_object_get(UnsafeMutablePointer(event), "consecutive_failures"))
            }
        }
        var attempts = 0
        XCTAssertTrue(eventually(3) {
            attempts = client.snapshot().daemons?.slots.first?.startFailures ?? 0
            return numbers().last == Int64(attempts)
        }, "alerts numbered \(numbers()) for \(attempts) failed starts")
        XCTAssertGreaterThanOrEqual(attempts, 3)
        XCTAssertLessThanOrEqual(attempts, 9)
        let alerted = numbers()
        let first = alerted.first ?? 0
        XCTAssertTrue(first == 1 || first == 2, "the first alert is the first or second start: \(alerted)")
        XCTAssertEqual(alerted, Array(first...max(first, Int64(attempts))), "one alert per failed start")
        print("managed missing command: \(attempts) start attempts in 1.5 s; the call failed in \(Int(failedAfter)) ms")
        // A bare name is looked up in PATH.
        let byName = try managedClient(["no-such-goxel-daemon-\(getpid())", "--socket", "{socket}"])
        defer { byName.close(drain: .zero) }
        let message = byName.run("ping").message
        XCTAssertTrue(message.contains("command not found: no-such-goxel-daemon"), message)
    }

    func testDaemonThatExitsAtOnceIsReportedWithItsStatusAndOutput() throws {
        let recorder = EventRecorder()
        let script = "echo starting up; echo 'fatal: cannot open display' >&2; exit 3"
        let client = try managedClient(["/bin/sh", "-c", script, "{socket}"])
        defer { client.close(drain: .zero) }
        recorder.listen(client)
        let outcome = client.run("ping", timeoutMs: 2000)
        XCTAssertEqual(outcome.status, .connect)
        print("managed exit at once: \(outcome.message)")
        for part in ["/bin/sh -c", "exit status 3", "\"starting up\"", "\"fatal: cannot open display\""] {
            XCTAssertTrue(outcome.message.contains(part), "\(part) not in: \(outcome.message)")
        }
        XCTAssertTrue(eventually(2) { !recorder.all("daemon_start_failed").isEmpty })
        let alert = recorder.all("daemon_start_failed")[0]
        XCTAssertTrue(alert.contains("\"exit_status\":3") && alert.contains("fatal: cannot open display"), alert)
        usleep(1_000_000)
        let attempts = client.snapshot().daemons?.slots.first?.startFailures ?? 0
        XCTAssertGreaterThanOrEqual(attempts, 2)
        XCTAssertLessThanOrEqual(attempts, 8, "backoff, no busy loop")
        // Output to /dev/null: the report says so.
        let quiet = try managedClient(["/bin/sh", "-c", script, "{socket}"], spawnExtra: #""output": "null""#)
        defer { quiet.close(drain: .zero) }
        let silent = quiet.run("ping", timeoutMs: 2000)
        XCTAssertTrue(silent.message.contains("exit status 3") && silent.message.contains("/dev/null"), silent.message)
        XCTAssertFalse(silent.message.contains("its last output"), silent.message)
    }

    func testDaemonThatNeverAnswersIsKilledAtTheStartTimeout() throws {
        let client = try managedClient(["/bin/sh", "-c", "exec sleep 30", "{socket}"], spawnExtra: #""start_timeout_ms": 300"#)
        defer { client.close(drain: .zero) }
        XCTAssertTrue(eventually(2) { self.daemons(client).first?.pid != nil })
        let pid = try XCTUnwrap(daemons(client).first?.pid)
        let outcome = client.run("ping", timeoutMs: 3000)
        XCTAssertEqual(outcome.status, .connect)
        XCTAssertTrue(outcome.message.contains("did not answer ping within 300 ms"), outcome.message)
        XCTAssertTrue(eventually(2) { !processExists(pid) }, "killed and reaped")
    }

    // MARK: The child's descriptors and environment

    func testNoDescriptorOfTheHostLeaksIntoTheDaemon() throws {
        let marker = "/tmp/gxp-\(getpid())-leak-marker"
        let created = open(marker, O_CREAT | O_WRONLY, 0o600)
        defer { close(created); unlink(marker) }
        // Opened without O_CLOEXEC, as a careless host would.
        let leaky = open(marker, O_RDONLY)
        XCTAssertGreaterThanOrEqual(leaky, 3)
        defer { close(leaky) }
        XCTAssertEqual(fcntl(leaky, F_GETFD) & FD_CLOEXEC, 0)
        // Control: a child started by plain posix_spawn inherits it (so the check can fail).
        var control: pid_t = 0
        let argv = CStringArray(["/bin/sleep", "30"])
        XCTAssertEqual(posix_spawn(&control, "/bin/sleep", nil, nil, argv.pointer, environ), 0)
        defer { kill(control, SIGKILL); var status: Int32 = 0; waitpid(control, &status, 0) }
        XCTAssertTrue(descriptors(of: control).values.contains(marker), "control: \(descriptors(of: control))")

        // A daemon that never answers stays in "starting" for a while: look at what it holds.
        let client = try managedClient(["/bin/sh", "-c", "exec sleep 30", "{socket}"], spawnExtra: #""start_timeout_ms": 20000"#)
        defer { client.close(drain: .zero) }
        XCTAssertTrue(eventually(2) { self.daemons(client).first?.pid != nil })
        let pid = try XCTUnwrap(daemons(client).first?.pid)
        XCTAssertTrue(eventually(2) { self.commandName(pid) == "sleep" })
        let held = descriptors(of: pid)
        XCTAssertEqual(held.keys.sorted(), [0, 1, 2], "\(held)")
        XCTAssertEqual(held[0], "/dev/null")
        XCTAssertTrue(held[1]?.hasPrefix("pipe:") ?? false, "\(held)")
        XCTAssertFalse(held.values.contains(marker))
        // Its own process group, not the host's.
        XCTAssertEqual(getpgid(pid), pid)
        XCTAssertNotEqual(getpgid(pid), getpgrp())
        // Its parent is its reaper, the library's child, which holds nothing of the host's either.
        let reaper = parentPID(of: pid)
        XCTAssertNotEqual(reaper, getpid())
        XCTAssertEqual(parentPID(of: reaper), getpid())
        XCTAssertTrue(childProcesses().contains(reaper))
        XCTAssertFalse(childProcesses().contains(pid), "the daemon is not the host's child")
        let reaperHolds = descriptors(of: reaper)
        XCTAssertFalse(reaperHolds.isEmpty)
        XCTAssertFalse(reaperHolds.values.contains(marker), "\(reaperHolds)")
        XCTAssertTrue(reaperHolds.values.allSatisfy { $0.hasPrefix("pipe:") || $0 == "/dev/null" }, "\(reaperHolds)")
    }

    func parentPID(of pid: Int32) -> Int32 {
        guard let file = fopen("/proc/\(pid)/stat", "r") else { return -1 }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 1024)
        guard fgets(&buffer, 1024, file) != nil else { return -1 }
        // "pid (comm) state ppid ...": comm may hold spaces, so read after the last ')'.
        let line = String(cString: buffer)
        guard let close = line.lastIndex(of: ")") else { return -1 }
        let fields = line[line.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) ?? -1 : -1
    }

    func testEnvironmentIsInheritedWithTheConfiguredVariablesAdded() throws {
        setenv("GXP_INHERITED", "from-host", 1)
        setenv("GXP_REPLACED", "old", 1)
        defer { unsetenv("GXP_INHERITED"); unsetenv("GXP_REPLACED") }
        let script = #"exec \#(refd) --socket "$0""#
        let client = try managedClient(["/bin/sh", "-c", script, "{socket}"],
                                       spawnExtra: #""env": {"GXP_REPLACED": "new", "GXP_ADDED": "added", "GXP_SOCKET": "{socket}"}"#)
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("ping").status, .ok)
        let daemon = try XCTUnwrap(daemons(client).first)
        let socket = String(daemon.endpoint.dropFirst(5))
        // The daemon's own environment (the shell exec'd it), not a line it printed: a printed line
        // may come before a listener exists, and is then not delivered.
        let environment = self.environment(of: try XCTUnwrap(daemon.pid))
        XCTAssertEqual(environment["GXP_INHERITED"], "from-host")
        XCTAssertEqual(environment["GXP_REPLACED"], "new")
        XCTAssertEqual(environment["GXP_ADDED"], "added")
        XCTAssertEqual(environment["GXP_SOCKET"], socket)
    }

    /// /proc/<pid>/environ: NAME=value strings separated by NUL.
    func environment(of pid: Int32) -> [String: String] {
        guard let file = fopen("/proc/\(pid)/environ", "r") else { return [:] }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let got = fread(&chunk, 1, chunk.count, file)
            if got <= 0 { break }
            bytes += chunk[0..<got]
        }
        var out: [String: String] = [:]
        for entry in bytes.split(separator: 0) {
            let text = String(decoding: entry, as: UTF8.self)
            guard let equals = text.firstIndex(of: "=") else { continue }
            out[String(text[..<equals])] = String(text[text.index(after: equals)...])
        }
        return out
    }

    // MARK: The C API

    func testManagedEndpointsAreNotRemovableByTheCaller() throws {
        let client = try managedClient()
        defer { client.close(drain: .zero) }
        XCTAssertEqual(client.run("ping").status, .ok)
        let endpoint = try XCTUnwrap(daemons(client).first?.endpoint)
        let failure = client.removeEndpoint(try XCTUnwrap(try? Endpoint.parse(endpoint).get()), drain: .zero)
        XCTAssertEqual(failure?.status, .invalid)
        XCTAssertEqual(client.run("ping").status, .ok)
    }

    func descriptors(of pid: Int32) -> [Int: String] {
        var out: [Int: String] = [:]
        guard let dir = opendir("/proc/\(pid)/fd") else { return [:] }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let fd = Int(name) else { continue }
            var target = [CChar](repeating: 0, count: 4096)
            let n = readlink("/proc/\(pid)/fd/\(name)", &target, target.count - 1)
            out[fd] = n > 0 ? String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        }
        return out
    }

    func commandName(_ pid: Int32) -> String {
        guard let file = fopen("/proc/\(pid)/comm", "r") else { return "" }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 64)
        guard fgets(&buffer, 64, file) != nil else { return "" }
        return String(cString: buffer).trimmingCharacters(in: .whitespacesAndNewlines)
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

/// `text` as a JSON string literal.
func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
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
