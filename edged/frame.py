"""A captured frame, the one-slot buffer that hands a camera's newest frame to inference, and the pool
its pixels are written into."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from edged.worker import Deliver

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
    nothing is decoded only to be thrown away. `deliver`, the one part used from the camera's thread,
    brings a decoded frame to the loop; by default with `call_soon_threadsafe`, which wakes the loop.
    """

    def __init__(self, camera: str, on_fresh: Callable[[], None], deliver: Deliver | None = None) -> None:
        self.camera = camera
        self.deliver = deliver
        self.skipped = 0  # frames replaced before inference could take them
        self.taken = 0  # frames inference took
        self._frame: Frame | None = None
        self._on_fresh = on_fresh
        self._empty = asyncio.Event()
        self._empty.set()
        self._detecting = asyncio.Event()
        self._detecting.set()

    @property
    def paused(self) -> bool:
        """Detection switched off: frames are dropped here, a live camera keeps its stream."""
        return not self._detecting.is_set()

    @paused.setter
    def paused(self, paused: bool) -> None:
        if paused:
            self._detecting.clear()
        else:
            self._detecting.set()

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
        if frame is not None:
            self.taken += 1
        return frame

    async def emptied(self) -> None:
        """Wait until the frame put last has been taken (or there is none) and detection would take another:
        a source that can wait does not decode frames that would only be dropped."""
        await self._empty.wait()
        await self._detecting.wait()


# At most this many buffers per pool; a pool only grows to what is in use at once (slot, frames in flight and
# kept by idle requests, results awaiting an older frame, snapshots, the frame being filled).
POOL_SIZE = 16


class BufferPool:
    """Image buffers a camera thread writes into again once nothing references them any more.

    A 1080p frame is 6 MB: allocating one per frame (30 a second per camera) fragments the C heap, and
    edged's RSS crept up over a long overload run. A buffer is handed out again only when the pool holds
    the last reference to it (everyone is done with the frame: slot, inference, publishing, snapshot);
    when every buffer is still in use a fresh one is allocated, so correctness never depends on the size.
    Used by one thread only (two threads could both find the same buffer free); reference counts are read
    under the GIL, with `buffers[index]` as calibrated: a loop variable would hold one more reference.
    """

    def __init__(self, size: int = POOL_SIZE) -> None:
        self._buffers: list[Image] = []
        self._size = size
        probe = [np.empty(0, np.uint8)]
        self._unreferenced = sys.getrefcount(probe[0])  # the count of a buffer only the pool holds

    def take(self, shape: tuple[int, ...]) -> Image:
        """A buffer of this shape that nobody else references (its contents are stale)."""
        buffers, stale = self._buffers, None
        for index in range(len(buffers)):
            if sys.getrefcount(buffers[index]) == self._unreferenced:
                if buffers[index].shape == shape:
                    return buffers[index]
                stale = index  # free, but of a size the camera no longer delivers
        buffer: Image = np.empty(shape, np.uint8)
        if len(buffers) < self._size:
            buffers.append(buffer)
        elif stale is not None:
            buffers[stale] = buffer
        return buffer
