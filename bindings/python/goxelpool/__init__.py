"""goxelpool: Python bindings for libgoxelpool over ctypes (no compiled extension).

    import goxelpool

    with goxelpool.Client(socket_path="/tmp/goxel-daemon.sock", pool={"max_connections": 4}) as client:
        print(client.call("version"))
        try:
            client.call("no.such_method")
        except goxelpool.RPCError as e:
            print(e.code, e.message)

For asyncio, ``goxelpool.AsyncClient`` (module ``goxelpool.aio``) runs on a dispatch-mode client:
``await client.call(...)``, with every callback run on the event loop's thread.

The shared library is found through the environment variable ``GOXELPOOL_LIBRARY`` (a path), else
the copy inside this package (a wheel built by ``make wheel`` carries it, and the libraries it
needs), else the dynamic loader's search path (``libgoxelpool.so.1``: LD_LIBRARY_PATH, ldconfig's
cache), else ``lib/`` of the Python prefix, ``/usr/local/lib`` and the ``libdir`` that
``pkg-config goxelpool`` names, else ``ctypes.util.find_library("goxelpool")``. jansson's
functions are looked up through the library's own handle, so they are those of the very copy of
jansson that the library links (the system's, or the one the wheel carries).

JSON crosses the boundary as Python values: a value going in is serialized with the ``json``
module, parsed by jansson (``json_loadb``) into a ``json_t`` that the library borrows, and released
when the call returns; a value coming out is serialized by jansson (``json_dumpb``) and parsed with
``json``. The library is never handed a Python object.

Releasing a jansson reference (``json_decref``) from Python
-------------------------------------------------------------
``json_incref``/``json_decref`` are ``static inline`` functions in jansson.h: there is no symbol to
call. jansson's ``json_decref`` decrements ``json_t.refcount`` *atomically* (``__atomic_sub_fetch``)
and calls the exported ``json_delete`` when it reaches 0. Python cannot do an atomic decrement
through ctypes, and a plain read-modify-write of the field is only correct while no other thread
can touch the same value (true for the values this module builds and, per the header, for the new
references the library hands over, but that relies on the library never keeping a reference of
its own to a value it returns).

This module does not rely on that. ``_decref`` moves the reference into a fresh array with
``json_array_append_new`` (which steals it, also when it fails) and deletes that array with
``json_delete``. The array is ours alone (refcount 1, never shared), so deleting it directly is
exactly what ``json_decref`` would do; deleting an array releases each element with
``json_decref`` *compiled inside libjansson*, i.e. with jansson's own atomic decrement and its
immortal-value check. The cost is one small allocation per release. Borrowed values (the event of
a listener, the result of an async callback) are only read, never released.

Callbacks
---------
The C callbacks are two module-level ``CFUNCTYPE`` trampolines that live as long as the module.
The ``userdata`` passed to C is an integer token that indexes a registry of Python callables, so
no ctypes callback object can be garbage-collected while the library may still call it: an async
call's entry is removed when its callback has run (exactly once, also with ``PoolClosed`` at
shutdown), a listener's when it is removed or its client is closed. Callbacks run on library
threads; an exception raised by your callable is logged on the ``goxelpool`` logger and never
crosses into C.

Every ctypes call into the library releases the GIL, so library threads can run Python callbacks
while a Python thread waits in ``call``, ``close`` or ``remove_listener``.

Lifetime: ``close()`` (or leaving the ``with`` block) stops the client; the C object is freed when
the ``Client`` is garbage-collected. At interpreter exit every client still open is closed (its
library threads joined) before Python tears itself down, so no callback runs into a finalizing
interpreter.
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import enum
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

__version__ = "1.4.3"  # the library's version this module is written for (GOXELPOOL_VERSION_STRING)

__all__ = [
    "Client", "AsyncClient", "Outcome", "Status", "EventKind", "version", "strerror", "status_name",
    "library_path",
    "GoxelPoolError", "InvalidArgument", "PoolTimeout", "PoolClosed", "ConnectError",
    "ConnectionBroken", "ProtocolError", "RPCError", "Busy", "Unavailable", "TooBig", "PeerError",
    "NoMemory",
    "SessionLost",
]

_log = logging.getLogger("goxelpool")

# JSON values accepted as params: an array, an object, or None (no params).
Params = Union[Sequence[Any], Mapping[str, Any], None]
# A batch request: {"method": ..., "params": ...}, (method, params), or just the method name.
BatchRequest = Union[Mapping[str, Any], Tuple[str, Params], str]


# ---- statuses, event kinds ----------------------------------------------------------------------

class Status(enum.IntEnum):
    """goxelpool_status. Values are never renumbered."""
    OK = 0
    EINVAL = 1
    ETIMEDOUT = 2
    ECLOSED = 3
    ECONNECT = 4
    EIO = 5
    EPROTO = 6
    ERPC = 7
    EBUSY = 8
    EUNAVAILABLE = 9
    ETOOBIG = 10
    EPEER = 11
    ENOMEM = 12
    ELOST = 13


class EventKind(enum.IntFlag):
    """Event kinds, a bit mask for Client.add_listener."""
    ALERT = 1 << 0
    HEALTH = 1 << 1
    CONNECTION = 1 << 2
    POOL = 1 << 3
    REQUEST = 1 << 4
    LOG = 1 << 5
    SESSION = 1 << 6
    DAEMON = 1 << 7
    ALL = 0xFF


# ---- exceptions ---------------------------------------------------------------------------------

class GoxelPoolError(Exception):
    """A failed call. ``status`` is the Status (an int for values this module does not know),
    ``message`` the library's detail (goxelpool_last_error, the batch item's message, ...)."""
    status: Union[Status, int] = -1

    def __init__(self, message: str, *, status: Union[Status, int, None] = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidArgument(GoxelPoolError, ValueError):
    """EINVAL: bad argument or configuration; the message names it."""
    status = Status.EINVAL


class PoolTimeout(GoxelPoolError, TimeoutError):
    """ETIMEDOUT: the deadline passed (waiting for a connection or for the answer)."""
    status = Status.ETIMEDOUT


class PoolClosed(GoxelPoolError):
    """ECLOSED: the client is closed or closing."""
    status = Status.ECLOSED


class ConnectError(GoxelPoolError, ConnectionError):
    """ECONNECT: no connection to the daemon could be opened."""
    status = Status.ECONNECT


class ConnectionBroken(GoxelPoolError, ConnectionError):
    """EIO: the connection broke; a non-idempotent call may have run."""
    status = Status.EIO


class ProtocolError(GoxelPoolError):
    """EPROTO: the daemon answered something that is not a valid answer."""
    status = Status.EPROTO


class RPCError(GoxelPoolError):
    """ERPC: the daemon answered with a JSON-RPC error. ``code``, ``data`` (None if absent) and
    ``error`` (the whole error object) come from the daemon's answer."""
    status = Status.ERPC

    def __init__(self, message: str, *, code: Optional[int] = None, data: Any = None,
                 error: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data
        self.error = error if error is not None else {}


class Busy(GoxelPoolError):
    """EBUSY: the wait queue is full."""
    status = Status.EBUSY


class Unavailable(GoxelPoolError):
    """EUNAVAILABLE: the daemon is known to be down (circuit open); failed fast."""
    status = Status.EUNAVAILABLE


class TooBig(GoxelPoolError):
    """ETOOBIG: a request or an answer is larger than max_message_size."""
    status = Status.ETOOBIG


class PeerError(GoxelPoolError, PermissionError):
    """EPEER: refused, a configuration fault: the socket is served by a process of another user, or
    TLS verification failed (untrusted certificate, wrong name), or the server refused our client
    certificate."""
    status = Status.EPEER


class NoMemory(GoxelPoolError, MemoryError):
    """ENOMEM: out of memory."""
    status = Status.ENOMEM


class SessionLost(GoxelPoolError):
    """ELOST: a session's document was lost and could not be restored."""
    status = Status.ELOST


_ERRORS: Dict[int, "type[GoxelPoolError]"] = {
    cls.status: cls for cls in (InvalidArgument, PoolTimeout, PoolClosed, ConnectError,
                                ConnectionBroken, ProtocolError, RPCError, Busy, Unavailable,
                                TooBig, PeerError, NoMemory, SessionLost)
}


def _status(value: int) -> Union[Status, int]:
    try:
        return Status(value)
    except ValueError:
        return value


def _rpc_error(error: Any) -> RPCError:
    if not isinstance(error, dict):
        return RPCError(f"daemon error: {error!r}", error={"error": error})
    code = error.get("code")
    text = error.get("message", "")
    return RPCError(f"daemon error {code}: {text}", code=code if isinstance(code, int) else None,
                    data=error.get("data"), error=error)


def _error(status: int, message: str) -> GoxelPoolError:
    if not message:
        message = strerror(status)
    cls = _ERRORS.get(status)
    if cls is None:
        return GoxelPoolError(message, status=_status(status))
    return cls(message)


# ---- the libraries ------------------------------------------------------------------------------

_JSON_DECODE_ANY = 0x4
_JSON_ALLOW_NUL = 0x10
_JSON_COMPACT = 0x20
_JSON_ENCODE_ANY = 0x200
_JSON_ERROR_SIZE = 512          # >= sizeof(json_error_t) (252 in jansson 2.x)
_JSON_ERROR_TEXT_OFFSET = 92    # 3 ints + source[80]
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1

_P = ctypes.c_void_p            # json_t *, goxelpool_client *: opaque here
_CALL_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, _P, _P, _P)
_EVENT_CB = ctypes.CFUNCTYPE(None, _P, _P)

