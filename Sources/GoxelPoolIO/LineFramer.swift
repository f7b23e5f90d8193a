import Glibc

/// Splits a byte stream into `\n`-terminated lines with a bounded buffer: the daemon writes a
/// response's body and its `\n` separately, so one read is not one message, and a line longer than
/// `maxLineLength` is an error rather than unbounded memory.
public struct LineFramer: ~Copyable {
    public enum Next: Equatable {
        /// A complete line (without `\n`) at this range of `bytes`.
        case line(Range<Int>)
        /// More bytes are needed.
        case needMore
        /// The line under way is longer than allowed.
        case tooLong
    }

    public let maxLineLength: Int
    private var storage: UnsafeMutableRawBufferPointer
    private var start = 0     // first unconsumed byte
    private var end = 0       // one past the last received byte
    private var scanned = 0   // bytes from `start` known to hold no `\n`

    public init(maxLineLength: Int, initialCapacity: Int = 4096) {
        self.maxLineLength = max(1, maxLineLength)
        storage = .allocate(byteCount: max(64, min(initialCapacity, self.maxLineLength + 1)), alignment: 1)
    }

    deinit { storage.deallocate() }

    public var bufferedCount: Int { end - start }
    public var capacity: Int { storage.count }

    /// Looks for a complete line among the bytes received so far.
    public mutating func next() -> Next {
        if end > start + scanned, let base = storage.baseAddress {
            let from = start + scanned
            if let hit = memchr(base + from, 0x0A, end - from) {
                let newline = base.distance(to: UnsafeMutableRawPointer(hit))
                let line = start..<newline
                start = newline + 1
                scanned = 0
                if line.count > maxLineLength { return .tooLong }
                return .line(line)
            }
            scanned = end - start
        }
        return end - start > maxLineLength ? .tooLong : .needMore
    }

    /// The bytes of a line returned by `next()`; valid until the next call that changes the framer.
    public func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(storage)[range])
    }

    /// Space to receive into: compacts consumed bytes away and grows (up to the bound) when full.
    public mutating func writableSpace() -> UnsafeMutableRawBufferPointer {
        if start == end { start = 0; end = 0; scanned = 0 }
        if end == storage.count && start > 0, let base = storage.baseAddress {
            memmove(base, base + start, end - start)
            end -= start
            start = 0
        }
        if end == storage.count {
            let limit = maxLineLength + 1
            let grown = UnsafeMutableRawBufferPointer.allocate(byteCount: min(max(storage.count * 2, 64), max(limit, storage.count + 1)), alignment: 1)
            if let source = storage.baseAddress, let target = grown.baseAddress { memcpy(target, source + start, end - start) }
            end -= start
            start = 0
            storage.deallocate()
            storage = grown
        }
        return UnsafeMutableRawBufferPointer(rebasing: storage[end...])
    }

    /// Records that `count` bytes were written into the space from `writableSpace()`.
    public mutating func didReceive(_ count: Int) {
        end = min(end + max(count, 0), storage.count)
    }

    /// Drops everything buffered (after an error, the stream is out of step anyway).
    public mutating func reset() { start = 0; end = 0; scanned = 0 }
}
