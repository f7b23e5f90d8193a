import CJansson
import Glibc
import GoxelPoolCore
import XCTest
@testable import GoxelPoolIO

/// The request envelope is constant text around what jansson writes (the method as a JSON string,
/// the params): what the daemon reads back must be exactly what the caller gave, escapes and all.
final class RequestEncodingTests: XCTestCase {
    func testMethodsAndParamsReachTheDaemonIntact() throws {
        let daemon = try RefDaemon()
        defer { daemon.stop() }
        let client = try PoolClient.forTest(daemon.socketPath, #""pool": {"min_connections": 1, "max_connections": 1}"#)
        defer { client.close(drain: .zero) }
        // The daemon names an unknown method in its error: the name made the round trip.
        for method in [#"with "quotes" and \backslash"#, "tab\there", "ünïcødé ✓ 🧊", "x", String(repeating: "m", count: 300)] {
            let outcome = client.run(method)
            XCTAssertEqual(outcome.status, CallStatus.rpc, method)
            let error = json(outcome.body)
            defer { release(error) }
            let message = json_object_get(UnsafeMutablePointer(error), "message").flatMap { json_string_value($0) }.map { String(cString: $0) }
            XCTAssertEqual(message, "Method not found: " + method)
        }
        // Params of every shape come back from echo unchanged (repeating the method exercises the
        // per-connection cache of its encoding).
        for params in [#"[1,-2,3.5,"s\"q",null,true,false,[],{}]"#, #"{"a":{"b":[1,2,{"c":"\u0001"}]},"é":"✓"}"#, "[]", "{}",
                       "[" + (0..<2000).map { "\($0)" }.joined(separator: ",") + "]"] {
            let expected = json(params)
            defer { release(expected) }
            for _ in 0..<3 {
                let outcome = client.run("echo", params)
                XCTAssertEqual(outcome.status, CallStatus.ok)
                XCTAssertEqual(outcome.body, dump(expected), String(params.prefix(60)))
            }
        }
        // Ids stay in step over many calls (each answer must carry the id sent).
        for _ in 0..<500 { XCTAssertEqual(client.run("ping").status, CallStatus.ok) }
    }
}
