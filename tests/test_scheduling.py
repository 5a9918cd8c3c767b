"""Who goes first: cameras take turns at the model fairly, and decoders yield the cores to everything else."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edged.config import CameraConfig
from edged.dispatch import Dispatcher
from edged.frame import Frame
from edged.inference import Engine, Result
from edged.models import resolve
from edged.priority import CAMERA_NICENESS, LOWEST, at_lowest_priority
from edged.sources import open_source
from edged.worker import Worker

RETAIL = "models/face-detection-retail-0004/FP32/face-detection-retail-0004.xml"


def _one_request_engine(shared_dir: Path) -> Engine:
    spec = resolve(
        "retail", path=shared_dir / RETAIL, name=None, precision=None, device="CPU", confidence=None,
        nms_iou=None, resize=None, folder=shared_dir / "models",
    )  # fmt: skip
    return Engine(dataclasses.replace(spec, requests=1))


async def test_a_camera_whose_frame_was_not_ready_at_its_turn_goes_first_once_it_is(shared_dir: Path) -> None:
    engine = _one_request_engine(shared_dir)
    served: list[str] = []
    two_more = asyncio.Event()

    def on_result(result: Result) -> None:
        served.append(result.frame.camera)
        if len(served) % 2 == 0:
            two_more.set()

    dispatcher = Dispatcher(engine, on_result)
    slots = {camera: dispatcher.add_camera(camera) for camera in ("a", "b", "c")}
    image = np.zeros((300, 300, 3), np.uint8)

    def put(camera: str) -> None:
        slots[camera].put(Frame(camera, len(served), time.time(), image, engine.prepare(image)))

    task = asyncio.create_task(dispatcher.run())
    try:
        put("a")
        put("c")  # b has nothing at its turn
        await asyncio.wait_for(two_more.wait(), 10)
        two_more.clear()
        put("a")
        put("b")
        await asyncio.wait_for(two_more.wait(), 10)
    finally:
        task.cancel()
    assert served == ["a", "c", "b", "a"]


def _niceness(thread: int) -> int | None:
    """A thread's niceness; None once it has ended (the short-lived thread that opened the decoder)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, thread)
    except ProcessLookupError:
        return None


async def test_a_cameras_decoder_threads_run_at_the_lowest_priority_and_its_own_thread_nicer_than_edged(
    shared_dir: Path,
) -> None:
    config = CameraConfig(url=str(shared_dir / "media" / "faces-1080p30.mp4"))
    before = set(os.listdir("/proc/self/task"))
    worker = Worker("camera-door")
    source = await worker.call(open_source, "door", config)
    try:
        assert await worker.call(source.grab) == 1
        camera_thread = await worker.call(threading.get_native_id)
        decoders = {int(thread) for thread in set(os.listdir("/proc/self/task")) - before} - {camera_thread}
        assert decoders, "the decoder started no threads of its own"
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert _niceness(camera_thread) == min(LOWEST, own + CAMERA_NICENESS)
        assert {_niceness(thread) for thread in decoders} - {None} == {LOWEST}
    finally:
        await worker.call(source.release)
        worker.close()


def test_the_lowest_priority_call_returns_its_result_and_raises_its_error_in_the_caller() -> None:
    assert at_lowest_priority(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())) == LOWEST
    with pytest.raises(ValueError, match="no decoder"):
        at_lowest_priority(_fail)


def _fail() -> None:
    raise ValueError("no decoder")
