"""Cameras that die, hang or come back: a real GStreamer RTSP server is killed, frozen and restarted.

Judged by what subscribers see: the camera's retained status goes offline and back online, its
detections resume within the backoff cap, and a file camera beside it keeps its rate throughout.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.edged_process import EdgedProcess, base_config, largest_gap, write_config
from tests.support.mqtt import Subscriber

BACKOFF_MAX_S = 2.0
FILE_FPS = 10.0


def _statuses(subscriber: Subscriber, camera: str) -> list[str]:
    return [m.text() for m in subscriber.messages(f"edged/{camera}/status")]


def _edged(tmp_path: Path, shared_dir: Path, broker: Any, rtsp_url: str, stall_timeout: float) -> EdgedProcess:
    cameras = {
        "door": {"url": rtsp_url, "stall_timeout": stall_timeout, "backoff": {"min": 0.5, "max": BACKOFF_MAX_S}},
        "lobby": {"url": str(shared_dir / "media" / "classroom.mp4"), "fps": FILE_FPS},
    }
    config = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, cameras))
    return EdgedProcess(config, tmp_path / "edged.log")


@pytest.mark.slow
def test_a_killed_rtsp_camera_comes_back_while_a_file_camera_keeps_its_rate(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any, rtsp_server: Any
) -> None:
    watcher = subscriber(broker, "edged/#")
    with _edged(tmp_path, shared_dir, broker, rtsp_server.url, stall_timeout=3.0) as edged:
        watcher.wait_for_count("edged/door/detections", 10, timeout=60)
        watcher.wait_for_count("edged/lobby/detections", 10, timeout=30)

        outage_start = time.monotonic()
        rtsp_server.kill()
        watcher.wait_for_message("edged/door/status", lambda m: m.text() == "offline", timeout=10)
        time.sleep(1.0)
        rtsp_server.start()
        restarted = time.monotonic()
        before = len(watcher.messages("edged/door/detections"))
        watcher.wait_for_count("edged/door/detections", before + 5, timeout=BACKOFF_MAX_S * 1.2 + 10)
        resumed = time.monotonic() - restarted
        outage_end = time.monotonic()
        statuses = _statuses(watcher, "door")
        code, _ = edged.stop(signal.SIGTERM)
        log = edged.log()

    assert code == 0, log
    assert statuses == ["online", "offline", "online"]
    assert resumed < BACKOFF_MAX_S * 1.2 + 10  # the next attempt within the cap, plus opening and a model pass
    assert largest_gap(watcher, "lobby", outage_start, outage_end) < 1.5  # 10 fps: nothing stopped it
    assert "camera door" in log and "offline, retrying" in log
    assert "camera lobby: online" in log and log.count("camera lobby: online") == 1


@pytest.mark.slow
def test_a_hung_rtsp_camera_is_declared_stalled_and_reopened(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any, rtsp_server: Any
) -> None:
    watcher = subscriber(broker, "edged/#")
    with _edged(tmp_path, shared_dir, broker, rtsp_server.url, stall_timeout=2.0) as edged:
        watcher.wait_for_count("edged/door/detections", 5, timeout=60)

        rtsp_server.pause()  # connection open, nothing flows: OpenCV alone would wait 30 s
        frozen = time.monotonic()
        watcher.wait_for_message("edged/door/status", lambda m: m.text() == "offline", timeout=15)
        detected = time.monotonic() - frozen
        rtsp_server.resume()
        watcher.wait_for(lambda ms: _statuses(watcher, "door")[-1:] == ["online"], timeout=30)
        code, seconds = edged.stop(signal.SIGTERM)
        log = edged.log()

    assert detected < 2.0 + 5.0  # stall_timeout plus buffered frames and the check interval
    assert "stalled" in log
    assert code == 0 and seconds < 5, log