_FUNCTIONS = {
    "goxelpool_version": (ctypes.c_char_p, []),
    "goxelpool_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "goxelpool_status_name": (ctypes.c_char_p, [ctypes.c_int]),
    "goxelpool_last_error": (ctypes.c_char_p, []),
    "goxelpool_client_new": (ctypes.c_int, [_P, ctypes.POINTER(_P), ctypes.c_char_p, ctypes.c_size_t]),
    "goxelpool_client_close": (ctypes.c_int, [_P, ctypes.c_int]),
    "goxelpool_client_free": (None, [_P]),
    "goxelpool_call": (ctypes.c_int, [_P, ctypes.c_char_p, _P, ctypes.c_int,
                                      ctypes.POINTER(_P), ctypes.POINTER(_P)]),
    "goxelpool_call_async": (ctypes.c_int, [_P, ctypes.c_char_p, _P, ctypes.c_int, _CALL_CB, _P]),
    "goxelpool_notify": (ctypes.c_int, [_P, ctypes.c_char_p, _P]),
    "goxelpool_call_batch": (ctypes.c_int, [_P, _P, ctypes.c_int, ctypes.POINTER(_P)]),
    "goxelpool_stats": (_P, [_P]),
    "goxelpool_health": (_P, [_P]),
    "goxelpool_add_listener": (ctypes.c_int, [_P, ctypes.c_uint, _EVENT_CB, _P, ctypes.POINTER(ctypes.c_int)]),
    "goxelpool_remove_listener": (ctypes.c_int, [_P, ctypes.c_int]),
    "goxelpool_event_fd": (ctypes.c_int, [_P]),
    "goxelpool_dispatch": (ctypes.c_int, [_P, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]),
    "goxelpool_metrics_text": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_void_p)]),
    "goxelpool_free": (None, [ctypes.c_void_p]),
}
_JANSSON_FUNCTIONS = {
    "json_loadb": (_P, [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]),
    "json_dumpb": (ctypes.c_size_t, [_P, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
    "json_array": (_P, []),
    "json_array_append_new": (ctypes.c_int, [_P, _P]),
    "json_delete": (None, [_P]),
}


class _Libraries:
    def __init__(self, gp: ctypes.CDLL, path: str, jansson: ctypes.CDLL) -> None:
        self.gp = gp
        self.path = path
        self.jansson = jansson


_libs: Optional[_Libraries] = None
_libs_lock = threading.Lock()


_SONAME = "libgoxelpool.so.1"


def _candidate_paths() -> List[str]:
    """Where an installed library may be, after the loader's own search path."""
    dirs = [os.path.join(sys.prefix, "lib"), "/usr/local/lib"]
    pkg_config = shutil.which("pkg-config")
    if pkg_config:
        try:
            out = subprocess.run([pkg_config, "--variable=libdir", "goxelpool"], capture_output=True,
                                 text=True, timeout=10, check=False)
            if out.returncode == 0 and out.stdout.strip():
                dirs.insert(0, out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return [os.path.join(d, _SONAME) for d in dirs]


def _open_library() -> Tuple[ctypes.CDLL, str]:
    override = os.environ.get("GOXELPOOL_LIBRARY")
    if override:
        return ctypes.CDLL(override), override
    errors = []
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), _SONAME)
    if os.path.exists(bundled):
        return ctypes.CDLL(bundled), bundled
    try:
        return ctypes.CDLL(_SONAME), _SONAME
    except OSError as e:
        errors.append(str(e))
    for path in _candidate_paths():
        if os.path.exists(path):
            try:
                return ctypes.CDLL(path), path
            except OSError as e:
                errors.append(str(e))
    found = ctypes.util.find_library("goxelpool")
    if found:
        try:
            return ctypes.CDLL(found), found
        except OSError as e:
            errors.append(str(e))
    raise OSError("cannot load libgoxelpool (install it, or set GOXELPOOL_LIBRARY to the path of "
                  "libgoxelpool.so.1): " + "; ".join(errors))


def _load() -> _Libraries:
    global _libs
    if _libs is not None:
        return _libs
    with _libs_lock:
        if _libs is None:
            gp, path = _open_library()   # CDLL: every call releases the GIL
            # A second handle on the same library: dlsym through it finds jansson's functions in
            # the library's own dependencies, i.e. in the copy of jansson it links.
            jansson = ctypes.CDLL(path)
            for lib, table in ((gp, _FUNCTIONS), (jansson, _JANSSON_FUNCTIONS)):
                for name, (restype, argtypes) in table.items():
                    fn = getattr(lib, name)
                    fn.restype, fn.argtypes = restype, argtypes
            _libs = _Libraries(gp, path, jansson)
    return _libs


def _text(raw: Optional[bytes]) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def version() -> str:
    """The library's version at run time, e.g. "1.4.3"."""
    return _text(_load().gp.goxelpool_version())


def strerror(status: int) -> str:
    """A static English sentence for any status value."""
    return _text(_load().gp.goxelpool_strerror(int(status)))


def status_name(status: int) -> str:
    """The status's name ("OK", "EINVAL", ...; "UNKNOWN" for other values)."""
    return _text(_load().gp.goxelpool_status_name(int(status)))


def library_path() -> str:
    """How the shared library was loaded (a path or the soname given to the loader)."""
    return _load().path


def _last_error() -> str:
    return _text(_load().gp.goxelpool_last_error())


# ---- JSON across the boundary -------------------------------------------------------------------

def _to_json(value: Any) -> int:
    """A new jansson value (a reference owned by the caller, released with _decref)."""
    text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    error = ctypes.create_string_buffer(_JSON_ERROR_SIZE)
    p = _load().jansson.json_loadb(text, len(text), _JSON_DECODE_ANY | _JSON_ALLOW_NUL, error)
    if not p:
        detail = error.raw[_JSON_ERROR_TEXT_OFFSET:].split(b"\0", 1)[0].decode("utf-8", "replace")
        raise InvalidArgument(f"value not representable in jansson: {detail}")
    return int(p)


def _from_json(p: Optional[int]) -> Any:
    """The Python value of a jansson value, which is only read (borrowed). None for NULL."""
    if not p:
        return None
    jansson = _load().jansson
    flags = _JSON_COMPACT | _JSON_ENCODE_ANY
    size = jansson.json_dumpb(p, None, 0, flags)
    if size == 0:
        raise NoMemory("json_dumpb failed")
    buf = ctypes.create_string_buffer(size)
    if jansson.json_dumpb(p, buf, size, flags) != size:
        raise NoMemory("json_dumpb failed")
    return json.loads(buf.raw[:size].decode("utf-8"))


def _decref(p: Optional[int]) -> None:
    """json_decref(p) with jansson's own atomic decrement (see the module's docstring)."""
    if not p:
        return
    jansson = _load().jansson
    holder = jansson.json_array()
    if not holder:
        return  # out of memory: leaking the value is the only safe choice
    jansson.json_array_append_new(holder, p)  # steals p's reference, also on failure
    jansson.json_delete(holder)               # holder is ours alone: frees it, json_decref(p) inside


def _take(p: Optional[int]) -> Any:
    """The Python value of a new reference, which is released."""
    try:
        return _from_json(p)
    finally:
        _decref(p)


def _params(params: Params) -> Optional[int]:
    return None if params is None else _to_json(params)


def _method(method: str) -> bytes:
    if not isinstance(method, str):
        raise InvalidArgument(f"method must be a str, got {type(method).__name__}")
    if "\0" in method:
        raise InvalidArgument("method must not contain NUL characters")
    return method.encode("utf-8")


def _timeout(timeout_ms: int, name: str = "timeout_ms") -> int:
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int):
        raise InvalidArgument(f"{name} must be an int, got {type(timeout_ms).__name__}")
    if not _INT_MIN <= timeout_ms <= _INT_MAX:
        raise InvalidArgument(f"{name} out of range: {timeout_ms}")
    return timeout_ms


