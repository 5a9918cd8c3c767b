"""A camera's own thread for its blocking calls, which the event loop can walk away from.

Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so a capture stuck in a
network read (OpenCV can block for 30 s) would hold up shutdown. A Worker's thread is a daemon,
and `abandon()` lets a camera start over on a fresh thread while the stuck one finishes (and
releases its capture) in its own time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias, TypeVar

from edged.priority import CAMERA_NICENESS, nicer_by, waits_its_turn

log = logging.getLogger("edged.camera")

T = TypeVar("T")
_Settle = Callable[[object, BaseException | None], None]  # called on the worker thread with the outcome
_Job = tuple[Callable[..., Any], tuple[Any, ...], _Settle | None]
# On the worker's thread: take a callback to the loop (as `call_soon_threadsafe` does).
Deliver: TypeAlias = Callable[[asyncio.AbstractEventLoop, Callable[[], None]], object]


_workers: weakref.WeakSet[Worker] = weakref.WeakSet()


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    loop.call_soon_threadsafe(callback)


def busy_workers() -> list[str]:
    """Names of worker threads still running a call (say, a read stuck on a hung camera)."""
    return sorted(worker.name for worker in list(_workers) if worker.alive)


def join_all(timeout: float) -> list[str]:
    """Wait up to `timeout` in all for closed workers to finish their queued calls; the names still busy."""
    deadline = time.monotonic() + timeout
    for worker in list(_workers):
        worker.join(max(0.0, deadline - time.monotonic()))
    return busy_workers()


class UnwaitedExecutor(ThreadPoolExecutor):
    """The event loop's default executor, which a stop does not wait for.

    asyncio.run ends by waiting, with no limit, for every call on the default executor, and aiomqtt connects
    to the broker there: a SIGTERM while a connect hangs (a broker host that drops packets, a DNS server
    that does not answer) would wait for paho's and the resolver's timeouts, past systemd's patience.
    """

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)

    def busy(self, timeout: float) -> bool:
        """Whether a call still runs after up to `timeout` seconds (idle threads end at once on shutdown)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return any(thread.is_alive() for thread in self._threads)


class Worker:
    """Runs calls one at a time, in order, on one daemon thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._running = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _workers.add(self)

    def call(
        self,
        function: Callable[..., T],
        *args: object,
        discard: Callable[[T], object] | None = None,
        deliver: Deliver | None = None,
    ) -> asyncio.Future[T]:
        """Run `function(*args)` on the thread; its outcome arrives as a future the caller awaits, and may also
        cancel or fail (a watchdog that gave up on the thread) without stopping a call already running.

        `discard` runs with a result nobody waits for any more (say, a capture opened after its camera
        gave up on it), so that it is released rather than leaked. `deliver` takes the outcome to the loop
        (on the worker's thread); by default `call_soon_threadsafe`.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: object, error: BaseException | None) -> None:
            if future.done() and error is None and discard is not None:
                discard(result)  # type: ignore[arg-type]
                return

            def on_loop() -> None:
                if future.done():  # cancelled or abandoned after the thread looked
                    if error is None and discard is not None:
                        # On a thread of its own: this worker may have been closed meanwhile.
                        threading.Thread(
                            target=discard, args=(result,), name=f"{self.name}-discard", daemon=True
                        ).start()
                    return
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)  # type: ignore[arg-type]

            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
                (deliver or _call_soon_threadsafe)(loop, on_loop)

        self._jobs.put((function, args, settle))
        return future

    def submit(self, function: Callable[..., object], *args: object) -> None:
        """Run `function` after the calls already queued; nobody waits for it (e.g. a release)."""
        self._jobs.put((function, args, None))

    def close(self) -> None:
        """Let the thread end once the calls already queued have run."""
        self._jobs.put(None)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        """Whether a call is running on the thread right now (not: waiting for one, or done with one whose outcome
        has not reached the loop yet)."""
        return self._running

    def _run(self) -> None:
        nicer_by(CAMERA_NICENESS)  # see edged/priority.py
        waits_its_turn()
        while (job := self._jobs.get()) is not None:
            function, args, settle = job
            self._running = True
            try:
                result, error = function(*args), None
            except BaseException as failure:
                result, error = None, failure
            self._running = False
            if settle is not None:
                settle(result, error)
            elif error is not None:
                log.debug("%s: background call %s failed: %s", self.name, getattr(function, "__name__", "?"), error)
