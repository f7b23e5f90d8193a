// The daemon's methods (a subset of the real daemon's 34, with the same names, parameters and
// result shapes) and the in-memory voxel project.
//
// Choice documented here: there is always a project. At start (and until the first
// `goxel.create_project`) a default project "Untitled" of 64x64x64 exists, so `goxel.add_voxel`
// without a prior `goxel.create_project` succeeds on it instead of failing with -1004.
// Methods of the real daemon that are not implemented here answer -32601 like unknown methods.

import CJansson
import Glibc

enum MethodOutcome {
    case result(JSONRef)            // new reference
    case error(Int, String)
}

// MARK: - Voxel project

struct VoxelKey: Hashable {
    var x: Int32, y: Int32, z: Int32
}

struct VoxelValue {
    var rgba: (UInt8, UInt8, UInt8, UInt8)
    var layer: Int32
}

final class VoxelProject: @unchecked Sendable {
    private let lock = Lock()
    private var name = "Untitled"
    private var width: Int32 = 64, height: Int32 = 64, depth: Int32 = 64
    private var voxels: [VoxelKey: VoxelValue] = [:]

    func create(name: String, width: Int32, height: Int32, depth: Int32) {
        lock.withLock {
            self.name = name
            self.width = width
            self.height = height
            self.depth = depth
            voxels.removeAll(keepingCapacity: true)
        }
    }

    func add(_ key: VoxelKey, _ value: VoxelValue) {
        lock.withLock { voxels[key] = value }
    }

    func remove(_ key: VoxelKey) -> Bool {
        lock.withLock { voxels.removeValue(forKey: key) != nil }
    }

    func get(_ key: VoxelKey) -> VoxelValue? {
        lock.withLock { voxels[key] }
    }

    func status() -> (name: String, width: Int32, height: Int32, depth: Int32, count: Int) {
        lock.withLock { (name, width, height, depth, voxels.count) }
    }
}

// MARK: - Method table

let methodList: [(name: String, description: String)] = [
    ("ping", "Health check: returns pong and the server time"),
    ("version", "Daemon version information"),
    ("status", "Daemon status: uptime and connections"),
    ("echo", "Returns its params unchanged"),
    ("list_methods", "Lists the available methods"),
    ("goxel.create_project", "Create a new project [name, width, height, depth]"),
    ("goxel.add_voxel", "Add a voxel [x, y, z, r, g, b, a, layer_id]"),
    ("goxel.remove_voxel", "Remove a voxel [x, y, z, layer_id]"),
    ("goxel.get_voxel", "Get a voxel [x, y, z]"),
    ("goxel.get_status", "Project status"),
    ("goxel.list_layers", "List the project's layers"),
]

final class Methods: @unchecked Sendable {
    let project = VoxelProject()
    let startTime = monotonicSeconds()
    let stats: ServerStats

    init(stats: ServerStats) { self.stats = stats }

    func call(_ name: String, _ params: JSONRef?) -> MethodOutcome {
        switch name {
        case "ping":
            let o = jObject()
            jSet(o, "pong", jBool(true))
            jSet(o, "timestamp", jInt(Int(time(nil))))
            return .result(o)
        case "version":
            let o = jObject()
            jSet(o, "version", jString("0.18.6"))
            jSet(o, "type", jString("daemon"))
            jSet(o, "protocol", jString("JSON-RPC 2.0"))
            return .result(o)
        case "status":
            let o = jObject()
            jSet(o, "status", jString("running"))
            jSet(o, "version", jString("0.18.6"))
            jSet(o, "uptime", jInt(Int(monotonicSeconds() - startTime)))
            jSet(o, "connections", jInt(stats.open.load(ordering: .relaxed)))
            jSet(o, "pid", jInt(Int(getpid())))
            return .result(o)
        case "echo":
            if let params { return .result(jsonAlloc(json_incref(params))) }
            return .result(jNull())
        case "list_methods":
            let o = jObject()
            jSet(o, "count", jInt(methodList.count))
            let a = jArray()
            for m in methodList {
                let e = jObject()
                jSet(e, "method", jString(m.name))
                jSet(e, "description", jString(m.description))
                jAppend(a, e)
            }
            jSet(o, "methods", a)
            return .result(o)
        case "goxel.create_project": return createProject(params)
        case "goxel.add_voxel": return addVoxel(params)
        case "goxel.remove_voxel": return removeVoxel(params)
        case "goxel.get_voxel": return getVoxel(params)
        case "goxel.get_status":
            let s = project.status()
            let o = jObject()
            jSet(o, "project", jString(s.name))
            jSet(o, "width", jInt(Int(s.width)))
            jSet(o, "height", jInt(Int(s.height)))
            jSet(o, "depth", jInt(Int(s.depth)))
            jSet(o, "voxel_count", jInt(s.count))
            jSet(o, "layers", jInt(1))
            return .result(o)
        case "goxel.list_layers":
            let layer = jObject()
            jSet(layer, "id", jInt(0))
            jSet(layer, "name", jString("Layer 1"))
            jSet(layer, "visible", jBool(true))
            let a = jArray()
            jAppend(a, layer)
            let o = jObject()
            jSet(o, "layers", a)
            jSet(o, "count", jInt(1))
            return .result(o)
        default:
            return .error(-32601, "Method not found: \(name)")
        }
    }

