"""Where a camera's frames come from: blocking sources, each only ever touched from its camera's thread.

- `StreamSource` (PyAV): H.264/H.265 files and RTSP. Its decoder can skip the frames no other frame
  refers to, which is how a camera decodes less of what detection would not use (see
  `edged.thinning`); OpenCV cannot ask FFmpeg's decoder for that.
- `CaptureSource` (OpenCV): V4L2 devices, HTTP MJPEG and raw MJPEG files, whose frames are all
  self-contained, so there is nothing to skip.
- `ImageSource`: a still image repeated.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Protocol, cast

import av
import av.container
import av.error
import cv2

from edged.config import CameraConfig
from edged.convert import BgrConverter
from edged.errors import EdgedError
from edged.frame import BufferPool, Image
from edged.http_camera import refusal
from edged.priority import at_lowest_priority
from edged.sniff import sniff

IMAGE_DEFAULT_FPS = 1.0  # an image camera repeats its image at this rate unless `fps` says otherwise
# At most this long to ask an HTTP camera that cannot be opened why (half to connect, half for the answer):
# within the grace the camera's watchdog gives an opening beyond `stall_timeout`.
HTTP_PROBE_S = 4.0
_MJPEG_SUFFIXES = (".mjpeg", ".mjpg", ".mjp")
_DEFAULT_FILE_FPS = 25.0  # a file that does not say its frame rate
_LONGEST_SKIP = 16  # frames: more than a decoder ever skips in a row (runs of B frames are shorter)
_ARRIVALS_KEPT = 64  # packets read whose frames have not come out yet: far more than a decoder holds back


class SourceError(EdgedError):
    """A camera cannot be opened or stopped delivering frames.

    `permanent`: retrying cannot help (a file that is not a video); the camera stops.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Source(Protocol):
    """A blocking frame source, only ever touched from its camera's thread."""

    native_fps: float | None  # frames per second of a file; None for live sources
    still: bool  # every frame is the same image (prepared for the model once, not per frame)
    can_skip: bool  # its decoder can skip unreferenced frames (`skip_unreferenced`)
    position: float | None  # the time of the frame last grabbed on the stream's clock, seconds (None: unknown)
    # Unix time the data of the frame last grabbed was read from its connection (a live stream's capture
    # time as edged can know it); None where the reader does not tell (the frame counts from its decoding).
    arrived: float | None

    def grab(self) -> int:
        """Advance to the next decoded frame without converting it to pixels.

        Returns how many frames of the stream that moved on: 1, more when the decoder skipped
        frames, 0 at the end or on error.
        """
        ...

    def retrieve(self) -> Image:
        """The pixels of the frame last grabbed."""
        ...

    def skip_unreferenced(self, skip: bool) -> None:
        """Let the decoder skip (or again decode) frames no other frame refers to; the others stay bit-identical."""
        ...

    def rewind(self) -> bool: ...

    def release(self) -> None: ...


