"""Camera readers: one asyncio task per camera, its blocking capture and decode in its own thread.

A reader knows nothing of models: it is given a `prepare` function that turns a decoded frame into
its model's input, and it runs that in the camera's thread too, so that resizing is spread over
the camera threads instead of blocking the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

import cv2

from edged.config import CameraConfig
from edged.errors import EdgedError
from edged.frame import Frame, FrameSlot, Image

log = logging.getLogger("edged.camera")

Prepare = Callable[[Image], Image]
StatusCallback = Callable[[str, bool], None]
T = TypeVar("T")

STREAM_TIMEOUT_MS = 10_000  # open/read timeout for network streams: a dead host must not hang a thread
IMAGE_DEFAULT_FPS = 1.0  # an image camera repeats its image at this rate unless `fps` says otherwise
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0


class SourceError(EdgedError):
    """A camera cannot be opened or stopped delivering frames."""


class Source(Protocol):
    """A blocking frame source, only ever touched from its camera's thread."""

    native_fps: float | None  # frames per second of a file; None for live sources

    def grab(self) -> bool:
        """Advance to the next frame without converting it to pixels; False at the end or on error."""
        ...

    def retrieve(self) -> Image:
        """The pixels of the frame last grabbed."""
        ...

    def rewind(self) -> bool: ...

    def release(self) -> None: ...


