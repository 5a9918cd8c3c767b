"""`edged bench`: edged and its references measured in one run on one machine, reported as ratios.

References (same model, same media, same run): benchmark_app's throughput; the model alone through
edged's own compile settings and queue (the inference ceiling); decoding alone (the decode ceiling);
the plain single-threaded loop (read -> cv2.resize -> synchronous infer). From them, the composed
limit 1 / (1/decode + 1/inference + resize) is what decode + resize + inference could reach together
(decode: the faster of OpenCV's reader and edged's own, which decode every frame to identical pixels).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edged import __version__
from edged.bench import SCENARIOS, e2e, reference
from edged.bench.e2e import CameraSpec, RunResult
from edged.bench.reference import DecodeBackend

REFUSED_STREAM = "rtsp://127.0.0.1:9/none"  # nothing listens on the discard port: a camera that is down
# A soak measures RSS growth from this far in: by then every decoder and buffer pool has filled (over a
# 10-minute overload run, RSS sampled every 10 s was flat from about 30 s in; docs/performance-notes.md).
SOAK_WARMUP_S = 60.0
# Fairness is judged on frame counts, and over a short window they differ by chance: at ~12 fps a camera
# processes ~240 frames in 20 s, whose decoding cost varies with the clip and which of 8 starved decoders
# the scheduler ran; the largest of 8 deviations then reaches 10-13 % with nothing unfair going on
# (measured: ±7-13 % over 10-s windows, ±2.3-3.8 % over 60 s, ±0.7 % over 10 minutes on one run).
OVERLOAD_MIN_S = 60.0
# The inference ceiling is measured before and after the run from memory; when the two differ by more than
# this, the machine's speed changed under the comparison and the table says so (a neighbour took a core:
# seen here as 81 against 139-149 fps within minutes).
DRIFT_WARNING = 0.10
# After the run from memory, edged is measured again in slices interleaved with the inference ceiling (see
# e2e.Pairing): this many rounds, over as long in all as the run itself, in slices of at most PAIRED_SLICE_S:
# frozen much longer, edged would take its cameras for stalled (`stall_timeout`, 10 s by default).
PAIRED_ROUNDS = 5
PAIRED_SLICE_S = 5.0


@dataclass(frozen=True, slots=True)
class BenchOptions:
    model: Path
    media: Path
    cameras: int = 4
    seconds: float = 20.0
    scenarios: tuple[str, ...] = SCENARIOS
    references: bool = True
    mqtt: tuple[str, int] | None = None
    soak_seconds: float | None = None  # overload run length when set (RSS growth over a long run)
    requests: int | None = None  # edged's requests in flight (default: edged's own default)


@dataclass(slots=True)
class BenchReport:
    machine: dict[str, Any]
    options: dict[str, Any]
    references: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "options": self.options,
            "references": self.references,
            "runs": self.runs,
            "ratios": self.ratios,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def run_suite(options: BenchOptions, progress: Callable[[str], None]) -> BenchReport:
    """References and runs interleaved, each reference measured just before the run it judges.

    A shared machine's speed drifts by 10-20 % over minutes; measured side by side, a ratio compares
    like with like: the inference ceiling, then edged from memory, then the inference ceiling again
    (their difference tells how far the machine drifted); the decode ceilings and the plain loop, then
    edged at full speed (the composed limit takes the second ceiling, the one measured nearest to it).
    The two ratios the targets are about come from a finer interleaving still: after its run from memory
    and after its run at full speed, edged is frozen and let go in turn, slices of it alternating with
    slices of the inference ceiling or of the composed limit (e2e.Pairing, _pairing).
    """
    report = BenchReport(_machine(), {k: str(v) for k, v in asdict(options).items()})
    ceiling: reference.InferenceCeiling | None = None
    if options.references:
        # Compiled once, with the requests edged uses for files at full speed, and measured for every reference
        # and paired slice that needs it.
        ceiling = reference.InferenceCeiling(options.model, requests=options.requests or _edged_requests(options))
        report.references |= _inference_references(options, ceiling, progress)
    with e2e.broker(*(options.mqtt or (None, None))) as mqtt, tempfile.TemporaryDirectory() as scratch:

        def run(scenario: str) -> None:
            progress(f"edged end to end: {scenario}")
            cameras, seconds = _scenario(scenario, options, Path(scratch))
            result = e2e.run(
                scenario,
                options.model,
                cameras,
                seconds,
                mqtt,
                expect_messages=scenario != "idle",
                requests=options.requests,
                warmup=SOAK_WARMUP_S if scenario == "overload" and options.soak_seconds else e2e.WARMUP_S,
                pairing=_pairing(options, scenario, report.references, ceiling) if ceiling else None,
            )
            report.runs[scenario] = result.to_dict()

        if "memory" in options.scenarios:
            run("memory")
            if ceiling is not None:
                before = report.references["inference_ceiling"]
                report.references |= _ceiling_again(options, ceiling, before, progress)
        if options.references:
            refs = report.references  # the composed limit takes the ceiling measured last, nearest the max run
            latest = refs.get("inference_ceiling_after_memory", refs["inference_ceiling"])
            report.references |= _decode_references(options, latest["fps"], progress)
        for scenario in options.scenarios:
            if scenario != "memory":
                run(scenario)
    report.runs = {name: report.runs[name] for name in SCENARIOS if name in report.runs}
    report.ratios = _ratios(report)
    return report


def _inference_references(
    options: BenchOptions, ceiling: reference.InferenceCeiling, progress: Callable[[str], None]
) -> dict[str, Any]:
    seconds = _reference_seconds(options)
    progress("benchmark_app")
    app = reference.benchmark_app_fps(options.model, max(2, round(seconds)))
    progress("inference ceiling (edged's compile settings and queue)")
    measured = ceiling.measure(seconds)
    return {
        "benchmark_app_fps": round(app, 2),
        "inference_ceiling": measured.to_dict(),
        "inference_ceiling_fps": round(measured.fps, 2),  # the figure the ratios use: the mean, once measured twice
    }


def _ceiling_again(
    options: BenchOptions,
    ceiling: reference.InferenceCeiling,
    before: dict[str, float],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The inference ceiling after the run from memory: with the one before, it brackets that run."""
    progress("inference ceiling, again")
    after = ceiling.measure(_reference_seconds(options))
    return {
        "inference_ceiling_after_memory": after.to_dict(),
        "inference_ceiling_fps": round((before["fps"] + after.fps) / 2, 2),
        "inference_ceiling_drift": round(after.fps / before["fps"] - 1, 3),
    }


