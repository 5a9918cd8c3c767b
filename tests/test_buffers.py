"""Frame buffers are reused, never while a frame still needs them: pixels must not change under a reader."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import CameraConfig
from edged.frame import BufferPool, Frame, Image
from edged.inference import Engine, Result
from edged.models import resolve
from edged.sources import CaptureSource, StreamSource

RETAIL = "models/face-detection-retail-0004/FP32/face-detection-retail-0004.xml"


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


@pytest.mark.parametrize("source_class", [StreamSource, CaptureSource])
def test_frames_read_into_reused_buffers_keep_their_own_pixels(
    shared_dir: Path, source_class: type[StreamSource | CaptureSource]
) -> None:
    """Frames the pipeline still holds (say, one whose snapshot is being encoded) are not overwritten by the
    frames read after them, while the frames everyone is done with are written over; either decoder gives
    the pixels OpenCV's own reader gives."""
    video = shared_dir / "media" / "faces-1080p30.mp4"
    source = source_class("door", CameraConfig(url=str(video)))
    reference = cv2.VideoCapture(str(video))
    try:
        kept, addresses = [], set()
        for index in range(30):
            assert source.grab()
            image = source.retrieve()
            ok, expected = reference.read()
            assert ok and np.array_equal(image, expected)
            addresses.add(image.ctypes.data)
            if index % 5 == 0:
                kept.append((image, expected))
            del image
        assert all(np.array_equal(image, expected) for image, expected in kept)
        assert len(addresses) < 30  # the frames dropped were written over
    finally:
        source.release()
        reference.release()


def test_frames_resized_into_reused_buffers_keep_their_own_pixels(shared_dir: Path) -> None:
    spec = resolve(
        "retail", path=shared_dir / RETAIL, name=None, precision=None, device="CPU", confidence=None,
        nms_iou=None, resize=None, folder=shared_dir / "models",
    )  # fmt: skip
    engine = Engine(spec)
    prepare = engine.preparer()
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (360, 640, 3), np.uint8) for _ in range(12)]
    kept, addresses = [], set()
    for index, image in enumerate(images):
        tensor = prepare(image)
        addresses.add(tensor.ctypes.data)
        if index % 3 == 0:
            kept.append((tensor, image))
        del tensor
    assert all(np.array_equal(tensor, engine.prepare(image)) for tensor, image in kept)
    assert len(addresses) < len(images)


async def test_a_frame_whose_pixels_are_not_contiguous_is_detected_as_its_pixels_show(shared_dir: Path) -> None:
    """A frame already of the model's size goes in as it is; one whose rows are padded (as PyAV's own conversion
    hands some sizes over) is copied for the request, and that copy must outlive the call that started it."""
    spec = resolve(
        "retail", path=shared_dir / RETAIL, name=None, precision=None, device="CPU", confidence=None,
        nms_iou=None, resize=None, folder=shared_dir / "models",
    )  # fmt: skip
    engine = Engine(spec)
    photo = cv2.imread(str(shared_dir / "media" / "images" / "astronaut.png"))
    assert photo is not None
    image: Image = np.asarray(cv2.resize(photo, engine.input_size), np.uint8)
    expected = engine.detect(image)
    assert len(expected) == 1
    padded = np.zeros((image.shape[0], image.shape[1] + 4, 3), np.uint8)
    padded[:, : image.shape[1]] = image
    rows = padded[:, : image.shape[1]]
    assert not rows.flags.c_contiguous
    loop = asyncio.get_running_loop()
    for index in range(20):
        result: asyncio.Future[Result] = loop.create_future()
        engine.submit(Frame("door", index, 0.0, rows, rows), result.set_result)
        clutter = [np.full(padded.shape, 255, np.uint8) for _ in range(4)]  # what the freed copy's memory gets
        assert len((await result).faces) == len(expected), f"frame {index}"
        del clutter
