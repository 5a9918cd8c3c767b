"""`edged bench` keeps working: a few seconds on a small clip (the figures are the benchmark's job, not a test's)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from edged.bench import e2e
from edged.bench.reference import BenchmarkError, InferenceCeiling
from edged.bench.suite import BenchReport, format_table
from tests.support.broker import Mosquitto

SEED = "models/face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml"


def _bench(
    tmp_path: Path, shared_dir: Path, *options: str, references: bool = False
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """`edged bench` on one camera of a small clip, without references unless asked; its output and JSON report."""
    report = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "edged.cli", "bench", "--cameras", "1", "--json", str(report),
        "--media", str(shared_dir / "media/classroom.mp4"), *options, *([] if references else ["--no-references"]),
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
    # Each window starts once edged said READY=1 (to the bench, in systemd's place), after its start-up.
    assert all(0 < figures["runs"][run]["startup_s"] < 120 for run in ("max", "idle"))
    assert figures["machine"]["cores"] == os.cpu_count()


@pytest.mark.slow
def test_bench_with_references_judges_both_targets_by_paired_rounds(tmp_path: Path, shared_dir: Path) -> None:
    result, figures = _bench(tmp_path, shared_dir, "--seconds", "1", "--scenarios", "max,memory", references=True)

    assert "benchmark_app -hint throughput" in result.stdout and "composed limit" in result.stdout
    assert "max, paired with the composed limit" in result.stdout
    assert "from memory, paired with the ceiling" in result.stdout
    for run, ratio in (("max", "edged_vs_composed_limit"), ("memory", "edged_without_decode_vs_inference_ceiling")):
        paired = figures["runs"][run]["paired"]
        assert len(paired["ratios"]) == 5 and all(value > 0 for value in paired["ratios"])
        assert figures["ratios"][ratio] == paired["median_ratio"]
        assert figures["ratios"][f"{ratio}_whole_run"] > 0


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
    assert "edged exited with code 2 before it was ready" in line
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


@pytest.mark.slow
def test_a_paired_run_measures_the_reference_while_edged_is_frozen_and_judges_each_slice_by_those_around_it(
    tmp_path: Path, shared_dir: Path, broker: Mosquitto
) -> None:
    ceiling = InferenceCeiling(shared_dir / SEED)
    edged_cpu_ticks_during_reference: list[int] = []

    def reference(seconds: float) -> float:
        edged = _child_running("edged.cli")
        before = _cpu_ticks(edged)
        fps = ceiling.measure(seconds).fps
        edged_cpu_ticks_during_reference.append(_cpu_ticks(edged) - before)
        return fps

    still = tmp_path / "frame.png"
    cv2.imwrite(str(still), cv2.VideoCapture(str(shared_dir / "media/classroom.mp4")).read()[1])
    cameras = {"still0": e2e.CameraSpec(str(still))}
    pairing = e2e.Pairing(reference, rounds=2, seconds=0.5)

    result = e2e.run("memory", shared_dir / SEED, cameras, 1.0, (broker.host, broker.port), pairing=pairing)

    paired = result.to_dict()["paired"]
    assert all(ticks <= 1 for ticks in edged_cpu_ticks_during_reference), edged_cpu_ticks_during_reference
    assert len(edged_cpu_ticks_during_reference) == 3
    around, edged = paired["reference_fps"], paired["edged_fps"]
    assert len(around) == 3 and len(edged) == 2 and all(fps > 0 for fps in around + edged)
    expected = [edged[0] / ((around[0] + around[1]) / 2), edged[1] / ((around[1] + around[2]) / 2)]
    assert paired["ratios"] == pytest.approx(expected, abs=2e-3)
    assert paired["median_ratio"] == pytest.approx(sum(expected) / 2, abs=2e-3)


@pytest.mark.slow
def test_a_paired_run_whose_edged_dies_says_so(tmp_path: Path, shared_dir: Path, broker: Mosquitto) -> None:
    def reference(seconds: float) -> float:
        os.kill(_child_running("edged.cli"), signal.SIGKILL)
        return 100.0

    still = tmp_path / "frame.png"
    cv2.imwrite(str(still), cv2.VideoCapture(str(shared_dir / "media/classroom.mp4")).read()[1])
    cameras = {"still0": e2e.CameraSpec(str(still))}
    pairing = e2e.Pairing(reference, rounds=2, seconds=0.5)

    with pytest.raises(BenchmarkError, match=r"edged exited with code -?\d+ during the paired rounds"):
        e2e.run("memory", shared_dir / SEED, cameras, 1.0, (broker.host, broker.port), pairing=pairing)


@pytest.mark.slow
def test_a_bench_killed_while_edged_is_frozen_leaves_neither_edged_nor_its_subscriber_behind(
    tmp_path: Path, shared_dir: Path, broker: Mosquitto
) -> None:
    still = tmp_path / "frame.png"
    cv2.imwrite(str(still), cv2.VideoCapture(str(shared_dir / "media/classroom.mp4")).read()[1])
    # A bench in its own process, SIGKILLed by its reference slice: edged is frozen then (SIGSTOP).
    bench = f"""
