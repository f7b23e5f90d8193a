"""goxelpool for asyncio: ``AsyncClient``.

    import asyncio, goxelpool

    async def main() -> None:
        async with goxelpool.AsyncClient(socket_path="/tmp/goxel-daemon.sock") as client:
            print(await client.call("version"))

    asyncio.run(main())

How it works: the client is a libgoxelpool client in dispatch mode (``"callbacks": "dispatch"``),
so no callback ever runs on a library thread. The event loop watches the client's event fd
(``goxelpool_event_fd``) with ``loop.add_reader``; when it is readable, the loop calls
``goxelpool_dispatch``, which runs the completions of async calls and the listeners' events right
there, on the loop's thread: each completion settles its asyncio future directly. A call is a
``goxelpool_call_async`` plus a future, never a thread: 10 000 concurrent ``call`` tasks use the
library's fixed set of threads (one per connection for calls waiting on an answer, a few for
connecting and health checks), as many as one call would.

- ``await client.call(method, params=None, timeout_ms=-1)``: the result, or the exception of the
  status (``RPCError``, ``PoolTimeout``, ...), as ``Client.call``. More concurrent calls than
  ``pool.max_waiters`` (default 1024) raise ``Busy``: set it to the concurrency you want.
- Cancelling a task that awaits a call does not cancel the call in the library (it has a deadline
  of its own): its completion still runs once, later, and its result is dropped.
- Listeners: ``add_listener(callable, kinds)`` runs the callable on the loop's thread;
  ``async with client.events(kinds) as events: async for event in events: ...`` delivers them as an
  async iterator (bounded: when the consumer falls behind, the oldest are dropped and counted in
  ``EventStream.dropped``). Streams end when the client closes.
- ``await client.aclose(drain_timeout_ms=-1)`` (or leaving ``async with``): new calls raise
  ``PoolClosed``; calls in flight get up to the drain time (< 0: the configured ``timeout_ms``) to
  finish, then the rest complete with ``PoolClosed``. Without it, the client is closed when it is
  garbage-collected.
- One event loop per client: the first call, listener or ``async with`` binds it.
"""
from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import threading
import weakref
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Set, Union

from . import (
    BatchRequest, EventKind, InvalidArgument, Outcome, Params, PoolClosed, Status,
    _ClientBase, _drop_listeners, _free, _last_error, _load, _merged_config,
    _method, _new_client, _start_call, _State, _timeout,
)

__all__ = ["AsyncClient", "EventStream"]

_log = logging.getLogger("goxelpool")


class _LoopRef:
    """The loop a client is bound to (shared with its finalizer, which must not hold the client)."""

    def __init__(self) -> None:
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.thread: Optional[int] = None

    def run(self, action: Callable[[], None]) -> None:
        """Runs ``action`` on the loop's thread: now if this is it, else soon (dropped if the loop
        is closed: nothing awaits there any more)."""
        if self.thread == threading.get_ident():
            action()
            return
        if self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(action)
        except RuntimeError:
            pass


def _settle(ref: _LoopRef, future: "asyncio.Future[Any]", outcome: Outcome) -> None:
    def apply() -> None:
        if future.done():  # cancelled: the result is dropped
            return
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.result)
    ref.run(apply)


def _on_readable(client_ref: "weakref.ref[AsyncClient]", fd: int, loop: asyncio.AbstractEventLoop) -> None:
    client = client_ref()
    if client is None:  # collected: stop watching (the fd would stay readable)
        loop.remove_reader(fd)
        return
    client._dispatch()


def _teardown(state: _State, fd: int, ref: _LoopRef) -> None:
    """Finalizer: stops watching the fd on the loop's thread, then closes and frees the client
    (which runs what is still queued; futures are settled through their loop)."""
    loop = ref.loop

    def on_loop() -> None:
        if loop is not None and not loop.is_closed():
            loop.remove_reader(fd)
        _free(state)

    if loop is None or loop.is_closed() or ref.thread == threading.get_ident():
        on_loop()
        return
    try:
        loop.call_soon_threadsafe(on_loop)
    except RuntimeError:  # closed meanwhile
        _free(state)


