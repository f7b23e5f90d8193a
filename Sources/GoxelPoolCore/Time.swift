/// A point on a monotonic clock, in nanoseconds. The core never reads a clock: every event carries
/// the current instant, so tests drive the state machines with a manual clock.
public struct Instant: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: Int64
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }
    public static func milliseconds(_ ms: Int64) -> Instant { Instant(nanoseconds: ms.multipliedReportingOverflow(by: 1_000_000).partialValue) }
    public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }
    public static func + (a: Instant, d: Span) -> Instant { Instant(nanoseconds: a.nanoseconds.addingSaturating(d.nanoseconds)) }
    public static func - (a: Instant, b: Instant) -> Span { Span(nanoseconds: a.nanoseconds.subtractingSaturating(b.nanoseconds)) }
    public var description: String { "\(Double(nanoseconds) / 1e6)ms" }
}

/// A length of time in nanoseconds (Swift's Duration is avoided: its arithmetic traps on overflow
/// and it costs more on the hot path).
public struct Span: Comparable, Hashable, Sendable {
    public var nanoseconds: Int64
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }
    public static func milliseconds(_ ms: Int) -> Span { Span(nanoseconds: Int64(ms).multipliedReportingOverflow(by: 1_000_000).partialValue) }
    public static let zero = Span(nanoseconds: 0)
    public static func < (a: Span, b: Span) -> Bool { a.nanoseconds < b.nanoseconds }
    public var milliseconds: Double { Double(nanoseconds) / 1e6 }
}

extension Int64 {
    @inlinable func addingSaturating(_ other: Int64) -> Int64 {
        let (value, overflow) = addingReportingOverflow(other)
        return overflow ? (other > 0 ? .max : .min) : value
    }
    @inlinable func subtractingSaturating(_ other: Int64) -> Int64 {
        let (value, overflow) = subtractingReportingOverflow(other)
        return overflow ? (other < 0 ? .max : .min) : value
    }
}

/// Randomness is injected too (jitter, random balancing), so tests are repeatable.
public protocol RandomSource {
    /// A uniformly distributed value in [0, 1).
    mutating func nextUnit() -> Double
}

/// SplitMix64: small, fast, good enough for jitter; not for anything secret.
public struct SplitMix64: RandomSource, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    public mutating func nextUnit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}
