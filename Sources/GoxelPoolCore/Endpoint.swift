/// Where a daemon listens: `unix:/path`, `tcp:host:port` (`tcp:[::1]:port` for IPv6), or
/// `tls:host:port` (TCP with TLS, typically a terminator such as stunnel in front of the daemon).
public enum Endpoint: Hashable, Sendable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: UInt16)
    /// `verifyName`: the name the server's certificate must carry when it is not `host` (an
    /// address resolved from `dnstls:name:port` carries `name`); `tls.server_name` overrides both.
    case tls(host: String, port: UInt16, verifyName: String? = nil)

    /// The longest Unix socket path that fits sockaddr_un.sun_path with its terminating NUL.
    public static let maxUnixPathBytes = 107

    /// Parses `unix:/path`, `tcp:host:port`, `tcp:[v6]:port`, `tls:host:port`, `tls:[v6]:port`.
    /// A bare path is a Unix socket.
    public static func parse(_ text: String) -> Result<Endpoint, EndpointError> {
        if text.utf8.contains(0) { return .failure(EndpointError("contains a NUL byte")) }
        for scheme in ["tcp", "tls"] where text.hasPrefix(scheme + ":") {
            return hostAndPort(text, scheme: scheme).map { host, port in
                scheme == "tls" ? .tls(host: host, port: port) : .tcp(host: host, port: port)
            }
        }
        if text.hasPrefix("dns:") || text.hasPrefix("dnstls:") {
            return .failure(EndpointError("'\(text)' is a DNS name, not one address"))
        }
        let path = text.hasPrefix("unix:") ? String(text.dropFirst(5)) : text
        guard !path.isEmpty else { return .failure(EndpointError("'\(text)': empty socket path")) }
        guard path.utf8.count <= maxUnixPathBytes else {
            return .failure(EndpointError("'\(text)': socket path longer than \(maxUnixPathBytes) bytes"))
        }
        return .success(.unix(path: path))
    }

    /// `scheme:host:port` or `scheme:[v6]:port`.
    static func hostAndPort(_ text: String, scheme: String) -> Result<(String, UInt16), EndpointError> {
        let rest = String(text.dropFirst(scheme.count + 1))
        let host: Substring, portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return .failure(EndpointError("'\(text)': missing ']' after an IPv6 address")) }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            guard after.hasPrefix(":") else { return .failure(EndpointError("'\(text)': expected ':port' after ']'")) }
            portText = after.dropFirst()
        } else {
            guard let colon = rest.lastIndex(of: ":") else { return .failure(EndpointError("'\(text)': expected \(scheme):host:port")) }
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
            if host.contains(":") { return .failure(EndpointError("'\(text)': write IPv6 addresses in brackets, \(scheme):[::1]:port")) }
        }
        guard !host.isEmpty else { return .failure(EndpointError("'\(text)': empty host")) }
        guard let port = UInt16(portText), port > 0 else { return .failure(EndpointError("'\(text)': port must be 1 to 65535")) }
        return .success((String(host), port))
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): "tcp:\(Self.bracketed(host)):\(port)"
        case .tls(let host, let port, _): "tls:\(Self.bracketed(host)):\(port)"
        }
    }

    static func bracketed(_ host: String) -> String { host.contains(":") ? "[\(host)]" : host }

    /// True for TLS endpoints (they need the client's TLS context).
    public var usesTLS: Bool { if case .tls = self { true } else { false } }
}

/// A DNS name standing for every daemon it resolves to (`dns:name:port`, or `dnstls:name:port`
/// for TLS to each address, the certificate checked against `name`), as gRPC's `dns:` resolver
/// and Envoy's STRICT_DNS clusters do for a fleet behind a Kubernetes headless service.
public struct DNSName: Hashable, Sendable, CustomStringConvertible {
    public let host: String
    public let port: UInt16
    public let tls: Bool

    public init(host: String, port: UInt16, tls: Bool) {
        self.host = host; self.port = port; self.tls = tls
    }

    public var description: String { "\(tls ? "dnstls" : "dns"):\(Endpoint.bracketed(host)):\(port)" }

    /// The endpoint for one resolved numeric address.
    public func endpoint(address: String) -> Endpoint {
        tls ? .tls(host: address, port: port, verifyName: host) : .tcp(host: address, port: port)
    }
}

/// What a configuration's `endpoints` entry or goxelpool_add_endpoint names: one daemon, or a
/// DNS name that stands for all the daemons it resolves to.
public enum EndpointTarget: Hashable, Sendable, CustomStringConvertible {
    case address(Endpoint)
    case dns(DNSName)

    /// Parses `dns:name:port` and `dnstls:name:port`, else as `Endpoint.parse`.
    public static func parse(_ text: String) -> Result<EndpointTarget, EndpointError> {
        for scheme in ["dns", "dnstls"] where text.hasPrefix(scheme + ":") {
            if text.utf8.contains(0) { return .failure(EndpointError("contains a NUL byte")) }
            switch Endpoint.hostAndPort(text, scheme: scheme) {
            case .success(let (host, port)):
                guard host.utf8.count <= 253 else { return .failure(EndpointError("'\(text)': name longer than 253 bytes")) }
                return .success(.dns(DNSName(host: host, port: port, tls: scheme == "dnstls")))
            case .failure(let error): return .failure(error)
            }
        }
        return Endpoint.parse(text).map(EndpointTarget.address)
    }

    public var description: String {
        switch self {
        case .address(let endpoint): endpoint.description
        case .dns(let name): name.description
        }
    }
}

public struct EndpointError: Error, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
}
