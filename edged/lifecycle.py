"""Signals in, systemd notifications out.

SIGTERM/SIGINT ask for a stop, SIGHUP for a reload; handlers only set flags, the supervisor acts
on them in its own task. Towards systemd: READY=1 once serving, RELOADING=1 (+ MONOTONIC_USEC)
then READY=1 around a reload, STOPPING=1, a STATUS= line, and WATCHDOG=1 only while the pipeline
is healthy (edged/health.py), so that a wedged pipeline gets restarted, not just a dead loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

from edged import systemd
from edged.health import Health

log = logging.getLogger("edged")

STATUS_INTERVAL_S = 5.0  # how often STATUS= is refreshed without a watchdog asking for more

_HANGUP_BEFORE_START = threading.Event()  # set from a signal handler: no global statement needed


def keep_early_hangups() -> None:
    """Until the supervisor installs its handlers, a SIGHUP is kept for it rather than ending edged (the default
    action: a death systemd counts as clean, so `Restart=on-failure` would not bring edged back)."""
    signal.signal(signal.SIGHUP, _remember_hangup)


def _remember_hangup(signum: int, frame: object) -> None:
    _HANGUP_BEFORE_START.set()


class Lifecycle:
    def __init__(self, notifier: systemd.Notifier | None = None) -> None:
        self.notifier = notifier or systemd.Notifier()
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self._wake = asyncio.Event()  # either of the above
        self._unhealthy = ""

    # -- signals ------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, signal.SIGINT)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        if _HANGUP_BEFORE_START.is_set():  # the configuration may have changed after it was read: read it again
            self._on_reload_signal()

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)

    def _on_stop_signal(self, signum: int) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.request_stop()

    def _on_reload_signal(self) -> None:
        log.info("received SIGHUP: reloading the configuration")
        self.reload_requested.set()  # several SIGHUPs before the reload starts make one reload
        self._wake.set()

    def request_stop(self) -> None:
        self.stop_requested.set()
        self._wake.set()

    async def next_request(self) -> str:
        """Wait for a stop or a reload request: "stop" wins over "reload"."""
        while True:
            if self.stop_requested.is_set():
                return "stop"
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                return "reload"
            self._wake.clear()
            await self._wake.wait()

    # -- systemd ------------------------------------------------------------------------------

    def ready(self, status: str) -> None:
        self.notifier.ready(status)

    def reloading(self) -> None:
        self.notifier.reloading("reloading the configuration")

    def stopping(self) -> None:
        self.notifier.stopping("stopping: finishing in-flight frames, flushing MQTT")

    async def watch(self, probe: Callable[[], Health]) -> None:
        """Refresh STATUS= and feed the watchdog while `probe()` says the pipeline is healthy."""
        watchdog = systemd.watchdog_interval()
        interval = min(STATUS_INTERVAL_S, watchdog / 2) if watchdog else STATUS_INTERVAL_S
        if watchdog:
            log.info("systemd watchdog: %.0f s; health checked every %.1f s", watchdog, interval)
        while True:
            health = probe()
            self.notifier.status(health.summary if health.ok else f"UNHEALTHY: {health.problem}; {health.summary}")
            if health.ok:
                if self._unhealthy:
                    log.info("pipeline healthy again")
                    self._unhealthy = ""
                if watchdog:
                    self.notifier.watchdog()
            elif health.problem != self._unhealthy:
                self._unhealthy = health.problem
                consequence = "; watchdog not fed, systemd will restart edged" if watchdog else ""
                log.error("pipeline unhealthy: %s%s", health.problem, consequence)
            await asyncio.sleep(interval)