# ---- outcomes -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """The outcome of one call of a batch, or of an async call: ``status``, and either ``result``
    (status OK) or ``error`` (a GoxelPoolError; an RPCError for ERPC)."""
    status: Union[Status, int]
    result: Any = None
    error: Optional[GoxelPoolError] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Any:
        """The result, or raises the error."""
        if self.error is not None:
            raise self.error
        return self.result


def _outcome_from_item(item: Any) -> Outcome:
    if not isinstance(item, dict):
        return Outcome(-1, error=ProtocolError(f"malformed batch outcome: {item!r}", status=-1))
    name = item.get("status")
    status: Union[Status, int] = Status.__members__.get(name, -1) if isinstance(name, str) else -1
    if status == Status.OK:
        return Outcome(Status.OK, result=item.get("result"))
    if status == Status.ERPC:
        return Outcome(Status.ERPC, error=_rpc_error(item.get("error")))
    message = item.get("message") or f"{name}"
    return Outcome(status, error=_error(status, message) if status != -1 else GoxelPoolError(message))


# ---- callbacks (module-level trampolines, userdata = token) -------------------------------------

# Reentrant: a Client's finalizer (which takes it) may run from the garbage collector anywhere,
# also on a thread that holds it.
_registry_lock = threading.RLock()
_tokens = itertools.count(1)
_pending: Dict[int, Tuple[Callable[[Outcome], None], "_State"]] = {}   # token -> (done, client state)
_listeners: Dict[int, Callable[[Dict[str, Any]], None]] = {}


def _report(what: str) -> None:
    _log.exception("goxelpool: %s raised (ignored; exceptions never cross into the library)", what)


def _on_call_done(status: int, result: Optional[int], rpc_error: Optional[int], userdata: Optional[int]) -> None:
    try:
        with _registry_lock:
            entry = _pending.pop(userdata or 0, None)
            if entry is not None:
                entry[1].pending.discard(userdata or 0)
        if entry is None:
            return
        done = entry[0]
        # result and rpc_error are borrowed: read during the callback, never released.
        if status == Status.OK:
            outcome = Outcome(Status.OK, result=_from_json(result))
        elif status == Status.ERPC:
            outcome = Outcome(Status.ERPC, error=_rpc_error(_from_json(rpc_error)))
        else:
            # The library sets this thread's last error just before the callback.
            outcome = Outcome(_status(status), error=_error(status, _last_error()))
        done(outcome)
    except BaseException:
        _report("async call callback")


def _on_event(event: Optional[int], userdata: Optional[int]) -> None:
    try:
        with _registry_lock:
            listener = _listeners.get(userdata or 0)
        if listener is None:
            return
        listener(_from_json(event))  # borrowed: never released here
    except BaseException:
        _report("listener")


_CALL_TRAMPOLINE = _CALL_CB(_on_call_done)
_EVENT_TRAMPOLINE = _EVENT_CB(_on_event)


# ---- lifetime -----------------------------------------------------------------------------------

class _State:
    """What a Client's finalizer needs (the finalizer must not reference the Client)."""

    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.lock = threading.Lock()
        self.listeners: Dict[int, int] = {}   # library listener id -> token
        self.pending: Set[int] = set()         # tokens of async calls whose callback has not run


