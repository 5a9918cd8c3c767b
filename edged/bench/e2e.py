"""edged measured end to end, as users run it: `edged run` in its own process, a real broker, a subscriber.

Figures come from what the subscriber receives (messages, their `latency_ms`) and from /proc for the
edged process (CPU time, RSS), over a window that starts once edged says it is serving (READY=1, the bench
standing in for systemd) and every camera has published.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.bench.reference import BenchmarkError

PREFIX = "bench"
RSS_SAMPLE_S = 5.0
WARMUP_S = 3.0  # from every camera's first message to the start of the measuring window
READY_TIMEOUT_S = 120.0  # for edged to start: imports, models compiled, cameras started, broker reached
SUBSCRIBE_S = 0.5  # for mosquitto_sub to connect and subscribe before edged starts publishing
# After edged is let go again in a paired run: the frames frozen in flight come back and every camera's next
# frame is under way well within this (an inference takes milliseconds), so each slice measures a steady state.
RESUME_S = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Looked up here: after the fork only the call itself runs. Linux's; elsewhere children are left to the clean-up.
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


@dataclass(frozen=True, slots=True)
class CameraSpec:
    url: str
    fps: float | None = None
    realtime: bool = False


@dataclass(frozen=True, slots=True)
class Pairing:
    """edged interleaved with a reference after its run: the reference alone for a slice while edged is frozen
    (SIGSTOP), then edged alone for a slice, `rounds` times, and the reference once more at the end.

    A shared machine's speed drifts by 10-20 % within minutes; each of edged's slices is judged against the
    two reference slices around it, seconds apart, so a ratio compares like with like, and the median over
    the rounds leaves out a round in which a neighbour took a core."""

    reference: Callable[[float], float]  # runs the reference for so many seconds, in this process; its fps
    rounds: int
    seconds: float  # each slice, edged's and the reference's


@dataclass(frozen=True, slots=True)
class PairedRounds:
    reference_fps: list[float]  # rounds + 1 slices: the first before edged's first, each other after one
    edged_fps: list[float]

    @property
    def ratios(self) -> list[float]:
        """edged's fps in each round against the mean of the reference's slices just before and after it."""
        around = zip(self.reference_fps, self.reference_fps[1:], strict=False)
        return [edged / ((before + after) / 2) for edged, (before, after) in zip(self.edged_fps, around, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        ratios = self.ratios
        return {
            "reference_fps": [round(fps, 2) for fps in self.reference_fps],
            "edged_fps": [round(fps, 2) for fps in self.edged_fps],
            "ratios": [round(ratio, 3) for ratio in ratios],
            "median_ratio": round(statistics.median(ratios), 3),
        }


@dataclass(slots=True)
class RunResult:
    """One end-to-end run over its measuring window."""

    name: str
    cameras: int
    seconds: float
    per_camera_fps: dict[str, float]
    latency_ms: list[float] = field(repr=False)
    cpu_seconds: float
    steal_seconds: float
    rss_samples: list[int] = field(repr=False)  # RSS every RSS_SAMPLE_S over the window
    rss_peak: int
    frames_skipped: int
    frames_read: int
    startup_s: float = float("nan")  # from starting the process to its READY=1
    paired: PairedRounds | None = None

    @property
    def fps(self) -> float:
        return sum(self.per_camera_fps.values())

    def percentile(self, q: float) -> float:
        if not self.latency_ms:
            return float("nan")
        ordered = sorted(self.latency_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def cpu_ms_per_frame(self) -> float:
        frames = self.fps * self.seconds
        return 1000 * self.cpu_seconds / frames if frames else float("nan")

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_seconds / self.seconds

    @property
    def steal_percent(self) -> float:
        """Of one core, like cpu_percent: 20 on a 2-core machine means a tenth of it was taken away."""
        return 100 * self.steal_seconds / self.seconds

    @property
    def rss_growth(self) -> float:
        """Mean RSS over the last fifth of the window against the first fifth.

        Not the last sample against the first: RSS swings by several percent within seconds as
        multi-megabyte frame buffers are mapped and unmapped, so two samples measure the swing.
        """
        samples = self.rss_samples
        part = max(1, len(samples) // 5)
        first, last = statistics.fmean(samples[:part]), statistics.fmean(samples[-part:])
        return round(last / first - 1, 4) if first else float("nan")

    @property
    def fairness(self) -> float:
        """Largest relative deviation of a camera's fps from the mean (0.05 = within ±5 %)."""
        rates = list(self.per_camera_fps.values())
        mean = statistics.fmean(rates) if rates else 0.0
        return max(abs(rate - mean) / mean for rate in rates) if mean else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cameras": self.cameras,
            "seconds": round(self.seconds, 2),
            "fps": round(self.fps, 2),
            "per_camera_fps": {k: round(v, 2) for k, v in self.per_camera_fps.items()},
            "latency_ms": {"p50": self.percentile(0.5), "p99": self.percentile(0.99), "samples": len(self.latency_ms)},
            "cpu_ms_per_frame": round(self.cpu_ms_per_frame, 2),
            "cpu_percent": round(self.cpu_percent, 1),
            "steal_percent": round(self.steal_percent, 1),
            "rss_mb": {
                "start": round(self.rss_samples[0] / 2**20, 1),
                "end": round(self.rss_samples[-1] / 2**20, 1),
                "min": round(min(self.rss_samples) / 2**20, 1),
                "max": round(max(self.rss_samples) / 2**20, 1),
                "peak": round(self.rss_peak / 2**20, 1),
            },
            "rss_growth": self.rss_growth,
            "frames_read": self.frames_read,
            "frames_skipped": self.frames_skipped,
            "startup_s": round(self.startup_s, 2),
            "fairness": round(self.fairness, 4),
        } | ({"paired": self.paired.to_dict()} if self.paired else {})