    // MARK: parameters

    /// Positional element `i` of an array, or member `key` of an object (borrowed).
    private func arg(_ params: JSONRef?, _ index: Int, _ key: String) -> JSONRef? {
        guard let params else { return nil }
        switch jType(params) {
        case JSON_ARRAY: return json_array_get(params, index)
        case JSON_OBJECT: return json_object_get(params, key)
        default: return nil
        }
    }

    private func isArray(_ params: JSONRef?) -> Bool {
        guard let params else { return false }
        return jType(params) == JSON_ARRAY
    }

    private func coordinates(_ params: JSONRef?) -> VoxelKey? {
        guard let x = jInt32(arg(params, 0, "x")), let y = jInt32(arg(params, 1, "y")),
              let z = jInt32(arg(params, 2, "z")) else { return nil }
        return VoxelKey(x: x, y: y, z: z)
    }

    private func channel(_ j: JSONRef?) -> UInt8? {
        guard let v = jInt32(j), v >= 0, v <= 255 else { return nil }
        return UInt8(v)
    }

    /// A colour as [r,g,b(,a)], "#RRGGBB(AA)" or {r,g,b(,a)}.
    private func color(_ j: JSONRef?) -> (UInt8, UInt8, UInt8, UInt8)? {
        guard let j else { return nil }
        switch jType(j) {
        case JSON_ARRAY:
            let n = json_array_size(j)
            guard n == 3 || n == 4, let r = channel(json_array_get(j, 0)), let g = channel(json_array_get(j, 1)),
                  let b = channel(json_array_get(j, 2)) else { return nil }
            let a = n == 4 ? channel(json_array_get(j, 3)) : 255
            guard let a else { return nil }
            return (r, g, b, a)
        case JSON_OBJECT:
            guard let r = channel(json_object_get(j, "r")), let g = channel(json_object_get(j, "g")),
                  let b = channel(json_object_get(j, "b")) else { return nil }
            let aj = json_object_get(j, "a")
            let a = aj == nil ? 255 : channel(aj)
            guard let a else { return nil }
            return (r, g, b, a)
        case JSON_STRING:
            guard let s = jStringValue(j), s.hasPrefix("#") else { return nil }
            let hex = s.dropFirst()
            guard hex.count == 6 || hex.count == 8, let v = UInt32(hex, radix: 16) else { return nil }
            if hex.count == 6 {
                return (UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF), 255)
            }
            return (UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF))
        default:
            return nil
        }
    }

    private func colorJSON(_ c: (UInt8, UInt8, UInt8, UInt8)) -> JSONRef {
        let a = jArray()
        jAppend(a, jInt(Int(c.0)))
        jAppend(a, jInt(Int(c.1)))
        jAppend(a, jInt(Int(c.2)))
        jAppend(a, jInt(Int(c.3)))
        return a
    }

    private func voxelResult(_ key: VoxelKey, _ o: JSONRef) {
        jSet(o, "x", jInt(Int(key.x)))
        jSet(o, "y", jInt(Int(key.y)))
        jSet(o, "z", jInt(Int(key.z)))
    }

    // MARK: project methods

    private func createProject(_ params: JSONRef?) -> MethodOutcome {
        let nameJ = arg(params, 0, "name")
        var name = "Untitled"
        if let nameJ {
            guard let s = jStringValue(nameJ) else { return .error(-32602, "Invalid params: name must be a string") }
            name = s
        }
        var dims: [Int32] = []
        for (i, key) in ["width", "height", "depth"].enumerated() {
            guard let j = arg(params, i + 1, key) else { dims.append(64); continue }
            guard let v = jInt32(j), v >= 1, v <= 4096 else {
                return .error(-32602, "Invalid params: \(key) must be an integer between 1 and 4096")
            }
            dims.append(v)
        }
        project.create(name: name, width: dims[0], height: dims[1], depth: dims[2])
        let o = jObject()
        jSet(o, "success", jBool(true))
        jSet(o, "name", jString(name))
        jSet(o, "width", jInt(Int(dims[0])))
        jSet(o, "height", jInt(Int(dims[1])))
        jSet(o, "depth", jInt(Int(dims[2])))
        return .result(o)
    }

    private func addVoxel(_ params: JSONRef?) -> MethodOutcome {
        guard let key = coordinates(params) else {
            return .error(-32602, "Invalid params: expected [x, y, z, r, g, b, a, layer_id] or {\"x\", \"y\", \"z\", \"color\"}")
        }
        var rgba: (UInt8, UInt8, UInt8, UInt8)
        var layerJ: JSONRef?
        if isArray(params) {
            guard let r = channel(arg(params, 3, "")), let g = channel(arg(params, 4, "")),
                  let b = channel(arg(params, 5, "")) else {
                return .error(-32602, "Invalid params: r, g, b must be integers 0-255")
            }
            let aj = arg(params, 6, "")
            guard let a = aj == nil ? 255 : channel(aj) else {
                return .error(-32602, "Invalid params: a must be an integer 0-255")
            }
            rgba = (r, g, b, a)
            layerJ = arg(params, 7, "")
        } else {
            guard let c = color(arg(params, 0, "color")) else {
                return .error(-32602, "Invalid params: color must be [r,g,b,a], \"#RRGGBB\" or {r,g,b,a}")
            }
            rgba = c
            layerJ = arg(params, 0, "layer_id")
        }
        var layer: Int32 = 0
        if let layerJ {
            guard let l = jInt32(layerJ) else { return .error(-32602, "Invalid params: layer_id must be an integer") }
            layer = l
        }
        project.add(key, VoxelValue(rgba: rgba, layer: layer))
        let o = jObject()
        jSet(o, "success", jBool(true))
        voxelResult(key, o)
        jSet(o, "layer_id", jInt(Int(layer)))
        jSet(o, "color", colorJSON(rgba))
        return .result(o)
    }

    private func removeVoxel(_ params: JSONRef?) -> MethodOutcome {
        guard let key = coordinates(params) else {
            return .error(-32602, "Invalid params: expected [x, y, z, layer_id] or {\"x\", \"y\", \"z\"}")
        }
        var layer: Int32 = 0
        if let lj = arg(params, 3, "layer_id") {
            guard let l = jInt32(lj) else { return .error(-32602, "Invalid params: layer_id must be an integer") }
            layer = l
        }
        let existed = project.remove(key)
        let o = jObject()
        jSet(o, "success", jBool(true))
        voxelResult(key, o)
        jSet(o, "layer_id", jInt(Int(layer)))
        jSet(o, "removed", jBool(existed))
        return .result(o)
    }

    private func getVoxel(_ params: JSONRef?) -> MethodOutcome {
        guard let key = coordinates(params) else {
            return .error(-32602, "Invalid params: expected [x, y, z] or {\"x\", \"y\", \"z\"}")
        }
        let v = project.get(key)
        let o = jObject()
        voxelResult(key, o)
        jSet(o, "exists", jBool(v != nil))
        jSet(o, "color", v.map { colorJSON($0.rgba) } ?? jNull())
        return .result(o)
    }
}
