"""A camera decodes less of what detection would not use, and what it still decodes is unchanged.

H.264 frames that no other frame refers to may be skipped by the decoder; a camera does so while
detection uses at most about half of the stream's frames (an `fps` cap, an overloaded box, paused
detection) and decodes every frame again when detection would go short.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.config import CameraConfig
from edged.sources import FrameCount, StreamSource
from edged.thinning import PROBE_S, RETRY_S, WINDOW_S, Thinning
from tests.edged_process import EdgedProcess, base_config, write_config

STREAM_FPS = 30.0  # faces-1080p30.mp4
FIRST_DECISION_S = WINDOW_S * 2.6  # an opening's first window decides nothing; the second does


def test_frames_decoded_while_skipping_are_bit_identical_to_full_decoding(shared_dir: Path) -> None:
    video = shared_dir / "media" / "faces-1080p30.mp4"
    source = StreamSource("door", CameraConfig(url=str(video)))
    source.skip_unreferenced(True)
    reference = cv2.VideoCapture(str(video))
    try:
        index, reference_index, compared = -1, -1, 0
        while compared < 40:
            advanced = source.grab()
            assert advanced >= 1
            index += advanced
            image = source.retrieve()
            while reference_index < index:  # the frame the decoder kept, decoded in full by OpenCV
                ok, expected = reference.read()
                assert ok
                reference_index += 1
            assert np.array_equal(image, expected), f"frame {index} differs"
            compared += 1
        assert index > compared * 1.5  # frames were skipped on the way (the file has B frames)
    finally:
        source.release()
        reference.release()


def _steps(positions: list[int], *, skipping: bool = True) -> list[int]:
    count = FrameCount(1.0)
    return [count.advance(position, skipping) for position in positions]


def test_frames_the_decoder_skipped_are_counted_from_the_timestamps() -> None:
    assert _steps([0, 2, 4, 5, 6, 8]) == [1, 2, 2, 1, 1, 2]


def test_a_gap_in_the_timestamps_while_every_frame_is_decoded_is_not_frames_skipped() -> None:
    # A live camera halving its rate at night, or a cut in a file: each decoded frame is one frame.
    assert _steps([0, 2, 4, 6], skipping=False) == [1, 1, 1, 1]


def test_frames_delivered_out_of_order_count_one_each() -> None:
    # As the test RTSP server's B frames arrive: nothing was skipped, 12 frames are 12.
    assert sum(_steps([3, 2, 4, 1, 7, 6, 8, 5, 11, 10, 12, 9])) == 12


def test_a_clock_that_jumps_is_not_counted_as_frames_skipped() -> None:
    assert _steps([0, 1, 2, 10_000, 10_001, 10_003]) == [1, 1, 1, 1, 1, 2]
    assert _steps([500, 501, 503, 0, 1, 3]) == [1, 1, 2, 1, 1, 2]


class _Feed:
    """Frames fed to a Thinning as a camera thread does: `fps` decoded per second, each `advanced` frames of the
    stream on, detection taking `share` of them."""

    def __init__(self, real_time: bool = False) -> None:
        self.thinning = Thinning()
        self._t, self._used, self._frames = 0.0, 0.0, 0
        self._real_time = real_time  # the stream's clock is given: a live camera, a file played in real time

    def run(self, seconds: float, fps: float, share: float, advanced: int = 1) -> list[bool]:
        """The decisions made, in order."""
        decisions = []
        for _ in range(int(seconds * fps)):
            self._t += 1 / fps
            self._used += share
            self._frames += advanced
            position = self._frames / STREAM_FPS if self._real_time else None
            if (change := self.thinning.observe(self._t, advanced, int(self._used), position)) is not None:
                decisions.append(change.skip)
        return decisions


def test_skipping_starts_after_a_window_in_which_detection_used_half_the_frames() -> None:
    assert _Feed().run(FIRST_DECISION_S, STREAM_FPS, 0.5) == [True]


def test_skipping_never_starts_while_detection_uses_most_frames() -> None:
    assert _Feed().run(30.0, STREAM_FPS, 0.8) == []


def test_skipping_stops_when_detection_is_starved_and_is_not_retried_at_once() -> None:
    feed = _Feed()
    assert feed.run(FIRST_DECISION_S, STREAM_FPS, 0.5) == [True]
    # This stream spares little: every third frame decoded, every one of them taken, fewer per second than before.
    assert feed.run(WINDOW_S * 3, STREAM_FPS / 3, 1.0, advanced=3) == [False]
    assert feed.run(RETRY_S / 2, STREAM_FPS, 0.3) == []


def test_a_camera_starved_again_waits_twice_as_long_before_the_next_try() -> None:
    feed, lagging = _Feed(real_time=True), STREAM_FPS * 0.5  # a box short of CPU: skipping never helps
    assert feed.run(FIRST_DECISION_S, lagging, 1.0) == [True]
    assert feed.run(WINDOW_S * 2, lagging / 2, 1.0, advanced=2) == [False]
    assert feed.run(RETRY_S + WINDOW_S, lagging, 1.0) == [True]  # tried again after a minute ...
    assert feed.run(WINDOW_S * 2, lagging / 2, 1.0, advanced=2) == [False]
    assert feed.run(RETRY_S * 1.5, lagging, 1.0) == []  # ... and then not before two
    assert feed.run(RETRY_S, lagging, 1.0) == [True]


def test_a_camera_that_skipped_through_a_whole_minute_waits_a_minute_again_after_its_next_starvation() -> None:
    feed, lagging = _Feed(real_time=True), STREAM_FPS * 0.5
    assert feed.run(FIRST_DECISION_S, lagging, 1.0) == [True]
    assert feed.run(WINDOW_S * 2, lagging / 2, 1.0, advanced=2) == [False]
    assert feed.run(RETRY_S + WINDOW_S, STREAM_FPS, 0.3) == [True]  # the demand fell: skipping serves it
    assert feed.run(PROBE_S, STREAM_FPS / 2, 0.6, advanced=2) == [False, True]  # a whole minute, then a probe
    assert feed.run(WINDOW_S * 2, lagging / 2, 1.0, advanced=2) == [False]  # starved again ...
    assert feed.run(RETRY_S + WINDOW_S, lagging, 1.0) == [True]  # ... and tried again after one minute


def test_a_live_decoder_that_keeps_up_only_by_skipping_keeps_skipping_though_detection_gets_fewer_frames() -> None:
    feed = _Feed(real_time=True)
    assert feed.run(WINDOW_S * 2.2, STREAM_FPS * 0.5, 1.0) == [True]  # half real time, every frame taken
    # Decoding one frame in three, the stream keeps up: detection gets a third of it instead of a half.
    assert feed.run(WINDOW_S * 10, STREAM_FPS / 3, 1.0, advanced=3) == []


def test_the_first_window_of_an_opening_decides_nothing() -> None:
    """Decoders starting together lag for a moment whatever they do later."""
    feed = _Feed(real_time=True)
    assert feed.run(WINDOW_S * 1.05, STREAM_FPS * 0.3, 1.0) == []  # starting up: far behind, every frame taken
    assert feed.run(WINDOW_S * 5, STREAM_FPS, 0.8) == []  # then up to speed: most frames used


def test_skipping_stops_when_a_lagging_decoder_does_not_catch_up_and_detection_gets_fewer_frames() -> None:
    """On a box short of CPU for everything, a decoder at the lowest priority advances no faster for skipping."""
    feed = _Feed(real_time=True)
    assert feed.run(FIRST_DECISION_S, STREAM_FPS * 0.5, 1.0) == [True]  # half real time, every frame taken
    # Skipping every other frame, the stream advances no faster: detection gets half as many frames.
    assert feed.run(WINDOW_S * 2, STREAM_FPS * 0.5 / 2, 1.0, advanced=2) == [False]
    assert feed.run(RETRY_S / 2, STREAM_FPS * 0.5, 1.0) == []


def test_a_live_decoder_behind_real_time_skips_though_detection_takes_every_frame_it_decodes() -> None:
    """Its frames keep coming whether decoded or not: decoding less is how it catches up."""
    feed = _Feed(real_time=True)
    assert feed.run(FIRST_DECISION_S, STREAM_FPS * 0.4, 1.0) == [True]


def test_a_real_time_file_looping_back_to_its_start_is_not_taken_for_a_lagging_decoder() -> None:
    thinning, length = Thinning(), 3 * STREAM_FPS  # a 3-second file, every frame taken, in real time
    for frame in range(int(WINDOW_S * 6 * STREAM_FPS)):
        position = (frame % length) / STREAM_FPS
        assert thinning.observe((frame + 1) / STREAM_FPS, 1, frame + 1, position) is None


def test_a_file_read_as_fast_as_detection_goes_never_skips_however_slowly_it_is_decoded() -> None:
    assert _Feed().run(30.0, STREAM_FPS * 0.4, 1.0) == []


def test_a_decoder_that_caught_up_by_skipping_keeps_skipping() -> None:
    feed = _Feed(real_time=True)
    assert feed.run(FIRST_DECISION_S, STREAM_FPS * 0.4, 1.0) == [True]
    # Skipping every other frame, the decoder keeps up and detection gets more frames: not a rise in demand.
    assert feed.run(WINDOW_S * 10, STREAM_FPS / 2, 0.9, advanced=2) == []


def test_skipping_pauses_at_once_when_detection_takes_more_than_before() -> None:
    feed = _Feed()
    assert feed.run(FIRST_DECISION_S, STREAM_FPS, 0.0) == [True]  # detection paused: nothing used
    # Resumed: it takes every frame still decoded; within the next whole window skipping pauses to measure.
    assert feed.run(WINDOW_S * 2, STREAM_FPS / 2, 1.0, advanced=2)[:1] == [False]


def test_skipping_pauses_every_minute_to_measure_the_demand_again() -> None:
    assert _Feed().run(PROBE_S + WINDOW_S * 4, STREAM_FPS, 0.2) == [True, False, True]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "rtsp"])
def test_a_camera_capped_at_a_third_of_its_rate_decodes_fewer_frames_and_keeps_its_fps(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any
) -> None:
    cap = STREAM_FPS / 3
    video = shared_dir / "media" / "faces-1080p30.mp4"
    url = str(video) if kind == "file" else request.getfixturevalue("rtsp_server_factory")(video, loop=True).url
    cameras = {"door": {"url": url, "fps": cap}}
    config = base_config(shared_dir, broker.port, cameras) | {"stats": {"interval": 2}}
    watcher = subscriber(broker, "edged/#")
    with EdgedProcess(write_config(tmp_path / "edged.yaml", config), tmp_path / "edged.log") as edged:
        edged.wait_for_log(r"camera door: detection used \d+% of the frames: decoding only the frames others refer to")
        seen = len(watcher.messages("edged/stats"))
        watcher.wait_for_count("edged/stats", seen + 2, timeout=30)  # a whole interval with skipping on
        stats = watcher.messages("edged/stats")[-1].json()["cameras"]["door"]
        code, _ = edged.stop(signal.SIGTERM)
        log = edged.log()

    assert code == 0, log
    assert stats["camera_fps"] == pytest.approx(STREAM_FPS, rel=0.15)  # real time: the stream's own rate
    assert stats["decoded_fps"] < 0.7 * stats["camera_fps"]
    assert stats["processed_fps"] == pytest.approx(cap, rel=0.15)
    assert "Traceback" not in log


def test_a_live_streams_frames_count_from_when_their_data_arrived_not_from_their_decoding(
    rtsp_server: Any,
) -> None:
    """So a frame's latency includes its decoding, and any frames the decoder held it back for."""
    waits = _waits_from_arrival_to_decoded(StreamSource("door", CameraConfig(url=rtsp_server.url)), 30)
    assert len(waits) >= 28
    assert all(0 <= wait < 1.0 for wait in waits)
    assert sorted(waits)[len(waits) // 2] >= 0.002  # decoding a 1080p frame alone takes longer than that


def test_frame_threads_hold_a_live_streams_frames_back_longer_than_slice_threads(rtsp_server: Any) -> None:
    """Why live streams default to slice threads: frame threads output each frame a frame later per extra thread."""
    medians = {}
    for threads in ("slice", "frame"):
        config = CameraConfig(url=rtsp_server.url, decoder_threads=threads)
        waits = sorted(_waits_from_arrival_to_decoded(StreamSource("door", config), 60))
        medians[threads] = waits[len(waits) // 2]
    assert medians["frame"] > medians["slice"] + 0.015


def _waits_from_arrival_to_decoded(source: StreamSource, frames: int) -> list[float]:
    waits = []
    try:
        for _ in range(frames):
            assert source.grab() >= 1
            decoded = time.time()
            if source.arrived is not None:  # a frame without a timestamp counts from its decoding
                waits.append(decoded - source.arrived)
    finally:
        source.release()
    return waits


@pytest.mark.slow
def test_a_live_cameras_timestamps_never_go_back_though_its_stream_sends_frames_out_of_display_order(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any, rtsp_server: Any
) -> None:
    """The test server's stream has B frames: reference frames arrive before the frames shown ahead of them."""
    config = base_config(shared_dir, broker.port, {"door": {"url": rtsp_server.url}})
    watcher = subscriber(broker, "edged/door/detections")
    with EdgedProcess(write_config(tmp_path / "edged.yaml", config), tmp_path / "edged.log") as edged:
        messages = watcher.wait_for_count("edged/door/detections", 60, timeout=30)
        code, _ = edged.stop(signal.SIGTERM)

    assert code == 0
    detections = [message.json() for message in messages]
    timestamps = [detection["timestamp"] for detection in detections]
    assert timestamps == sorted(timestamps)
    assert all(detection["latency_ms"] > 0 for detection in detections)
