"""A captured frame, and the one-slot buffer that hands a camera's newest frame to inference."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Image = NDArray[np.uint8]  # HxWx3 BGR, as OpenCV delivers it


@dataclass(frozen=True, slots=True)
class Frame:
    camera: str
    index: int  # position in the camera's stream as read: gaps are frames shed on the way
    timestamp: float  # Unix seconds when the frame was read
    image: Image  # the source frame
    tensor: Image  # the same frame already shaped for its model's input (resized, colour-ordered)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


class FrameSlot:
    """Latest frame wins: a slow model sheds stale frames instead of queueing them.

    Lives on the event loop (no locks): the camera task puts, the dispatcher takes. A source that
    can wait (a file read as fast as detection goes) awaits `emptied()` instead of being shed, so
    nothing is decoded only to be thrown away.
    """

    def __init__(self, camera: str, on_fresh: Callable[[], None]) -> None:
        self.camera = camera
        self.skipped = 0  # frames replaced before inference could take them
        self.paused = False  # detection switched off: frames are dropped here, the camera keeps its stream
        self._frame: Frame | None = None
        self._on_fresh = on_fresh
        self._empty = asyncio.Event()
        self._empty.set()

    def put(self, frame: Frame) -> None:
        if self.paused:
            return
        if self._frame is not None:
            self.skipped += 1
        self._frame = frame
        self._empty.clear()
        self._on_fresh()

    def take(self) -> Frame | None:
        frame, self._frame = self._frame, None
        self._empty.set()
        return frame

    async def emptied(self) -> None:
        """Wait until the frame put last has been taken (or there is none)."""
        await self._empty.wait()
