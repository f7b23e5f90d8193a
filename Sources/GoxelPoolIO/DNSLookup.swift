import Glibc

/// Every A and AAAA address of `host` (getaddrinfo, so /etc/hosts and nsswitch apply as for any
/// program), as numeric strings. Blocks: only the client's resolver thread calls it.
func resolveAddresses(_ host: String, port: UInt16) -> LookupResult {
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var list: UnsafeMutablePointer<addrinfo>?
    let status = getaddrinfo(host, String(port), &hints, &list)
    guard status == 0 else {
        let reason = status == EAI_SYSTEM ? errnoText() : gai_strerror(status).map { String(cString: $0) } ?? "error \(status)"
        return .failed(reason)
    }
    defer { freeaddrinfo(list) }
    var addresses: [String] = []
    var current = list
    while let info = current {
        current = info.pointee.ai_next
        var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        guard let address = info.pointee.ai_addr,
              getnameinfo(address, info.pointee.ai_addrlen, &text, socklen_t(text.count), nil, 0, NI_NUMERICHOST) == 0 else { continue }
        addresses.append(cString(text))
    }
    return .found(addresses)
}

enum LookupResult {
    case found([String])
    case failed(String)
}

/// The text of a NUL-terminated C buffer.
func cString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