def _pairing(
    options: BenchOptions, scenario: str, refs: dict[str, Any], ceiling: reference.InferenceCeiling
) -> e2e.Pairing | None:
    """What a run's slices are judged against: from memory the inference ceiling, at full speed the composed
    limit (its inference and decoding measured in each slice, half the slice each)."""
    if scenario not in ("memory", "max"):
        return None
    slice_s = min(PAIRED_SLICE_S, max(1.0, options.seconds / PAIRED_ROUNDS))
    if scenario == "memory":
        return e2e.Pairing(lambda seconds: ceiling.measure(seconds).fps, PAIRED_ROUNDS, slice_s)
    streams = [options.media] * options.cameras
    faster: DecodeBackend = (
        "edged" if refs["decode_ceiling_edged_reader"]["fps"] >= refs["decode_ceiling"]["fps"] else "opencv"
    )
    resize_s = float(refs["resize_ms"]) / 1000

    def composed_limit(seconds: float) -> float:
        inference = ceiling.measure(seconds / 2).fps
        decode = reference.decode_ceiling(streams, seconds=seconds / 2, backend=faster).fps
        return 1.0 / (1.0 / decode + 1.0 / inference + resize_s)

    return e2e.Pairing(composed_limit, PAIRED_ROUNDS, slice_s)


def _decode_references(options: BenchOptions, ceiling_fps: float, progress: Callable[[str], None]) -> dict[str, Any]:
    streams = [options.media] * options.cameras
    seconds = _reference_seconds(options)
    progress("decode ceiling (OpenCV)")
    decode = reference.decode_ceiling(streams, seconds=seconds)
    progress("decode ceiling (edged's reader)")
    edged_decode = reference.decode_ceiling(streams, seconds=seconds, backend="edged")
    resize_ms = _resize_ms(options)
    progress("plain loop")
    plain = reference.plain_loop(options.model, streams, max(30, round(min(ceiling_fps, decode.fps) * seconds / 2)))
    # Against the faster decoder: the limit is what the hardware allows, not what OpenCV allows.
    fastest = max(decode.fps, edged_decode.fps)
    composed = 1.0 / (1.0 / fastest + 1.0 / ceiling_fps + resize_ms / 1000.0)
    return {
        "decode_ceiling": decode.to_dict(),
        "decode_ceiling_edged_reader": edged_decode.to_dict(),
        "resize_ms": round(resize_ms, 3),
        "composed_limit_fps": round(composed, 2),
        "plain_loop": plain.to_dict(),
    }