def _forget(state: _State, token: int) -> None:
    with _registry_lock:
        _pending.pop(token, None)
        state.pending.discard(token)


def _start_call(state: _State, name: bytes, params: Params, timeout: int,
                done: Callable[[Outcome], None]) -> None:
    """goxelpool_call_async with ``done`` registered for its callback (Client.call_async and
    AsyncClient.call). Raises, and ``done`` never runs, when the library refuses the call."""
    p = _params(params)
    token = next(_tokens)
    with _registry_lock:
        _pending[token] = (done, state)
        state.pending.add(token)
    try:
        status = _load().gp.goxelpool_call_async(state.handle, name, p, timeout, _CALL_TRAMPOLINE, token)
        message = _last_error() if status != Status.OK else ""
    except BaseException:
        _forget(state, token)
        raise
    finally:
        _decref(p)  # the library copied it
    if status != Status.OK:
        _forget(state, token)  # the callback never runs
        raise _error(status, message)


_live: Set[int] = set()           # handles not yet freed
_exiting = False


def _drop_listeners(state: _State) -> None:
    """No listener runs after close: drop the callables (they often reference their client)."""
    with _registry_lock:
        for token in state.listeners.values():
            _listeners.pop(token, None)
        state.listeners.clear()


def _free(state: _State) -> None:
    """Finalizer: frees the C client (called when the Client is garbage-collected)."""
    _drop_listeners(state)
    with _registry_lock:
        exiting = _exiting
        if not exiting:
            _live.discard(state.handle)
    lib = _load().gp
    # Close first: queued async calls get their callback (PoolClosed). goxelpool_client_free alone
    # would close too, but it suppresses the callbacks. (From a callback of this client the close
    # is refused and the free is deferred by the library until the callback returns.)
    lib.goxelpool_client_close(state.handle, 0)
    if not exiting:  # at exit, _close_all_at_exit may still use the handle: never freed
        lib.goxelpool_client_free(state.handle)
    # Any async call whose callback did not run (a deferred free suppresses them) fails here, so
    # that no Future waits forever.
    with _registry_lock:
        leftovers = [_pending.pop(token, None) for token in state.pending]
        state.pending.clear()
    for entry in leftovers:
        if entry is not None:
            try:
                entry[0](Outcome(Status.ECLOSED, error=PoolClosed("client freed before the call completed")))
            except BaseException:
                _report("async call callback")


