"""systemd integration using only the standard library.

* :class:`Notifier` and the module-level helpers implement the ``sd_notify(3)``
  datagram protocol: ``READY=1``, ``RELOADING=1`` (+ ``MONOTONIC_USEC``),
  ``STOPPING=1``, ``STATUS=...``, ``WATCHDOG=1`` and ``EXTEND_TIMEOUT_USEC``.
  Without ``$NOTIFY_SOCKET`` (not started by systemd, or not ``Type=notify``)
  every call is a cheap no-op.
* :func:`watchdog_interval` reads ``$WATCHDOG_USEC``/``$WATCHDOG_PID``.
* :func:`credential` reads a credential passed with ``LoadCredential=`` from
  ``$CREDENTIALS_DIRECTORY``.

Everything is synchronous and asyncio-agnostic: sending is a single non-blocking
``sendto()`` on an ``AF_UNIX``/``SOCK_DGRAM`` socket, so it is safe to call
straight from the event loop. Notification failures are logged (once per
notifier at WARNING, afterwards at DEBUG) and never raised into the caller: a
broken notify socket must not take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

__all__ = [
    "Notifier",
    "credential",
    "extend_timeout",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
CREDENTIALS_DIRECTORY_ENV = "CREDENTIALS_DIRECTORY"


def _monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _one_line(text: str) -> str:
    """A notify field value must not contain a newline (it would start a new field)."""
    return " ".join(text.splitlines()).replace("\0", "")


def _resolve_address(raw: str) -> bytes | None:
    """Map a ``$NOTIFY_SOCKET`` value to an AF_UNIX address, or None if unsupported."""
    if raw.startswith("@"):
        # Abstract namespace: '@' stands for the leading NUL byte.
        return b"\0" + os.fsencode(raw[1:])
    if raw.startswith("/"):
        return os.fsencode(raw)
    # e.g. "vsock:..." (systemd >= 254) or garbage: not supported here.
    return None


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET`` (or an explicit address).

    ``address`` uses the ``$NOTIFY_SOCKET`` syntax: an absolute path, or ``@name``
    for the abstract namespace. ``None`` means "read ``$NOTIFY_SOCKET`` now"; an
    empty/unset value makes the notifier disabled and every call a no-op.

    All send methods return True if the datagram was handed to the kernel and
    False otherwise (disabled, or an error that was logged). They never raise.
    """

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.get(NOTIFY_SOCKET_ENV, "")
        self._raw = address
        self._address: bytes | None = _resolve_address(address) if address else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False
        if address and self._address is None:
            self._report(f"unsupported {NOTIFY_SOCKET_ENV} address {address!r}; notifications disabled")

    @property
    def address(self) -> str:
        """The raw address this notifier was created with ('' when disabled)."""
        return self._raw

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def _report(self, message: str) -> None:
        if self._warned:
            log.debug("sd_notify: %s", message)
        else:
            self._warned = True
            log.warning("sd_notify: %s (further sd_notify errors are logged at DEBUG)", message)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    def send(self, message: str) -> bool:
        """Send a raw notify message (``KEY=VALUE`` lines). Never raises."""
        address = self._address
        if address is None:
            return False
        data = message.encode("utf-8", "replace")
        try:
            with self._lock:
                self._socket().sendto(data, address)
        except BlockingIOError:
            # The receiving queue is full: dropping a notification beats blocking the loop.
            self._report(f"socket {self._raw!r} busy, dropped {message.splitlines()[0]!r}")
            return False
        except OSError as exc:
            self._report(f"cannot send to {self._raw!r}: {exc}")
            return False
        return True

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram, e.g. ``notify(READY=1, STATUS="ok")``.

        Values are converted with ``str()`` and flattened to a single line.
        """
        if not fields:
            return False
        return self.send("\n".join(f"{key}={_one_line(str(value))}" for key, value in fields.items()))

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) finished: ``READY=1``, optionally with ``STATUS=``."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def reloading(self, status: str | None = None) -> bool:
        """Reload started: ``RELOADING=1`` + ``MONOTONIC_USEC`` (send :meth:`ready` when done)."""
        fields: dict[str, object] = {"RELOADING": 1, "MONOTONIC_USEC": _monotonic_usec()}
        if status is not None:
            fields["STATUS"] = status
        return self.notify(**fields)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown started: ``STOPPING=1``."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status`` (newlines become spaces)."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Keep-alive ping: ``WATCHDOG=1``."""
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more for the current start/stop/reload (``EXTEND_TIMEOUT_USEC``)."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier(address={self._raw!r})"