class AsyncClient(_ClientBase):
    """A libgoxelpool client for asyncio (see the module's documentation). Configuration as for
    Client; ``"callbacks"`` is ``"dispatch"`` (another value raises InvalidArgument)."""

    def __init__(self, config: Optional[Mapping[str, Any]] = None, /, **options: Any) -> None:
        merged = _merged_config(config, options)
        if merged.setdefault("callbacks", "dispatch") != "dispatch":
            raise InvalidArgument('callbacks: AsyncClient runs on a "dispatch" client, got '
                                  f'{merged["callbacks"]!r}')
        timeout = merged.get("timeout_ms", 5000)
        self._timeout_ms = timeout if isinstance(timeout, int) and not isinstance(timeout, bool) else 5000
        self._state = _new_client(merged)
        self._fd = int(_load().gp.goxelpool_event_fd(self._state.handle))
        self._ref = _LoopRef()
        self._calls: Set["asyncio.Future[Any]"] = set()
        self._streams: "weakref.WeakSet[EventStream]" = weakref.WeakSet()
        self._closing = False
        self._closed = False
        self._finalizer = weakref.finalize(self, _teardown, self._state, self._fd, self._ref)
        self._finalizer.atexit = False  # _close_all_at_exit handles exit

    def __repr__(self) -> str:
        return f"<goxelpool.AsyncClient at 0x{self._state.handle:x}>"

    async def __aenter__(self) -> "AsyncClient":
        self._attach()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- the loop ----------------------------------------------------------------------------------

    def _attach(self) -> asyncio.AbstractEventLoop:
        """Binds the client to the running loop (the first time) and watches the event fd."""
        loop = asyncio.get_running_loop()
        if self._ref.loop is None:
            self._ref.loop, self._ref.thread = loop, threading.get_ident()
            if not self._closed:
                loop.add_reader(self._fd, _on_readable, weakref.ref(self), self._fd, loop)
        elif self._ref.loop is not loop:
            raise RuntimeError("this AsyncClient is bound to another event loop")
        return loop

    def _dispatch(self) -> int:
        ran = ctypes.c_int(0)
        status = _load().gp.goxelpool_dispatch(self._state.handle, 0, ctypes.byref(ran))
        if status != Status.OK:
            _log.error("goxelpool: goxelpool_dispatch failed: %s", _last_error())
        return ran.value

    # -- calls -------------------------------------------------------------------------------------

    async def call(self, method: str, params: Params = None, timeout_ms: int = -1) -> Any:
        """Calls ``method`` and returns its result; raises RPCError for the daemon's error
        answer, else the GoxelPoolError subclass of the status (Busy when pool.max_waiters calls
        already wait). ``timeout_ms`` < 0: the configured timeout_ms."""
        loop = self._attach()
        if self._closing:
            raise PoolClosed("client is closed")
        name, timeout = _method(method), _timeout(timeout_ms)
        future: "asyncio.Future[Any]" = loop.create_future()
        ref = self._ref
        _start_call(self._state, name, params, timeout, lambda outcome: _settle(ref, future, outcome))
        self._calls.add(future)
        future.add_done_callback(self._calls.discard)
        return await future

    async def batch(self, requests: Iterable[BatchRequest], timeout_ms: int = -1) -> List[Outcome]:
        """Runs several calls concurrently; one Outcome per request, in order (a failing request
        does not raise). A request is ``{"method": m, "params": p}``, ``(m, p)`` or ``m``."""
        calls = []
        for request in requests:
            method: Any
            params: Params = None
            if isinstance(request, str):
                method = request
            elif isinstance(request, tuple):
                method, params = request
            else:
                item = dict(request)
                unknown = set(item) - {"method", "params"}
                if unknown:
                    raise InvalidArgument(f"unknown request key(s): {sorted(unknown)}")
                method, params = item.get("method"), item.get("params")
            calls.append(self.call(method, params, timeout_ms))
        outcomes: List[Outcome] = []
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                status = getattr(result, "status", -1)
                outcomes.append(Outcome(status, error=result))  # type: ignore[arg-type]
            else:
                outcomes.append(Outcome(Status.OK, result=result))
        return outcomes

    # -- listeners ---------------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[Dict[str, Any]], None],
                     kinds: Union[EventKind, int] = EventKind.ALL) -> int:
        """Calls ``listener(event)`` on the event loop's thread for every event of ``kinds``;
        returns an id for remove_listener. Must be called with the client's loop running."""
        self._attach()
        return super().add_listener(listener, kinds)

    def events(self, kinds: Union[EventKind, int] = EventKind.ALL, maxsize: int = 1024) -> "EventStream":
        """An async iterator over the events of ``kinds`` (and an async context manager that
        removes its listener). Holds at most ``maxsize`` events: the oldest are dropped beyond."""
        return EventStream(self, kinds, maxsize)

    # -- shutdown ----------------------------------------------------------------------------------

    async def aclose(self, drain_timeout_ms: int = -1) -> None:
        """Closes: new calls raise PoolClosed; calls in flight get up to ``drain_timeout_ms``
        (< 0: the configured timeout_ms) to finish, the rest complete with PoolClosed; event
        streams end. Idempotent."""
        drain = _timeout(drain_timeout_ms, "drain_timeout_ms")
        if self._closed:
            return
        self._closing = True
        pending = [f for f in self._calls if not f.done()]
        if pending:
            self._attach()
            wait_ms = self._timeout_ms if drain < 0 else drain
            await asyncio.wait(pending, timeout=wait_ms / 1000)
        if self._closed:  # closed by a concurrent aclose meanwhile
            return
        self._closed = True
        # What is left is cut off: ECLOSED completions are queued, then run here.
        _load().gp.goxelpool_client_close(self._state.handle, 0)
        self._dispatch()
        if self._ref.loop is not None:
            self._ref.loop.remove_reader(self._fd)
        _drop_listeners(self._state)
        for stream in list(self._streams):
            stream._end()


class EventStream:
    """Events of an AsyncClient as an async iterator: ``async for event in stream``. Also an
    async context manager: leaving it removes the listener (as ``aclose()`` does). Ends when the
    client closes. ``dropped``: events dropped because more than ``maxsize`` waited."""

    def __init__(self, client: AsyncClient, kinds: Union[EventKind, int], maxsize: int) -> None:
        if maxsize < 1:
            raise InvalidArgument("maxsize must be at least 1")
        self._client = client
        self._queue: Deque[Dict[str, Any]] = collections.deque()
        self._maxsize = maxsize
        self._waiter: Optional["asyncio.Future[None]"] = None
        self._ended = False
        self.dropped = 0
        self._listener_id: Optional[int] = client.add_listener(self._push, kinds)
        client._streams.add(self)

    def _push(self, event: Dict[str, Any]) -> None:
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> Dict[str, Any]:
        while not self._queue:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = self._client._attach().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    async def aclose(self) -> None:
        """Removes the listener; the iteration ends once the events already received are read."""
        if self._listener_id is not None and not self._client._closed:
            self._client.remove_listener(self._listener_id)
        self._listener_id = None
        self._end()

    async def __aenter__(self) -> "EventStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
