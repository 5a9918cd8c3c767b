"""`edged bench` keeps working: a few seconds on a small clip (the figures are the benchmark's job, not a test's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_measures_edged_end_to_end_and_writes_json(tmp_path: Path, shared_dir: Path) -> None:
    report = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "edged.cli", "bench", "--cameras", "1", "--seconds", "1.5",
        "--media", str(shared_dir / "media/classroom.mp4"), "--scenarios", "max,idle", "--no-references",
        "--json", str(report),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "EDGED_TEST_DATA": str(shared_dir)},
    )

    assert result.returncode == 0, result.stderr
    assert "edged run" in result.stdout and "max" in result.stdout
    figures = json.loads(report.read_text())
    assert figures["runs"]["max"]["fps"] > 0
    assert figures["runs"]["max"]["latency_ms"]["samples"] > 0
    assert figures["runs"]["idle"]["fps"] == 0
    assert figures["machine"]["cores"] == os.cpu_count()


def test_bench_refuses_an_unknown_scenario_in_one_line(shared_dir: Path) -> None:
    command = [sys.executable, "-m", "edged.cli", "bench", "--scenarios", "max,warp"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert "--scenarios: unknown warp" in result.stderr


def test_bench_whose_edged_cannot_start_says_why_in_one_line(tmp_path: Path, shared_dir: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<net><layers")
    broken.with_suffix(".bin").write_bytes(b"")
    command = [
        sys.executable, "-m", "edged.cli", "bench", "--no-references", "--scenarios", "max", "--seconds", "1",
        "--model", str(broken), "--media", str(shared_dir / "media/classroom.mp4"),
    ]  # fmt: skip
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)

    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if line.startswith("edged:")]
    assert "edged exited with code 2 before every camera published" in line
    assert f"model {broken}: not a valid OpenVINO IR file" in line
    assert "Traceback" not in result.stderr
