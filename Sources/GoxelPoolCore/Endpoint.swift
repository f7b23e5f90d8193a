/// Where a daemon listens: `unix:/path` or `tcp:host:port` (`tcp:[::1]:port` for IPv6).
public enum Endpoint: Hashable, Sendable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: UInt16)

    /// The longest Unix socket path that fits sockaddr_un.sun_path with its terminating NUL.
    public static let maxUnixPathBytes = 107

    /// Parses `unix:/path`, `tcp:host:port`, `tcp:[v6]:port`. A bare path is a Unix socket.
    public static func parse(_ text: String) -> Result<Endpoint, EndpointError> {
        if text.utf8.contains(0) { return .failure(EndpointError("contains a NUL byte")) }
        if text.hasPrefix("tcp:") {
            let rest = String(text.dropFirst(4))
            let host: Substring, portText: Substring
            if rest.hasPrefix("[") {
                guard let close = rest.firstIndex(of: "]") else { return .failure(EndpointError("'\(text)': missing ']' after an IPv6 address")) }
                host = rest[rest.index(after: rest.startIndex)..<close]
                let after = rest[rest.index(after: close)...]
                guard after.hasPrefix(":") else { return .failure(EndpointError("'\(text)': expected ':port' after ']'")) }
                portText = after.dropFirst()
            } else {
                guard let colon = rest.lastIndex(of: ":") else { return .failure(EndpointError("'\(text)': expected tcp:host:port")) }
                host = rest[..<colon]
                portText = rest[rest.index(after: colon)...]
                if host.contains(":") { return .failure(EndpointError("'\(text)': write IPv6 addresses in brackets, tcp:[::1]:port")) }
            }
            guard !host.isEmpty else { return .failure(EndpointError("'\(text)': empty host")) }
            guard let port = UInt16(portText), port > 0 else { return .failure(EndpointError("'\(text)': port must be 1 to 65535")) }
            return .success(.tcp(host: String(host), port: port))
        }
        let path = text.hasPrefix("unix:") ? String(text.dropFirst(5)) : text
        guard !path.isEmpty else { return .failure(EndpointError("'\(text)': empty socket path")) }
        guard path.utf8.count <= maxUnixPathBytes else {
            return .failure(EndpointError("'\(text)': socket path longer than \(maxUnixPathBytes) bytes"))
        }
        return .success(.unix(path: path))
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        }
    }
}

public struct EndpointError: Error, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
}
