"""Tests of the goxelpool Python module against the reference daemon (stdlib unittest only).

    GOXELPOOL_LIBRARY=build/stage/lib/libgoxelpool.so.1 GOXEL_REFD=build/stage/bin/goxel-refd \
        python3 -m unittest discover -s bindings/python/tests -v

(`make python-test` does that.) GOXEL_REFD defaults to build/bin/goxel-refd; one goxel-refd is
started on a temporary socket for the whole module, and its faults are steered through its control
socket (SOCKET.ctl) and reset before every test.
"""
from __future__ import annotations

import gc
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import weakref
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(HERE)                       # bindings/python
REPO_ROOT = os.path.dirname(os.path.dirname(PACKAGE_ROOT))  # the project
sys.path.insert(0, PACKAGE_ROOT)

import goxelpool  # noqa: E402
from goxelpool import EventKind, Status  # noqa: E402

REFD: Optional[subprocess.Popen] = None
WORKDIR = ""
SOCKET = ""


def refd_path() -> str:
    path = os.environ.get("GOXEL_REFD", os.path.join(REPO_ROOT, "build", "bin", "goxel-refd"))
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def setUpModule() -> None:
    global REFD, WORKDIR, SOCKET
    binary = refd_path()
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"goxel-refd not found at {binary} (build it with `make`, or set GOXEL_REFD)")
    WORKDIR = tempfile.mkdtemp(prefix="gxpy.")
    SOCKET = os.path.join(WORKDIR, "refd.sock")
    REFD = subprocess.Popen([binary, "--socket", SOCKET], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    want = f"goxel-refd listening on {SOCKET}"
    deadline = time.monotonic() + 10
    output = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([REFD.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(REFD.stdout.fileno(), 4096)
            if not chunk:
                break
            output += chunk
            if want.encode() in output:
                return
        if REFD.poll() is not None:
            break
    tearDownModule()
    raise RuntimeError(f"goxel-refd did not start: {output.decode(errors='replace')!r}")


def tearDownModule() -> None:
    global REFD
    if REFD is not None:
        REFD.terminate()
        try:
            REFD.wait(5)
        except subprocess.TimeoutExpired:
            REFD.kill()
            REFD.wait()
        if REFD.stdout:
            REFD.stdout.close()
        REFD = None
    if WORKDIR:
        shutil.rmtree(WORKDIR, ignore_errors=True)


def control(method: str, params: Any = None) -> Any:
    """One JSON-RPC call on refd's fault-free control socket (SOCKET.ctl), without the library."""
    request: Dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        request["params"] = params
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(SOCKET + ".ctl")
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer.get("result")


def client(**options: Any) -> goxelpool.Client:
    config: Dict[str, Any] = {"socket_path": SOCKET, "timeout_ms": 5000,
                              "pool": {"min_connections": 1, "max_connections": 4}}
    config.update(options)
    return goxelpool.Client(config)


class Base(unittest.TestCase):
    def setUp(self) -> None:
        control("refd.reset_faults")


class ModuleTests(unittest.TestCase):
    def test_version_matches_header(self) -> None:
        got = goxelpool.version()
        self.assertRegex(got, r"^\d+\.\d+\.\d+$")
        header = os.path.join(REPO_ROOT, "include", "goxelpool.h")
        if os.path.exists(header):
            with open(header) as f:
                m = re.search(r'#define\s+GOXELPOOL_VERSION_STRING\s+"([^"]*)"', f.read())
            self.assertIsNotNone(m)
            self.assertEqual(got, m.group(1))

    def test_status_names_and_strerror(self) -> None:
        for status in Status:
            self.assertEqual(goxelpool.status_name(status), status.name)
            self.assertTrue(goxelpool.strerror(status))
        self.assertEqual(goxelpool.status_name(999), "UNKNOWN")
        self.assertTrue(goxelpool.strerror(999))

    def test_every_error_status_has_its_class(self) -> None:
        for status in Status:
            if status == Status.OK:
                continue
            error = goxelpool._error(status, "detail")
            self.assertIsInstance(error, goxelpool.GoxelPoolError)
            self.assertIsNot(type(error), goxelpool.GoxelPoolError, status.name)
            self.assertEqual(error.status, status)
            self.assertEqual(error.message, "detail")
        self.assertIsInstance(goxelpool._error(Status.ETIMEDOUT, "x"), TimeoutError)
        self.assertIsInstance(goxelpool._error(Status.EINVAL, "x"), ValueError)
        self.assertIsInstance(goxelpool._error(Status.EIO, "x"), goxelpool.ConnectionBroken)
        unknown = goxelpool._error(999, "")
        self.assertEqual(unknown.status, 999)
        self.assertTrue(unknown.message)  # strerror of an unknown value

    def test_event_kind_values_match_header(self) -> None:
        self.assertEqual([int(k) for k in (EventKind.ALERT, EventKind.HEALTH, EventKind.CONNECTION,
                                           EventKind.POOL, EventKind.REQUEST, EventKind.LOG)],
                         [1, 2, 4, 8, 16, 32])
        self.assertEqual(int(EventKind.ALL), 0xFF)

    def test_decref_is_jansson_decref(self) -> None:
        """_decref releases exactly one reference (through jansson's own atomic json_decref)."""
        import ctypes

        class JsonT(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int), ("refcount", ctypes.c_size_t)]

        jansson = goxelpool._load().jansson
        value = goxelpool._to_json({"a": [1, 2, 3]})
        refcount = lambda: ctypes.cast(value, ctypes.POINTER(JsonT)).contents.refcount  # noqa: E731
        self.assertEqual(refcount(), 1)
        # A second reference, held by an array (json_array_append is inline: incref by hand,
        # which is fine here, where no other thread can see the value).
        holder = jansson.json_array()
        ctypes.cast(value, ctypes.POINTER(JsonT)).contents.refcount += 1
        self.assertEqual(jansson.json_array_append_new(holder, value), 0)
        self.assertEqual(refcount(), 2)
        goxelpool._decref(value)
        self.assertEqual(refcount(), 1)
        self.assertEqual(goxelpool._from_json(holder), [{"a": [1, 2, 3]}])
        goxelpool._decref(holder)  # frees holder and, with it, value
        goxelpool._decref(None)    # NULL is fine

    def test_json_round_trip(self) -> None:
        for value in ([], {}, [None, True, False, 0, -1, 2**62, 1.5, "é\u2603", {"k": [{}]}], "s", None):
            p = goxelpool._to_json(value)
            self.assertEqual(goxelpool._take(p), value)
        with self.assertRaises(goxelpool.InvalidArgument):
            goxelpool._to_json([2**70])  # beyond json_int_t
        with self.assertRaises(ValueError):
            goxelpool._to_json([float("nan")])


class CallTests(Base):
    def test_call_version_and_echo(self) -> None:
        with client() as c:
            v = c.call("version")
            self.assertIsInstance(v, dict)
            self.assertIn("version", v)
            payload = [1, "two", {"three": 3.5, "four": [None, True]}, "\u00e9\u2603"]
            self.assertEqual(c.call("echo", payload), payload)
            self.assertEqual(c.call("echo", {"k": "v"}), {"k": "v"})
            self.assertEqual(c.call("echo", ("tuple", 1)), ["tuple", 1])
            self.assertIsNone(c.call("echo"))  # a JSON null result
            self.assertTrue(c.call("ping")["pong"])

    def test_rpc_error(self) -> None:
        with client() as c:
            with self.assertRaises(goxelpool.RPCError) as cm:
                c.call("no.such_method", {})
            e = cm.exception
            self.assertIsInstance(e, goxelpool.GoxelPoolError)
            self.assertEqual(e.status, Status.ERPC)
            self.assertEqual(e.code, -32601)
            self.assertIn("-32601", e.message)
            self.assertEqual(e.error.get("code"), -32601)
            self.assertIsNone(e.data)
            c.call("ping")  # the connection is still fine

    def test_rpc_error_injected(self) -> None:
        with client() as c:
            c.call("ping")  # validated before the faults start
            control("refd.set_faults", {"error_rate": 1})
            with self.assertRaises(goxelpool.RPCError) as cm:
                c.call("echo", [1])
            self.assertEqual(cm.exception.code, -32603)

    def test_invalid_config_names_the_key(self) -> None:
        with self.assertRaises(goxelpool.InvalidArgument) as cm:
            goxelpool.Client(socket_path=SOCKET, no_such_key=1)
        self.assertIn("no_such_key", cm.exception.message)
        self.assertEqual(cm.exception.status, Status.EINVAL)
        with self.assertRaises(goxelpool.InvalidArgument) as cm:
            goxelpool.Client({"socket_path": SOCKET}, pool={"max_connections": "ten"})
        self.assertIn("pool.max_connections", cm.exception.message)
        with self.assertRaises(ValueError):  # InvalidArgument is a ValueError too
            goxelpool.Client(socket_path="/" + "x" * 200)

    def test_invalid_arguments(self) -> None:
        with client() as c:
            with self.assertRaises(goxelpool.InvalidArgument):
                c.call("echo", 5)  # params must be an array or an object
            with self.assertRaises(goxelpool.InvalidArgument):
                c.call("")
            with self.assertRaises(goxelpool.InvalidArgument):
                c.call("echo", [2**70])
            with self.assertRaises(goxelpool.InvalidArgument):
                c.call("echo", None, timeout_ms=2**40)
            with self.assertRaises(goxelpool.InvalidArgument):
                c.add_listener(lambda e: None, 0)
            with self.assertRaises(goxelpool.InvalidArgument):
                c.remove_listener(12345)
            with self.assertRaises(goxelpool.InvalidArgument):
                c.batch([{"method": "echo", "bogus": 1}])

    def test_timeout(self) -> None:
        with client() as c:
            c.call("ping")  # a validated connection first
            control("refd.set_faults", {"drop_rate": 1})
            start = time.monotonic()
            with self.assertRaises(goxelpool.PoolTimeout) as cm:
                c.call("echo", [1], timeout_ms=300)
            elapsed = time.monotonic() - start
            self.assertIsInstance(cm.exception, TimeoutError)
            self.assertEqual(cm.exception.status, Status.ETIMEDOUT)
            self.assertTrue(cm.exception.message)
            self.assertGreaterEqual(elapsed, 0.25)
            self.assertLess(elapsed, 3.0)
            control("refd.reset_faults")
            self.assertEqual(c.call("echo", [2]), [2])
            self.assertGreaterEqual(c.stats()["failed_requests"].get("ETIMEDOUT", 0), 1)

    def test_connect_error(self) -> None:
        missing = os.path.join(WORKDIR, "nobody-here.sock")
        with goxelpool.Client(socket_path=missing, pool={"min_connections": 0, "connect_timeout_ms": 200},
                              timeout_ms=500, retry_attempts=0) as c:
            with self.assertRaises(goxelpool.GoxelPoolError) as cm:
                c.call("ping")
            self.assertIn(cm.exception.status, (Status.ECONNECT, Status.ETIMEDOUT, Status.EUNAVAILABLE))

    def test_notify(self) -> None:
        with client() as c:
            self.assertIsNone(c.notify("echo", [1]))
            self.assertEqual(c.call("echo", [3]), [3])  # still in step

    def test_threads_share_one_client(self) -> None:
        errors: List[BaseException] = []
        with client(pool={"min_connections": 1, "max_connections": 3}) as c:
            def work(n: int) -> None:
                try:
                    for i in range(40):
                        assert c.call("echo", [n, i]) == [n, i]
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
            threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(errors, [])
            self.assertLessEqual(c.stats()["total_connections"], 3)


class AsyncBatchTests(Base):
    def test_async_callback_on_library_thread(self) -> None:
        got: List[Any] = []
        done = threading.Event()

        def callback(outcome: goxelpool.Outcome) -> None:
            got.append((outcome, threading.get_ident()))
            done.set()

        with client() as c:
            future = c.call_async("echo", [1, 2], callback)
            self.assertEqual(future.result(5), [1, 2])
            self.assertTrue(done.wait(5))
            outcome, thread = got[0]
            self.assertTrue(outcome.ok)
            self.assertEqual(outcome.status, Status.OK)
            self.assertEqual(outcome.result, [1, 2])
            self.assertNotEqual(thread, threading.get_ident())
            self.assertFalse(future.cancel())

            failing = c.call_async("no.such_method", {})
            with self.assertRaises(goxelpool.RPCError) as cm:
                failing.result(5)
            self.assertEqual(cm.exception.code, -32601)

    def test_many_async_calls(self) -> None:
        with client() as c:
            futures = [c.call_async("echo", [i]) for i in range(100)]
            self.assertEqual([f.result(10) for f in futures], [[i] for i in range(100)])
        self.assertEqual(goxelpool._pending, {})

    def test_async_timeout_and_callback_exception(self) -> None:
        with client() as c:
            c.call("ping")
            control("refd.set_faults", {"drop_rate": 1})

            def bad_callback(outcome: goxelpool.Outcome) -> None:
                raise RuntimeError("callback failure")

            with self.assertLogs("goxelpool", level="ERROR") as logs:
                future = c.call_async("echo", [1], bad_callback, timeout_ms=200)
                with self.assertRaises(goxelpool.PoolTimeout) as cm:
                    future.result(5)
                time.sleep(0.05)
            self.assertTrue(cm.exception.message)
            self.assertTrue(any("callback failure" in line for line in logs.output))

    def test_async_pending_at_close(self) -> None:
        """Every async callback runs exactly once when the client closes first. The queued call
        (waiting for the only connection) fails with PoolClosed. The one in flight should too (the
        header: "calls in flight ... are shut down and fail with ECLOSED"), but libgoxelpool
        currently lets it run to its own deadline (PoolTimeout): both are accepted here."""
        c = client(pool={"min_connections": 1, "max_connections": 1})
        c.call("ping")
        control("refd.set_faults", {"drop_rate": 1})
        outcomes: List[goxelpool.Outcome] = []
        in_flight = c.call_async("echo", [1], outcomes.append, timeout_ms=2000)
        time.sleep(0.1)
        queued = c.call_async("echo", [2], outcomes.append, timeout_ms=30000)
        time.sleep(0.1)
        start = time.monotonic()
        c.close(drain_timeout_ms=0)
        self.assertLess(time.monotonic() - start, 5)
        with self.assertRaises(goxelpool.PoolClosed):
            queued.result(5)
        with self.assertRaises((goxelpool.PoolClosed, goxelpool.PoolTimeout)):
            in_flight.result(5)
        self.assertEqual(len(outcomes), 2)
        self.assertEqual(goxelpool._pending, {})

    def test_batch_with_failing_item(self) -> None:
        with client() as c:
            outcomes = c.batch([("echo", [1]), {"method": "no.such_method", "params": {}}, "version",
                                ("echo", None)])
            self.assertEqual([o.status for o in outcomes], [Status.OK, Status.ERPC, Status.OK, Status.OK])
            self.assertEqual(outcomes[0].unwrap(), [1])
            self.assertIsInstance(outcomes[1].error, goxelpool.RPCError)
            self.assertEqual(outcomes[1].error.code, -32601)
            with self.assertRaises(goxelpool.RPCError):
                outcomes[1].unwrap()
            self.assertIn("version", outcomes[2].result)
            self.assertIsNone(outcomes[3].result)
            self.assertEqual(c.batch([]), [])

    def test_batch_item_timeout(self) -> None:
        with client() as c:
            c.call("ping")
            control("refd.set_faults", {"drop_rate": 1})
            outcomes = c.batch(["ping", "ping"], timeout_ms=300)
            self.assertEqual([o.status for o in outcomes], [Status.ETIMEDOUT] * 2)
            self.assertTrue(all(isinstance(o.error, goxelpool.PoolTimeout) and o.error.message for o in outcomes))


class ListenerTests(Base):
    def test_listener_receives_events(self) -> None:
        events: List[Dict[str, Any]] = []
        threads = set()
        got = threading.Event()

        def listener(event: Dict[str, Any]) -> None:
            events.append(event)
            threads.add(threading.get_ident())
            if event["kind"] == "request":
                got.set()

        with client() as c:
            listener_id = c.add_listener(listener)
            self.assertIsInstance(listener_id, int)
            c.call("ping")
            self.assertTrue(got.wait(5))
            self.assertTrue(all(isinstance(e, dict) and {"kind", "type", "timestamp_ms"} <= e.keys() for e in events))
            self.assertNotIn(threading.get_ident(), threads)
            c.remove_listener(listener_id)
            n = len(events)
            c.call("ping")
            time.sleep(0.2)
            self.assertEqual(len(events), n)  # never runs again once removed
            with self.assertRaises(goxelpool.InvalidArgument):
                c.remove_listener(listener_id)

    def test_kinds_filter(self) -> None:
        kinds = set()
        served = threading.Event()

        def listener(event: Dict[str, Any]) -> None:
            kinds.add(event["kind"])
            served.set()

        with client() as c:
            c.add_listener(listener, EventKind.REQUEST)
            c.call("ping")
            self.assertTrue(served.wait(5))
            time.sleep(0.1)
        self.assertEqual(kinds, {"request"})

    def test_connection_events(self) -> None:
        events: List[Dict[str, Any]] = []
        added = threading.Event()

        def listener(event: Dict[str, Any]) -> None:
            events.append(event)
            if event.get("type") == "connection_added":
                added.set()

        c = client(pool={"min_connections": 0, "max_connections": 2})
        c.add_listener(listener, EventKind.CONNECTION | EventKind.POOL)
        c.call("ping")
        self.assertTrue(added.wait(5), events)
        c.close()
        self.assertTrue(all(e["kind"] in ("connection", "pool") for e in events), events)

    def test_listener_exception_is_logged_and_ignored(self) -> None:
        calls = []

        def listener(event: Dict[str, Any]) -> None:
            calls.append(event)
            raise ValueError("listener failure")

        with client() as c:
            with self.assertLogs("goxelpool", level="ERROR") as logs:
                listener_id = c.add_listener(listener, EventKind.REQUEST)
                c.call("ping")
                deadline = time.monotonic() + 5
                while not calls and time.monotonic() < deadline:
                    time.sleep(0.02)
                c.call("ping")
                c.remove_listener(listener_id)  # when it returns the listener is not running
            self.assertTrue(calls)
            self.assertTrue(any("listener failure" in line for line in logs.output))

    def test_listener_may_call_the_client_but_not_close_it(self) -> None:
        results: List[Any] = []
        done = threading.Event()

        def listener(event: Dict[str, Any]) -> None:
            if done.is_set():
                return
            results.append(c.stats()["pool_state"])
            try:
                c.close()
            except goxelpool.InvalidArgument as e:
                results.append(e)
            done.set()

        c = client()
        c.add_listener(listener, EventKind.REQUEST)
        c.call("ping")
        self.assertTrue(done.wait(5))
        c.close()
        self.assertEqual(len(results), 2, results)
        self.assertIsInstance(results[1], goxelpool.InvalidArgument)
        self.assertEqual(goxelpool._listeners, {})


class LifetimeTests(Base):
    def test_context_manager_closes(self) -> None:
        with client() as c:
            self.assertTrue(c.call("ping")["pong"])
        self.assertEqual(c.stats()["pool_state"], "closed")  # stats stay valid after close
        self.assertEqual(c.health()["state"], "closed")

    def test_use_after_close(self) -> None:
        c = client()
        c.call("ping")
        c.close()
        c.close()  # idempotent
        with self.assertRaises(goxelpool.PoolClosed) as cm:
            c.call("ping")
        self.assertEqual(cm.exception.status, Status.ECLOSED)
        self.assertTrue(cm.exception.message)
        with self.assertRaises(goxelpool.PoolClosed):
            c.notify("ping")
        with self.assertRaises(goxelpool.PoolClosed):
            c.call_async("ping", None, lambda o: None)
        with self.assertRaises(goxelpool.PoolClosed):
            c.batch(["ping"])
        with self.assertRaises(goxelpool.PoolClosed):
            c.add_listener(lambda e: None)
        self.assertEqual(goxelpool._pending, {})

    def test_garbage_collected_client_is_freed(self) -> None:
        c = client()
        c.add_listener(lambda e: None)
        c.call("ping")
        handle = c._state.handle
        ref = weakref.ref(c)
        del c
        gc.collect()
        self.assertIsNone(ref())
        self.assertNotIn(handle, goxelpool._live)
        self.assertEqual(goxelpool._listeners, {})

    def test_dropped_client_completes_its_async_calls(self) -> None:
        """A Client garbage-collected with a queued async call: the Future still completes."""
        c = client(pool={"min_connections": 1, "max_connections": 1})
        c.call("ping")
        control("refd.set_faults", {"drop_rate": 1})
        in_flight = c.call_async("echo", [1], timeout_ms=1000)
        time.sleep(0.1)
        queued = c.call_async("echo", [2], timeout_ms=30000)
        del c
        gc.collect()
        with self.assertRaises(goxelpool.PoolClosed):
            queued.result(10)
        with self.assertRaises((goxelpool.PoolClosed, goxelpool.PoolTimeout)):
            in_flight.result(10)
        self.assertEqual(goxelpool._pending, {})

    def test_listener_referencing_its_client_is_released_by_close(self) -> None:
        c = client()
        c.add_listener(lambda e: c.stats())  # a cycle through the module's registry
        ref = weakref.ref(c)
        c.close()
        del c
        gc.collect()
        self.assertIsNone(ref())

    def test_stats_and_health(self) -> None:
        with client() as c:
            c.call("ping")
            stats = c.stats()
            for key in ("pool_state", "circuit_state", "total_connections", "total_requests_served",
                        "failed_requests", "request_latency_ms", "events_dropped"):
                self.assertIn(key, stats)
            self.assertGreaterEqual(stats["total_requests_served"], 1)
            self.assertIn(stats["pool_state"], ("ready", "degraded", "unhealthy"))
            health = c.health()
            self.assertIsInstance(health, dict)
            self.assertIn(health["state"], ("ready", "degraded", "unhealthy"))
            self.assertIsInstance(health.get("connections"), list)


class ExampleTests(Base):
    def test_example_runs(self) -> None:
        example = os.path.join(PACKAGE_ROOT, "example.py")
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
        proc = subprocess.run([sys.executable, example, SOCKET], env=env, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("version", proc.stdout)


if __name__ == "__main__":
    unittest.main()
