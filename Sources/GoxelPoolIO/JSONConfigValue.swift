// Converts jansson values into GoxelPoolCore's ConfigValue for the configuration parser.
import CJansson
import GoxelPoolCore

/// Containers nested deeper than this are refused (also guards against reference cycles).
public let maxConfigValueDepth = 64

/// Converts a jansson value (borrowed; not retained) into a ConfigValue. A NULL pointer is
/// `.null` (goxelpool_client_new's "NULL for all defaults"). Returns nil when the value is nested
/// more than `maxConfigValueDepth` levels deep; callers report `ConfigurationError.nestedTooDeeply`.
/// Object members keep jansson's (insertion) order; strings are converted with their length, so
/// an embedded NUL survives and the parser rejects it where it matters.
public func configValue(from json: UnsafePointer<json_t>?, depth: Int = 0) -> ConfigValue? {
    guard depth <= maxConfigValueDepth else { return nil }
    guard let json else { return .null }
    let p = UnsafeMutablePointer(mutating: json)
    switch json.pointee.type {
    case JSON_OBJECT:
        var members: [ConfigMember] = []
        var iter = json_object_iter(p)
        while let it = iter {
            let key = json_object_iter_key(it).map { keyPointer in
                String(decoding: UnsafeRawBufferPointer(start: keyPointer, count: json_object_iter_key_len(it)),
                       as: UTF8.self)
            } ?? ""
            guard let value = configValue(from: json_object_iter_value(it), depth: depth + 1) else { return nil }
            members.append(ConfigMember(key, value))
            iter = json_object_iter_next(p, it)
        }
        return .object(members)
    case JSON_ARRAY:
        var items: [ConfigValue] = []
        let count = json_array_size(p)
        items.reserveCapacity(count)
        for index in 0..<count {
            guard let item = configValue(from: json_array_get(p, index), depth: depth + 1) else { return nil }
            items.append(item)
        }
        return .array(items)
    case JSON_STRING:
        guard let chars = json_string_value(p) else { return .string("") }
        let bytes = UnsafeRawBufferPointer(start: chars, count: json_string_length(p))
        return .string(String(decoding: bytes, as: UTF8.self))
    case JSON_INTEGER:
        return .integer(Int64(json_integer_value(p)))
    case JSON_REAL:
        return .real(json_real_value(p))
    case JSON_TRUE:
        return .bool(true)
    case JSON_FALSE:
        return .bool(false)
    default:
        return .null
    }
}

extension ClientConfiguration {
    /// Parses goxelpool_client_new's `config` argument (borrowed; NULL means all defaults).
    public static func parse(json: UnsafePointer<json_t>?) throws(ConfigurationError) -> ClientConfiguration {
        // A NULL pointer means all defaults; a JSON null value is not an object (the header).
        if let json, json.pointee.type == JSON_NULL {
            throw ConfigurationError(key: "config", message: "expected an object or a NULL pointer, got JSON null")
        }
        guard let value = configValue(from: json) else { throw ConfigurationError.nestedTooDeeply }
        return try parse(value)
    }
}
