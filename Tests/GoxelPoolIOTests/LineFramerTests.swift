import XCTest
@testable import GoxelPoolIO

final class LineFramerTests: XCTestCase {
    /// Feeds `chunks` and returns every line found, or "TOO LONG".
    private func lines(_ chunks: [String], max: Int = 1024, initialCapacity: Int = 64) -> [String] {
        lines(bytes: chunks.map { Array($0.utf8) }, max: max, initialCapacity: initialCapacity)
    }

    private func lines(bytes chunks: [[UInt8]], max: Int = 1024, initialCapacity: Int = 64) -> [String] {
        var framer = LineFramer(maxLineLength: max, initialCapacity: initialCapacity)
        var out: [String] = []
        for chunk in chunks {
            var bytes = chunk[...]
            while !bytes.isEmpty {
                let space = framer.writableSpace()
                let n = min(space.count, bytes.count)
                space.copyBytes(from: bytes.prefix(n))
                framer.didReceive(n)
                bytes = bytes.dropFirst(n)
                scan: while true {
                    switch framer.next() {
                    case .line(let range): out.append(String(decoding: framer.bytes(range), as: UTF8.self))
                    case .needMore: break scan
                    case .tooLong: return out + ["TOO LONG"]
                    }
                }
            }
        }
        return out
    }

    func testBodyAndNewlineInSeparateReads() {
        XCTAssertEqual(lines(["{\"a\": 1}", "\n"]), ["{\"a\": 1}"])
    }

    func testEverySplitPointGivesTheSameLines() {
        let first = "{ \"jsonrpc\": \"2.0\", \"result\": \"héllo wörld\", \"id\": 1 }"
        let bytes = Array((first + "\n{\"id\":2}\n").utf8)
        // Cuts inside a multi-byte character too: lines are only decoded once whole.
        for cut in 0...bytes.count {
            XCTAssertEqual(lines(bytes: [Array(bytes[..<cut]), Array(bytes[cut...])], initialCapacity: 16),
                           [first, "{\"id\":2}"], "cut at \(cut)")
        }
    }

    func testGrowsForLongLines() {
        let long = String(repeating: "x", count: 5000)
        XCTAssertEqual(lines([long, "\n"], max: 10_000, initialCapacity: 64), [long])
    }

    func testLineOverTheLimitIsAnError() {
        XCTAssertEqual(lines([String(repeating: "y", count: 2000)], max: 1000), ["TOO LONG"])
        XCTAssertEqual(lines([String(repeating: "y", count: 1001) + "\n"], max: 1000), ["TOO LONG"])
        XCTAssertEqual(lines([String(repeating: "y", count: 1000) + "\n"], max: 1000), [String(repeating: "y", count: 1000)])
    }

    func testSeveralLinesInOneRead() {
        XCTAssertEqual(lines(["a\nb\n", "c", "\n"]), ["a", "b", "c"])
    }
}