class StreamSource:
    """H.264/H.265 (any FFmpeg video) files and RTSP streams through PyAV."""

    still = False
    position: float | None = None
    arrived: float | None = None

    def __init__(self, camera: str, config: CameraConfig) -> None:
        self._camera, self._config = camera, config
        self._live = config.kind != "video"  # RTSP: frames come at the camera's pace, decoded or not
        self._skipping = False
        self.can_skip = True  # until the stream turns out to have no usable timestamps
        if not self._live:
            _refuse_image(camera, config.url)  # once: a file that loops is reopened every time it ends
        self._converter = BgrConverter()
        self._open()

    def _open(self) -> None:
        self._container = container = self._connect()
        try:
            self._stream = stream = self._start_decoder(container)
        except BaseException:
            container.close()
            raise
        self._packets = container.demux(stream)
        self._decoded: deque[av.VideoFrame] = deque()
        self._frame: av.VideoFrame | None = None
        self._arrivals: dict[int, float] = {}  # packet pts -> when it was read, until its frame comes out
        rate = stream.average_rate or stream.guessed_rate
        known_rate = float(rate) if rate and 0 < rate < 1000 else None
        self.native_fps: float | None = None if self._live else known_rate or _DEFAULT_FILE_FPS
        self._seconds_per_tick = float(stream.time_base) if stream.time_base else None
        frames_per_tick = known_rate * self._seconds_per_tick if known_rate and self._seconds_per_tick else None
        # Without a clock the frames skipped could not be counted, and a file's pace depends on the count.
        self.can_skip = frames_per_tick is not None
        self._count = FrameCount(frames_per_tick or 0.0)

    def _connect(self) -> av.container.InputContainer:
        url = self._config.url
        if not self._live:
            options: dict[str, str] = {}
            timeout: tuple[float, float] | None = None
        else:
            # OpenCV's choice too: RTP over the RTSP connection when the server offers it (no UDP
            # ports to open, no lost packets); the timeouts free the thread of a hung server.
            options = {"rtsp_flags": "prefer_tcp"}
            timeout = (self._config.stall_timeout, self._config.stall_timeout)
        url_shown = self._config.safe_url
        try:
            container = av.open(url, options=options, timeout=timeout)
        except (av.error.FFmpegError, OSError) as error:
            # Not str(error): FFmpeg's messages quote the URL, credentials and all.
            raise _open_error(self._camera, self._config, f"cannot open {url_shown} ({_reason(error)})") from None
        if not container.streams.video:
            container.close()
            raise _open_error(self._camera, self._config, f"{url_shown} has no video stream")
        return container

    def _start_decoder(self, container: av.container.InputContainer) -> av.VideoStream:
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise _open_error(self._camera, self._config, f"{self._config.safe_url}: no decoder for its video")
        # Frame threads hold every frame back by one frame per extra thread (two on two cores: 133 ms at
        # 15 fps): a live stream gets slice threads only (a stream of one slice per frame then decodes in
        # the camera's thread) unless its camera asks for frame threads (a stream one core cannot decode in
        # real time). A file's frames are decoded ahead of their time or paced by detection, so they lose
        # nothing to that, and its decoding runs in the frame threads, last (priority.py).
        threads = self._config.decoder_threads or ("slice" if self._live else "frame")
        stream.thread_type = "SLICE" if threads == "slice" else "AUTO"
        stream.codec_context.skip_frame = "NONREF" if self._skipping else "DEFAULT"
        # Opening starts the decoder's threads: at the lowest priority, while this thread converts and
        # resizes at its own (edged/priority.py).
        try:
            at_lowest_priority(stream.codec_context.open)
        except (av.error.FFmpegError, OSError) as error:
            problem = f"cannot decode the video of {self._config.safe_url} ({_reason(error)})"
            raise _open_error(self._camera, self._config, problem) from None
        return stream

    def grab(self) -> int:
        frame = self._next_decoded()
        if frame is None:
            return 0
        self._frame = frame
        self.arrived = self._arrivals.pop(frame.pts, None) if frame.pts is not None else None
        ticks = self._seconds_per_tick
        self.position = frame.pts * ticks if frame.pts is not None and ticks is not None else None
        if frame.pts is None:
            if self._skipping:  # the frames skipped cannot be counted (raw H.264 has no timestamps)
                self.skip_unreferenced(False)
                self.can_skip = False
            return 1
        return self._count.advance(frame.pts, self._skipping)

    def _next_decoded(self) -> av.VideoFrame | None:
        while not self._decoded:
            try:
                packet = next(self._packets)
            except (StopIteration, av.error.FFmpegError, OSError):
                return None  # the end, or the connection failed or timed out: the camera reopens it
            if self._live and packet.pts is not None:
                self._arrivals.pop(packet.pts, None)  # a clock started over: the entry moves to the end
                if len(self._arrivals) >= _ARRIVALS_KEPT:  # frames skipped or never output leave theirs
                    del self._arrivals[next(iter(self._arrivals))]
                self._arrivals[packet.pts] = time.time()
            try:
                self._decoded.extend(packet.decode())
            except av.error.InvalidDataError:
                continue  # a damaged packet: the decoder conceals it, as OpenCV's reader does
            except (av.error.FFmpegError, OSError):
                return None
        return self._decoded.popleft()

    def retrieve(self) -> Image:
        if self._frame is None:
            raise SourceError(f"camera {self._camera}: no frame was decoded from {self._config.safe_url}")
        return self._converter.convert(self._frame)

    def skip_unreferenced(self, skip: bool) -> None:
        self._skipping = skip and self.can_skip
        self._stream.codec_context.skip_frame = "NONREF" if self._skipping else "DEFAULT"

    def rewind(self) -> bool:
        self._close()
        self._open()  # reopen rather than seek: opening a file again costs milliseconds
        return True

    def release(self) -> None:
        self._close()
        self._converter.close()

    def _close(self) -> None:
        self._frame = None
        self._decoded.clear()
        self._container.close()


