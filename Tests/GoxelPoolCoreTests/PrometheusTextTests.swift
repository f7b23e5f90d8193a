import XCTest
@testable import GoxelPoolCore

/// The text format writer (escaping, numbers, histogram lines) and the latency distributions the
/// metrics export. The whole exposition is checked against the official parser in
/// Tests/metrics (make metrics-test).
final class PrometheusTextTests: XCTestCase {
    func testLabelValuesEscapeBackslashQuoteAndNewline() {
        XCTAssertEqual(PrometheusText.escapeLabelValue("unix:/tmp/a.sock"), "unix:/tmp/a.sock")
        XCTAssertEqual(PrometheusText.escapeLabelValue(#"a\b"c"#), #"a\\b\"c"#)
        XCTAssertEqual(PrometheusText.escapeLabelValue("line\nnext"), #"line\nnext"#)
        XCTAssertEqual(PrometheusText.escapeLabelValue("é ✓"), "é ✓")
    }

    func testHelpEscapesBackslashAndNewlineButNotQuotes() {
        XCTAssertEqual(PrometheusText.escapeHelp("say \"hi\"\\\nnow"), "say \"hi\"\\\\\\nnow")
    }

    func testNumbers() {
        XCTAssertEqual(PrometheusText.format(3), "3")
        XCTAssertEqual(PrometheusText.format(-0.0), "0")
        XCTAssertEqual(PrometheusText.format(0.25), "0.25")
        XCTAssertEqual(PrometheusText.format(0.0001), "0.0001")
        XCTAssertEqual(PrometheusText.format(1e-05), "1e-05")
        XCTAssertEqual(PrometheusText.format(1e20), "1e+20")
        XCTAssertEqual(PrometheusText.format(.infinity), "+Inf")
        XCTAssertEqual(PrometheusText.format(-.infinity), "-Inf")
        XCTAssertEqual(PrometheusText.format(.nan), "NaN")
    }

    func testNames() {
        XCTAssertTrue(PrometheusText.isValidName("goxelpool_requests_total"))
        XCTAssertTrue(PrometheusText.isValidName("a:b_1"))
        XCTAssertFalse(PrometheusText.isValidName("1abc"))
        XCTAssertFalse(PrometheusText.isValidName("a-b"))
        XCTAssertFalse(PrometheusText.isValidName(""))
    }

    func testFamilyAndSamples() {
        var text = PrometheusText()
        text.family("x_total", .counter, help: "Things\ncounted")
        text.sample("x_total", [("endpoint", "unix:/a\"b"), ("status", "EIO")], 2)
        text.sample("x_total", [], 0.5)
        XCTAssertEqual(text.text, """
            # HELP x_total Things\\ncounted
            # TYPE x_total counter
            x_total{endpoint="unix:/a\\"b",status="EIO"} 2
            x_total 0.5

            """)
    }

    func testHistogramLines() {
        var text = PrometheusText()
        text.histogram("d_seconds", [("endpoint", "e")], bounds: [0.001, 1], cumulative: [1, 3], sum: 1.5, count: 4)
        XCTAssertEqual(text.text, """
            d_seconds_bucket{endpoint="e",le="0.001"} 1
            d_seconds_bucket{endpoint="e",le="1"} 3
            d_seconds_bucket{endpoint="e",le="+Inf"} 4
            d_seconds_sum{endpoint="e"} 1.5
            d_seconds_count{endpoint="e"} 4

            """)
    }

    func testRequestDistributionCountsByBoundAndKeepsTheExactSum() {
        var stats = PoolStatistics(startedAt: Instant(nanoseconds: 0))
        for micros in [80, 90, 100] { stats.recordRequest(Span(nanoseconds: Int64(micros) * 1000)) }
        stats.recordRequest(.milliseconds(30))
        stats.recordRequest(.milliseconds(30))
        stats.recordRequest(.milliseconds(7000))
        let figures = stats.distribution(.request, boundsSeconds: [0.0001, 0.025, 0.05, 5, 10])
        XCTAssertEqual(figures.cumulative, [3, 3, 5, 5, 6])
        XCTAssertEqual(figures.count, 6)
        XCTAssertEqual(figures.sum.nanoseconds, (80 + 90 + 100) * 1000 + 2 * 30_000_000 + 7_000_000_000)
    }

    func testBoundsInOneHDRBucketCountAValueOnce() {
        // 25 000 and 25 001 µs share an HDR bucket (16 µs wide there): a value in it is counted
        // at both bounds, once; a value above the last bound only in the total.
        var stats = PoolStatistics(startedAt: Instant(nanoseconds: 0))
        stats.recordRequest(Span(nanoseconds: 25_005_000))
        stats.recordRequest(.milliseconds(20_000))
        let figures = stats.distribution(.request, boundsSeconds: [0.001, 0.025, 0.025001, 10])
        XCTAssertEqual(figures.cumulative, [0, 1, 1, 1])
        XCTAssertEqual(figures.count, 2)
    }

    /// Leases that did not wait are counted apart (not recorded one by one) and are in the
    /// histogram whenever it is read: the same figures before and after they are folded in for
    /// good, and a merge carries both pools' own.
    func testLeasesThatDidNotWaitAreInTheAcquireWaitHistogram() {
        var stats = PoolStatistics(startedAt: Instant(nanoseconds: 0))
        for _ in 0..<98 { stats.recordAcquireWait(.zero) }
        stats.recordAcquireWait(.milliseconds(5))
        stats.recordAcquireWait(.milliseconds(50))
        XCTAssertEqual(stats.acquireWait.totalCount, 100)
        XCTAssertEqual(stats.acquireWait.valueAtPercentile(50), 1)
        XCTAssertEqual(stats.totalAcquireWait, .milliseconds(55))
        var other = PoolStatistics(startedAt: Instant(nanoseconds: 0))
        other.recordAcquireWait(.zero)
        other.recordAcquireWait(.zero)
        var merged = stats
        merged.merge(other)
        XCTAssertEqual(merged.acquireWait.totalCount, 102)
        XCTAssertEqual(merged.distribution(.acquireWait, boundsSeconds: [0.000001]).cumulative, [100])
        let bounds = [0.000001, 0.01, 1]
        let before = stats.distribution(.acquireWait, boundsSeconds: bounds)
        XCTAssertEqual(before.cumulative, [98, 99, 100])
        stats.foldWaitlessLeases()
        XCTAssertEqual(stats.distribution(.acquireWait, boundsSeconds: bounds).cumulative, before.cumulative)
        stats.foldWaitlessLeases()
        XCTAssertEqual(stats.acquireWait.totalCount, 100, "folding twice enters them once")
        XCTAssertEqual(stats.totalAcquireWait, .milliseconds(55))
    }

    func testAcquireWaitDistributionHasItsOwnSum() {
        var stats = PoolStatistics(startedAt: Instant(nanoseconds: 0))
        stats.recordAcquireWait(.zero)
        stats.recordAcquireWait(.milliseconds(200))
        var other = PoolStatistics(startedAt: Instant(nanoseconds: 0))
        other.recordAcquireWait(.milliseconds(3))
        stats.merge(other)
        let figures = stats.distribution(.acquireWait, boundsSeconds: [0.001, 0.1, 1])
        XCTAssertEqual(figures.cumulative, [1, 2, 3])
        XCTAssertEqual(figures.count, 3)
        XCTAssertEqual(figures.sum, .milliseconds(203))
        XCTAssertEqual(stats.distribution(.request, boundsSeconds: [1]).count, 0)
    }
}
