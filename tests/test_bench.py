"""`edged bench` keeps working: a few seconds on a small clip (the figures are the benchmark's job, not a test's)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edged.bench.suite import BenchReport, format_table


def _bench(tmp_path: Path, shared_dir: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """`edged bench` on one camera of a small clip, without references; its output and its JSON report."""
    report = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "edged.cli", "bench", "--cameras", "1", "--no-references", "--json", str(report),
        "--media", str(shared_dir / "media/classroom.mp4"), *options,
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
    return result, json.loads(report.read_text())


@pytest.mark.slow
def test_bench_measures_edged_end_to_end_and_writes_json(tmp_path: Path, shared_dir: Path) -> None:
    result, figures = _bench(tmp_path, shared_dir, "--seconds", "1.5", "--scenarios", "max,idle")

    assert "edged run" in result.stdout and "max" in result.stdout
    assert figures["runs"]["max"]["fps"] > 0
    assert figures["runs"]["max"]["latency_ms"]["samples"] > 0
    assert figures["runs"]["idle"]["fps"] == 0
    assert figures["machine"]["cores"] == os.cpu_count()


@pytest.mark.slow
def test_a_repeated_bench_reports_each_bench_and_the_medians(tmp_path: Path, shared_dir: Path) -> None:
    result, figures = _bench(tmp_path, shared_dir, "--seconds", "1", "--repeat", "2", "--scenarios", "max")

    assert result.stdout.count("edged run") == 2 and "over 2 benches" in result.stdout
    assert "bench 2/2: edged end to end: max ..." in result.stderr
    fps = [bench["runs"]["max"]["fps"] for bench in figures["benches"]]
    assert len(fps) == 2 and all(value > 0 for value in fps)
    expected = {"median": sum(fps) / 2, "min": min(fps), "max": max(fps)}
    assert figures["summary"]["max_fps"] == {key: round(value, 3) for key, value in expected.items()}


def test_bench_refuses_a_repeat_of_no_runs_in_one_line() -> None:
    command = [sys.executable, "-m", "edged.cli", "bench", "--repeat", "0"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert result.stderr.strip() == "edged: --repeat: 0 is not a number of runs: give 1 or more"


def test_bench_refuses_an_unknown_scenario_in_one_line(shared_dir: Path) -> None:
    command = [sys.executable, "-m", "edged.cli", "bench", "--scenarios", "max,warp"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert "--scenarios: unknown warp" in result.stderr


def test_bench_refuses_a_broker_without_its_port_in_one_line(shared_dir: Path) -> None:
    command = [sys.executable, "-m", "edged.cli", "bench", "--mqtt", "localhost"]
    env = {**os.environ, "EDGED_TEST_DATA": str(shared_dir)}
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, env=env)

    assert result.returncode == 2
    assert result.stderr == "edged: --mqtt: 'localhost' is not HOST:PORT: give the broker as, say, 127.0.0.1:1883\n"


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


def _report_with_ceilings(before: float, after: float) -> BenchReport:
    def throughput(fps: float) -> dict[str, float]:
        return {"fps": fps, "frames": 10 * fps, "seconds": 10.0, "cpu_seconds": 20.0, "cpu_ms_per_frame": 2000 / fps}

    report = BenchReport({"cpu": "test CPU", "cores": 2, "openvino": "2026"}, {})
    report.references = {
        "benchmark_app_fps": 140.0,
        "inference_ceiling": throughput(before),
        "inference_ceiling_after_memory": throughput(after),
        "inference_ceiling_fps": (before + after) / 2,
        "inference_ceiling_drift": after / before - 1,
        "decode_ceiling": throughput(270.0),
        "decode_ceiling_edged_reader": throughput(330.0),
        "resize_ms": 0.5,
        "composed_limit_fps": 85.0,
        "plain_loop": throughput(60.0),
    }
    return report


def test_the_bench_table_warns_when_the_machine_slowed_down_during_the_run_from_memory() -> None:
    table = format_table(_report_with_ceilings(before=140.0, after=80.0))

    assert re.search(r"mean, for the run from memory +110\.0 +drift -42\.9 %", table), table
    assert "warning: the machine's speed changed by -43 % during the memory run" in table


def test_the_bench_table_does_not_warn_about_a_steady_machine() -> None:
    table = format_table(_report_with_ceilings(before=140.0, after=133.0))

    assert "drift -5.0 %" in table and "warning" not in table
