"""Writing paho's socket from the event loop once per loop iteration, rather than once per message.

aiomqtt has paho ask for the socket to be watched for writability on every publish: a
`call_soon_threadsafe` (a byte through the loop's self-pipe and a read of it back), an epoll
registration, an iteration woken by the socket being writable, then the write and an unregistration.
Measured alone, paho's publish written that way cost the event loop 336-455 us per message against
216-275 written at once, and edged publishes one message per frame (docs/performance-notes.md, section p).
A socket to a broker is nearly always writable, so the writer simply writes in the iteration that queued
the message; only when the socket is full, or writing fails, does it hand the socket back to aiomqtt,
which then watches it as before (and turns a broken connection into its usual error).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

_SocketCallback = Callable[[paho.Client, Any, Any], None]


class LoopWriter:
    """Takes over paho's write-readiness callbacks from aiomqtt for one connection (install after connecting)."""

    def __init__(self, client: paho.Client, on_written: Callable[[], None]) -> None:
        self._paho = client
        self._on_written = on_written
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._scheduled = False
        # aiomqtt watches the socket until paho has written everything it holds: so it does for what paho holds
        # now (only aiomqtt's writer has written so far; it unregisters through `_unregister` once done).
        self._watched = client.want_write()
        self._aiomqtt_register: _SocketCallback | None = client.on_socket_register_write
        self._aiomqtt_unregister: _SocketCallback | None = client.on_socket_unregister_write
        client.on_socket_register_write = self._register
        client.on_socket_unregister_write = self._unregister

    def _register(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """paho holds packets to write: write them later in this loop iteration (once for all of them)."""
        if self._watched or self._scheduled:
            return
        self._scheduled = True
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._write)
        else:  # paho's connect runs on aiomqtt's executor thread
            self._loop.call_soon_threadsafe(self._write)

    def _unregister(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """paho has written everything it held."""
        if self._watched:
            self._watched = False
            if self._aiomqtt_unregister is not None:
                self._aiomqtt_unregister(client, userdata, sock)
            self._on_written()

    def _write(self) -> None:
        self._scheduled = False
        if self._watched:
            return
        client = self._paho
        try:
            client.loop_write()
        except Exception:  # a broken connection: aiomqtt's own writer reports it as the session's error
            self._watch()
            return
        if client.want_write():  # the socket is full: aiomqtt waits until it can take more
            self._watch()
        self._on_written()

    def _watch(self) -> None:
        sock = self._paho.socket()
        if sock is None or self._aiomqtt_register is None:
            return  # closed meanwhile: aiomqtt ends the session
        self._watched = True
        self._aiomqtt_register(self._paho, None, sock)
