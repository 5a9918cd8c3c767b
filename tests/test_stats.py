"""The stats message's arithmetic, on the real Telemetry and StatsReporter (frame counts given directly)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from edged.config import MqttConfig
from edged.frame import FrameSlot
from edged.publish import Publisher
from edged.stats import ProcessFigures, StatsReporter, Telemetry


@dataclass
class _Reader:
    """What a camera counts (edged.stats.CameraCounters)."""

    frames_read: int = 0
    frames_decoded: int = 0
    reconnects: int = 0


def test_a_camera_restarted_by_a_reload_reports_the_rates_of_its_new_run_never_negative() -> None:
    telemetry = Telemetry("test", Publisher(MqttConfig()))
    reporter = StatsReporter(telemetry, 5.0, lambda payload: None)
    before = _Reader()
    telemetry.add_camera("door", before, FrameSlot("door", lambda: None), "seed")
    reporter.figures(ProcessFigures(0.0, 0))
    before.frames_read = before.frames_decoded = 1500
    telemetry.cameras["door"].processed = 1400
    reporter.figures(ProcessFigures(0.0, 0))
    # A reload changed the camera: it starts again with fresh counters.
    telemetry.add_camera("door", _Reader(frames_read=30, frames_decoded=30), FrameSlot("door", lambda: None), "seed")
    telemetry.cameras["door"].processed = 28
    time.sleep(0.05)
    door = reporter.figures(ProcessFigures(0.0, 0))["cameras"]["door"]
    assert door["camera_fps"] > 0 and door["decoded_fps"] > 0 and door["processed_fps"] > 0
    assert door["skipped_fps"] == 0
    assert door["frames_read"] == 30