def _ends_with_the_bench() -> None:
    """In each child the bench starts, before it runs: the kernel kills it when the bench dies, however it dies.

    A bench killed outright (SIGKILL, the OOM killer) runs no clean-up of its own, and in a paired run it may
    die while edged is frozen (SIGSTOP): that edged would stay stopped for good, holding its memory, and the
    private broker and the subscriber would run on. SIGKILL, because a stopped process acts on nothing else.
    (Strictly, when the thread that started the child ends: each is started, and waited for, by the bench's
    main thread.)
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@contextlib.contextmanager
def broker(host: str | None, port: int | None) -> Iterator[tuple[str, int]]:
    """The given broker, or a private mosquitto on a free local port so no other traffic disturbs it."""
    if host is not None and port is not None:
        yield host, port
        return
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        raise BenchmarkError("no mosquitto on this machine: install it or pass --mqtt HOST:PORT")
    process, free = _start_mosquitto(binary)
    try:
        yield "127.0.0.1", free
    finally:
        process.terminate()
        process.wait(10)


def _start_mosquitto(binary: str, attempts: int = 3) -> tuple[subprocess.Popen[bytes], int]:
    """Another program may take the free port between probing and binding it: then try another."""
    problem = ""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = int(probe.getsockname()[1])
        with tempfile.TemporaryFile() as log:
            # preexec_fn is safe here: one system call through a function looked up before the fork, no lock.
            process = subprocess.Popen(
                [binary, "-p", str(free)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=_ends_with_the_bench,  # noqa: PLW1509
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and process.poll() is None:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", free), timeout=0.2):
                    if process.poll() is None:  # ours, not another program that took the port
                        return process, free
                time.sleep(0.05)  # blocking-ok: the benchmark's own set-up, no event loop runs here
            process.kill()
            process.wait()
            log.seek(0)
            lines = log.read().decode(errors="replace").strip().splitlines()
            problem = lines[-1] if lines else problem
    raise BenchmarkError(
        f"the private mosquitto did not start ({problem or 'no error printed'}): pass --mqtt HOST:PORT of a broker"
    )


def write_config(
    folder: Path, model: Path, cameras: dict[str, CameraSpec], host: str, port: int, requests: int | None = None
) -> Path:
    lines = [
        f"mqtt:\n  host: {host}\n  port: {port}\n  topic_prefix: {PREFIX}\n  client_id: edged-bench",
        "stats:\n  interval: 5",
        f"model:\n  path: {model}" + (f"\n  requests: {requests}" if requests else ""),
        "cameras:",
    ]
    for name, camera in cameras.items():
        lines.append(f"  {name}:\n    url: {camera.url}\n    realtime: {str(camera.realtime).lower()}")
        if camera.fps:
            lines.append(f"    fps: {camera.fps}")
    path = folder / "edged-bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(
    name: str,
    model: Path,
    cameras: dict[str, CameraSpec],
    seconds: float,
    mqtt: tuple[str, int],
    *,
    warmup: float = WARMUP_S,
    expect_messages: bool = True,
    requests: int | None = None,
    pairing: Pairing | None = None,
) -> RunResult:
    """`expect_messages=False` for cameras that cannot deliver (the idle run): measure without waiting.
    With `pairing`, edged is measured again after the run, interleaved with a reference (see Pairing)."""
    return asyncio.run(_run(name, model, cameras, seconds, mqtt, warmup, expect_messages, requests, pairing))


async def _run(
    name: str,
    model: Path,
    cameras: dict[str, CameraSpec],
    seconds: float,
    mqtt: tuple[str, int],
    warmup: float,
    expect_messages: bool,
    requests: int | None,
    pairing: Pairing | None,
) -> RunResult:
    host, port = mqtt
    with tempfile.TemporaryDirectory(prefix="edged-bench-") as folder:
        config = write_config(Path(folder), model, cameras, host, port, requests)
        log = Path(folder) / "edged.log"
        async with (
            _subscriber(host, port, Path(folder) / "received.txt") as received,
            _readiness() as readiness,
        ):
            launched = time.monotonic()
            with log.open("wb") as stderr:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "edged.cli", "--log-level", "warning", "run", "-c", str(config),
                    stderr=stderr, env={**os.environ, "NOTIFY_SOCKET": readiness.address},
                    preexec_fn=_ends_with_the_bench,
                )  # fmt: skip
            try:
                # Not a moment earlier: an idle window that began during the imports and the compile measured those.
                await readiness.wait(process)
                startup_s = time.monotonic() - launched
                if expect_messages:
                    await _until_every_camera_publishes(received, cameras, process)
                await asyncio.sleep(warmup)
                start, start_mark = _sample(process.pid), received.mark()
                rss = await _rss_over(process.pid, seconds)
                end, end_mark = _sample(process.pid), received.mark()
                peak = _peak_rss(process.pid)
                slices = await _interleaved(process, received, pairing) if pairing else None
            except BenchmarkError as error:
                raise BenchmarkError(f"{error}; edged's last words: {_last_line(log)}") from None
            finally:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(process.wait(), 15)
            await asyncio.sleep(0.3)  # the final stats message, published on the way out
        messages = received.read()
        window, final_stats = _detections(messages, start_mark, end_mark), _last_stats(messages)
        paired = _paired_rounds(messages, slices) if slices else None
    result = _result(name, cameras, window, start, end, [start.rss, *rss, end.rss], peak, final_stats)
    result.startup_s = startup_s
    result.paired = paired
    return result


@dataclass(frozen=True, slots=True)
class _EdgedSlice:
    start: int  # marks in the subscriber's stream (see _Received.mark)
    end: int
    seconds: float


async def _interleaved(
    process: asyncio.subprocess.Process, received: _Received, pairing: Pairing
) -> tuple[list[float], list[_EdgedSlice]]:
    """The reference's fps in each of its slices and where each of edged's lies in the messages received
    (counted afterwards, so that nothing is parsed while edged is measured)."""
    reference: list[float] = []
    edged: list[_EdgedSlice] = []
    for round_ in range(pairing.rounds + 1):
        _freeze(process)
        try:
            reference.append(await asyncio.to_thread(pairing.reference, pairing.seconds))
        finally:
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile: the next `_freeze` says so, if any
                process.send_signal(signal.SIGCONT)
        if round_ == pairing.rounds:
            break
        await asyncio.sleep(RESUME_S)
        began, start = time.monotonic(), received.mark()
        await asyncio.sleep(pairing.seconds)
        edged.append(_EdgedSlice(start, received.mark(), time.monotonic() - began))
    return reference, edged


def _freeze(process: asyncio.subprocess.Process) -> None:
    """SIGSTOP edged, or say it has gone (before each reference slice: an edged that died in a slice is caught)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGSTOP)
            return
    code = f" with code {process.returncode}" if process.returncode is not None else ""  # None: not reaped yet
    raise BenchmarkError(f"edged exited{code} during the paired rounds")