class CaptureSource:
    """Video files, RTSP, HTTP MJPEG and V4L2 devices through OpenCV's VideoCapture."""

    def __init__(self, camera: str, config: CameraConfig) -> None:
        self._camera, self._config = camera, config
        self._capture = self._open()
        fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        self.native_fps: float | None = (fps if 0 < fps < 1000 else 25.0) if config.kind == "video" else None

    def _open(self) -> cv2.VideoCapture:
        url, kind = self._config.url, self._config.kind
        if kind == "device":
            device = int(url) if url.isdigit() else int(url.removeprefix("/dev/video"))
            capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
        elif kind == "video":
            capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        else:
            timeouts = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
            ]
            capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, timeouts)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"camera {self._camera}: cannot open {self._config.safe_url}: {_open_advice(kind)}")
        return capture

    def grab(self) -> bool:
        return bool(self._capture.grab())

    def retrieve(self) -> Image:
        ok, image = self._capture.retrieve()
        if not ok or image is None:
            raise SourceError(f"camera {self._camera}: a frame could not be decoded from {self._config.safe_url}")
        return cast(Image, image)

    def rewind(self) -> bool:
        return bool(self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def release(self) -> None:
        self._capture.release()


class ImageSource:
    """A still image as a camera: the same frame, repeated at `fps` (default 1/s)."""

    def __init__(self, camera: str, config: CameraConfig) -> None:
        image = cv2.imread(config.url, cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"camera {camera}: {config.url} is not a readable image: check the file")
        self._image = cast(Image, image)
        self.native_fps: float | None = config.fps or IMAGE_DEFAULT_FPS

    def grab(self) -> bool:
        return True

    def retrieve(self) -> Image:
        return self._image

    def rewind(self) -> bool:
        return True

    def release(self) -> None:
        pass  # nothing is held open


def _open_advice(kind: str) -> str:
    return {
        "video": "check that it is a video file OpenCV can decode",
        "device": "check that the device exists and that edged may use it (group 'video')",
    }.get(kind, "check the URL, the credentials and that the camera is reachable")


def open_source(camera: str, config: CameraConfig) -> Source:
    return ImageSource(camera, config) if config.kind == "image" else CaptureSource(camera, config)


class FrameSelector:
    """Takes at most `fps` frames per second of stream time, evenly, deciding before pixels are made.

    The schedule advances by whole periods rather than restarting at each frame taken, so a 25 fps
    source capped at 15 yields 15, not 12.5.
    """

    def __init__(self, fps: float | None) -> None:
        self._period = 1.0 / fps if fps else 0.0
        self._tolerance = 0.2 * self._period
        self._next = -math.inf

    def want(self, t: float) -> bool:
        if t < self._next - self._tolerance:
            return False
        on_schedule = t - self._next < self._period
        self._next = self._next + self._period if on_schedule else t + self._period
        return True


@dataclass(slots=True)
class _Decoded:
    index: int
    captured: float  # Unix time the frame was read, or when a real-time file frame falls due
    due: float | None  # for real-time files: wait until then before handing the frame over
    image: Image
    tensor: Image


class Camera:
    """Owns one camera: opens it, reads it, retries it, and feeds its slot with fresh frames."""

    def __init__(
        self, name: str, config: CameraConfig, slot: FrameSlot, prepare: Prepare, on_status: StatusCallback
    ) -> None:
        self.name, self.config = name, config
        self.slot = slot
        self._prepare, self._on_status = prepare, on_status
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"camera-{name}")
        self._index = 0  # frames read from the stream in this run, across reopenings and loops
        self.frames_read = 0
        self.reconnects = 0
        self._was_online = False

    async def run(self) -> None:
        """Read until the stream ends (a file with `loop: false`) or the task is cancelled."""
        retry = RETRY_MIN_S
        try:
            while True:
                try:
                    await self._stream()
                    log.info("camera %s: end of %s, camera finished", self.name, self.config.safe_url)
                    return
                except SourceError as error:
                    self._on_status(self.name, False)
                    if self._was_online:  # a camera that worked starts its retries from the shortest wait
                        retry, self._was_online = RETRY_MIN_S, False
                    # One warning per outage; the retries of a long outage go to debug.
                    level = logging.WARNING if retry == RETRY_MIN_S else logging.DEBUG
                    log.log(level, "%s; retrying in %.0f s", error, retry)
                    self.reconnects += 1
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, RETRY_MAX_S)
        finally:
            self._on_status(self.name, False)
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _stream(self) -> None:
        source = await self._in_thread(open_source, self.name, self.config)
        try:
            log.info("camera %s: online (%s)", self.name, self.config.safe_url)
            self._on_status(self.name, True)
            self._was_online = True
            selector = FrameSelector(self.config.fps)
            started = time.time()
            first_index = self._index
            # A file at full speed waits for detection instead of racing ahead: the next frame is
            # decoded while the current one waits, and none is decoded only to be shed.
            paced_by_detection = source.native_fps is not None and not self.config.realtime
            while (
                decoded := await self._in_thread(self._next_frame, source, selector, started, first_index)
            ) is not None:
                captured = decoded.captured
                if paced_by_detection:
                    await self.slot.emptied()
                    captured = time.time()  # a file frame "arrives" when detection can take it
                elif decoded.due is not None and (delay := decoded.due - time.time()) > 0:
                    await asyncio.sleep(delay)
                self.slot.put(Frame(self.name, decoded.index, captured, decoded.image, decoded.tensor))
        finally:
            # Queued behind any read still running in the camera's thread; never blocks the loop.
            self._executor.submit(source.release)

    def _next_frame(self, source: Source, selector: FrameSelector, started: float, first: int) -> _Decoded | None:
        """In the camera's thread: skip what will not be used without decoding it to pixels."""
        realtime_file = source.native_fps is not None and self.config.realtime
        while True:
            grabbed = source.grab()
            now = time.time()
            if not grabbed:
                if source.native_fps is None:
                    raise SourceError(f"camera {self.name}: the stream stopped delivering frames")
                if not self.config.loop or not source.rewind() or not source.grab():
                    return None
            index = self._index
            self._index += 1
            self.frames_read += 1
            if source.native_fps is None:
                stream_time, due = now, None
            else:
                stream_time = (index - first) / source.native_fps
                due = started + stream_time if realtime_file else None
                if due is not None and now - due > 1.0 / source.native_fps:
                    continue  # a real-time file that fell behind drops frames, as a live camera would
            if selector.want(stream_time):
                image = source.retrieve()
                return _Decoded(index, now if due is None else due, due, image, self._prepare(image))

    async def _in_thread(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
