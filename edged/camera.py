"""Camera readers: one asyncio task per camera, its blocking capture and decode in its own thread.

A reader knows nothing of models: it is given a `prepare` function that turns a decoded frame into
its model's input, and it runs that in the camera's thread too, so that resizing is spread over
the camera threads instead of blocking the event loop.

Failures are the camera's own business: a stream that cannot be opened, errors or stalls is
released and reopened with backoff, its status goes offline and back online, and no other camera
notices. A file that cannot be read is reported once and that camera stops.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edged.backoff import Retry
from edged.config import CameraConfig
from edged.frame import Frame, FrameSlot, Image
from edged.sources import Source, SourceError, no_frame_error, open_source
from edged.thinning import Thinning
from edged.worker import Worker

log = logging.getLogger("edged.camera")

Prepare = Callable[[Image], Image]
StatusCallback = Callable[[str, bool], None]
T = TypeVar("T")

OPEN_GRACE_S = 5.0  # opening may take this much longer than a read before it counts as stalled
REORDER_S = 1.0  # longer than any decoder holds a frame back to put frames in display order


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
class _Opening:
    """One opening of a camera's source and what reading it keeps track of."""

    source: Source
    selector: FrameSelector
    started: float  # time.monotonic() when the reading began: a real-time file's clock (the wall clock may step)
    first: int  # the camera's frame index at the first frame read at the current rate
    played: float = 0.0  # seconds of stream before that frame (a looping file read again, maybe at another rate)
    thinning: Thinning = field(default_factory=Thinning)

    def stream_time(self, index: int, fps: float) -> float:
        return self.played + (index - self.first) / fps

    def replay_from(self, index: int, fps: float) -> None:
        """A file read again from its start, at `index`, after `fps` frames a second so far: its clock runs on,
        at whatever rate the file now has (the file may have been replaced by one of another rate, and
        counting all the frames so far at the new rate would put the next frame minutes into the future)."""
        self.played, self.first = self.stream_time(index, fps), index


@dataclass(frozen=True, slots=True)
class _Watched:
    """A call on the capture thread that the watchdog keeps an eye on."""

    call: asyncio.Future[Any]
    limit: float  # seconds without progress before the thread counts as stuck
    doing: str  # what the call does, for the log line