import os, signal
from pathlib import Path
from edged.bench import e2e

def reference(seconds):
    me = os.getpid()
    print(Path(f"/proc/{{me}}/task/{{me}}/children").read_text(), flush=True)  # its main thread started them all
    os.kill(me, signal.SIGKILL)

e2e.run("memory", Path({str(shared_dir / SEED)!r}), {{"still0": e2e.CameraSpec({str(still)!r})}}, 1.0,
        ({broker.host!r}, {broker.port}), pairing=e2e.Pairing(reference, rounds=1, seconds=0.5))
"""
    said = tmp_path / "bench.out"
    with said.open("w") as output:  # not a pipe: children left behind would keep it open
        killed = subprocess.run([sys.executable, "-c", bench], stdout=output, stderr=output, timeout=120, check=False)

    assert killed.returncode == -signal.SIGKILL, said.read_text()
    children = [int(pid) for pid in said.read_text().split()]
    assert len(children) == 2  # edged and mosquitto_sub
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in children)


def test_the_bench_table_shows_each_paired_round_and_their_median() -> None:
    report = _report_with_ceilings(before=140.0, after=133.0)
    paired = {
        "reference_fps": [150.0, 170.0, 160.0],
        "edged_fps": [144.0, 148.5],
        "ratios": [0.9, 0.9],
        "median_ratio": 0.9,
    }
    report.runs = {"memory": _memory_run(paired)}

    table = format_table(report)

    assert re.search(r"round 1 +150\.0 +170\.0 +144\.0 +0\.900", table), table
    assert re.search(r"round 2 +170\.0 +160\.0 +148\.5 +0\.900", table), table
    assert re.search(r"median ratio +0\.900", table), table


def _memory_run(paired: dict[str, Any]) -> dict[str, Any]:
    return {
        "cameras": 4,
        "fps": 146.0,
        "latency_ms": {"p50": 50.0, "p99": 70.0, "samples": 2920},
        "cpu_ms_per_frame": 13.0,
        "cpu_percent": 190.0,
        "steal_percent": 0.0,
        "frames_skipped": 0,
        "rss_mb": {"peak": 230.0},
        "rss_growth": 0.0,
        "fairness": 0.0,
        "paired": paired,
    }


def _stat_fields(stat: Path) -> list[str]:
    """A /proc/<pid>/stat's fields after the command name (which may hold spaces): state, parent pid, ..."""
    return stat.read_text().rsplit(")", 1)[1].split()


def _running(pid: int) -> bool:
    """Still there, running or stopped; a zombie, left for whichever process adopted it to reap, has ended."""
    try:
        state = _stat_fields(Path(f"/proc/{pid}/stat"))[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _child_running(module: str) -> int:
    """The pid of this process's child that runs `python -m <module>`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(_stat_fields(stat)[1])
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue  # gone meanwhile
        if parent == os.getpid() and module.encode() in command:
            return int(stat.parent.name)
    raise AssertionError(f"no child process runs {module}")


def _cpu_ticks(pid: int) -> int:
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return int(fields[11]) + int(fields[12])  # utime + stime
