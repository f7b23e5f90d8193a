/// Exponential backoff with jitter for opening connections (gRPC's connection-backoff: start at
/// `initial`, multiply by `multiplier` after each failure, cap at `maximum`, randomise by
/// ±`jitter`). Reset after a success.
public struct Backoff: Sendable, Equatable {
    public struct Policy: Sendable, Equatable {
        public var initial: Span
        public var multiplier: Double
        public var jitter: Double
        public var maximum: Span
        public init(initial: Span, multiplier: Double, jitter: Double, maximum: Span) {
            self.initial = initial; self.multiplier = multiplier; self.jitter = jitter; self.maximum = maximum
        }
        public static let grpcDefault = Policy(initial: .milliseconds(1000), multiplier: 1.6, jitter: 0.2,
                                               maximum: .milliseconds(120_000))
    }

    public let policy: Policy
    /// Failures since the last success.
    public private(set) var consecutiveFailures = 0
    /// The un-jittered delay the next failure will wait.
    private var nextBase: Double

    public init(policy: Policy) {
        self.policy = policy
        nextBase = Double(policy.initial.nanoseconds)
    }

    /// Records a failure and returns how long to wait before the next attempt.
    public mutating func failed(random: inout some RandomSource) -> Span {
        consecutiveFailures += 1
        let cap = Double(policy.maximum.nanoseconds)
        let base = min(nextBase, cap)
        nextBase = min(base * policy.multiplier, cap)
        let factor = 1 + policy.jitter * (random.nextUnit() * 2 - 1)
        // Never above the cap, jitter included.
        let delay = max(0, min(base * factor, cap))
        return Span(nanoseconds: Int64(delay))
    }

    public mutating func succeeded() {
        consecutiveFailures = 0
        nextBase = Double(policy.initial.nanoseconds)
    }
}
