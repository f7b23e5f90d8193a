// The daemon's methods (a subset of the real daemon's 34, with the same names, parameters and
// result shapes) and the in-memory voxel project.
//
// Choice documented here: there is always a project. At start (and until the first
// `goxel.create_project`) a default project "Untitled" of 64x64x64 exists, so `goxel.add_voxel`
// without a prior `goxel.create_project` succeeds on it instead of failing with -1004.
// Methods of the real daemon that are not implemented here answer -32601 like unknown methods.

import CJansson
import Glibc
import Synchronization

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
    /// Layer 0 always exists; `goxel.create_layer` adds more (not idempotent: each call adds one).
    private var layers: [(id: Int32, name: String)] = [(0, "Layer 1")]

    func create(name: String, width: Int32, height: Int32, depth: Int32) {
        lock.withLock {
            self.name = name
            self.width = width
            self.height = height
            self.depth = depth
            voxels.removeAll(keepingCapacity: true)
            layers = [(0, "Layer 1")]
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

    func addLayer(name: String?) -> (id: Int32, name: String) {
        lock.withLock {
            let id = (layers.map(\.id).max() ?? 0) + 1
            let layer = (id: id, name: name ?? "Layer \(id + 1)")
            layers.append(layer)
            return layer
        }
    }

    func layerList() -> [(id: Int32, name: String)] { lock.withLock { layers } }

    func status() -> (name: String, width: Int32, height: Int32, depth: Int32, count: Int, layers: Int) {
        lock.withLock { (name, width, height, depth, voxels.count, layers.count) }
    }

    /// The document as JSON (new reference): refd's own file format for save/load_project
    /// (the real daemon writes .gox; nothing outside refd reads these files).
    func toJSON() -> JSONRef {
        lock.withLock {
            let o = jObject()
            jSet(o, "format", jString("goxel-refd-project"))
            jSet(o, "version", jInt(1))
            jSet(o, "name", jString(name))
            jSet(o, "width", jInt(Int(width)))
            jSet(o, "height", jInt(Int(height)))
            jSet(o, "depth", jInt(Int(depth)))
            let layerArray = jArray()
            for layer in layers {
                let l = jObject()
                jSet(l, "id", jInt(Int(layer.id)))
                jSet(l, "name", jString(layer.name))
                jAppend(layerArray, l)
            }
            jSet(o, "layers", layerArray)
            let voxelArray = jArray()
            for (key, value) in voxels {
                let v = jArray()
                for n in [Int(key.x), Int(key.y), Int(key.z), Int(value.rgba.0), Int(value.rgba.1), Int(value.rgba.2),
                          Int(value.rgba.3), Int(value.layer)] { jAppend(v, jInt(n)) }
                jAppend(voxelArray, v)
            }
            jSet(o, "voxels", voxelArray)
            return o
        }
    }

    /// Replaces the document with a saved one (borrowed); nil on success, else what is wrong.
    func load(_ document: JSONRef) -> String? {
        guard jType(document) == JSON_OBJECT,
              jStringValue(json_object_get(document, "format")) == "goxel-refd-project" else { return "not a goxel-refd project file" }
        guard let w = jInt32(json_object_get(document, "width")), let h = jInt32(json_object_get(document, "height")),
              let d = jInt32(json_object_get(document, "depth")), let newName = jStringValue(json_object_get(document, "name")),
              let layerArray = json_object_get(document, "layers"), jType(layerArray) == JSON_ARRAY,
              let voxelArray = json_object_get(document, "voxels"), jType(voxelArray) == JSON_ARRAY else {
            return "project file is missing name, size, layers or voxels"
        }
        var newLayers: [(id: Int32, name: String)] = []
        for index in 0..<json_array_size(layerArray) {
            let l = json_array_get(layerArray, index)
            guard let l, let id = jInt32(json_object_get(l, "id")), let layerName = jStringValue(json_object_get(l, "name")) else {
                return "layer \(index) is malformed"
            }
            newLayers.append((id, layerName))
        }
        var newVoxels: [VoxelKey: VoxelValue] = [:]
        for index in 0..<json_array_size(voxelArray) {
            guard let v = json_array_get(voxelArray, index), jType(v) == JSON_ARRAY, json_array_size(v) == 8 else {
                return "voxel \(index) is malformed"
            }
            var n: [Int32] = []
            for i in 0..<8 {
                guard let value = jInt32(json_array_get(v, i)) else { return "voxel \(index) is malformed" }
                n.append(value)
            }
            guard (3...6).allSatisfy({ n[$0] >= 0 && n[$0] <= 255 }) else { return "voxel \(index) has a bad colour" }
            newVoxels[VoxelKey(x: n[0], y: n[1], z: n[2])] =
                VoxelValue(rgba: (UInt8(n[3]), UInt8(n[4]), UInt8(n[5]), UInt8(n[6])), layer: n[7])
        }
        lock.withLock {
            name = newName
            width = w; height = h; depth = d
            layers = newLayers.isEmpty ? [(0, "Layer 1")] : newLayers
            voxels = newVoxels
        }
        return nil
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
    ("goxel.create_layer", "Add a layer [name]"),
    ("goxel.save_project", "Save the project to a file [path]"),
    ("goxel.load_project", "Load a project from a file [path]"),
]

final class Methods: @unchecked Sendable {
    let project = VoxelProject()
    let startTime = monotonicSeconds()
    let stats: ServerStats
    let faults: FaultStore
    /// Bumped by every goxel.create_project: a pending crash timer fires only if it is the last.
    private let createGeneration = Atomic<UInt64>(0)

    init(stats: ServerStats, faults: FaultStore) {
        self.stats = stats
        self.faults = faults
    }

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
            jSet(o, "layers", jInt(s.layers))
            return .result(o)
        case "goxel.list_layers":
            let a = jArray()
            let layers = project.layerList()
            for entry in layers {
                let layer = jObject()
                jSet(layer, "id", jInt(Int(entry.id)))
                jSet(layer, "name", jString(entry.name))
                jSet(layer, "visible", jBool(true))
                jAppend(a, layer)
            }
            let o = jObject()
            jSet(o, "layers", a)
            jSet(o, "count", jInt(layers.count))
            return .result(o)
        case "goxel.create_layer":
            var name: String?
            if let j = arg(params, 0, "name") {
                guard let text = jStringValue(j) else { return .error(-32602, "Invalid params: name must be a string") }
                name = text
            }
            let layer = project.addLayer(name: name)
            let o = jObject()
            jSet(o, "success", jBool(true))
            jSet(o, "layer_id", jInt(Int(layer.id)))
            jSet(o, "name", jString(layer.name))
            return .result(o)
        case "goxel.save_project": return saveProject(params)
        case "goxel.load_project": return loadProject(params)
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
        armCrashTimer()
        let o = jObject()
        jSet(o, "success", jBool(true))
        jSet(o, "name", jString(name))
        jSet(o, "width", jInt(Int(dims[0])))
        jSet(o, "height", jInt(Int(dims[1])))
        jSet(o, "depth", jInt(Int(dims[2])))
        return .result(o)
    }

    /// The real daemon SIGSEGVs 300 s after the last goxel.create_project (load_project does not
    /// arm it). refd does the same after `crash_after_create_ms` when that fault is set.
    private func armCrashTimer() {
        let delay = faults.snapshot().crashAfterCreateMs
        let generation = createGeneration.add(1, ordering: .acquiringAndReleasing).newValue
        guard delay > 0 else { return }
        _ = startDetachedThread(stackSize: 64 * 1024) { [self] in
            sleepMilliseconds(delay)
            guard createGeneration.load(ordering: .acquiring) == generation else { return }
            vlog("crash timer: \(delay) ms after the last goxel.create_project: crashing like the real daemon")
            crashNow()
        }
    }

    /// `goxel.save_project [path]`: the document to `path` on this machine, written to a temporary
    /// file first and renamed, so a crash mid-save leaves the previous file whole.
    private func saveProject(_ params: JSONRef?) -> MethodOutcome {
        guard let path = jStringValue(arg(params, 0, "path")), !path.isEmpty else {
            return .error(-32602, "Invalid params: expected [path]")
        }
        let document = project.toJSON()
        defer { json_decref(document) }
        let temporary = path + ".tmp-\(getpid())"
        guard json_dump_file(document, temporary, Int(JSON_COMPACT)) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            return .error(-1011, "Failed to save project to \(path): \(reason)")
        }
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            return .error(-1011, "Failed to save project to \(path): \(reason)")
        }
        let o = jObject()
        jSet(o, "success", jBool(true))
        jSet(o, "path", jString(path))
        return .result(o)
    }

    /// `goxel.load_project [path]`: replaces the document. Does not arm the crash timer.
    private func loadProject(_ params: JSONRef?) -> MethodOutcome {
        guard let path = jStringValue(arg(params, 0, "path")), !path.isEmpty else {
            return .error(-32602, "Invalid params: expected [path]")
        }
        var error = json_error_t()
        guard let document = json_load_file(path, 0, &error) else {
            let detail = withUnsafeBytes(of: &error.text) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            return .error(-1012, "Failed to load project from \(path): \(detail)")
        }
        defer { json_decref(document) }
        if let problem = project.load(document) {
            return .error(-1012, "Failed to load project from \(path): \(problem)")
        }
        let s = project.status()
        let o = jObject()
        jSet(o, "success", jBool(true))
        jSet(o, "path", jString(path))
        jSet(o, "voxel_count", jInt(s.count))
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
