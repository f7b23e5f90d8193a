import XCTest
@testable import GoxelPoolCore

/// Inputs found by the libFuzzer targets in Tests/fuzz (each also kept in Tests/fuzz/corpus).
final class FuzzRegressionTests: XCTestCase {
    private func error(_ value: ConfigValue) -> ConfigurationError? {
        do { _ = try ClientConfiguration.parse(value); return nil } catch { return error }
    }

    /// fuzz_config: `{"":1}` was refused as ": unknown key" (an error that names no key).
    func testEmptyUnknownKeyIsNamed() {
        XCTAssertEqual(error(["": 1])?.description, #""": unknown key"#)
        XCTAssertEqual(error(["pool": ["": 1]])?.description, #"pool."": unknown key"#)
        XCTAssertEqual(error(.object([ConfigMember("", 1), ConfigMember("", 2)]))?.description, #""": duplicate key"#)
    }

    /// A NUL or control character in a key must not cut the message short at the C boundary.
    func testControlCharactersInKeysAreEscaped() {
        let text = error(["a\u{0}b\n": 1])?.description ?? ""
        XCTAssertEqual(text, #""a\u0000b\u000a": unknown key"#)
        XCTAssertFalse(text.utf8.contains(0))
        XCTAssertEqual(error(["plain": 1])?.description, "plain: unknown key", "ordinary keys unchanged")
    }
}
