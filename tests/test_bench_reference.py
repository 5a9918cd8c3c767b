"""Smoke tests of the reference measurements: each returns positive, finite figures on tiny inputs.

Not timed assertions: the machine is shared and small, so only sanity is checked here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edged.bench.reference import (
    BenchmarkError,
    DecodeBackend,
    InferenceCeiling,
    Throughput,
    benchmark_app_fps,
    decode_ceiling,
    plain_loop,
)

SEED = "models/face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml"
RETAIL = "models/face-detection-retail-0004/FP32/face-detection-retail-0004.xml"
SSH = "models/ssh-contract-retinaface-mnet025/retinaface-mnet025-ssh-640.xml"
CLIP = "media/classroom.mp4"  # 480x270, 62 frames


@pytest.fixture
def seed(shared_dir: Path) -> Path:
    return shared_dir / SEED


@pytest.fixture
def clip(shared_dir: Path) -> Path:
    return shared_dir / CLIP


def assert_sane(result: Throughput, frames: int | None = None) -> None:
    assert result.frames > 0
    assert math.isfinite(result.fps) and result.fps > 0
    assert result.seconds > 0 and result.cpu_seconds >= 0
    if frames is not None:
        assert result.frames == frames


def test_benchmark_app_reports_a_throughput(seed: Path) -> None:
    fps = benchmark_app_fps(seed, 1)
    assert math.isfinite(fps) and fps > 0


def test_benchmark_app_failure_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="Throughput"):
        benchmark_app_fps(tmp_path / "missing.xml", 1)


@pytest.mark.parametrize("model", [SEED, RETAIL, SSH], ids=["ssd-672x384", "ssd-300x300", "ssh-640x640"])
def test_inference_ceiling_takes_any_input_size(shared_dir: Path, model: str) -> None:
    assert_sane(InferenceCeiling(shared_dir / model).measure(0.3))


def test_inference_ceiling_with_a_batch_counts_images(seed: Path) -> None:
    result = InferenceCeiling(seed, batch=2, requests=1).measure(0.3)  # the seed IR pins batch 1: unpinned
    assert_sane(result)
    assert result.frames % 2 == 0


def test_inference_ceiling_with_in_graph_resize(seed: Path) -> None:
    assert_sane(InferenceCeiling(seed, source_size=(480, 270)).measure(0.3))


def test_decode_ceiling_by_frames_shares_them_among_streams(clip: Path) -> None:
    assert_sane(decode_ceiling([clip, clip], frames=31), frames=31)
    assert_sane(decode_ceiling([clip, clip], frames=31, threads=1), frames=31)


def test_decode_ceiling_needs_a_limit(clip: Path) -> None:
    with pytest.raises(BenchmarkError, match="limit"):
        decode_ceiling([clip])


def test_decode_ceiling_by_seconds_loops_short_files(clip: Path) -> None:
    result = decode_ceiling([clip], seconds=0.3)
    assert_sane(result)
    assert result.frames > 62 or result.seconds >= 0.3


@pytest.mark.parametrize("backend", ["edged", "pyav", "pyav-skip-loop-filter"])
def test_decode_ceiling_with_other_decoders(clip: Path, backend: DecodeBackend) -> None:
    assert_sane(decode_ceiling([clip], frames=30, backend=backend), frames=30)


@pytest.mark.parametrize("model", [SEED, SSH], ids=["ssd", "ssh"])
def test_plain_loop(shared_dir: Path, clip: Path, model: str) -> None:
    assert_sane(plain_loop(shared_dir / model, [clip, clip], 30), frames=30)
