"""Event snapshots: a frame (or its best face) scaled, optionally boxed, JPEG-encoded in one worker thread.

Detection must never wait for a JPEG: requests are only recorded on the event loop (latest per
camera wins, so a burst of improving scores costs one encode, not one per frame) and a single
worker thread renders them. One thread bounds the CPU snapshots can take from inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from edged.config import SnapshotsConfig
from edged.decode.base import FloatArray
from edged.frame import Image

log = logging.getLogger("edged.snapshot")

CROP_MARGIN = 0.5  # of the face's size on each side: a face crop with some head and shoulders
BOX_COLOUR = (0, 255, 0)  # BGR


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    camera: str
    image: Image  # the source frame; never written to (while referenced here, its camera's pool does not reuse it)
    boxes: FloatArray  # (K, 4) every face of the frame, source pixels
    focus: tuple[float, float, float, float]  # the best face: the crop centre


def render(request: SnapshotRequest, config: SnapshotsConfig) -> bytes:
    """The JPEG bytes of a snapshot; CPU-bound, meant for a worker thread."""
    image, boxes = request.image, request.boxes
    if config.crop:
        x1, y1, x2, y2 = _crop_region(request.focus, image.shape[1], image.shape[0])
        image = image[y1:y2, x1:x2]
        boxes = boxes - np.array([x1, y1, x1, y1], dtype=np.float32)
    scale = config.height / image.shape[0]
    width = max(1, round(image.shape[1] * scale))
    # resize allocates the output: boxes are drawn on the copy, never on the shared frame.
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    out = cv2.resize(image, (width, config.height), interpolation=interpolation)
    if config.boxes:
        thickness = max(1, round(config.height / 200))
        for x1, y1, x2, y2 in np.round(boxes * scale).astype(np.int32).tolist():
            cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
    ok, jpeg = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, config.quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {width}x{config.height} JPEG")
    return bytes(jpeg.tobytes())


def _crop_region(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    margin_x, margin_y = (x2 - x1) * CROP_MARGIN, (y2 - y1) * CROP_MARGIN
    left, top = max(0, int(x1 - margin_x)), max(0, int(y1 - margin_y))
    right, bottom = min(width, int(x2 + margin_x) + 1), min(height, int(y2 + margin_y) + 1)
    if right - left < 2 or bottom - top < 2:  # a degenerate box: fall back to the whole frame
        return 0, 0, width, height
    return left, top, right, bottom


SnapshotSink = Callable[[str, bytes], None]  # (camera, jpeg), called on the event loop


class Snapshotter:
    """Owns the snapshot worker: `request()` on the loop, `run()` as a task of the supervisor."""

    def __init__(self, config: SnapshotsConfig, sink: SnapshotSink) -> None:
        self._config = config
        self._sink = sink
        self._pending: dict[str, SnapshotRequest] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # nothing pending and nothing being rendered
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        self.published = 0
        self.superseded = 0  # requests replaced by a newer one before they were rendered
        self.encode_ms_total = 0.0
        self._failed_logged = False

    def request(self, request: SnapshotRequest) -> None:
        if self._pending.pop(request.camera, None) is not None:
            self.superseded += 1
        self._pending[request.camera] = request
        self._idle.clear()
        self._wake.set()

    def forget(self, camera: str) -> None:
        """Drop the camera's pending snapshot (a reload removed it); one rendering right now still reaches the sink."""
        self._pending.pop(camera, None)

    async def flush(self, timeout: float) -> None:
        """Wait (up to `timeout`) for what is pending to be rendered and handed over: at shutdown, so that an
        event's last message does not announce a snapshot nobody rendered."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._pending:
                    self._idle.set()
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    # Oldest camera first (dict order): one busy camera cannot starve the others.
                    camera = next(iter(self._pending))
                    request = self._pending.pop(camera)
                    started = time.perf_counter()
                    try:
                        jpeg = await loop.run_in_executor(self._executor, render, request, self._config)
                    except Exception as error:
                        self._log_failure(camera, error)
                        continue
                    self.encode_ms_total += (time.perf_counter() - started) * 1000.0
                    self.published += 1
                    self._sink(camera, jpeg)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def encode_ms_avg(self) -> float:
        return self.encode_ms_total / self.published if self.published else 0.0

    def _log_failure(self, camera: str, error: Exception) -> None:
        # Once: a rendering bug would otherwise log on every event of every camera.
        if not self._failed_logged:
            self._failed_logged = True
            log.error("camera %s: snapshot could not be rendered (%s); events go on without snapshots", camera, error)
