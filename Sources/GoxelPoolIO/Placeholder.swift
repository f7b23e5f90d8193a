import CJansson
import GoxelPoolCore
public func ioProbe() -> UnsafeMutablePointer<json_t>? { json_object() }
