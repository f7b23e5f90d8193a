"""Tests of goxelpool.AsyncClient (asyncio on a dispatch-mode client) and of the dispatch methods
of the synchronous Client, against the reference daemon (stdlib unittest only; see _refd.py)."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
import unittest
from typing import Any, Dict, List

import _refd as refd  # noqa: E402  (puts the package on sys.path, unless testing an install)

import goxelpool  # noqa: E402
import goxelpool.aio  # noqa: E402
from goxelpool import EventKind, Status  # noqa: E402

SOCKET = ""


def setUpModule() -> None:
    global SOCKET
    _, SOCKET = refd.start("gxaio.")


def tearDownModule() -> None:
    refd.stop()


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def config(**options: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = {"socket_path": SOCKET, "timeout_ms": 10000,
                            "pool": {"min_connections": 1, "max_connections": 4}}
    base.update(options)
    return base


class Captured(logging.Handler):
    """Records what the goxelpool logger reports (a callback that raised, a failed dispatch)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class AsyncBase(unittest.TestCase):
    def setUp(self) -> None:
        refd.control("refd.reset_faults")
        self.log = Captured()
        logging.getLogger("goxelpool").addHandler(self.log)

    def tearDown(self) -> None:
        logging.getLogger("goxelpool").removeHandler(self.log)
        self.assertEqual([r.getMessage() for r in self.log.records], [], "goxelpool logged errors")

    def run_async(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run(asyncio.wait_for(coroutine, timeout))


class AsyncClientTests(AsyncBase):
    def test_call_results_and_errors(self) -> None:
        async def main() -> None:
            async with goxelpool.AsyncClient(config()) as client:
                self.assertIn("version", await client.call("version"))
                self.assertEqual(await client.call("echo", [1, "two", {"3": None}]), [1, "two", {"3": None}])
                with self.assertRaises(goxelpool.RPCError) as cm:
                    await client.call("no.such_method", {})
                self.assertEqual(cm.exception.code, -32601)
                with self.assertRaises(goxelpool.InvalidArgument):
                    await client.call("echo", 5)  # type: ignore[arg-type]
                refd.control("refd.set_faults", {"drop_rate": 1})
                started = time.monotonic()
                with self.assertRaises(goxelpool.PoolTimeout):
                    await client.call("echo", [1], timeout_ms=300)
                self.assertLess(time.monotonic() - started, 5)
                refd.control("refd.reset_faults")
                self.assertEqual(await client.call("echo", [2]), [2])
                stats = client.stats()
                self.assertEqual(stats["callbacks"], "dispatch")
                self.assertEqual(stats["dispatch_queue_depth"], 0)
            with self.assertRaises(goxelpool.PoolClosed):
                await client.call("ping")
        self.run_async(main())

    def test_ten_thousand_concurrent_calls_need_no_thread_each(self) -> None:
        """10 000 calls in flight at once: every result right, every completion settled on the
        loop's thread inside goxelpool_dispatch, no Python thread started, and the process's
        threads stay within the library's fixed set (4 connections: 4 call threads, up to 4 for
        opening connections, 1 for timers) whatever the number of calls."""
        calls = 10_000
        settled_on: Dict[int, int] = {}
        original = goxelpool.aio._settle

        def recording_settle(ref: Any, future: Any, outcome: Any) -> None:
            ident = threading.get_ident()
            settled_on[ident] = settled_on.get(ident, 0) + 1
            original(ref, future, outcome)

        async def main() -> Dict[str, Any]:
            python_threads = threading.active_count()
            before = os_threads()
            peak = before
            sampling = True

            async def sample() -> None:
                nonlocal peak
                while sampling:
                    peak = max(peak, os_threads())
                    await asyncio.sleep(0.005)

            sampler = asyncio.create_task(sample())
            started = time.monotonic()
            async with goxelpool.AsyncClient(config(pool={"min_connections": 4, "max_connections": 4,
                                                          "max_waiters": calls})) as client:
                results = await asyncio.gather(*(client.call("echo", [i]) for i in range(calls)))
                seconds = time.monotonic() - started
                stats = client.stats()
            sampling = False
            await sampler
            return {"results": results, "before": before, "peak": peak, "stats": stats, "seconds": seconds,
                    "python_threads": python_threads, "python_threads_after": threading.active_count(),
                    "loop_thread": threading.get_ident()}

        goxelpool.aio._settle = recording_settle
        try:
            got = self.run_async(main(), timeout=120)
        finally:
            goxelpool.aio._settle = original
        self.assertEqual(got["results"], [[i] for i in range(calls)])
        self.assertEqual(settled_on, {got["loop_thread"]: calls}, "completions settled off the loop's thread")
        self.assertEqual(got["python_threads_after"], got["python_threads"], "Python threads were started")
        added = got["peak"] - got["before"]
        print(f"\n    {calls} concurrent calls: threads {got['before']} before the client, {got['peak']} at most "
              f"(+{added}); dispatch queue peak {got['stats']['dispatch_queue_peak']}; {got['seconds']:.2f} s",
              file=sys.stderr)
        self.assertLessEqual(added, 12, f"{added} threads added for {calls} concurrent calls")
        self.assertGreater(got["stats"]["dispatch_queue_peak"], 0)
        self.assertEqual(goxelpool._pending, {})

    def test_cancelled_call_completes_later_and_is_dropped(self) -> None:
        async def main() -> None:
            async with goxelpool.AsyncClient(config()) as client:
                await client.call("ping")
                refd.control("refd.set_faults", {"latency_ms": 300})
                task = asyncio.create_task(client.call("echo", [1]))
                await asyncio.sleep(0.05)
                self.assertEqual(len(client._state.pending), 1)
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                # The library still owns the call: its completion runs once, later, and is dropped.
                self.assertEqual(len(client._state.pending), 1)
                deadline = time.monotonic() + 10
                while client._state.pending and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                self.assertEqual(client._state.pending, set())
                self.assertEqual(client.stats()["total_requests_served"], 2)
                refd.control("refd.reset_faults")
                self.assertEqual(await client.call("echo", [2]), [2])
        self.run_async(main())
        self.assertEqual(goxelpool._pending, {})

    def test_events_as_an_async_iterator_and_listeners_on_the_loop(self) -> None:
        async def main() -> None:
            async with goxelpool.AsyncClient(config()) as client:
                loop_thread = threading.get_ident()
                seen: List[int] = []
                client.add_listener(lambda event: seen.append(threading.get_ident()), EventKind.REQUEST)
                got: List[Dict[str, Any]] = []
                async with client.events(EventKind.REQUEST) as events:
                    await asyncio.gather(*(client.call("echo", [i]) for i in range(5)))
                    async for event in events:
                        got.append(event)
                        if sum(e["type"] == "request_served" for e in got) == 5:
                            break
                self.assertTrue(all(e["kind"] == "request" for e in got))
                self.assertTrue(seen)
                self.assertEqual(set(seen), {loop_thread})
                # A stream ends when the client closes. What it held is not the point: a real
                # alert (a latency trend from the calls above) may come first.
                stream = client.events(EventKind.ALERT)
                ended = asyncio.create_task(self._drain(stream))
                await asyncio.sleep(0.05)
                await client.aclose()
                drained = await asyncio.wait_for(ended, 5)
                self.assertTrue(all(e["kind"] == "alert" for e in drained), drained)
        self.run_async(main())

    @staticmethod
    async def _drain(stream: goxelpool.aio.EventStream) -> List[Dict[str, Any]]:
        return [event async for event in stream]

    def test_event_stream_drops_the_oldest_beyond_maxsize(self) -> None:
        async def main() -> None:
            async with goxelpool.AsyncClient(config()) as client:
                async with client.events(EventKind.REQUEST, maxsize=3) as events:
                    for i in range(5):
                        await client.call("echo", [i])
                    await asyncio.sleep(0.05)
                    self.assertGreaterEqual(events.dropped, 2)
                    kept = [await events.__anext__() for _ in range(3)]
                    self.assertEqual(len(kept), 3)
        self.run_async(main())

    def test_aclose_drains_calls_in_flight(self) -> None:
        async def main() -> None:
            client = goxelpool.AsyncClient(config())
            await client.call("ping")
            refd.control("refd.set_faults", {"latency_ms": 200})
            calls = [asyncio.create_task(client.call("echo", [i])) for i in range(3)]
            await asyncio.sleep(0.05)
            await client.aclose(drain_timeout_ms=5000)
            self.assertEqual([await c for c in calls], [[0], [1], [2]])
            await client.aclose()  # idempotent

            # A drain shorter than the calls: they complete with PoolClosed.
            client = goxelpool.AsyncClient(config())
            await client.call("ping")
            refd.control("refd.set_faults", {"latency_ms": 3000})
            calls = [asyncio.create_task(client.call("echo", [i])) for i in range(3)]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await client.aclose(drain_timeout_ms=100)
            self.assertLess(time.monotonic() - started, 2.5)
            for call in calls:
                with self.assertRaises(goxelpool.PoolClosed):
                    await call
        self.run_async(main())
        self.assertEqual(goxelpool._pending, {})

    def test_batch(self) -> None:
        async def main() -> None:
            async with goxelpool.AsyncClient(config()) as client:
                outcomes = await client.batch([("echo", [1]), "no.such_method", {"method": "version"}])
                self.assertEqual([o.status for o in outcomes], [Status.OK, Status.ERPC, Status.OK])
                self.assertEqual(outcomes[0].result, [1])
                self.assertIsInstance(outcomes[1].error, goxelpool.RPCError)
        self.run_async(main())

    def test_configuration(self) -> None:
        with self.assertRaises(goxelpool.InvalidArgument):
            goxelpool.AsyncClient(config(callbacks="thread"))
        with self.assertRaises(goxelpool.InvalidArgument) as cm:
            goxelpool.AsyncClient(config(pool={"max_connections": "four"}))
        self.assertIn("pool.max_connections", cm.exception.message)

    def test_garbage_collected_without_aclose(self) -> None:
        async def main() -> None:
            client = goxelpool.AsyncClient(config())
            self.assertEqual(await client.call("echo", [7]), [7])
            fd = client._fd
            loop = asyncio.get_running_loop()
            del client
            gc.collect()
            await asyncio.sleep(0.05)
            self.assertFalse(loop.remove_reader(fd), "the event fd is still watched")
        self.run_async(main())


class SyncDispatchTests(AsyncBase):
    def test_client_in_dispatch_mode(self) -> None:
        with goxelpool.Client(config(callbacks="dispatch")) as client:
            fd = client.event_fd()
            self.assertGreaterEqual(fd, 0)
            got: List[Any] = []
            future = client.call_async("echo", [3], callback=lambda outcome: got.append(threading.get_ident()))
            deadline = time.monotonic() + 10
            while not future.done() and time.monotonic() < deadline:
                client.dispatch()
                time.sleep(0.005)
            self.assertEqual(future.result(0), [3])
            self.assertEqual(got, [threading.get_ident()])
            self.assertEqual(client.dispatch(max_items=5), 0)
        with goxelpool.Client(config()) as threaded:
            with self.assertRaises(goxelpool.InvalidArgument):
                threaded.event_fd()
            with self.assertRaises(goxelpool.InvalidArgument):
                threaded.dispatch()


if __name__ == "__main__":
    unittest.main()