def _paired_rounds(received: bytes, slices: tuple[list[float], list[_EdgedSlice]]) -> PairedRounds:
    reference, edged = slices
    return PairedRounds(reference, [len(_detections(received, s.start, s.end)) / s.seconds for s in edged])


class _Received:
    """What the subscriber wrote: one line per message, `topic payload`, appended as it arrives.

    The subscriber is `mosquitto_sub`, a C client that only appends to a file, and nothing is parsed
    while edged is measured: the harness takes as little as it can of the CPU edged is measured on
    (an aiomqtt subscriber parsing each message took 4-5 % of a core at 240 messages/s; see
    docs/performance-notes.md, section j). Messages still really travel through the broker to a client.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._scanned = 0  # bytes already searched for cameras
        self.cameras_seen: set[str] = set()

    def mark(self) -> int:
        """A point in the stream of messages: everything received so far lies before it."""
        return self._path.stat().st_size

    def scan_cameras(self) -> set[str]:
        """Cameras that have published detections so far, from the topics alone (cheap: no JSON)."""
        with self._path.open("rb") as file:
            file.seek(self._scanned)
            chunk = file.read()
        complete = chunk.rfind(b"\n") + 1
        self._scanned += complete
        for line in chunk[:complete].splitlines():
            topic = line.split(b" ", 1)[0].decode()
            if topic.endswith("/detections"):
                self.cameras_seen.add(topic.split("/")[-2])
        return self.cameras_seen

    def read(self) -> bytes:
        """Everything received so far, to be looked into between marks (`_detections`) once edged is measured."""
        return self._path.read_bytes()


def _detections(received: bytes, start: int, end: int) -> list[tuple[str, float]]:
    """(camera, latency_ms) of the detection messages whose lines end between two marks."""
    first = received.rfind(b"\n", 0, start) + 1  # a line cut by the first mark ended after it: it counts
    last = received.rfind(b"\n", 0, end) + 1  # one cut by the last mark ends after it: it does not
    window = []
    for line in received[first:last].splitlines():
        topic, _, payload = line.partition(b" ")
        if topic.endswith(b"/detections"):
            body = json.loads(payload)
            window.append((body["camera"], body["latency_ms"]))
    return window


def _last_stats(received: bytes) -> dict[str, Any]:
    """The last stats message (edged publishes one on its way out)."""
    stats_topic = f"{PREFIX}/stats".encode()
    for line in reversed(received.splitlines()):
        topic, _, payload = line.partition(b" ")
        if topic == stats_topic:
            body: dict[str, Any] = json.loads(payload)
            return body
    return {}


@contextlib.asynccontextmanager
async def _subscriber(host: str, port: int, path: Path) -> AsyncIterator[_Received]:
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        raise BenchmarkError("no mosquitto_sub on this machine: install the mosquitto-clients package")
    topics = [f"{PREFIX}/+/detections", f"{PREFIX}/stats"]
    with path.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            binary, "-h", host, "-p", str(port), "-i", "edged-bench-subscriber", "-v",
            *(part for topic in topics for part in ("-t", topic)),
            stdout=output, stderr=subprocess.PIPE, preexec_fn=_ends_with_the_bench,
        )  # fmt: skip
    try:
        await _until_subscribed(process, host, port)
        yield _Received(path)
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def _until_subscribed(process: asyncio.subprocess.Process, host: str, port: int) -> None:
    """mosquitto_sub prints nothing when it has subscribed: give it the time a local broker needs, and
    make a subscriber that could not connect say why instead of leaving the run to wait for messages."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), SUBSCRIBE_S)
    if process.returncode is not None:
        assert process.stderr is not None
        problem = (await process.stderr.read()).decode(errors="replace").strip() or f"exit code {process.returncode}"
        raise BenchmarkError(f"the bench's subscriber could not subscribe at {host}:{port}: {problem}")


