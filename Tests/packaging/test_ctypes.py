#!/usr/bin/env python3
"""libgoxelpool through Python's ctypes: the C ABI as any FFI sees it.

    test_ctypes.py LIBRARY SOCKET [HEADER]

LIBRARY is the built libgoxelpool.so, SOCKET a running goxel-refd's socket, HEADER
include/goxelpool.h (for GOXELPOOL_VERSION_STRING). Prints "PASS ctypes:NAME" or
"FAIL ctypes:NAME: why" per check; exits 1 if any failed.

jansson is used through ctypes too. json_incref/json_decref are static inline functions in
jansson.h, so there is nothing to call: decref() below does what json_decref does (skip the
immortal refcount (size_t)-1, decrement, json_delete at zero). It decrements without an atomic
instruction, which is correct only for values this thread owns exclusively: the values built here
(the library only borrows them, and copies what it keeps) and the new references the library
returns. Borrowed values (an event inside a listener) are never decref'd.
"""
import ctypes
import json
import os
import re
import sys
import threading
import time

FAILURES = []


def check(name, ok, why=""):
    if ok:
        print(f"PASS ctypes:{name}", flush=True)
    else:
        FAILURES.append(name)
        print(f"FAIL ctypes:{name}{': ' + why if why else ''}", flush=True)
    return ok


# ---- jansson ------------------------------------------------------------------------------------

class JsonT(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("refcount", ctypes.c_size_t)]


JSON_P = ctypes.POINTER(JsonT)
SIZE_MAX = (1 << (8 * ctypes.sizeof(ctypes.c_size_t))) - 1
JSON_DECODE_ANY = 0x4
JSON_COMPACT = 0x20
JSON_ENCODE_ANY = 0x200

jansson = ctypes.CDLL("libjansson.so.4")
jansson.json_loads.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
jansson.json_loads.restype = JSON_P
jansson.json_dumps.argtypes = [JSON_P, ctypes.c_size_t]
jansson.json_dumps.restype = ctypes.c_void_p  # malloc'd: freed with libc free()
jansson.json_delete.argtypes = [JSON_P]
jansson.json_delete.restype = None
libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]
libc.free.restype = None


def to_json(value):
    """A new jansson value (owned by the caller) from a Python value."""
    p = jansson.json_loads(json.dumps(value).encode(), JSON_DECODE_ANY, None)
    if not p:
        raise ValueError(f"json_loads failed for {value!r}")
    return p


def from_json(p):
    """The Python value of a jansson value (borrowed: not released). None for NULL."""
    if not p:
        return None
    text = jansson.json_dumps(p, JSON_COMPACT | JSON_ENCODE_ANY)
    if not text:
        raise ValueError("json_dumps failed")
    try:
        return json.loads(ctypes.string_at(text).decode())
    finally:
        libc.free(text)


def decref(p):
    """json_decref for a value this thread owns exclusively (see the module's docstring)."""
    if not p:
        return
    rc = p.contents.refcount
    if rc == SIZE_MAX:
        return
    p.contents.refcount = rc - 1
    if rc - 1 == 0:
        jansson.json_delete(p)


# ---- libgoxelpool -------------------------------------------------------------------------------

OK, EINVAL, ERPC = 0, 1, 7
EVENT_ALL = 0x3F
EVENT_CB = ctypes.CFUNCTYPE(None, JSON_P, ctypes.c_void_p)
FUNCTIONS = {
    # name: (restype, argtypes)
    "goxelpool_version": (ctypes.c_char_p, []),
    "goxelpool_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "goxelpool_status_name": (ctypes.c_char_p, [ctypes.c_int]),
    "goxelpool_last_error": (ctypes.c_char_p, []),
    "goxelpool_client_new": (ctypes.c_int, [JSON_P, ctypes.POINTER(ctypes.c_void_p),
                                            ctypes.c_char_p, ctypes.c_size_t]),
    "goxelpool_client_close": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "goxelpool_client_free": (None, [ctypes.c_void_p]),
    "goxelpool_call": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, JSON_P, ctypes.c_int,
                                      ctypes.POINTER(JSON_P), ctypes.POINTER(JSON_P)]),
    "goxelpool_stats": (JSON_P, [ctypes.c_void_p]),
    "goxelpool_health": (JSON_P, [ctypes.c_void_p]),
    "goxelpool_add_listener": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint, EVENT_CB,
                                              ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]),
    "goxelpool_remove_listener": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
}


def header_version(path):
    try:
        with open(path) as f:
            m = re.search(r'#define\s+GOXELPOOL_VERSION_STRING\s+"([^"]*)"', f.read())
        return m.group(1) if m else None
    except OSError:
        return None