def _reference_seconds(options: BenchOptions) -> float:
    return max(2.0, options.seconds / 2)


def _edged_requests(options: BenchOptions) -> int:
    """The requests in flight edged uses by default for files at full speed, as in the max run."""
    import openvino as ov

    from edged.inference import default_requests

    core = ov.Core()
    model, _ = reference.prepare_model(core, options.model)
    return default_requests(reference.compile_for_throughput(core, model), throughput_bound=True)


def _resize_ms(options: BenchOptions) -> float:
    """cv2.resize of one media frame to the model's input, as a camera thread does it."""
    import openvino as ov

    shape = ov.Core().read_model(str(options.model)).inputs[0].get_partial_shape().to_shape()
    size = (int(shape[3]), int(shape[2]))
    frame = _first_frame(options.media)
    out = np.empty((size[1], size[0], 3), np.uint8)
    started = time.perf_counter()
    for _ in range(200):
        cv2.resize(frame, size, dst=out, interpolation=cv2.INTER_LINEAR)
    return (time.perf_counter() - started) / 200 * 1000


def _first_frame(media: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(media))
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise reference.BenchmarkError(f"{media}: cannot read a frame")
    return frame


def _scenario(name: str, options: BenchOptions, scratch: Path) -> tuple[dict[str, CameraSpec], float]:
    n, media, seconds = options.cameras, str(options.media), options.seconds
    if name == "max":  # every camera as fast as the pipeline takes frames
        return {f"cam{i}": CameraSpec(media) for i in range(n)}, seconds
    if name == "memory":  # no decoding: each camera repeats one decoded frame held in memory
        still = scratch / "frame.png"
        cv2.imwrite(str(still), _first_frame(options.media))
        return {f"still{i}": CameraSpec(str(still)) for i in range(n)}, seconds
    if name == "live":  # live load: n cameras at 15 fps in real time
        return {f"live{i}": CameraSpec(media, fps=15, realtime=True) for i in range(n)}, seconds
    if name == "overload":  # twice the cameras at their native 30 fps: more than the box can do
        cameras = {f"busy{i}": CameraSpec(media, realtime=True) for i in range(2 * n)}
        return cameras, options.soak_seconds or max(seconds, OVERLOAD_MIN_S)
    if name == "idle":  # cameras down (nothing listens): what edged costs while it waits
        return {f"down{i}": CameraSpec(REFUSED_STREAM) for i in range(n)}, seconds
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


def _ratios(report: BenchReport) -> dict[str, float]:
    refs, runs, ratios = report.references, report.runs, {}
    if refs and "max" in runs:
        ratios["edged_vs_composed_limit"] = runs["max"]["paired"]["median_ratio"]
        ratios["edged_vs_composed_limit_whole_run"] = runs["max"]["fps"] / refs["composed_limit_fps"]
        ratios["edged_vs_plain_loop"] = runs["max"]["fps"] / refs["plain_loop"]["fps"]
        ratios["edged_vs_inference_ceiling"] = runs["max"]["fps"] / refs["inference_ceiling_fps"]
    if refs and "memory" in runs:
        ratios["edged_without_decode_vs_inference_ceiling"] = runs["memory"]["paired"]["median_ratio"]
        ratios["edged_without_decode_vs_inference_ceiling_whole_run"] = (
            runs["memory"]["fps"] / refs["inference_ceiling_fps"]
        )
    if refs:
        ratios["inference_ceiling_vs_benchmark_app"] = refs["inference_ceiling"]["fps"] / refs["benchmark_app_fps"]
    return {key: round(value, 3) for key, value in ratios.items()}


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import openvino as ov

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "openvino": ov.get_version(),
        "opencv": cv2.__version__,
        "edged": __version__,
        "load_average_at_start": os.getloadavg()[0],
    }


