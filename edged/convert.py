"""Decoded frames to BGR pixels in buffers the camera reuses, with the swscale call OpenCV makes.

PyAV's own conversion (`VideoFrame.to_ndarray`) allocates a fresh 6 MB picture for every 1080p frame;
with edged's fixed mmap threshold (edged/allocator.py) each one is a new mapping whose page faults
cost more than the conversion itself (3.5 ms against 1.2 ms per frame here). Calling swscale, which
PyAV bundles, directly writes into a reused buffer instead, and with OpenCV's parameters (bicubic
flags, no colour tags) the pixels are bit-identical to `cv2.VideoCapture.read()`: detections do not
depend on which decoder read the file. Where those libraries cannot be found (a PyAV built against
other FFmpeg libraries) `to_ndarray` is used: correct, only slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path
from typing import cast

import av

from edged.frame import BufferPool, Image

log = logging.getLogger("edged.camera")

SWS_BICUBIC = 4  # the flags OpenCV's FFmpeg reader passes (libswscale/swscale.h)
_Pointers = ctypes.c_void_p * 4  # swscale takes up to four planes
_Strides = ctypes.c_int * 4


class _Swscale:
    """The two libraries' entry points edged needs, typed for ctypes."""

    def __init__(self, swscale: ctypes.CDLL, avutil: ctypes.CDLL) -> None:
        self.get_pix_fmt = avutil.av_get_pix_fmt
        self.get_pix_fmt.argtypes, self.get_pix_fmt.restype = [ctypes.c_char_p], ctypes.c_int
        self.get_context = swscale.sws_getCachedContext
        # (context, source width, height, format, destination width, height, format, flags, 3 x unused)
        self.get_context.argtypes = [ctypes.c_void_p, *[ctypes.c_int] * 7, *[ctypes.c_void_p] * 3]
        self.get_context.restype = ctypes.c_void_p
        self.scale = swscale.sws_scale
        self.scale.argtypes = [ctypes.c_void_p, _Pointers, _Strides, ctypes.c_int, ctypes.c_int, _Pointers, _Strides]
        self.scale.restype = ctypes.c_int
        self.free_context = swscale.sws_freeContext
        self.free_context.argtypes, self.free_context.restype = [ctypes.c_void_p], None
        self.bgr24 = self.get_pix_fmt(b"bgr24")


def _load() -> _Swscale | None:
    """PyAV's own swscale and avutil (already loaded by PyAV: the same copies), else the system's."""
    bundled = Path(av.__file__).resolve().parent.parent / "av.libs"

    def find(name: str) -> str | None:
        return next((str(p) for p in sorted(bundled.glob(f"lib{name}-*.so*"))), None) or ctypes.util.find_library(name)

    swscale, avutil = find("swscale"), find("avutil")
    if swscale is None or avutil is None:
        return None
    try:
        return _Swscale(ctypes.CDLL(swscale), ctypes.CDLL(avutil))
    except (OSError, AttributeError):
        return None


_SWSCALE = _load()
if _SWSCALE is None:
    log.debug("swscale not found beside PyAV: frames are converted with VideoFrame.to_ndarray")


class BgrConverter:
    """One camera's conversions; used by its thread only."""

    def __init__(self) -> None:
        self._context: int | None = None
        self._pool = BufferPool()
        self._formats: dict[str, int] = {}  # swscale's number for each pixel format name seen

    def convert(self, frame: av.VideoFrame) -> Image:
        sws = _SWSCALE
        name = frame.format.name
        if sws is not None and name not in self._formats:
            self._formats[name] = sws.get_pix_fmt(name.encode())
        source_format = self._formats.get(name, -1)
        if sws is None or source_format < 0:
            return cast(Image, frame.to_ndarray(format="bgr24"))
        width, height = frame.width, frame.height
        self._context = sws.get_context(
            self._context, width, height, source_format, width, height, sws.bgr24, SWS_BICUBIC, None, None, None
        )
        if not self._context:  # a format swscale cannot read (it freed the old context): PyAV knows others
            return cast(Image, frame.to_ndarray(format="bgr24"))
        image = self._pool.take((height, width, 3))
        planes = frame.planes
        rows = sws.scale(
            self._context,
            _Pointers(*(plane.buffer_ptr for plane in planes)),
            _Strides(*(plane.line_size for plane in planes)),
            0,
            height,
            _Pointers(image.ctypes.data),
            _Strides(image.strides[0]),
        )
        if rows != height:  # swscale refused (an unusual format): PyAV's own way still works
            return cast(Image, frame.to_ndarray(format="bgr24"))
        return image

    def close(self) -> None:
        if self._context is not None and _SWSCALE is not None:
            _SWSCALE.free_context(self._context)
            self._context = None
