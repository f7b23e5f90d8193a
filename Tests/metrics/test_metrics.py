"""goxelpool_metrics_text against a real goxel-refd, checked with the official parser.

Run by `make metrics-test` (part of `make test`) with build/venv's python, which has
prometheus_client (.ci/requirements.txt):

    GOXELPOOL_LIBRARY=build/stage/lib/libgoxelpool.so.1 GOXEL_REFD=build/stage/bin/goxel-refd \
        build/venv/bin/python -m unittest discover -s Tests/metrics -v

The C functions are called through ctypes (this script's own few declarations; the Python
binding is another module). When promtool is on PATH its `check metrics` lint runs too.
"""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "packaging"))
from refd import Refd  # noqa: E402

LIBRARY = os.environ.get("GOXELPOOL_LIBRARY", "build/stage/lib/libgoxelpool.so.1")
REFD = os.environ.get("GOXEL_REFD", "build/stage/bin/goxel-refd")

OK, EINVAL, ETIMEDOUT, ERPC = 0, 1, 2, 7
EVENT_CONNECTION = 1 << 2

gp = ctypes.CDLL(LIBRARY)
jansson = ctypes.CDLL("libjansson.so.4")
jansson.json_loads.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
jansson.json_loads.restype = ctypes.c_void_p
jansson.json_delete.argtypes = [ctypes.c_void_p]
gp.goxelpool_client_new.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
gp.goxelpool_client_new.restype = ctypes.c_int
gp.goxelpool_client_close.argtypes = [ctypes.c_void_p, ctypes.c_int]
gp.goxelpool_client_free.argtypes = [ctypes.c_void_p]
gp.goxelpool_client_free.restype = None
gp.goxelpool_call.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
gp.goxelpool_call.restype = ctypes.c_int
gp.goxelpool_metrics_text.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
gp.goxelpool_metrics_text.restype = ctypes.c_int
gp.goxelpool_free.argtypes = [ctypes.c_void_p]
gp.goxelpool_free.restype = None
gp.goxelpool_last_error.restype = ctypes.c_char_p
EVENT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
gp.goxelpool_add_listener.argtypes = [ctypes.c_void_p, ctypes.c_uint, EVENT_CB, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
gp.goxelpool_add_listener.restype = ctypes.c_int


def new_client(config):
    """A client from a Python dict (the jansson config is borrowed: deleted right after)."""
    raw = jansson.json_loads(json.dumps(config).encode(), 0, None)
    assert raw, "json_loads failed"
    handle = ctypes.c_void_p()
    err = ctypes.create_string_buffer(256)
    status = gp.goxelpool_client_new(raw, ctypes.byref(handle), err, len(err))
    jansson.json_delete(raw)  # refcount 1, ours alone: what json_decref would do
    assert status == OK, err.value.decode()
    return handle


def call(client, method, timeout_ms=-1):
    return gp.goxelpool_call(client, method.encode(), None, timeout_ms, None, None)


def metrics_text(client):
    out = ctypes.c_void_p()
    status = gp.goxelpool_metrics_text(client, ctypes.byref(out))
    assert status == OK, gp.goxelpool_last_error().decode()
    try:
        return ctypes.string_at(out.value).decode("utf-8")
    finally:
        gp.goxelpool_free(out)


def samples(text):
    """{(sample name, frozenset of labels): value} and {family name: family}."""
    values, families = {}, {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"family {family.name} appears twice"
        families[family.name] = family
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in values, f"sample {key} appears twice"
            values[key] = s.value
    return values, families


def value(values, name, **labels):
    return values[(name, frozenset(labels.items()))]


class MetricsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix=f"gxp-metrics-{os.getpid()}-")
        self.refd = Refd(REFD, self.dir)
        self.clients = []

    def tearDown(self):
        for client in self.clients:
            gp.goxelpool_client_free(client)
        self.refd.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self, **config):
        if "endpoints" not in config:
            config.setdefault("socket_path", self.refd.path)
        config.setdefault("health", {"interval_ms": 0})  # no health checks: exact counts
        client = new_client(config)
        self.clients.append(client)
        return client

    def lint(self, text):
        """`promtool check metrics`: format errors and naming-convention problems alike."""
        promtool = shutil.which("promtool")
        if not promtool:
            print("\n    (promtool not found: its lint is skipped; the official parser checked the text)", end=" ")
            return
        lint = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
        self.assertEqual(lint.returncode, 0, lint.stdout.decode() + lint.stderr.decode())
        self.assertEqual(lint.stdout.decode() + lint.stderr.decode(), "")

    def test_format_follows_the_conventions(self):
        client = self.client()
        for _ in range(5):
            self.assertEqual(call(client, "ping"), OK)
        text = metrics_text(client)
        self.assertTrue(text.endswith("\n"))
        values, families = samples(text)
        self.assertGreaterEqual(len(families), 30)
        for name, family in families.items():
            self.assertTrue(name.startswith("goxelpool_"), name)
            self.assertTrue(family.documentation, f"{name} has no HELP")
            for s in family.samples:
                if family.type == "counter":
                    # The parser drops _total from a counter family's name; the sample keeps it.
                    self.assertTrue(s.name.endswith("_total"), s.name)
                if family.type == "histogram":
                    self.assertTrue(s.name.endswith(("_bucket", "_sum", "_count")), s.name)
        # Exactly one # HELP and # TYPE per family, before its samples.
        helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
        self.assertEqual(len(helps), len(set(helps)))
        self.assertEqual(value(values, "goxelpool_build_info", version=gp_version()), 1)
        self.assertEqual(value(values, "goxelpool_client_state", state="ready"), 1)
        self.assertEqual(value(values, "goxelpool_client_state", state="closed"), 0)
        endpoint = "unix:" + self.refd.path
        self.assertEqual(value(values, "goxelpool_pool_state", endpoint=endpoint, state="ready"), 1)
        self.assertEqual(value(values, "goxelpool_circuit_state", endpoint=endpoint, state="closed"), 1)
        # One endpoint: no routing figures.
        self.assertEqual(families["goxelpool_routed_calls"].samples, [])
        self.lint(text)
        # The README's table documents every family (by its name in the text, _total included).
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")) as f:
            readme = f.read()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                family = line.split()[2]
                self.assertTrue("`" + family + "`" in readme, f"{family} is missing from README \"Prometheus metrics\"")

    def test_counts_match_the_calls_made(self):
        client = self.client(timeout_ms=5000, pool={"min_connections": 3, "max_connections": 4})
        endpoint = "unix:" + self.refd.path
        fast_under_250ms = 0
        for _ in range(25):
            started = time.monotonic()
            self.assertEqual(call(client, "ping"), OK)
            fast_under_250ms += time.monotonic() - started < 0.25
        for _ in range(3):
            self.assertEqual(call(client, "no.such.method"), ERPC)
        # Each timed-out call below must find an idle connection (else it times out waiting for
        # one, and no connection is closed): wait until the three are open.
        deadline = time.monotonic() + 10
        while value(samples(metrics_text(client))[0], "goxelpool_connections", endpoint=endpoint, state="idle") < 3:
            self.assertLess(time.monotonic(), deadline, "the pool did not open 3 connections")
            time.sleep(0.02)
        self.refd.control("refd.set_faults", {"latency_ms": 300})
        for _ in range(2):
            self.assertEqual(call(client, "ping", timeout_ms=100), ETIMEDOUT)
        slow_total = 0.0
        for _ in range(3):
            started = time.monotonic()
            self.assertEqual(call(client, "ping", timeout_ms=3000), OK)
            slow_total += time.monotonic() - started
        self.refd.control("refd.set_faults", {"latency_ms": 0})

        values, _ = samples(metrics_text(client))
        answered = 25 + 3 + 3  # results and JSON-RPC errors; the two timeouts got no answer
        self.assertEqual(value(values, "goxelpool_requests_total", endpoint=endpoint), answered)
        failed = {labels: v for (name, labels), v in values.items() if name == "goxelpool_requests_failed_total"}
        by_status = {dict(labels)["status"]: v for labels, v in failed.items()}
        self.assertEqual(by_status.pop("ERPC"), 3)
        self.assertEqual(by_status.pop("ETIMEDOUT"), 2)
        self.assertIn("ECONNECT", by_status)  # exported at 0 before it ever happens
        self.assertEqual(set(by_status.values()), {0}, by_status)
        # A timed-out call's connection is closed (its state is unknown).
        self.assertEqual(value(values, "goxelpool_connections_closed_total", endpoint=endpoint, reason="error"), 2)
        # The latency histogram: every answered request, cumulative buckets, the slow ones
        # (>= 300 ms at the daemon) above 0.25 s; the fast ones below it when the client saw
        # them under 250 ms.
        hist = lambda le: value(values, "goxelpool_request_duration_seconds_bucket", endpoint=endpoint, le=le)
        count = value(values, "goxelpool_request_duration_seconds_count", endpoint=endpoint)
        self.assertEqual(count, answered)
        self.assertEqual(hist("+Inf"), count)
        bounds = ["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                  "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]
        buckets = [hist(b) for b in bounds]
        self.assertEqual(buckets, sorted(buckets), "buckets must be cumulative")
        self.assertLessEqual(hist("0.25"), answered - 3)
        self.assertGreaterEqual(hist("0.25"), fast_under_250ms)
        total = value(values, "goxelpool_request_duration_seconds_sum", endpoint=endpoint)
        self.assertGreaterEqual(total, 3 * 0.3)
        self.assertLess(total, slow_total + 25 * 0.25 + 3 * 0.25)
        # Every lease is one observation of the wait for a connection.
        self.assertGreaterEqual(value(values, "goxelpool_acquire_wait_seconds_count", endpoint=endpoint), answered + 2)
        self.assertGreater(value(values, "goxelpool_sent_bytes_total", endpoint=endpoint), 0)
        self.assertGreater(value(values, "goxelpool_received_bytes_total", endpoint=endpoint), 0)
        self.assertGreaterEqual(value(values, "goxelpool_connections_created_total", endpoint=endpoint), 3)

    def test_endpoint_labels_are_escaped(self):
        # A socket path with a double quote, a backslash and a line feed (all legal in a path):
        # nothing listens there, so it only gathers connection failures.
        odd = os.path.join(self.dir, 'q"b\\s\nx.sock')
        client = self.client(endpoints=["unix:" + self.refd.path, "unix:" + odd],
                             reconnect={"initial_backoff_ms": 50})
        for _ in range(20):
            self.assertEqual(call(client, "ping"), OK)
        deadline = time.monotonic() + 10
        while True:
            values, families = samples(metrics_text(client))
            failures = value(values, "goxelpool_connection_failures_total", endpoint="unix:" + odd)
            if failures > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertGreater(failures, 0)
        self.lint(metrics_text(client))
        endpoints = {dict(labels)["endpoint"] for (name, labels) in values if name == "goxelpool_connections"}
        self.assertEqual(endpoints, {"unix:" + self.refd.path, "unix:" + odd})
        self.assertEqual(value(values, "goxelpool_connection_failures_total", endpoint="unix:" + self.refd.path), 0)
        # Two endpoints: the balancer's figures are there, per endpoint.
        routed = [v for (name, labels), v in values.items() if name == "goxelpool_routed_calls_total"]
        self.assertEqual(len(routed), 2)
        self.assertGreaterEqual(sum(routed), 20)
        self.assertEqual(value(values, "goxelpool_requests_total", endpoint="unix:" + self.refd.path), 20)

    def test_null_arguments(self):
        out = ctypes.c_void_p(1234)
        self.assertEqual(gp.goxelpool_metrics_text(None, ctypes.byref(out)), EINVAL)
        self.assertIsNone(out.value)
        self.assertIn(b"client is NULL", gp.goxelpool_last_error())
        client = self.client()
        self.assertEqual(gp.goxelpool_metrics_text(client, None), EINVAL)
        self.assertIn(b"out is NULL", gp.goxelpool_last_error())
        gp.goxelpool_free(None)

    def test_scrapes_from_threads_from_a_listener_and_after_close(self):
        # No warm connections: the callers' first connections are opened after the listener is
        # registered, so their connection_added events reach it.
        client = self.client(pool={"min_connections": 0, "max_connections": 4})
        in_listener = []

        @EVENT_CB
        def on_event(event, userdata):
            # On the client's event thread: a scrape from inside a listener.
            in_listener.append(metrics_text(client))
        # ctypes frees the trampoline with the last reference: keep it until tearDown frees the client.
        self.keep_alive = on_event

        listener = ctypes.c_int(-1)
        self.assertEqual(gp.goxelpool_add_listener(client, EVENT_CONNECTION, on_event, None, ctypes.byref(listener)), OK)
        stop = threading.Event()
        errors = []

        def caller():
            while not stop.is_set():
                if call(client, "ping") != OK:
                    errors.append("call failed")

        def scraper(seen):
            last = -1
            for _ in range(40):
                values, _ = samples(metrics_text(client))
                served = value(values, "goxelpool_requests_total", endpoint="unix:" + self.refd.path)
                if served < last:
                    errors.append(f"requests_total went back from {last} to {served}")
                last = served
            seen.append(last)

        seen = []
        threads = [threading.Thread(target=caller) for _ in range(2)]
        threads += [threading.Thread(target=scraper, args=(seen,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads[2:]:
            t.join(60)
        stop.set()
        for t in threads[:2]:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(seen), 4)
        self.assertGreater(max(seen), 0)
        deadline = time.monotonic() + 5
        while not in_listener and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(in_listener, "no connection event reached the listener")
        samples(in_listener[0])  # parses
        self.assertEqual(gp.goxelpool_client_close(client, 1000), OK)
        values, _ = samples(metrics_text(client))
        self.assertEqual(value(values, "goxelpool_client_state", state="closed"), 1)
        self.assertEqual(value(values, "goxelpool_pool_state", endpoint="unix:" + self.refd.path, state="closed"), 1)


def gp_version():
    gp.goxelpool_version.restype = ctypes.c_char_p
    return gp.goxelpool_version().decode()


if __name__ == "__main__":
    unittest.main()