class FrameCount:
    """Frames of a stream passed so far, the ones the decoder skipped included, told from timestamps.

    While every frame is decoded each counts one: a gap in the timestamps is the stream's own (a live
    camera lowering its rate, a cut in a file), not frames skipped. While skipping, a frame counts the
    frames from the furthest timestamp seen before it; frames delivered out of order (as some RTSP servers'
    B frames are) count one each and the jumps after them are smaller by as much; a jump of more than
    `_LONGEST_SKIP` frames is the stream's clock, not frames skipped.
    """

    def __init__(self, frames_per_tick: float) -> None:
        self._frames_per_tick = frames_per_tick
        self._started = False
        self._first = 0  # the position the count starts from
        self._furthest = 0
        self._counted = 0

    def advance(self, pts: int, skipping: bool) -> int:
        """One more frame decoded, at `pts`: how many frames of the stream that moved on (at least 1)."""
        position = round(pts * self._frames_per_tick)
        jumped = not self._started or abs(position - self._furthest) > _LONGEST_SKIP
        self._started = True
        self._furthest = position if jumped else max(self._furthest, position)
        if jumped or not skipping:
            self._counted += 1
            self._first = self._furthest - self._counted + 1
            return 1
        step = max(1, self._furthest - self._first + 1 - self._counted)
        self._counted += step
        return step


class CaptureSource:
    """V4L2 devices, HTTP MJPEG and raw MJPEG files through OpenCV's VideoCapture."""

    still = False
    can_skip = False
    position: float | None = None
    arrived: float | None = None  # OpenCV reads and decodes in one call

    def __init__(self, camera: str, config: CameraConfig) -> None:
        self._camera, self._config = camera, config
        self._capture = self._open()
        self._pool = BufferPool()
        self._shape: tuple[int, ...] | None = None  # of the frames last retrieved
        fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        self.native_fps: float | None = (
            (fps if 0 < fps < 1000 else _DEFAULT_FILE_FPS) if config.kind == "video" else None
        )

    def _open(self) -> cv2.VideoCapture:
        url, kind = self._config.url, self._config.kind
        if kind == "device":
            device = int(url) if url.isdigit() else int(url.removeprefix("/dev/video"))
            capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
        elif kind == "video":
            capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        else:
            # Without these OpenCV waits 30 s on a hung server; the camera task watches for stalls
            # too, but a read that gives up on its own frees the thread sooner.
            timeout_ms = int(self._config.stall_timeout * 1000)
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, timeouts)
        if not capture.isOpened():
            capture.release()
            problem = f"cannot open {self._config.safe_url}"
            if kind == "http" and (why := refusal(url, min(self._config.stall_timeout, HTTP_PROBE_S) / 2)) is not None:
                problem += f" ({why})"
            raise _open_error(self._camera, self._config, problem)
        return capture

    def grab(self) -> int:
        return int(self._capture.grab())

    def retrieve(self) -> Image:
        # Into a reused buffer: OpenCV writes into it when the frame has its size, else allocates anew.
        buffer = self._pool.take(self._shape) if self._shape is not None else None
        ok, image = self._capture.retrieve(buffer)
        if not ok or image is None:
            raise SourceError(f"camera {self._camera}: a frame could not be decoded from {self._config.safe_url}")
        self._shape = image.shape
        return cast(Image, image)

    def skip_unreferenced(self, skip: bool) -> None:
        pass  # MJPEG frames all stand alone; V4L2 hands over what the device made

    def rewind(self) -> bool:
        # Reopen rather than seek: a seek to frame 0 "succeeds" on files that cannot seek (a raw
        # MJPEG stream) and the next read fails; opening a file again costs milliseconds.
        self._capture.release()
        self._capture = self._open()
        return True

    def release(self) -> None:
        self._capture.release()