@atexit.register
def _close_all_at_exit() -> None:
    """Closes every client still open, so that no library thread calls into Python while the
    interpreter is finalizing. Handles are closed, not freed: a daemon thread may still hold one."""
    global _exiting
    with _registry_lock:
        _exiting = True
        handles = list(_live)
    if handles:
        lib = _load().gp
        for handle in handles:
            lib.goxelpool_client_close(handle, 0)


def _merged_config(config: Optional[Mapping[str, Any]], options: Mapping[str, Any]) -> Dict[str, Any]:
    merged: Dict[str, Any] = dict(config) if config is not None else {}
    merged.update(options)
    if "socket_path" in merged and isinstance(merged["socket_path"], os.PathLike):
        merged["socket_path"] = os.fspath(merged["socket_path"])
    return merged


def _new_client(config: Dict[str, Any]) -> _State:
    """goxelpool_client_new; the handle is registered for _close_all_at_exit."""
    lib = _load().gp
    p = _to_json(config)
    handle = _P()
    errbuf = ctypes.create_string_buffer(512)
    try:
        status = lib.goxelpool_client_new(p, ctypes.byref(handle), errbuf, len(errbuf))
    finally:
        _decref(p)  # borrowed by goxelpool_client_new
    if status != Status.OK or not handle.value:
        raise _error(status, _text(errbuf.value))
    state = _State(handle.value)
    with _registry_lock:
        _live.add(handle.value)
    return state


