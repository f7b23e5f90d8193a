// libFuzzer target: the response reader and parser. Arbitrary bytes, as if read from the daemon's
// socket, are fed through LineFramer in chunks whose sizes come from the input itself (so every
// split point gets tried), and every complete line goes through DaemonConnection.decodeAnswer,
// the exact code a call's answer goes through. Checks invariants besides "no crash":
//   - the framer never hands out a line longer than maxLineLength, nor holds more than it allows;
//   - the lines it returns, joined with "\n", are a prefix of the input (nothing lost or invented);
//   - decodeAnswer's outcomes are consistent (a result only for the id we expected, reference
//     counts balanced: every returned value is freed here, ASan/LSan catch the rest).
//
// Input layout: byte 0 = framer limit selector, byte 1 = expected-id selector, then pairs of
// (chunk length byte, ...) interleaved: the chunk sizes are taken from a small header of 8 bytes.
import CJansson
import Glibc
import GoxelPoolCore
@testable import GoxelPoolIO

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzResponse(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 10 else { return 0 }
    let limits = [64, 100, 1024, 4096, 65_536]
    let maxLine = limits[Int(data[0]) % limits.count]
    let expected: Int64? = data[1] % 4 == 0 ? nil : Int64(data[1] % 4)   // nil: a notification
    let splits = (2..<10).map { Int(data[$0]) + 1 }                       // chunk sizes 1...256
    let body = UnsafeBufferPointer(start: data + 10, count: size - 10)

    var framer = LineFramer(maxLineLength: maxLine, initialCapacity: Int(data[2]))
    var offset = 0
    var chunkIndex = 0
    var consumed = 0            // input bytes accounted for by lines returned (+ their "\n")
    var overflowed = false
    while offset < body.count && !overflowed {
        let space = framer.writableSpace()
        precondition(space.count > 0, "framer offered no space")
        let want = min(splits[chunkIndex % splits.count], body.count - offset, space.count)
        chunkIndex += 1
        if let base = space.baseAddress { memcpy(base, body.baseAddress! + offset, want) }
        framer.didReceive(want)
        offset += want
        precondition(framer.bufferedCount <= maxLine + 1 + 256, "framer buffered \(framer.bufferedCount)")
        loop: while true {
            switch framer.next() {
            case .needMore: break loop
            case .tooLong: overflowed = true; break loop
            case .line(let range):
                precondition(range.count <= maxLine, "line of \(range.count) > \(maxLine)")
                let line = framer.bytes(range)
                precondition(line.count == range.count)
                // The line must be exactly the next input bytes, followed by "\n" in the input.
                precondition(consumed + line.count < body.count && body[consumed + line.count] == 0x0A, "line end mismatch")
                precondition(memcmp(line.baseAddress ?? UnsafeRawPointer(body.baseAddress!), body.baseAddress! + consumed, line.count) == 0,
                             "line content mismatch")
                precondition(!line.contains(0x0A), "line contains a newline")
                consumed += line.count + 1
                check(DaemonConnection.decodeAnswer(line, expecting: expected), expected: expected)
            }
        }
    }
    if !overflowed {
        // Whatever is left buffered is exactly the input after the last line.
        precondition(framer.bufferedCount == body.count - consumed, "buffered \(framer.bufferedCount) != \(body.count - consumed)")
    }
    // The whole input as one line (what a caller sees when the answer has no newline inside).
    body.withMemoryRebound(to: UInt8.self) { whole in
        check(DaemonConnection.decodeAnswer(UnsafeRawBufferPointer(whole), expecting: expected), expected: expected)
    }
    return 0
}

private func check(_ exchange: Exchange, expected: Int64?) {
    switch exchange {
    case .result(let value):
        precondition(expected != nil, "a notification produced a result")
        json_decref(UnsafeMutablePointer(value))
    case .rpcError(let value, _):
        let error = UnsafeMutablePointer<json_t>(value)
        precondition(error.pointee.type == JSON_OBJECT, "rpc error is not an object")
        precondition(json_object_get(error, "code")?.pointee.type == JSON_INTEGER, "rpc error code is not an integer")
        json_decref(error)
    case .notified:
        precondition(expected == nil, "a call was treated as a notification")
    case .failed(let failure, let written):
        precondition(written, "a decode failure must count as written")
        precondition(failure.status == .proto, "decode failure with status \(failure.status)")
    }
}
