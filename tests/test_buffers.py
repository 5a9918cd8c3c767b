"""Frame buffers are reused, never while a frame still needs them: pixels must not change under a reader."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edged.camera import CaptureSource
from edged.config import CameraConfig
from edged.frame import BufferPool


def test_a_buffer_is_handed_out_again_once_nothing_references_it() -> None:
    pool = BufferPool()
    first = pool.take((4, 4, 3))
    address = first.ctypes.data
    del first
    assert pool.take((4, 4, 3)).ctypes.data == address


def test_a_buffer_still_referenced_is_never_handed_out_again() -> None:
    pool = BufferPool()
    held = pool.take((4, 4, 3))
    view = pool.take((4, 4, 3))[1:]  # a view keeps its buffer in use too
    taken = [pool.take((4, 4, 3)) for _ in range(20)]  # more than the pool keeps: fresh ones then
    addresses = {held.ctypes.data, view.base.ctypes.data}  # type: ignore[union-attr]
    assert all(buffer.ctypes.data not in addresses for buffer in taken)


def test_a_buffer_of_another_size_is_not_handed_out() -> None:
    pool = BufferPool()
    pool.take((4, 4, 3))
    assert pool.take((8, 8, 3)).shape == (8, 8, 3)


def test_frames_read_into_reused_buffers_keep_their_own_pixels(shared_dir: Path) -> None:
    """A frame kept by a subscriber of the pipeline (say, a snapshot being encoded) is not overwritten
    by the frames read after it."""
    video = shared_dir / "media" / "faces-1080p30.mp4"
    source = CaptureSource("door", CameraConfig(url=str(video)))
    reference = cv2.VideoCapture(str(video))
    try:
        kept = []
        for _ in range(30):
            assert source.grab()
            image = source.retrieve()
            ok, expected = reference.read()
            assert ok and np.array_equal(image, expected)
            kept.append((image, expected))
            del image
        assert all(np.array_equal(image, expected) for image, expected in kept)
    finally:
        source.release()
        reference.release()