def format_table(report: BenchReport) -> str:
    lines = [
        f"machine: {report.machine['cpu']}, {report.machine['cores']} cores, OpenVINO {report.machine['openvino']}"
    ]
    refs = report.references
    if refs:
        lines += [
            "",
            "reference                                   fps   cpu ms/frame",
            f"benchmark_app -hint throughput       {refs['benchmark_app_fps']:10.1f}",
            _ref_line("inference ceiling (edged settings)", refs["inference_ceiling"]),
            *_ceiling_again_lines(refs),
            _ref_line("decode ceiling (OpenCV)", refs["decode_ceiling"]),
            _ref_line("decode ceiling (edged's reader)", refs["decode_ceiling_edged_reader"]),
            f"resize to model input                {refs['resize_ms']:10.3f} ms",
            f"composed limit                       {refs['composed_limit_fps']:10.1f}",
            _ref_line("plain single-threaded loop", refs["plain_loop"]),
        ]
    if report.runs:
        lines += [
            "",
            "edged run      cams     fps  p50 ms  p99 ms  cpu ms/frame  cpu %  steal %  skipped  peak RSS MB"
            "  RSS growth  fairness",
        ]
        for name, run in report.runs.items():
            latency = run["latency_ms"]
            lines.append(
                f"{name:14} {run['cameras']:4} {run['fps']:7.1f} {latency['p50']:7.1f} {latency['p99']:7.1f}"
                f" {run['cpu_ms_per_frame']:13.2f} {run['cpu_percent']:6.1f} {run['steal_percent']:8.1f}"
                f" {run['frames_skipped']:8}"
                f" {run['rss_mb']['peak']:12.1f} {100 * run['rss_growth']:+9.1f} %  ±{100 * run['fairness']:.1f} %"
            )
    lines += _paired_lines(report.runs)
    if report.ratios:
        width = max(map(len, report.ratios))
        lines += ["", *(f"{key:{width}} {value:6.3f}" for key, value in report.ratios.items())]
    return "\n".join(lines)


def _ceiling_again_lines(refs: dict[str, Any]) -> list[str]:
    if "inference_ceiling_after_memory" not in refs:
        return []
    drift = refs["inference_ceiling_drift"]
    lines = [
        _ref_line("  again, after the memory run", refs["inference_ceiling_after_memory"]),
        f"  mean, for the run from memory      {refs['inference_ceiling_fps']:10.1f}   drift {100 * drift:+.1f} %",
    ]
    if abs(drift) > DRIFT_WARNING:
        lines.append(
            f"  warning: the machine's speed changed by {100 * drift:+.0f} % during the memory run: ratios against "
            "that mean are uncertain by about as much (the paired rounds below are not); run the bench again"
        )
    return lines


_PAIRED_AGAINST = {"max": "max, paired with the composed limit", "memory": "from memory, paired with the ceiling"}


def _paired_lines(runs: dict[str, dict[str, Any]]) -> list[str]:
    return [line for name, run in runs.items() if "paired" in run for line in _rounds_lines(name, run["paired"])]


def _rounds_lines(name: str, paired: dict[str, Any]) -> list[str]:
    return [
        "",
        f"{_PAIRED_AGAINST[name]:39} reference fps (before, after)   edged fps   ratio",
        *(
            f"  round {number:<31} {before:8.1f} {after:8.1f}  {edged:14.1f}  {ratio:6.3f}"
            for number, (before, after, edged, ratio) in enumerate(
                zip(
                    paired["reference_fps"],
                    paired["reference_fps"][1:],
                    paired["edged_fps"],
                    paired["ratios"],
                    strict=False,
                ),
                start=1,
            )
        ),
        f"  median ratio {paired['median_ratio']:57.3f}",
    ]


def summarise(reports: list[BenchReport]) -> dict[str, dict[str, float]]:
    """Median, min and max over repeated benches of each ratio and each run's fps (present in every bench)."""
    series: dict[str, list[float]] = {}
    for report in reports:
        for key, value in report.ratios.items():
            series.setdefault(key, []).append(value)
        for name, run in report.runs.items():
            series.setdefault(f"{name}_fps", []).append(run["fps"])
    return {
        key: {"median": round(float(np.median(values)), 3), "min": round(min(values), 3), "max": round(max(values), 3)}
        for key, values in series.items()
        if len(values) == len(reports)
    }


def format_summary(reports: list[BenchReport]) -> str:
    summary = summarise(reports)
    width = max(map(len, summary), default=0)
    lines = ["", f"{f'over {len(reports)} benches':{width}}  median     min     max"]
    for key, figures in summary.items():
        lines.append(f"{key:{width}} {figures['median']:7.3f} {figures['min']:7.3f} {figures['max']:7.3f}")
    return "\n".join(lines)


def repeated_json(reports: list[BenchReport]) -> str:
    return json.dumps({"benches": [report.to_dict() for report in reports], "summary": summarise(reports)}, indent=1)


def _ref_line(label: str, figures: dict[str, float]) -> str:
    return f"{label:36} {figures['fps']:10.1f}   {figures['cpu_ms_per_frame']:.2f}"


__all__ = [
    "SCENARIOS",
    "BenchOptions",
    "BenchReport",
    "RunResult",
    "format_summary",
    "format_table",
    "repeated_json",
    "run_suite",
    "summarise",
]