class _Readiness:
    """The bench in systemd's place for one `edged run`: its notify socket, and READY=1 when edged says it."""

    def __init__(self) -> None:
        # An abstract address (no file, no path length limit), as systemd's own `@...` notify sockets.
        name = f"edged-bench-{os.getpid()}-{os.urandom(4).hex()}"
        self.address = f"@{name}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.bind(f"\0{name}")
        self._socket.setblocking(False)
        self._ready = asyncio.Event()
        # Read every notification as it comes (STATUS= lines follow every few seconds): a full queue would make
        # edged drop them and warn.
        asyncio.get_running_loop().add_reader(self._socket.fileno(), self._receive)

    def _receive(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                if b"READY=1" in self._socket.recv(4096).splitlines():
                    self._ready.set()

    async def wait(self, process: asyncio.subprocess.Process) -> None:
        ready = asyncio.ensure_future(self._ready.wait())
        exited = asyncio.ensure_future(process.wait())
        try:
            await asyncio.wait({ready, exited}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if self._ready.is_set():
            return  # an edged that dies right after is reported by what waits for it next
        if process.returncode is not None:
            raise BenchmarkError(f"edged exited with code {process.returncode} before it was ready")
        raise BenchmarkError(f"edged did not say READY=1 within {READY_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._socket.fileno())
        self._socket.close()


@contextlib.asynccontextmanager
async def _readiness() -> AsyncIterator[_Readiness]:
    readiness = _Readiness()
    try:
        yield readiness
    finally:
        readiness.close()


async def _until_every_camera_publishes(
    received: _Received, cameras: dict[str, CameraSpec], process: asyncio.subprocess.Process, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while received.scan_cameras() != set(cameras):
        if process.returncode is not None:
            raise BenchmarkError(f"edged exited with code {process.returncode} before every camera published")
        if time.monotonic() > deadline:
            raise BenchmarkError("not every camera published within 120 s")
        await asyncio.sleep(0.1)


@dataclass(frozen=True, slots=True)
class _Sample:
    wall: float
    cpu: float
    rss: int
    steal: float  # CPU seconds the hypervisor gave other guests instead of this machine, all cores


def _sample(pid: int) -> _Sample:
    """Wall clock, CPU seconds (all threads, user + system) and resident memory of a process, and the steal."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (after the comm field)
    return _Sample(time.monotonic(), cpu, _status_kb(pid, "VmRSS") * 1024, _steal_seconds())


def _steal_seconds() -> float:
    """On a shared virtual machine the cores are not always ours: the steal column of /proc/stat counts the
    time they were not (0 on bare metal). A run during which it grows measured a slower machine."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
    return int(fields[8]) / CLOCK_TICKS if len(fields) > 8 else 0.0


async def _rss_over(pid: int, seconds: float) -> list[int]:
    """Sleep for `seconds`, sampling the process's RSS every RSS_SAMPLE_S meanwhile."""
    samples, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(RSS_SAMPLE_S, left))
        if left > RSS_SAMPLE_S:
            try:
                samples.append(_status_kb(pid, "VmRSS") * 1024)
            except FileNotFoundError:
                raise BenchmarkError("edged exited during the measurement") from None
    return samples


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(nothing)"


def _peak_rss(pid: int) -> int:
    return _status_kb(pid, "VmHWM") * 1024


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _result(
    name: str,
    cameras: dict[str, CameraSpec],
    window: list[tuple[str, float]],
    start: _Sample,
    end: _Sample,
    rss_samples: list[int],
    peak: int,
    stats: dict[str, Any],
) -> RunResult:
    seconds = end.wall - start.wall
    per_camera = {camera: sum(1 for c, _ in window if c == camera) / seconds for camera in cameras}
    camera_stats = stats.get("cameras", {})
    return RunResult(
        name=name,
        cameras=len(cameras),
        seconds=seconds,
        per_camera_fps=per_camera,
        latency_ms=[latency for _, latency in window],
        cpu_seconds=end.cpu - start.cpu,
        steal_seconds=end.steal - start.steal,
        rss_samples=rss_samples,
        rss_peak=peak,
        frames_skipped=sum(int(c.get("frames_skipped", 0)) for c in camera_stats.values()),
        frames_read=sum(int(c.get("frames_read", 0)) for c in camera_stats.values()),
    )
