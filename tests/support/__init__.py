"""Real parts for tests: a Mosquitto broker, an RTSP camera, an MJPEG camera, an MQTT subscriber.

Everything here runs real processes or real sockets on 127.0.0.1 and free ports, so tests exercise
the same code paths as production (reconnects, TLS, authentication, frame pacing) without mocks.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

LOCALHOST = "127.0.0.1"

_children: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()


def track_child(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` when the test session exits, should a fixture's teardown never run
    (an interrupted or crashed pytest would otherwise leave brokers and cameras behind)."""
    _children.add(process)


@atexit.register
def _kill_children() -> None:
    for process in list(_children):
        if process.poll() is None:
            process.kill()
            process.wait()


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago.

    Used only where the server cannot bind port 0 itself (mosquitto's ``listener 0`` means a unix
    socket); callers retry with another port if they lose the race.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds pass; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, max_chars: int = 20_000) -> str:
    """The end of a log file, for failure messages (missing file -> empty string)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return text[-max_chars:]


class ServerProcess:
    """What a server run as a child process shares: its state, stop and kill, and `with` support.

    Subclasses start it (setting ``_process``), and say in ``close()`` what else goes with it.
    """

    _process: subprocess.Popen[bytes] | None = None
    _paused = False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), as systemd or an operator would."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Abrupt death (SIGKILL): clients get no goodbye, nothing is saved."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, signum: signal.Signals, timeout: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signum)
        self._signalled(process)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): the kernel still accepts connections and buffers what clients send,
        but nothing is read or answered (a hung camera, a broker that stopped reading)."""
        if self.running and not self._paused:
            assert self._process is not None
            self._process.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self.running and self._paused:
            assert self._process is not None
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Frozen for the block, thawed however it ends."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def _signalled(self, process: subprocess.Popen[bytes]) -> None:
        """After the stop signal was sent, before waiting for the process to end."""
        if self._paused:
            # A stopped process only acts on SIGTERM once it runs again.
            process.send_signal(signal.SIGCONT)
            self._paused = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
