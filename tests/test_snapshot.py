"""Snapshot rendering: what the JPEG on `{prefix}/{camera}/snapshot` looks like, for each option."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import SnapshotsConfig
from edged.frame import Image
from edged.snapshot import SnapshotRequest, Snapshotter, render

FACE = (180.0, 60.0, 270.0, 180.0)  # the astronaut's face in astronaut.png, roughly


@pytest.fixture(scope="module")
def astronaut(media_dir: Path) -> Image:
    image = cv2.imread(str(media_dir / "images" / "astronaut.png"), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def request(image: Image, camera: str = "door") -> SnapshotRequest:
    return SnapshotRequest(camera, image, np.array([FACE], np.float32), FACE)


def decode(jpeg: bytes) -> Image:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def test_a_whole_frame_snapshot_is_scaled_to_the_configured_height_keeping_the_aspect_ratio(astronaut: Image) -> None:
    wide = cv2.resize(astronaut, (1024, 512))
    image = decode(render(request(wide), SnapshotsConfig(height=270)))
    assert image.shape[:2] == (270, 540)


def test_a_crop_snapshot_shows_the_best_face_with_a_margin(astronaut: Image) -> None:
    image = decode(render(request(astronaut), SnapshotsConfig(crop=True, height=100, boxes=False)))
    assert image.shape[0] == 100
    assert image.shape[1] == round(100 * (90 * 2 + 1) / (120 * 2 + 1))  # the face's aspect, margins included


def test_boxes_are_drawn_on_the_snapshot_only_never_on_the_frame(astronaut: Image) -> None:
    frame = astronaut.copy()
    boxed = decode(render(request(frame), SnapshotsConfig(boxes=True, height=512, quality=100)))
    plain = decode(render(request(frame), SnapshotsConfig(boxes=False, height=512, quality=100)))
    assert np.array_equal(frame, astronaut)
    x1, y1, _, y2 = (int(v) for v in FACE)
    edge = boxed[y1 + 10 : y2 - 10, x1].astype(int)
    assert (edge[:, 1] - edge[:, 0]).mean() > 150  # green along the box's left edge
    assert np.abs(boxed.astype(int) - plain.astype(int))[y1 + 10 : y2 - 10, x1].mean() > 50


def test_a_lower_quality_makes_a_smaller_jpeg(astronaut: Image) -> None:
    low = render(request(astronaut), SnapshotsConfig(quality=20))
    high = render(request(astronaut), SnapshotsConfig(quality=95))
    assert len(low) < len(high)


async def test_the_newest_request_per_camera_wins_and_snapshots_are_handed_over_on_the_loop(astronaut: Image) -> None:
    published: list[tuple[str, bytes, str]] = []
    both = asyncio.Event()

    def sink(camera: str, jpeg: bytes) -> None:
        published.append((camera, jpeg, threading.current_thread().name))
        if len(published) == 2:
            both.set()

    snapshotter = Snapshotter(SnapshotsConfig(height=64), sink)

    async with asyncio.TaskGroup() as tasks:
        worker = tasks.create_task(snapshotter.run())
        dark = np.zeros_like(astronaut)
        snapshotter.request(request(dark, "door"))
        snapshotter.request(request(astronaut, "door"))  # replaces the dark one before it is rendered
        snapshotter.request(request(astronaut, "yard"))
        await asyncio.wait_for(both.wait(), 30)
        worker.cancel()
    assert [camera for camera, _, _ in published] == ["door", "yard"]
    assert all(thread == threading.current_thread().name for _, _, thread in published)  # sink runs on the loop
    assert decode(published[0][1]).mean() > 20  # the astronaut, not the dark frame
    assert snapshotter.superseded == 1 and snapshotter.published == 2
    assert snapshotter.encode_ms_avg > 0


async def test_flush_returns_once_what_was_requested_is_rendered_and_handed_over(astronaut: Image) -> None:
    published: list[str] = []
    snapshotter = Snapshotter(SnapshotsConfig(height=64), lambda camera, jpeg: published.append(camera))
    async with asyncio.TaskGroup() as tasks:
        worker = tasks.create_task(snapshotter.run())
        await snapshotter.flush(5)  # nothing pending: returns at once
        snapshotter.request(request(astronaut, "door"))
        snapshotter.request(request(astronaut, "yard"))
        await snapshotter.flush(30)
        assert published == ["door", "yard"]
        worker.cancel()
