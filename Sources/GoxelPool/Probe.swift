import CGoxelPool
import CJansson
import GoxelPoolIO

@c @implementation
public func goxelpool_stats(_ client: OpaquePointer?) -> UnsafeMutablePointer<json_t>? {
    return ioProbe()
}
