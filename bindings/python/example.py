#!/usr/bin/env python3
"""goxelpool from Python: calls, errors, an async call, a batch, events and statistics.

    PYTHONPATH=bindings/python python3 bindings/python/example.py [SOCKET]

SOCKET is the daemon's socket (default /tmp/goxel-daemon.sock); e.g. start the reference daemon
with `build/bin/goxel-refd --socket /tmp/refd.sock &`. Set GOXELPOOL_LIBRARY to the path of
libgoxelpool.so.1 if the dynamic loader does not find it. Exits 0 on success.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Dict, List

import goxelpool


def main() -> int:
    socket_path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/goxel-daemon.sock"
    print(f"libgoxelpool {goxelpool.version()} ({goxelpool.library_path()})")

    events: List[Dict[str, Any]] = []
    with goxelpool.Client(socket_path=socket_path, timeout_ms=5000,
                          pool={"min_connections": 1, "max_connections": 4}) as client:
        # Events arrive on a library thread as dicts.
        client.add_listener(events.append, goxelpool.EventKind.CONNECTION | goxelpool.EventKind.POOL
                            | goxelpool.EventKind.ALERT)

        print("version:", client.call("version"))
        print("echo:", client.call("echo", [1, "two", {"three": 3.0}]))

        try:
            client.call("no.such_method", {})
        except goxelpool.RPCError as e:
            print(f"RPCError as expected: code {e.code}, {e.message}")

        try:
            client.call("echo", [1], timeout_ms=0)  # a deadline that has already passed
        except goxelpool.PoolTimeout as e:
            print(f"PoolTimeout as expected: {e.message}")

        # An async call: the callback runs once on a library thread; the Future also has it.
        done = threading.Event()

        def on_done(outcome: goxelpool.Outcome) -> None:
            print(f"async outcome: {outcome.status.name} {outcome.result}")
            done.set()

        future = client.call_async("echo", {"async": True}, on_done)
        print("async future:", future.result(timeout=10))
        done.wait(10)

        # A batch: every request gets its own outcome, failures included.
        for outcome in client.batch([("echo", [1]), ("no.such_method", {}), "ping"]):
            print("batch:", outcome.status.name, outcome.result if outcome.ok else outcome.error)

        stats = client.stats()
        print(f"stats: {stats['total_requests_served']} requests served, "
              f"{stats['total_connections']} connections, pool {stats['pool_state']}")
        print("health:", client.health()["state"])

    print(f"events received: {len(events)} ({', '.join(sorted({e['type'] for e in events}))})")
    try:
        client.call("ping")
    except goxelpool.PoolClosed:
        print("closed: calls now raise PoolClosed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except goxelpool.GoxelPoolError as e:
        print(f"error: {type(e).__name__} ({e.status!r}): {e.message}", file=sys.stderr)
        sys.exit(1)
