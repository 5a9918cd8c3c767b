"""Run-time figures: counted once, read by both the `{prefix}/stats` message and Prometheus `/metrics`.

Most counters already live where the work happens (a camera counts the frames it reads, a slot the
frames it sheds, the publisher its drops); `Telemetry` only adds what nobody else counts (frames
processed, inference times) and knows where to read the rest. Per frame it does two additions, a
bisect and an append: everything else is computed when figures are asked for.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edged.frame import FrameSlot

if TYPE_CHECKING:  # only a type here; importing edged.inference would load OpenVINO
    from edged.inference import Result

log = logging.getLogger("edged.stats")

# Upper bounds of the inference-time histogram, seconds: a 1-bit SSD on 2 cores takes ~15-30 ms
# with its queue, a 1080p SSH model ~60-200 ms; the tail buckets catch an overloaded box.
INFERENCE_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
WINDOW_SAMPLES = 20_000  # inference times kept between two stats messages: bounds memory at any fps


class CameraCounters(Protocol):
    """What a camera reader counts itself (edged.camera.Camera)."""

    frames_read: int
    frames_decoded: int
    reconnects: int


class InFlight(Protocol):
    """What a dispatcher tells about its engine's requests (edged.dispatch.Dispatcher)."""

    in_flight: int


class OutboxCounters(Protocol):
    """What the MQTT publisher counts (edged.publish.Publisher)."""

    dropped: int
    published: int
    connected: asyncio.Event

    @property
    def outbox_depth(self) -> int: ...


class SnapshotCounters(Protocol):
    """What the snapshot worker counts (edged.snapshot.Snapshotter)."""

    published: int

    @property
    def encode_ms_avg(self) -> float: ...


@dataclass(slots=True)
class CameraFigures:
    reader: CameraCounters
    slot: FrameSlot
    model: str
    processed: int = 0
    online: bool = False


@dataclass(slots=True)
class ModelFigures:
    dispatcher: InFlight
    requests: int
    count: int = 0
    seconds_sum: float = 0.0
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(INFERENCE_BUCKETS_S) + 1))
    window_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_SAMPLES))

    def observe(self, milliseconds: float) -> None:
        self.count += 1
        self.seconds_sum += milliseconds / 1000.0
        self.bucket_counts[bisect.bisect_left(INFERENCE_BUCKETS_S, milliseconds / 1000.0)] += 1
        self.window_ms.append(milliseconds)

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """(le, count) pairs as Prometheus wants them, ending with +Inf."""
        running, pairs = 0, []
        for bound, count in zip((*INFERENCE_BUCKETS_S, float("inf")), self.bucket_counts, strict=True):
            running += count
            pairs.append(("+Inf" if bound == float("inf") else str(bound), running))
        return pairs


class Telemetry:
    """The figures of one run. Lives on the event loop; `/metrics` reads plain ints from its thread."""

    def __init__(self, version: str, publisher: OutboxCounters) -> None:
        self.version = version
        self.publisher = publisher
        self._started_monotonic = time.monotonic()
        self.cameras: dict[str, CameraFigures] = {}
        self.models: dict[str, ModelFigures] = {}
        self.snapshots: SnapshotCounters | None = None  # None: snapshots are off

    def add_model(self, name: str, dispatcher: InFlight, requests: int) -> None:
        self.models[name] = ModelFigures(dispatcher, requests)

    def add_camera(self, name: str, reader: CameraCounters, slot: FrameSlot, model: str) -> None:
        self.cameras[name] = CameraFigures(reader, slot, model)

    def set_online(self, camera: str, online: bool) -> None:
        if (figures := self.cameras.get(camera)) is not None:
            figures.online = online

    def on_result(self, result: Result) -> None:
        """Per published detection: hot path, keep it to counting."""
        camera = self.cameras[result.frame.camera]
        camera.processed += 1
        self.models[camera.model].observe(result.inference_ms)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_monotonic

    @staticmethod
    def status(camera: CameraFigures) -> str:
        if not camera.online:
            return "offline"
        return "paused" if camera.slot.paused else "online"


@dataclass(frozen=True, slots=True)
class ProcessFigures:
    cpu_seconds: float  # user + system, every thread of the process
    rss_bytes: int


