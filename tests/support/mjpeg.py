"""A real HTTP MJPEG camera (``multipart/x-mixed-replace``), as cheap IP cameras serve.

Frames come from a real media file, decoded and JPEG-encoded once, then streamed in a loop at a
fixed rate to every client. Runs on stdlib ``http.server`` in background threads.
"""

from __future__ import annotations

import functools
import io
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

import cv2

from . import LOCALHOST

BOUNDARY = "edgedframe"


@functools.lru_cache(maxsize=8)
def encode_frames(media: Path, max_frames: int = 100, quality: int = 85) -> tuple[bytes, ...]:
    """The first ``max_frames`` frames of ``media`` as JPEG bytes (cached: tests reuse them)."""
    capture = cv2.VideoCapture(str(media), cv2.CAP_FFMPEG)
    frames: list[bytes] = []
    try:
        while len(frames) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                frames.append(jpeg.tobytes())
    finally:
        capture.release()
    if not frames:
        raise RuntimeError(f"no frame could be read from {media}")
    return tuple(frames)


# Type of the ``mjpeg_server_factory`` fixture: (media=None, *, fps=15.0, path=..., max_frames=100).
MjpegFactory = Callable[..., "MjpegServer"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart() rebinds the same port while old sockets linger
    owner: MjpegServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path.split("?")[0] != owner.path:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Connection", "close")
        self.end_headers()
        owner.stream_to(self.wfile, owner.stop_event)

    def log_message(self, format: str, *args: object) -> None:
        # Quiet: pytest would show every request of every test otherwise.
        return


class MjpegServer:
    """``http://127.0.0.1:<port>/video.mjpg`` serving ``media`` at ``fps`` frames per second.

    ``pause()`` keeps connections open but sends nothing (a hung camera); ``resume()`` continues.
    ``restart()`` drops every client and listens again on the same port.
    """

    host = LOCALHOST

    def __init__(self, media: Path, *, fps: float = 15.0, path: str = "/video.mjpg", max_frames: int = 100) -> None:
        self.media, self.fps, self.path = media, fps, path
        self.frames = encode_frames(media, max_frames)
        self.port = 0
        self.frames_sent = 0
        self._running = threading.Event()  # cleared by pause()
        # One event per start(): set by stop(), so streams of an earlier run end even when a
        # restart() begins a new run before they noticed.
        self.stop_event = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        self.stop_event = threading.Event()
        self._running.set()
        server = _Server((self.host, self.port), _Handler)
        server.owner = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=f"mjpeg-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and end every client's stream."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stop_event.set()
        self._running.set()  # wake paused streams so they can see they must end
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)

    def restart(self, downtime: float = 0.0) -> None:
        self.stop()
        if downtime > 0:
            time.sleep(downtime)
        self.start()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def __enter__(self) -> MjpegServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<MjpegServer {self.url} fps={self.fps} frames={len(self.frames)} running={self.running}>"

    def stream_to(self, out: io.BufferedIOBase, stop: threading.Event) -> None:
        """Write multipart JPEG parts to one client until it leaves or ``stop`` is set."""
        period = 1.0 / self.fps
        next_due = time.monotonic()
        index = 0
        while not stop.is_set():
            self._running.wait()
            if stop.is_set():
                return
            jpeg = self.frames[index % len(self.frames)]
            header = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            try:
                out.write(header.encode() + jpeg + b"\r\n")
            except OSError:  # client went away
                return
            with self._lock:
                self.frames_sent += 1
            index += 1
            # Pace on an absolute schedule so the average rate stays exact despite write jitter.
            next_due = max(next_due + period, time.monotonic() - period)
            stop.wait(max(0.0, next_due - time.monotonic()))
