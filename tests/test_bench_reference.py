"""Smoke tests of the reference measurements: each returns positive, finite figures on tiny inputs.

Not timed assertions: the machine is shared and small, so only sanity is checked here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from edged.bench.reference import (
    BenchmarkError,
    Throughput,
    benchmark_app_fps,
    decode_ceiling,
    inference_ceiling,
    plain_loop,
    ssd_boxes,
)

DATA = Path(os.environ.get("EDGED_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared"))
SEED = DATA / "models/face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml"
RETAIL = DATA / "models/face-detection-retail-0004/FP32/face-detection-retail-0004.xml"
SSH = DATA / "models/ssh-contract-retinaface-mnet025/retinaface-mnet025-ssh-640.xml"
CLIP = DATA / "media/classroom.mp4"  # 480x270, 62 frames

pytestmark = pytest.mark.skipif(not SEED.exists(), reason=f"test data not found at {DATA} (EDGED_TEST_DATA)")


def assert_sane(result: Throughput, frames: int | None = None) -> None:
    assert result.frames > 0
    assert math.isfinite(result.fps) and result.fps > 0
    assert result.seconds > 0 and result.cpu_seconds >= 0
    if frames is not None:
        assert result.frames == frames


def test_benchmark_app_reports_a_throughput() -> None:
    fps = benchmark_app_fps(SEED, 1)
    assert math.isfinite(fps) and fps > 0


def test_benchmark_app_failure_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="Throughput"):
        benchmark_app_fps(tmp_path / "missing.xml", 1)


@pytest.mark.parametrize("model", [SEED, RETAIL, SSH], ids=["ssd-672x384", "ssd-300x300", "ssh-640x640"])
def test_inference_ceiling_takes_any_input_size(model: Path) -> None:
    assert_sane(inference_ceiling(model, 0.3))


def test_inference_ceiling_with_a_batch_counts_images() -> None:
    result = inference_ceiling(SEED, 0.3, batch=2, requests=1)
    assert_sane(result)
    assert result.frames % 2 == 0


def test_inference_ceiling_with_in_graph_resize() -> None:
    assert_sane(inference_ceiling(SEED, 0.3, source_size=(480, 270)))


def test_decode_ceiling_by_frames_shares_them_among_streams() -> None:
    assert_sane(decode_ceiling([CLIP, CLIP], frames=31), frames=31)


def test_decode_ceiling_by_seconds_loops_short_files() -> None:
    result = decode_ceiling([CLIP], seconds=0.3)
    assert_sane(result)
    assert result.frames > 62 or result.seconds >= 0.3


def test_decode_ceiling_with_pyav() -> None:
    pytest.importorskip("av")
    assert_sane(decode_ceiling([CLIP], frames=30, backend="pyav-skip-loop-filter"), frames=30)


@pytest.mark.parametrize("model", [SEED, SSH], ids=["ssd", "ssh"])
def test_plain_loop(model: Path) -> None:
    assert_sane(plain_loop(model, [CLIP, CLIP], 30), frames=30)


def test_ssd_boxes_stops_at_the_end_marker_and_scales() -> None:
    rows = np.zeros((1, 1, 4, 7), np.float32)
    rows[0, 0, 0] = [0, 1, 0.9, 0.1, 0.2, 0.3, 0.4]
    rows[0, 0, 1] = [0, 1, 0.2, 0.0, 0.0, 1.0, 1.0]  # below threshold
    rows[0, 0, 2] = [-1, 0, 0, 0, 0, 0, 0]
    rows[0, 0, 3] = [0, 1, 0.9, 0.0, 0.0, 1.0, 1.0]  # after the end marker
    boxes = ssd_boxes(rows, 100, 50)
    np.testing.assert_allclose(boxes, [[10, 10, 30, 20, 0.9]], rtol=1e-6)
