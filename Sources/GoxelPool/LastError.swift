import Glibc

/// goxelpool_last_error's storage: one fixed buffer per thread (pthread key, freed when the
/// thread ends), so a message never needs freeing by the caller and threads never share one.
enum LastError {
    static let capacity = 512

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    static func buffer() -> UnsafeMutablePointer<CChar>? {
        if let existing = pthread_getspecific(key) { return existing.assumingMemoryBound(to: CChar.self) }
        guard let fresh = calloc(capacity, 1)?.assumingMemoryBound(to: CChar.self) else { return nil }
        pthread_setspecific(key, fresh)
        return fresh
    }

    static func set(_ message: String) {
        guard let buffer = buffer() else { return }
        copy(message, into: buffer, capacity: capacity)
    }

    static func clear() {
        if let existing = pthread_getspecific(key) { existing.assumingMemoryBound(to: CChar.self).pointee = 0 }
    }
}

/// Copies a message into a caller's buffer, truncated, always NUL-terminated (on a UTF-8
/// character boundary, so the truncated text is still valid UTF-8).
func copy(_ message: String, into buffer: UnsafeMutablePointer<CChar>, capacity: Int) {
    guard capacity > 0 else { return }
    var bytes = Array(message.utf8.prefix(capacity - 1))
    if bytes.count == capacity - 1 {
        while let last = bytes.last, last & 0xC0 == 0x80 { bytes.removeLast() }
        if let last = bytes.last, last & 0x80 != 0 { bytes.removeLast() }
    }
    bytes.withUnsafeBufferPointer { source in
        if let base = source.baseAddress { memcpy(buffer, base, source.count) }
    }
    buffer[bytes.count] = 0
}
