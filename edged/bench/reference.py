"""Reference throughput figures: what this machine allows before edged's own pipeline is involved.

Four measurements, each bounded by seconds or frames, each returning plain figures:

- `benchmark_app_fps`: OpenVINO's own `benchmark_app -hint throughput` (the yardstick everyone quotes);
- `InferenceCeiling`: the model alone through edged's settings (THROUGHPUT hint, AsyncInferQueue,
  u8 NHWC input converted inside the graph), fed one constant, already resized frame;
- `decode_ceiling`: decoding only, one thread per stream as edged's readers do;
- `plain_loop`: the hand-written baseline (read, resize, synchronous infer, parse), single thread.

Used by `edged bench` and by docs/performance-notes.md. Nothing here is on the server's frame path.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import cv2
import numpy as np
import openvino as ov
from numpy.typing import NDArray

from edged.decode import Decoder, DecoderSettings, describe_outputs, make_decoder, recognise_family

Frame = NDArray[np.uint8]
Frames = Generator[Frame, None, None]
PathLike = str | Path

#: How frames are decoded. "opencv": cv2.VideoCapture, FFmpeg backend, `read()` (the issue's reference).
#: "edged": edged's own reader for files (edged.sources.StreamSource: PyAV, swscale into reused buffers).
#: "pyav": PyAV, frame threading, `to_ndarray(format="bgr24")`. All three give identical pixels.
#: "pyav-skip-loop-filter": PyAV with H.264's deblocking skipped: less decode work, but the
#: pixels (and the seed model's detections) change; see docs/performance-notes.md.
DecodeBackend = Literal["opencv", "edged", "pyav", "pyav-skip-loop-filter"]


class BenchmarkError(RuntimeError):
    """A reference measurement could not be taken (tool missing, output not understood, bad input)."""


@dataclass(frozen=True, slots=True)
class Throughput:
    """Frames processed in a measured interval.

    `seconds` is wall-clock time; `cpu_seconds` is the user + system CPU time of this whole process
    (all its threads, OpenVINO's included) over the same interval, so `cpu_seconds / seconds` is how
    many cores it kept busy.
    """

    frames: int
    seconds: float
    cpu_seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_frame(self) -> float:
        """CPU time spent per frame: unlike fps, barely affected by other load on the machine."""
        return 1000 * self.cpu_seconds / self.frames if self.frames else 0.0

    @property
    def cores_busy(self) -> float:
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "fps": self.fps,
            "frames": self.frames,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "cpu_ms_per_frame": self.cpu_ms_per_frame,
        }


@dataclass(frozen=True, slots=True)
class ModelInput:
    """The (single) image input of a model: name and spatial size, read from the model itself."""

    name: str
    width: int
    height: int


class _Stopwatch:
    """Wall and process CPU clocks started together."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self, frames: int) -> Throughput:
        return Throughput(frames, time.perf_counter() - self._wall, time.process_time() - self._cpu)


# --- benchmark_app ------------------------------------------------------------------------------

_THROUGHPUT_LINE = re.compile(r"Throughput:\s*([0-9]+(?:\.[0-9]+)?)\s*FPS")


def benchmark_app_fps(model_xml: PathLike, seconds: int, device: str = "CPU") -> float:
    """Throughput reported by the `benchmark_app` shipped with the installed openvino wheel.

    Runs `benchmark_app -m MODEL -d DEVICE -hint throughput -t SECONDS` through this interpreter
    (so it is the wheel's own copy, whatever PATH says) and parses its "Throughput: N FPS" line.
    """
    if seconds < 1:
        raise BenchmarkError(f"benchmark_app takes whole seconds >= 1, got {seconds}")
    command = [
        sys.executable, "-c", "from openvino.tools.benchmark.main import main; main()",
        "-m", str(model_xml), "-d", device, "-hint", "throughput", "-t", str(seconds),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=False)
    except subprocess.TimeoutExpired as error:
        raise BenchmarkError(f"benchmark_app did not finish within {seconds + 120} s") from error
    match = _THROUGHPUT_LINE.search(done.stdout)
    if match is None:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
        raise BenchmarkError(
            f"no 'Throughput: N FPS' line in benchmark_app's output (exit code {done.returncode}):\n{tail}"
        )
    return float(match.group(1))


# --- the model through edged's settings ---------------------------------------------------------


def model_input(model: ov.Model) -> ModelInput:
    """Name and size of a model's image input, which must be static NCHW with 3 channels."""
    if len(model.inputs) != 1:
        raise BenchmarkError(f"expected a model with one input, got {len(model.inputs)}")
    port = model.inputs[0]
    shape = port.get_partial_shape()
    if shape.is_dynamic or len(shape) != 4 or shape[1].get_length() != 3:
        raise BenchmarkError(f"expected a static N,3,H,W input, got {shape}")
    return ModelInput(port.any_name, width=shape[3].get_length(), height=shape[2].get_length())


def prepare_model(
    core: ov.Core, model_xml: PathLike, *, batch: int = 1, source_size: tuple[int, int] | None = None
) -> tuple[ov.Model, ModelInput]:
    """Read a model and give it edged's input: u8 NHWC (BGR, as OpenCV decodes) of `batch` images.

    Without `source_size` the input must already have the model's size (resize done by the caller);
    with `source_size=(width, height)` the graph itself resizes (bilinear) from that size.
    Returns the model and its *original* input size (the size frames are resized to).
    """
    model = core.read_model(model_xml)
    size = model_input(model)
    if batch != 1:
        unpin_batch(model)
        model.reshape({size.name: [batch, 3, size.height, size.width]})
    ppp = ov.preprocess.PrePostProcessor(model)
    tensor = ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    if source_size is not None:
        tensor.set_spatial_static_shape(source_size[1], source_size[0])
        ppp.input().preprocess().resize(ov.preprocess.ResizeAlgorithm.RESIZE_LINEAR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    return ppp.build(), size


def unpin_batch(model: ov.Model) -> int:
    """Let a model take any batch: rewrite Reshape targets that hard-code batch 1.

    Old converted IRs (the seed model's `mbox_conf_reshape`, target [1, 10112, 2]) pin the batch in
    a constant; such a target becomes [0, ...] with special_zero (0 = "keep this dimension").
    Returns how many Reshapes were rewritten.
    """
    rewritten = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Reshape" or op.get_attributes()["special_zero"]:
            continue
        target = op.input_value(1).get_node()
        dims = target.get_data().tolist() if target.get_type_name() == "Constant" else []
        if not dims or dims[0] != 1:
            continue
        keep_batch = ov.opset13.constant(np.array([0, *dims[1:]], np.int64))
        op.output(0).replace(ov.opset13.reshape(op.input_value(0), keep_batch, special_zero=True).output(0))
        rewritten += 1
    model.validate_nodes_and_infer_types()
    return rewritten


def compile_for_throughput(
    core: ov.Core, model: ov.Model, device: str = "CPU", config: dict[str, Any] | None = None
) -> ov.CompiledModel:
    """Compile as edged does: PERFORMANCE_HINT THROUGHPUT (plus any extra `config`)."""
    return core.compile_model(model, device, {"PERFORMANCE_HINT": "THROUGHPUT", **(config or {})})


def optimal_requests(compiled: ov.CompiledModel) -> int:
    return int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


class InferenceCeiling:
    """The model alone, compiled once and ready to be measured again and again (warm after the first
    inference of each request, which is slow).

    `requests` in flight in one AsyncInferQueue (default: the compiled model's
    OPTIMAL_NUMBER_OF_INFER_REQUESTS); `batch` images per request (the model is reshaped);
    `device` may be e.g. "BATCH:CPU(4)" for OpenVINO's automatic batching; `config` adds or
    overrides compile properties (e.g. {"NUM_STREAMS": 1}); with `source_size=(width, height)` the
    constant frame has that size and the graph resizes it (PrePostProcessor, bilinear).
    Frames counted are images, i.e. requests completed x batch.
    """

    def __init__(
        self,
        model_xml: PathLike,
        *,
        requests: int | None = None,
        batch: int = 1,
        device: str = "CPU",
        config: dict[str, Any] | None = None,
        source_size: tuple[int, int] | None = None,
    ) -> None:
        core = ov.Core()
        model, size = prepare_model(core, model_xml, batch=batch, source_size=source_size)
        compiled = compile_for_throughput(core, model, device, config)
        self._queue = ov.AsyncInferQueue(compiled, requests or optimal_requests(compiled))
        self._batch = batch
        width, height = source_size or (size.width, size.height)
        frame = ov.Tensor(np.zeros((batch, height, width, 3), np.uint8))
        for request in self._queue:
            request.set_input_tensor(frame)
        _run_queue(self._queue, len(self._queue))  # warm-up: the first inference of each request is slow

    def measure(self, seconds: float) -> Throughput:
        watch = _Stopwatch()
        completed = _run_queue(self._queue, seconds=seconds)
        return watch.stop(completed * self._batch)


def _run_queue(queue: ov.AsyncInferQueue, count: int | None = None, seconds: float | None = None) -> int:
    """Start inferences (inputs already set) until `count` or `seconds`; wait for all; return how many."""
    deadline = time.perf_counter() + seconds if seconds is not None else math.inf
    started = 0
    while (count is None or started < count) and time.perf_counter() < deadline:
        queue.start_async()
        started += 1
    queue.wait_all()
    return started


# --- decoding -----------------------------------------------------------------------------------


def open_capture(path: PathLike, threads: int = 0) -> cv2.VideoCapture:
    """OpenCV capture with the FFmpeg backend; `threads` > 0 sets its decoder threads."""
    params = [cv2.CAP_PROP_N_THREADS, threads] if threads > 0 else []
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        raise BenchmarkError(f"OpenCV/FFmpeg cannot open {path}")
    return capture


def frames_of(path: PathLike, backend: DecodeBackend = "opencv", threads: int = 0) -> Frames:
    """Decoded BGR frames of one file, forever (reopened at its end).

    `threads` is the decoder's thread count per stream; 0 keeps the library's default (one per
    core, for both OpenCV and PyAV). OpenCV frames reuse one buffer: copy one to keep it.
    """
    if backend == "opencv":
        return _looped(path, lambda file: _opencv_once(file, threads))
    if backend == "edged":
        return _looped(path, _edged_once)
    skip = backend == "pyav-skip-loop-filter"
    return _looped(path, lambda file: _pyav_once(file, threads, skip))


def _looped(path: PathLike, once: Callable[[PathLike], Frames]) -> Frames:
    while True:
        decoded = 0
        for frame in once(path):
            decoded += 1
            yield frame
        if decoded == 0:
            raise BenchmarkError(f"{path} has no decodable frame")


def _opencv_once(path: PathLike, threads: int) -> Frames:
    capture = open_capture(path, threads)
    buffer: Frame | None = None
    try:
        while True:
            ok, image = capture.read(buffer)
            if not ok:
                return
            buffer = cast(Frame, image)
            yield buffer
    finally:
        capture.release()


def _edged_once(path: PathLike) -> Frames:
    from edged.config import CameraConfig
    from edged.sources import StreamSource

    source = StreamSource("bench", CameraConfig(url=str(path)))
    try:
        while source.grab():
            yield source.retrieve()
    finally:
        source.release()


def _pyav_once(path: PathLike, threads: int, skip_loop_filter: bool) -> Frames:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads; PyAV's default is slice threads only
        stream.codec_context.thread_count = threads
        if skip_loop_filter:
            stream.codec_context.options = {"skip_loop_filter": "all"}
        for frame in container.decode(stream):
            yield cast(Frame, frame.to_ndarray(format="bgr24"))


def decode_ceiling(
    video_paths: Sequence[PathLike],
    *,
    seconds: float | None = None,
    frames: int | None = None,
    backend: DecodeBackend = "opencv",
    threads: int = 0,
) -> Throughput:
    """Decode-only frames per second of all streams together, one reader thread per stream.

    Stops after `seconds`, or once `frames` frames (total, shared evenly among streams) have been
    decoded, whichever comes first; at least one limit is required. Files are looped at their end.
    `threads`: decoder threads per stream (0: the library's default, one per core).
    """
    if not video_paths or (seconds is None and frames is None):
        raise BenchmarkError("decode_ceiling needs at least one video and a limit (seconds or frames)")
    for path in video_paths:  # errors surface here rather than in a thread
        _drain(frames_of(path, backend, threads), 1, math.inf)
    quotas = _split(frames, len(video_paths))
    counts = [0] * len(video_paths)
    errors: list[BaseException] = []

    def read(index: int, deadline: float) -> None:
        try:
            counts[index] = _drain(frames_of(video_paths[index], backend, threads), quotas[index], deadline)
        except BaseException as error:
            errors.append(error)

    watch = _Stopwatch()
    deadline = time.perf_counter() + seconds if seconds is not None else math.inf
    workers = [threading.Thread(target=read, args=(i, deadline)) for i in range(len(video_paths))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise BenchmarkError(f"a decode thread failed: {errors[0]!r}") from errors[0]
    return watch.stop(sum(counts))


def _split(frames: int | None, streams: int) -> list[float]:
    """Per-stream frame quotas: `frames` shared evenly, or no limit."""
    if frames is None:
        return [math.inf] * streams
    return [float(frames // streams + (i < frames % streams)) for i in range(streams)]


def _drain(source: Frames, quota: float, deadline: float) -> int:
    count = 0
    with closing(source):
        for _ in source:
            count += 1
            if count >= quota or time.perf_counter() >= deadline:
                break
    return count


# --- the plain loop -----------------------------------------------------------------------------


def plain_loop(model_xml: PathLike, video_paths: Sequence[PathLike], frames: int) -> Throughput:
    """The baseline: one thread, streams in round robin, read -> cv2.resize -> request.infer -> decode.

    The model gets the same u8 NHWC input as in edged but is compiled for LATENCY (one request in
    flight, so it may use every core); outputs are decoded into faces by edged's own decoder for
    the model's family (SSD, SSH), at confidence 0.5.
    """
    if not video_paths or frames < 1:
        raise BenchmarkError("plain_loop needs at least one video and one frame")
    core = ov.Core()
    model, size = prepare_model(core, model_xml)
    compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    decoder, output_names = _decoder_for(compiled, size)
    request = compiled.create_infer_request()
    with ExitStack() as stack:
        sources = [stack.enter_context(closing(frames_of(path))) for path in video_paths]
        resized = np.empty((1, size.height, size.width, 3), np.uint8)
        request.set_input_tensor(ov.Tensor(resized, shared_memory=True))
        request.infer()  # warm-up
        watch = _Stopwatch()
        for index in range(frames):
            frame = next(sources[index % len(sources)])
            cv2.resize(frame, (size.width, size.height), dst=resized[0], interpolation=cv2.INTER_LINEAR)
            request.infer()
            outputs = {name: request.get_tensor(name).data for name in output_names}
            decoder.decode(outputs, [(frame.shape[1], frame.shape[0])])
        return watch.stop(frames)


def _decoder_for(compiled: ov.CompiledModel, size: ModelInput) -> tuple[Decoder, tuple[str, ...]]:
    outputs = describe_outputs(compiled)
    names = tuple(name for name, _ in outputs)
    settings = DecoderSettings((size.width, size.height), confidence=0.5, output_names=names)
    return make_decoder(recognise_family(outputs), settings), names