def main():
    if len(sys.argv) < 3:
        print("usage: test_ctypes.py LIBRARY SOCKET [HEADER]", file=sys.stderr)
        return 2
    lib_path, socket_path = sys.argv[1], sys.argv[2]
    header = sys.argv[3] if len(sys.argv) > 3 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "include", "goxelpool.h")

    try:
        lib = ctypes.CDLL(lib_path)  # CDLL releases the GIL during every call
    except OSError as e:
        check("load", False, str(e))
        return 1
    check("load", True)
    missing = [name for name in FUNCTIONS if not hasattr(lib, name)]
    if not check("symbols", not missing, "missing: " + " ".join(missing)):
        return 1
    for name, (restype, argtypes) in FUNCTIONS.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes

    want = header_version(header)
    got = lib.goxelpool_version().decode()
    check("version", want is not None and got == want, f"goxelpool_version() {got!r}, header {want!r}")
    names = [lib.goxelpool_status_name(s).decode() for s in (0, 1, 7, 999)]
    check("status-names", names == ["OK", "EINVAL", "ERPC", "UNKNOWN"], repr(names))
    check("strerror", all(lib.goxelpool_strerror(s) for s in (0, 7, 999)), "empty strerror")

    # A bad configuration: EINVAL, the message names the key, no client.
    errbuf = ctypes.create_string_buffer(256)
    client = ctypes.c_void_p(1)
    bad = to_json({"socket_path": socket_path, "no_such_key": 1})
    st = lib.goxelpool_client_new(bad, ctypes.byref(client), errbuf, len(errbuf))
    decref(bad)
    check("config-rejected", st == EINVAL and not client.value and b"no_such_key" in errbuf.value,
          f"status {st}, client {client.value}, message {errbuf.value!r}")

    config = to_json({"socket_path": socket_path, "timeout_ms": 5000,
                      "pool": {"min_connections": 1, "max_connections": 2}})
    client = ctypes.c_void_p()
    st = lib.goxelpool_client_new(config, ctypes.byref(client), errbuf, len(errbuf))
    decref(config)  # borrowed by goxelpool_client_new
    if not check("client-new", st == OK and client.value, f"status {st}: {errbuf.value!r}"):
        return 1

    # The listener: runs on a library thread; records the thread and the events.
    main_thread = threading.get_ident()
    events, event_threads, got_event = [], set(), threading.Event()

    def on_event(event, userdata):
        try:
            events.append(from_json(event))  # borrowed: never decref'd here
            event_threads.add(threading.get_ident())
            got_event.set()
        except Exception as e:  # an exception must not cross into C
            print(f"listener raised {e!r}", file=sys.stderr)

    listener = EVENT_CB(on_event)  # kept alive until after goxelpool_client_free
    listener_id = ctypes.c_int(-1)
    st = lib.goxelpool_add_listener(client, EVENT_ALL, listener, None, ctypes.byref(listener_id))
    check("add-listener", st == OK and listener_id.value >= 0, f"status {st}, id {listener_id.value}")

    def call(method, params=None):
        """(status, result, rpc_error) as Python values; releases the library's references."""
        result, rpc_error = JSON_P(), JSON_P()
        p = to_json(params) if params is not None else None
        status = lib.goxelpool_call(client, method.encode(), p, -1, ctypes.byref(result),
                                    ctypes.byref(rpc_error))
        decref(p)
        values = from_json(result), from_json(rpc_error)
        decref(result)  # new references
        decref(rpc_error)
        return (status,) + values

    st, result, err = call("version")
    check("call-version", st == OK and isinstance(result, dict) and "version" in result and err is None,
          f"status {st}, result {result!r}, error {err!r}")
    payload = [1, "two", {"three": 3.5, "four": [None, True]}]
    st, result, err = call("echo", payload)
    check("call-echo", st == OK and result == payload, f"status {st}, result {result!r}, error {err!r}")
    st, result, err = call("no.such_method", {})
    check("call-erpc", st == ERPC and result is None and isinstance(err, dict) and err.get("code") == -32601,
          f"status {st}, result {result!r}, error {err!r}")
    last = lib.goxelpool_last_error()
    check("last-error", st != ERPC or bool(last), "empty goxelpool_last_error() after ERPC")

    got_event.wait(5.0)
    check("events", len(events) > 0 and all(isinstance(e, dict) and "kind" in e for e in events),
          f"{len(events)} events in 5 s: {events[:3]!r}")
    check("events-on-library-thread", bool(event_threads) and main_thread not in event_threads,
          f"main thread {main_thread}, listener threads {event_threads}")

    stats = lib.goxelpool_stats(client)
    stats_value = from_json(stats)
    decref(stats)
    check("stats", isinstance(stats_value, dict), repr(stats_value))
    health = lib.goxelpool_health(client)
    health_value = from_json(health)
    decref(health)
    check("health", isinstance(health_value, dict), repr(health_value))

    st = lib.goxelpool_client_close(client, -1)
    st2 = lib.goxelpool_client_close(client, -1)
    check("close", st == OK and st2 == OK, f"close {st}, second close {st2}")
    st, _, _ = call("ping")
    check("call-after-close", st == 3, f"status {st}, expected ECLOSED (3)")
    lib.goxelpool_client_free(client)
    n = len(events)
    time.sleep(0.3)
    check("no-events-after-free", len(events) == n, f"{len(events) - n} events after free")
    del listener
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
