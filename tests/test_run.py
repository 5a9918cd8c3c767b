"""`edged run` end to end: real files in, real model, real broker, what a subscriber sees."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

SEED = "models/face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml"
CAMERAS = {
    "lobby": ("media/faces-1080p30.mp4", 1920, 1080),
    "classroom": ("media/classroom.mp4", 480, 270),
    "walkway": ("media/face-demographics-walking.mp4", 480, 270),
}
MESSAGES_PER_CAMERA = 25


def write_config(tmp_path: Path, shared_dir: Path, broker: Mosquitto, extra_camera_keys: str = "") -> Path:
    cameras = "".join(
        f"  {name}:\n    url: {shared_dir / media}\n{extra_camera_keys}" for name, (media, _, _) in CAMERAS.items()
    )
    path = tmp_path / "edged.yaml"
    path.write_text(
        f"mqtt:\n  host: {broker.host}\n  port: {broker.port}\n  client_id: edged-test\n"
        f"model:\n  path: {shared_dir / SEED}\ncameras:\n{cameras}"
    )
    return path


class Edged:
    """`edged run` as a user starts it: a child process with its stderr captured."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edged.cli", "run", "-c", str(config)], stderr=self._log_file
        )

    def stop(self, signum: signal.Signals, timeout: float = 10.0) -> tuple[int, float]:
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


@pytest.fixture
def running(tmp_path: Path, shared_dir: Path, broker: Mosquitto) -> Iterator[tuple[Edged, Subscriber]]:
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber:
        edged = Edged(write_config(tmp_path, shared_dir, broker), tmp_path / "edged.log")
        try:
            for name in CAMERAS:
                subscriber.wait_for_count(f"edged/{name}/detections", MESSAGES_PER_CAMERA, timeout=60)
            yield edged, subscriber
        finally:
            edged.close()


def detections(subscriber: Subscriber, camera: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in subscriber.messages(f"edged/{camera}/detections")]


@pytest.mark.slow
def test_every_camera_publishes_well_formed_messages(running: tuple[Edged, Subscriber]) -> None:
    _, subscriber = running
    for name, (_, width, height) in CAMERAS.items():
        for message in detections(subscriber, name):
            assert set(message) == {"camera", "seq", "timestamp", "frame", "model", "latency_ms", "faces"}
            assert message["camera"] == name
            assert message["model"] == "face-detection-adas-binary-0001"
            assert message["frame"]["width"] == width and message["frame"]["height"] == height
            assert abs(message["timestamp"] - time.time()) < 120
            assert 0 <= message["latency_ms"] < 10_000
            for face in message["faces"]:
                x1, y1, x2, y2 = face["box"]
                assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
                assert face["box_norm"] == pytest.approx([x1 / width, y1 / height, x2 / width, y2 / height], abs=1e-3)
                assert 0.5 <= face["score"] <= 1.0


@pytest.mark.slow
def test_seq_is_contiguous_from_zero_and_frame_index_increases(running: tuple[Edged, Subscriber]) -> None:
    _, subscriber = running
    for name in CAMERAS:
        messages = detections(subscriber, name)
        assert [m["seq"] for m in messages] == list(range(len(messages)))
        indexes = [m["frame"]["index"] for m in messages]
        assert indexes == sorted(set(indexes))


@pytest.mark.slow
def test_faces_are_found_where_they_are(running: tuple[Edged, Subscriber]) -> None:
    _, subscriber = running
    lobby = detections(subscriber, "lobby")
    with_two_faces = [m for m in lobby if len(m["faces"]) == 2]
    assert len(with_two_faces) >= 0.8 * len(lobby)  # faces-1080p30.mp4 shows two faces in most frames
    assert any(m["faces"] for m in detections(subscriber, "classroom"))


@pytest.mark.slow
def test_statuses_are_retained_online_while_running(running: tuple[Edged, Subscriber], broker: Mosquitto) -> None:
    with (
        Subscriber(broker.host, broker.port, "edged/+/status") as late,
        Subscriber(broker.host, broker.port, "edged/status") as late_top,
    ):
        late.wait_for_count("edged/+/status", len(CAMERAS))
        late_top.wait_for_count("edged/status", 1)
        assert {m.topic: (m.payload, m.retain) for m in late.messages()} == {
            f"edged/{name}/status": (b"online", True) for name in CAMERAS
        }
        assert [(m.payload, m.retain) for m in late_top.messages()] == [(b"online", True)]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_cleanly_and_leaves_offline_retained(
    running: tuple[Edged, Subscriber], broker: Mosquitto, signum: signal.Signals
) -> None:
    edged, _ = running

    code, seconds = edged.stop(signum)

    assert code == 0, edged.log.read_text()
    assert seconds < 5
    assert "Traceback" not in edged.log.read_text()
    # Only the statuses: other retained state (faces, detect state, stats, snapshots) is asserted in test_nvr.py.
    with Subscriber(broker.host, broker.port, ["edged/status", "edged/+/status"]) as after:
        after.wait_for_count("#", 1 + len(CAMERAS))
        retained = {m.topic: m.payload for m in after.messages() if m.retain}
    assert retained == {"edged/status": b"offline", **{f"edged/{name}/status": b"offline" for name in CAMERAS}}