# ---- the client ---------------------------------------------------------------------------------

class _ClientBase:
    """What Client and AsyncClient share: the handle, snapshots and listeners."""

    _state: _State

    # -- statistics, health, events ----------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """A snapshot of the pool's statistics (also valid after close)."""
        value = _take(_load().gp.goxelpool_stats(self._state.handle))
        if not isinstance(value, dict):
            raise NoMemory("goxelpool_stats returned nothing")
        return value

    def health(self) -> Dict[str, Any]:
        """A snapshot of the health monitor (pool state, circuit breaker, per-connection health)."""
        value = _take(_load().gp.goxelpool_health(self._state.handle))
        if not isinstance(value, dict):
            raise NoMemory("goxelpool_health returned nothing")
        return value

    def metrics_text(self) -> str:
        """The statistics and health in the Prometheus text exposition format 0.0.4 (also valid
        after close): what a service returns from its /metrics endpoint."""
        out = ctypes.c_void_p()
        lib = _load().gp
        status = lib.goxelpool_metrics_text(self._state.handle, ctypes.byref(out))
        if status != Status.OK:
            raise _error(status, _last_error())
        try:
            return ctypes.string_at(out.value).decode("utf-8") if out.value else ""
        finally:
            lib.goxelpool_free(out)

    def add_listener(self, listener: Callable[[Dict[str, Any]], None],
                     kinds: Union[EventKind, int] = EventKind.ALL) -> int:
        """Calls ``listener(event)`` (a dict with at least "kind", "type", "timestamp_ms") for
        every event of the given kinds, one at a time, in order: on the client's event thread
        (Client), or on the event loop's thread (AsyncClient).
        Returns an id for remove_listener. The listener may use this client, except close()."""
        if not callable(listener):
            raise InvalidArgument("listener must be callable")
        mask = int(kinds)
        token = next(_tokens)
        with _registry_lock:
            _listeners[token] = listener  # before the library can call it
        listener_id = ctypes.c_int(-1)
        try:
            status = _load().gp.goxelpool_add_listener(self._state.handle, ctypes.c_uint(mask & 0xFFFFFFFF),
                                                       _EVENT_TRAMPOLINE, token, ctypes.byref(listener_id))
            message = _last_error() if status != Status.OK else ""
        except BaseException:
            with _registry_lock:
                _listeners.pop(token, None)
            raise
        if status != Status.OK:
            with _registry_lock:
                _listeners.pop(token, None)
            raise _error(status, message)
        with _registry_lock:
            self._state.listeners[listener_id.value] = token
        return listener_id.value

    def remove_listener(self, listener_id: int) -> None:
        """Unregisters a listener. When it returns the listener is not running and never runs
        again (from inside that listener: it is not called again after it returns)."""
        status = _load().gp.goxelpool_remove_listener(self._state.handle, int(listener_id))
        message = _last_error() if status != Status.OK else ""
        with _registry_lock:
            token = self._state.listeners.pop(int(listener_id), None)
            if status == Status.OK and token is not None:
                _listeners.pop(token, None)
        if status != Status.OK:
            raise _error(status, message)


