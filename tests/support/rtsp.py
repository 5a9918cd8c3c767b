"""Control of the real RTSP camera (tests/support/rtsp_server.py) from the project's python.

The server runs under the SYSTEM python because GStreamer's bindings (python3-gi,
gir1.2-gst-rtsp-server-1.0) come from Debian, not PyPI. It serves a media file's H.264 track
without re-encoding, paced at the file's frame rate.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import LOCALHOST, ServerProcess, port_accepts, tail, track_child

SYSTEM_PYTHON = os.environ.get("EDGED_SYSTEM_PYTHON", "/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


# Type of the ``rtsp_server_factory`` fixture: (media=None, *, loop=False, mount="/stream").
RtspFactory = Callable[..., "RtspServer"]


class RtspServerError(RuntimeError):
    """The RTSP server did not start; the message carries its log."""


class RtspServer(ServerProcess):
    """One RTSP server process serving ``media`` at ``rtsp://127.0.0.1:<port><mount>``.

    - ``loop=False`` (default): each client gets the file once (12 s for faces-1080p30.mp4), then
      the stream ends. ``loop=True`` repeats it forever.
    - ``kill()`` is a camera losing power (SIGKILL); ``restart()`` brings it back on the same port.
    - ``pause()`` freezes the process (SIGSTOP): the kernel still accepts TCP connections but
      nothing answers and no packet flows, i.e. a hung camera, before or during a stream;
      ``resume()`` thaws it.
    """

    host = LOCALHOST

    def __init__(self, media: Path, *, mount: str = "/stream", loop: bool = False) -> None:
        if not media.is_file():
            raise RtspServerError(f"no such media file: {media}")
        self.media = media
        self.mount = mount
        self.loop = loop
        self.port = 0  # chosen by the kernel at first start, reused by restart()
        self._workdir = Path(tempfile.mkdtemp(prefix="edged-rtsp-"))
        self.log_path = self._workdir / "rtsp_server.log"
        self._process = None
        self._paused = False

    @property
    def url(self) -> str:
        if not self.port:
            raise RtspServerError("RTSP server not started yet")
        return f"rtsp://{self.host}:{self.port}{self.mount}"

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        # A port just freed by kill() can stay briefly unbindable; retry within the timeout.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._launch(max(deadline - time.monotonic(), 1.0))
                return
            except RtspServerError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def restart(self, *, downtime: float = 0.0, graceful: bool = False) -> None:
        """Kill (or stop) and start again on the same port and path."""
        if graceful:
            self.stop()
        else:
            self.kill()
        if downtime > 0:
            time.sleep(downtime)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def log_text(self) -> str:
        return tail(self.log_path)

    def __repr__(self) -> str:
        return f"<RtspServer {self.url if self.port else '(not started)'} running={self.running}>"

    # --- internals -------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        command = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--file", str(self.media), "--port", str(self.port)]
        command += ["--mount", self.mount]
        if self.loop:
            command.append("--loop")
        return command

    def _launch(self, timeout: float) -> None:
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        track_child(process)
        self._process = process
        self._paused = False
        port = self._read_ready_line(process, timeout)
        if port is None or not port_accepts(self.host, port):
            self._end(signal.SIGKILL, 5.0)
            raise RtspServerError(f"RTSP server did not start ({self._command()}):\n{self.log_text()}")
        self.port = port

    def _read_ready_line(self, process: subprocess.Popen[bytes], timeout: float) -> int | None:
        """Wait for the server's ``READY <port>`` line; None if it exits or stays silent."""
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return None
            line = process.stdout.readline().decode(errors="replace").split()
        # Nothing else is printed on stdout; closing it lets the server never block on a full pipe.
        process.stdout.close()
        if len(line) == 2 and line[0] == "READY":
            return int(line[1])
        return None