@dataclass(slots=True)
class _Decoded:
    index: int
    # Unix time the frame reached edged: a live stream's when its data was read from the connection
    # (else when it was decoded), a real-time file's when it falls due, decoded in time or not.
    captured: float
    due: float | None  # for real-time files: wait until then (time.monotonic()) before handing the frame over
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
        self._worker: Worker  # the capture thread: started by run(), so a camera that never runs leaves none
        self._index = 0  # frames of the stream passed in this run, across reopenings and loops
        self._behind = 0.0  # seconds a real-time file has fallen behind its own clock (see _next_frame)
        self._last_arrival = 0.0  # a live stream's latest capture time: timestamps never go back
        self._progress = time.monotonic()  # last sign of life from the capture thread
        self._watched: _Watched | None = None  # the capture thread's call being awaited, if any
        self._streaming = asyncio.Event()  # set while a source is opened or read: the watchdog has work
        self._size: tuple[int, int] | None = None
        self._size_change_logged = False
        self._still_tensor: Image | None = None  # a still camera's image, prepared once per opening
        self.frames_read = 0  # frames of the stream passed, decoded or skipped by the decoder
        self.frames_decoded = 0
        self._thinning_told: bool | None = None  # the skipping state last logged at info level
        self.reconnects = 0
        self.online = False
        self._reported: bool | None = None  # the status last told to subscribers (None: nothing yet)
        self._outage_reported = False
        self.last_frame = 0.0  # time.monotonic() of the last frame handed over (0: none yet)
        self.finished = False  # ended by design (a file with `loop: false`) or given up for good
        self.failed = False  # given up for good: its source cannot be used (a corrupt file)

    async def run(self) -> None:
        """Read until the stream ends (a file with `loop: false`), fails for good, or the task is cancelled."""
        self._worker = Worker(f"camera-{self.name}")
        try:
            async with asyncio.TaskGroup() as tasks:
                watchdog = tasks.create_task(self._watchdog(), name=f"watchdog-{self.name}")
                try:
                    await self._read_with_retries()
                except Exception:
                    self.failed = True  # a crash: the run must not end as if this camera had finished cleanly
                    raise
                finally:
                    watchdog.cancel()
        except ExceptionGroup as group:
            if len(group.exceptions) == 1:  # a crash is logged as its own error, not as a group of one
                raise group.exceptions[0] from None
            raise

    async def _read_with_retries(self) -> None:
        retry = Retry(self.config.backoff)
        try:
            while True:
                try:
                    await self._stream(retry)
                    log.info("camera %s: end of %s, camera finished", self.name, self.config.safe_url)
                    return
                except SourceError as error:
                    self._set_online(False)
                    if error.permanent:
                        log.error("%s; this camera is stopped, the others keep running", error)
                        self.failed = True
                        return
                    self.reconnects += 1
                    # One warning per outage (frames flowing again end it); the retries go to debug.
                    level = logging.DEBUG if self._outage_reported else logging.WARNING
                    self._outage_reported = True
                    wait = retry.next_wait()
                    log.log(level, "%s; offline, retrying in %.1f s", error, wait)
                    await asyncio.sleep(wait)
        finally:
            self.finished = True
            self._set_online(False)
            self._worker.close()

    def since_last_frame(self, now: float) -> float | None:
        """Seconds since the last frame was handed over (`now` from time.monotonic()); None when there was none
        yet, or while a file read at detection's pace waits for detection to be switched on again (quiet by
        design, not stalled)."""
        if not self.last_frame or (self.slot.paused and self.config.waits_for_detection):
            return None
        return now - self.last_frame

    def _set_online(self, online: bool) -> None:
        self.online = online
        if online != self._reported:  # a camera that never came up is reported offline too
            self._reported = online
            self._on_status(self.name, online)

    async def _stream(self, retry: Retry) -> None:
        worker = self._worker
        self._progress = time.monotonic()
        source: Source | None = None
        self._streaming.set()
        try:
            source = await self._watch(
                worker.call(open_source, self.name, self.config, discard=_release),
                self.config.stall_timeout + OPEN_GRACE_S,
                "opening it",
            )
            first_index = self._index
            opening = _Opening(source, FrameSelector(self.config.fps), time.monotonic(), first_index)
            self._still_tensor, self._behind = None, 0.0
            # A file at full speed waits for detection instead of racing ahead: the next frame is
            # decoded while the current one waits, and none is decoded only to be shed.
            paced_by_detection = source.native_fps is not None and not self.config.realtime
            # Paced by detection, a frame may wait to be delivered until a request is free (see edged/dispatch.py);
            # a live stream's next read must not wait for that.
            deliver = self.slot.deliver if paced_by_detection else None
            while True:
                self._progress = time.monotonic()
                decoded = await self._watch(
                    worker.call(self._next_frame, opening, deliver=deliver),
                    self.config.stall_timeout,
                    "reading",
                )
                if decoded is None:
                    if self._index == first_index:
                        raise no_frame_error(self.name, self.config)
                    return
                captured = decoded.captured
                if paced_by_detection:
                    await self.slot.emptied()
                    captured = time.time()  # a file frame "arrives" when detection can take it
                elif decoded.due is not None and (delay := decoded.due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                if not self.online:
                    log.info("camera %s: online (%s)", self.name, self.config.safe_url)
                    retry.reset()
                    self._outage_reported = False
                    self._set_online(True)
                self.last_frame = time.monotonic()
                self.slot.put(Frame(self.name, decoded.index, captured, decoded.image, decoded.tensor))
        finally:
            self._streaming.clear()
            if source is not None:
                # Queued behind any read still running in that thread: never blocks the loop, and a
                # capture is only ever touched by the thread that opened it.
                worker.submit(source.release)
            if worker is not self._worker:
                worker.close()  # abandoned after a stall: let its thread end once its call returns

    async def _watch(self, call: asyncio.Future[T], limit: float, doing: str) -> T:
        """Await a call on the capture thread, which `_watchdog` fails if the thread shows no progress for `limit`.

        A watchdog beside the camera rather than a timeout per call: this runs for every frame, and
        a timed wait costs a task and a timer each time.
        """
        self._watched = _Watched(call, limit, doing)
        try:
            return await call
        finally:
            self._watched = None

    async def _watchdog(self) -> None:
        """Abandon a capture thread stuck in a call: the stuck call keeps its thread, the next attempt gets a
        fresh one, and the camera goes through its usual retry."""
        period = min(1.0, self.config.stall_timeout / 4)
        while True:
            # Not between attempts: a camera that is down would otherwise wake edged every second for nothing.
            await self._streaming.wait()
            await asyncio.sleep(period)
            watched = self._watched
            if watched is None or watched.call.done() or time.monotonic() - self._progress <= watched.limit:
                continue
            if not self._worker.busy:  # the call is over on the thread; its frame waits for a free request
                continue
            self._worker = Worker(f"camera-{self.name}")
            watched.call.set_exception(
                SourceError(
                    f"camera {self.name}: stalled: nothing from {self.config.safe_url} for {watched.limit:g} s "
                    f"while {watched.doing}"
                )
            )

    def _next_frame(self, opening: _Opening) -> _Decoded | None:
        """In the camera's thread: skip what will not be used without decoding it to pixels."""
        source = opening.source
        realtime_file = source.native_fps is not None and self.config.realtime
        while True:
            began = time.monotonic()
            advanced = source.grab()
            self._progress = now_mono = time.monotonic()
            if now_mono - began > self.config.stall_timeout:
                # A read that took this long came after a stall, even if it returned something buffered.
                raise SourceError(f"camera {self.name}: stalled: one read took {now_mono - began:.1f} s")
            now = time.time()
            if not advanced:
                if source.native_fps is None:
                    raise SourceError(f"camera {self.name}: the stream stopped delivering frames")
                opening.replay_from(self._index, source.native_fps)
                if not self.config.loop:
                    return None
                if not source.rewind() or not (advanced := source.grab()):
                    # Played once, now unreadable: replaced by a file whose frames do not decode. That is an
                    # error to report, not the end of a camera meant to loop (which would exit 0, unrestarted).
                    raise no_frame_error(self.name, self.config)
            self._index += advanced
            index = self._index - 1  # the frames the decoder skipped lie before this one
            self.frames_read += advanced
            self.frames_decoded += 1
            if source.can_skip:
                # A real-time stream's clock tells whether its decoder keeps up; a file read as fast as
                # detection goes has no pace to keep.
                real_time = source.native_fps is None or self.config.realtime
                self._thin(opening, now_mono, advanced, source.position if real_time else None)
            if source.native_fps is None:
                stream_time, due = now_mono, None  # the fps cap keeps pace on a clock that never steps
            else:
                stream_time = opening.stream_time(index, source.native_fps)
                due = opening.started + self._behind + stream_time if realtime_file else None
                if due is not None and now_mono - due > 1.0 / source.native_fps:
                    # The box decodes slower than real time: play on from the newest frame, as a live
                    # stream does, instead of chasing a clock it cannot catch (which would starve
                    # this camera while cameras that keep up take every turn).
                    self._behind += now_mono - due
                    due = now_mono
            if opening.selector.want(stream_time):
                image = source.retrieve()
                self._check_size(image)
                captured = now + (due - now_mono) if due is not None else self._arrival(source, now)
                return _Decoded(index, captured, due, image, self._tensor(source, image))

    def _arrival(self, source: Source, decoded: float) -> float:
        """A live frame's capture time: when its data was read, else when it was decoded. Not earlier than the
        frame before: a stream with B frames sends a reference frame before the frames shown ahead of it
        (a wall clock set back by more than a reordering could explain is followed, not waited for)."""
        arrived = decoded if source.arrived is None else source.arrived
        if self._last_arrival - REORDER_S < arrived < self._last_arrival:
            arrived = self._last_arrival
        self._last_arrival = arrived
        return arrived

    def _thin(self, opening: _Opening, now: float, advanced: int, position: float | None) -> None:
        """Let the decoder skip unreferenced frames while detection would not use them anyway."""
        change = opening.thinning.observe(now, advanced, self.slot.taken, position)
        if change is None:
            return
        opening.source.skip_unreferenced(change.skip)
        if change.probe or change.skip == self._thinning_told:
            log.debug("camera %s: skipping unreferenced frames: %s (%s)", self.name, change.skip, change.reason)
            return
        self._thinning_told = change.skip
        if change.skip:
            log.info("camera %s: %s: decoding only the frames others refer to", self.name, change.reason)
        else:
            log.info("camera %s: %s: decoding every frame again", self.name, change.reason)

    def _tensor(self, source: Source, image: Image) -> Image:
        if not source.still:
            return self._prepare(image)
        if self._still_tensor is None:
            self._still_tensor = self._prepare(image)
        return self._still_tensor

    def _check_size(self, image: Image) -> None:
        """Frames may change size (a camera reconfigured mid-stream): accepted, said once.

        Each frame is resized for the model on its own and its boxes are scaled back by its own
        size, so detections stay right; subscribers see the size in every message.
        """
        size = (int(image.shape[1]), int(image.shape[0]))
        if self._size is not None and size != self._size and not self._size_change_logged:
            self._size_change_logged = True
            log.warning(
                "camera %s: frame size changed from %dx%d to %dx%d; accepted, boxes follow each frame's size "
                "(logged once)",
                self.name,
                *self._size,
                *size,
            )
        self._size = size


def _release(source: Source) -> None:
    source.release()