class Client(_ClientBase):
    """A libgoxelpool client: a pool of connections to the daemon. Thread-safe: share one.

    ``Client(socket_path="/tmp/goxel.sock", pool={"max_connections": 4})`` or
    ``Client({"socket_path": ..., ...})``; keyword options override the keys of the mapping (at
    the top level). Keys: see the library's README ("Configuration"). A bad configuration raises
    InvalidArgument naming the key. The daemon need not be running yet.
    """

    def __init__(self, config: Optional[Mapping[str, Any]] = None, /, **options: Any) -> None:
        self._state = _new_client(_merged_config(config, options))
        self._finalizer = weakref.finalize(self, _free, self._state)
        self._finalizer.atexit = False  # _close_all_at_exit handles exit

    # -- context manager ---------------------------------------------------------------------------

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<goxelpool.Client at 0x{self._state.handle:x}>"

    # -- calls -------------------------------------------------------------------------------------

    def call(self, method: str, params: Params = None, timeout_ms: int = -1) -> Any:
        """Calls ``method`` and returns its result (any JSON value). ``timeout_ms`` < 0: the
        configured timeout_ms. Raises RPCError for the daemon's error answer, else the
        GoxelPoolError subclass of the status."""
        name, timeout = _method(method), _timeout(timeout_ms)
        lib = _load().gp
        p = _params(params)
        result, rpc_error = _P(), _P()
        try:
            status = lib.goxelpool_call(self._state.handle, name, p, timeout,
                                        ctypes.byref(result), ctypes.byref(rpc_error))
            message = _last_error() if status != Status.OK else ""
        finally:
            _decref(p)  # borrowed
        if status == Status.OK:
            return _take(result.value)
        if status == Status.ERPC:
            raise _rpc_error(_take(rpc_error.value))
        raise _error(status, message)

    def notify(self, method: str, params: Params = None) -> None:
        """Sends a notification (no answer is returned; never retried)."""
        name = _method(method)
        lib = _load().gp
        p = _params(params)
        try:
            status = lib.goxelpool_notify(self._state.handle, name, p)
            message = _last_error() if status != Status.OK else ""
        finally:
            _decref(p)
        if status != Status.OK:
            raise _error(status, message)

    def call_async(self, method: str, params: Params = None,
                   callback: Optional[Callable[[Outcome], None]] = None,
                   timeout_ms: int = -1) -> "Future[Any]":
        """Queues a call and returns at once. ``callback`` (optional) gets the Outcome, exactly
        once, on a library thread; the returned Future gets the result or the exception too.
        Raises at once (and the callback never runs) when the call cannot be queued: PoolClosed,
        Busy, InvalidArgument."""
        name, timeout = _method(method), _timeout(timeout_ms)
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()  # cannot be cancelled: the call is in the library's hands

        def done(outcome: Outcome) -> None:
            if callback is not None:
                try:
                    callback(outcome)
                except BaseException:
                    _report("call_async callback")
            if outcome.error is not None:
                future.set_exception(outcome.error)
            else:
                future.set_result(outcome.result)

        _start_call(self._state, name, params, timeout, done)
        return future

    def batch(self, requests: Iterable[BatchRequest], timeout_ms: int = -1) -> List[Outcome]:
        """Runs several calls concurrently and returns one Outcome per request, in order (a
        failing request does not raise: look at each outcome, or ``unwrap()`` it). A request is
        ``{"method": m, "params": p}``, ``(m, p)`` or ``m``."""
        items: List[Dict[str, Any]] = []
        for request in requests:
            if isinstance(request, str):
                items.append({"method": request})
            elif isinstance(request, tuple):
                method, params = request
                items.append({"method": method} if params is None else {"method": method, "params": params})
            else:
                items.append(dict(request))
        timeout = _timeout(timeout_ms)
        lib = _load().gp
        p = _to_json(items)
        results = _P()
        try:
            status = lib.goxelpool_call_batch(self._state.handle, p, timeout, ctypes.byref(results))
            message = _last_error() if status != Status.OK else ""
        finally:
            _decref(p)
        if status != Status.OK:
            raise _error(status, message)
        return [_outcome_from_item(item) for item in _take(results.value)]

    # -- dispatch mode ("callbacks": "dispatch") ----------------------------------------------------

    def event_fd(self) -> int:
        """The client's event fd (``"callbacks": "dispatch"`` only): readable while callbacks or
        events wait for dispatch(). Owned by the client: never read or close it. Raises
        InvalidArgument for a client in thread mode. (AsyncClient does all this for asyncio.)"""
        fd = int(_load().gp.goxelpool_event_fd(self._state.handle))
        if fd < 0:
            raise InvalidArgument(_last_error())
        return fd

    def dispatch(self, max_items: int = 0) -> int:
        """Runs queued async callbacks and listener events on the calling thread; returns how many
        ran. ``max_items`` <= 0: everything queued when the call starts. Dispatch-mode clients
        only (else InvalidArgument); one thread at a time (else Busy)."""
        ran = ctypes.c_int(0)
        status = _load().gp.goxelpool_dispatch(self._state.handle, _timeout(max_items, "max_items"),
                                               ctypes.byref(ran))
        if status != Status.OK:
            raise _error(status, _last_error())
        return ran.value

    # -- shutdown ----------------------------------------------------------------------------------

    def close(self, drain_timeout_ms: int = -1) -> None:
        """Stops the client: new calls raise PoolClosed; calls in flight may finish for up to
        ``drain_timeout_ms`` (< 0: the configured timeout_ms); queued async calls complete with
        PoolClosed; every library thread is joined before it returns. Idempotent. Must not be
        called from a callback or listener of this client (raises InvalidArgument)."""
        timeout = _timeout(drain_timeout_ms, "drain_timeout_ms")
        status = _load().gp.goxelpool_client_close(self._state.handle, timeout)
        message = _last_error() if status != Status.OK else ""
        if status != Status.OK:
            raise _error(status, message)
        _drop_listeners(self._state)


from .aio import AsyncClient  # noqa: E402  (it builds on the helpers above)