def read_process() -> ProcessFigures:
    """Reads /proc: call it from a thread."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best the standard library offers
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return ProcessFigures(time.process_time(), rss)


@dataclass(slots=True)
class _Previous:
    at: float
    cpu_seconds: float
    frames_read: dict[str, int]
    frames_decoded: dict[str, int]
    processed: dict[str, int]
    skipped: dict[str, int]
    runs: dict[str, CameraFigures]  # whose counts these are: a camera a reload restarts counts afresh


class StatsReporter:
    """Every `interval` seconds, the retained JSON on `{prefix}/stats` (docs/schemas/stats.json)."""

    def __init__(self, telemetry: Telemetry, interval: float, publish: Callable[[bytes], None]) -> None:
        self._telemetry = telemetry
        self._interval = interval
        self._publish = publish
        self._previous: _Previous | None = None

    async def run(self) -> None:
        self._previous = self._mark(await asyncio.to_thread(read_process))
        while True:
            await asyncio.sleep(self._interval)
            await self.report()

    async def report(self) -> dict[str, Any]:
        process = await asyncio.to_thread(read_process)
        stats = self.figures(process)
        self._publish(json.dumps(stats, separators=(",", ":")).encode())
        return stats

    def figures(self, process: ProcessFigures) -> dict[str, Any]:
        """The stats message; rates are over the time since the previous one."""
        t = self._telemetry
        now = self._mark(process)
        previous = self._previous or now
        self._previous = now
        elapsed = now.at - previous.at

        def rate(name: str, current: dict[str, int], before: dict[str, int]) -> float:
            counted = current[name] - (before[name] if previous.runs.get(name) is now.runs[name] else 0)
            return round(counted / elapsed, 2) if elapsed > 0 else 0.0

        cameras = {
            name: {
                "camera_fps": rate(name, now.frames_read, previous.frames_read),
                "decoded_fps": rate(name, now.frames_decoded, previous.frames_decoded),
                "processed_fps": rate(name, now.processed, previous.processed),
                "skipped_fps": rate(name, now.skipped, previous.skipped),
                "frames_read": now.frames_read[name],
                "frames_decoded": now.frames_decoded[name],
                "frames_processed": now.processed[name],
                "frames_skipped": now.skipped[name],
                "reconnects": c.reader.reconnects,
                "status": t.status(c),
                "model": c.model,
            }
            for name, c in t.cameras.items()
        }
        models = {}
        for name, m in t.models.items():
            window = np.fromiter(m.window_ms, dtype=np.float64, count=len(m.window_ms))
            m.window_ms.clear()
            models[name] = {
                "inference_ms": {
                    "avg": round(float(window.mean()), 2) if window.size else None,
                    "p99": round(float(np.percentile(window, 99)), 2) if window.size else None,
                    "samples": int(window.size),
                },
                "inferences": m.count,
                "requests_in_flight": m.dispatcher.in_flight,
                "requests": m.requests,
            }
        cpu = (now.cpu_seconds - previous.cpu_seconds) / elapsed * 100.0 if elapsed > 0 else 0.0
        return {
            "timestamp": round(time.time(), 3),
            "interval_s": round(elapsed, 3),
            "version": t.version,
            "uptime_s": round(t.uptime, 1),
            "cameras": cameras,
            "models": models,
            "mqtt": {
                "outbox": t.publisher.outbox_depth,
                "dropped": t.publisher.dropped,
                "published": t.publisher.published,
                "connected": t.publisher.connected.is_set(),
            },
            "snapshots": None
            if t.snapshots is None
            else {"published": t.snapshots.published, "encode_ms_avg": round(t.snapshots.encode_ms_avg, 2)},
            "process": {"cpu_percent": round(cpu, 1), "rss_bytes": process.rss_bytes, "pid": os.getpid()},
        }

    def _mark(self, process: ProcessFigures) -> _Previous:
        cameras = self._telemetry.cameras
        return _Previous(
            at=time.monotonic(),
            cpu_seconds=process.cpu_seconds,
            frames_read={name: c.reader.frames_read for name, c in cameras.items()},
            frames_decoded={name: c.reader.frames_decoded for name, c in cameras.items()},
            processed={name: c.processed for name, c in cameras.items()},
            skipped={name: c.slot.skipped for name, c in cameras.items()},
            runs=dict(cameras),
        )
