/// The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` once per family,
/// then its samples, one per line, every line ending in "\n". Pure string building (no
/// Foundation): the format is line-oriented text, not JSON, so jansson has no part in it.
///
/// The caller keeps each family's samples together and writes `family` before them; names are
/// the caller's constants (checked in debug builds), label values and help texts are escaped here.
public struct PrometheusText {
    public enum Kind: String, Sendable { case counter, gauge, histogram }

    public typealias Labels = [(name: String, value: String)]

    public private(set) var text = ""

    public init() { text.reserveCapacity(16_384) }

    /// `# HELP name help` and `# TYPE name kind`.
    public mutating func family(_ name: String, _ kind: Kind, help: String) {
        assert(Self.isValidName(name), "bad metric name \(name)")
        text += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(kind.rawValue)\n"
    }

    public mutating func sample(_ name: String, _ labels: Labels = [], _ value: Double) {
        line(name, labels, Self.format(value))
    }

    public mutating func sample(_ name: String, _ labels: Labels = [], _ value: Int) {
        line(name, labels, String(value))
    }

    /// A histogram's samples: cumulative `_bucket` counts for each upper bound, the `+Inf` bucket
    /// (= count), `_sum` and `_count`. `cumulative[i]` counts the observations ≤ `bounds[i]`.
    public mutating func histogram(_ name: String, _ labels: Labels, bounds: [Double], cumulative: [UInt64],
                                   sum: Double, count: UInt64) {
        for (bound, observed) in zip(bounds, cumulative) {
            line(name + "_bucket", labels + [("le", Self.format(bound))], String(observed))
        }
        line(name + "_bucket", labels + [("le", "+Inf")], String(count))
        line(name + "_sum", labels, Self.format(sum))
        line(name + "_count", labels, String(count))
    }

    private mutating func line(_ name: String, _ labels: Labels, _ value: String) {
        text += name
        if !labels.isEmpty {
            text += "{"
            for (index, label) in labels.enumerated() {
                assert(Self.isValidName(label.name) && !label.name.contains(":"), "bad label name \(label.name)")
                if index > 0 { text += "," }
                text += "\(label.name)=\"\(Self.escapeLabelValue(label.value))\""
            }
            text += "}"
        }
        text += " \(value)\n"
    }

    /// Label values: backslash, double quote and line feed are escaped (`\\`, `\"`, `\n`).
    public static func escapeLabelValue(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\n") }) else {
            return value
        }
        var escaped = ""
        for character in value.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped
    }

    /// Help texts: backslash and line feed are escaped (a double quote stays as it is).
    public static func escapeHelp(_ help: String) -> String {
        var escaped = ""
        for character in help.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped
    }

    /// Go's ParseFloat syntax, which the format uses: "+Inf", "-Inf", "NaN"; integral values
    /// without a fraction ("3"), others in Swift's shortest round-trip form ("0.25", "1e-05").
    public static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return value.description
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.utf8.first else { return false }
        func letter(_ c: UInt8) -> Bool { (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c == 95 || c == 58 }
        return letter(first) && name.utf8.allSatisfy { letter($0) || ($0 >= 48 && $0 <= 57) }
    }
}