# --- module-level convenience API -------------------------------------------------

_default: Notifier | None = None
_default_lock = threading.Lock()


def _default_notifier() -> Notifier:
    """The shared notifier, rebuilt whenever ``$NOTIFY_SOCKET`` changes."""
    global _default  # noqa: PLW0603 - process-wide singleton, like libsystemd's sd_notify
    current = os.environ.get(NOTIFY_SOCKET_ENV, "")
    with _default_lock:
        if _default is None or _default.address != current:
            if _default is not None:
                _default.close()
            _default = Notifier(current)
        return _default


def notify(**fields: object) -> bool:
    """Send arbitrary ``KEY=VALUE`` fields via the default notifier."""
    return _default_notifier().notify(**fields)


def ready(status: str | None = None) -> bool:
    """``READY=1`` (optionally with ``STATUS=``); no-op without ``$NOTIFY_SOCKET``."""
    return _default_notifier().ready(status)


def reloading(status: str | None = None) -> bool:
    """``RELOADING=1`` + ``MONOTONIC_USEC=<CLOCK_MONOTONIC µs>``; follow with :func:`ready`."""
    return _default_notifier().reloading(status)


def stopping(status: str | None = None) -> bool:
    """``STOPPING=1``."""
    return _default_notifier().stopping(status)


def status(text: str) -> bool:
    """``STATUS=<text>`` flattened to one line."""
    return _default_notifier().status(text)


def watchdog() -> bool:
    """``WATCHDOG=1``."""
    return _default_notifier().watchdog()


def extend_timeout(seconds: float) -> bool:
    """``EXTEND_TIMEOUT_USEC=<seconds in µs>``."""
    return _default_notifier().extend_timeout(seconds)


def watchdog_interval() -> float | None:
    """The service watchdog timeout in seconds, or None when no watchdog applies to us.

    Reads ``$WATCHDOG_USEC`` (set by ``WatchdogSec=``). If ``$WATCHDOG_PID`` is set
    it must equal our pid, otherwise the watchdog is meant for another process
    (e.g. our parent) and None is returned. Invalid or non-positive values give
    None. Ping with :func:`watchdog` at roughly half of the returned interval.
    """
    raw_usec = os.environ.get(WATCHDOG_USEC_ENV)
    if not raw_usec:
        return None
    raw_pid = os.environ.get(WATCHDOG_PID_ENV)
    if raw_pid:
        try:
            pid = int(raw_pid)
        except ValueError:
            return None
        if pid != os.getpid():
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


def credentials_directory() -> Path | None:
    """Where systemd put the unit's credentials (``$CREDENTIALS_DIRECTORY``), or None outside such a unit."""
    directory = os.environ.get(CREDENTIALS_DIRECTORY_ENV)
    return Path(directory) if directory else None


def credential(name: str) -> str | None:
    """Contents of credential ``name`` from ``$CREDENTIALS_DIRECTORY``, trailing newlines stripped.

    Returns None when ``$CREDENTIALS_DIRECTORY`` is unset/empty or the credential
    does not exist. Other I/O errors (e.g. permissions) propagate: they are a
    deployment error the operator must see. ``name`` must be a plain file name.
    """
    if not name or name in {".", ".."} or "/" in name or "\0" in name:
        raise ValueError(f"invalid credential name {name!r}")
    if (directory := credentials_directory()) is None:
        return None
    try:
        data = (directory / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return data.rstrip("\r\n")