class ImageSource:
    """A still image as a camera: the same frame, repeated at `fps` (default 1/s)."""

    still = True
    can_skip = False
    position: float | None = None
    arrived: float | None = None

    def __init__(self, camera: str, config: CameraConfig) -> None:
        image = cv2.imread(config.url, cv2.IMREAD_COLOR)
        if image is None and not os.access(config.url, os.R_OK):
            raise _open_error(camera, config, f"cannot read {config.url} (Permission denied)")
        if image is None:
            found, name = sniff(config.url)
            advice = (
                f"it holds a video ({name}), not an image: give it a video suffix (e.g. .mp4)"
                if found == "video"
                else "the file is corrupt, truncated or of an unsupported format: check it"
            )
            raise SourceError(f"camera {camera}: {config.url} is not a readable image: {advice}", permanent=True)
        self._image = cast(Image, image)
        self.native_fps: float | None = config.fps or IMAGE_DEFAULT_FPS

    def grab(self) -> int:
        return 1

    def retrieve(self) -> Image:
        return self._image

    def skip_unreferenced(self, skip: bool) -> None:
        pass  # one image, decoded once

    def rewind(self) -> bool:
        return True

    def release(self) -> None:
        pass  # nothing is held open


def open_source(camera: str, config: CameraConfig) -> Source:
    if config.kind == "image":
        return ImageSource(camera, config)
    if config.kind == "rtsp" or (config.kind == "video" and not _is_mjpeg(config.url)):
        return StreamSource(camera, config)
    return CaptureSource(camera, config)


def probe_file(camera: str, config: CameraConfig) -> str | None:
    """For `edged check`: why a camera that reads a file would fail at its first frame, or None if it reads one.

    Only files: a stream or a device is not there yet or is in use by a running edged, and a check must not
    take it over. The answer is the line `edged run` would log for that camera."""
    if config.kind not in ("video", "image"):
        return None
    try:
        source = open_source(camera, config)
    except SourceError as error:
        return str(error)
    try:
        if not source.grab():
            return str(no_frame_error(camera, config))
        source.retrieve()
    except SourceError as error:
        return str(error)
    finally:
        source.release()
    return None


def no_frame_error(camera: str, config: CameraConfig) -> SourceError:
    """A file that opens but from which not one frame decodes (say, its video data is garbled): playing it again
    cannot help."""
    return SourceError(
        f"camera {camera}: {config.safe_url} holds no frame that can be decoded: check the file", permanent=True
    )


def _is_mjpeg(url: str) -> bool:
    return url.lower().endswith(_MJPEG_SUFFIXES)


def _refuse_image(camera: str, url: str) -> None:
    # A raw MJPEG stream is a run of JPEG images, so it starts like one: only its suffix tells.
    found, name = sniff(url)
    if found == "image" and not _is_mjpeg(url):
        raise SourceError(
            f"camera {camera}: {url} holds an image ({name}), not a video: give it an image suffix "
            f"(.{name.lower()}) to repeat it as a still, or point url at a video file",
            permanent=True,
        )


def _reason(error: Exception) -> str:
    return str(getattr(error, "strerror", None) or type(error).__name__)


def _still_there(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a share that dropped out answers ESTALE or EIO: gone for now, like a missing file
        return False


def _open_error(camera: str, config: CameraConfig, problem: str) -> SourceError:
    """One line: the camera, what went wrong, what to do; a file that cannot be opened stays unopenable, but one
    that is gone may come back (replaced, on a share that dropped out): that camera retries."""
    if config.kind == "video" and not _still_there(Path(config.url)):
        return SourceError(f"camera {camera}: {config.safe_url} is not there any more: put it back")
    if config.kind in ("video", "image") and not os.access(config.url, os.R_OK):
        return SourceError(
            f"camera {camera}: {problem}: check that edged may read it (under systemd, the service's user)",
            permanent=True,
        )
    advice = {
        "video": "the file is corrupt, truncated or not a video FFmpeg can decode: check it",
        "device": "check that the device exists and that edged may use it (group 'video')",
    }.get(config.kind, "check the URL, the credentials and that the camera is reachable")
    return SourceError(f"camera {camera}: {problem}: {advice}", permanent=config.kind == "video")
