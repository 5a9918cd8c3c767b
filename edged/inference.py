"""One compiled model and its AsyncInferQueue, shared by every camera that uses the model.

Frames arrive already resized to the model's input by their camera thread (measured: cv2.resize
into the input size beats an in-graph resize from 1080p here); the graph itself takes the u8 NHWC
frame and does the layout and type conversion (PrePostProcessor), so nothing else runs in Python.
Completion callbacks run on OpenVINO's threads: they decode there, off the event loop, and hand the
results to the loop with `call_soon_threadsafe`, two at a time while inferences wait queued.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from xml.etree import ElementTree

import cv2
import numpy as np
import openvino as ov
from openvino.preprocess import ColorFormat, PrePostProcessor

from edged.decode import Decoder, DecoderSettings, Faces, FrameSize, make_decoder, recognise_family
from edged.errors import ModelError
from edged.frame import BufferPool, Frame, Image
from edged.models import ModelSpec, Preprocessing
from edged.priority import waits_its_turn

log = logging.getLogger("edged.inference")

FULL_SPEED_EXTRA_REQUESTS = 2  # beyond OpenVINO's optimal number, for a model serving a file at full speed

_callback_thread = threading.local()  # OpenVINO's thread that runs completion callbacks (see Engine._completed)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What edged learnt from reading a model file, before compiling it."""

    name: str
    family: str
    input_name: str
    input_size: tuple[int, int]  # (width, height)
    outputs: tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class Result:
    frame: Frame
    model: str
    faces: Faces
    inference_ms: float  # from submission to completion, queueing in OpenVINO included
    error: BaseException | None = None


ResultCallback = Callable[[Result], None]


def read_model(spec: ModelSpec, core: ov.Core) -> tuple[ov.Model, ModelInfo]:
    """Read and recognise a model; every way a model file can be unusable raises ModelError."""
    path = spec.xml
    if not path.with_suffix(".bin").is_file():
        raise ModelError(
            f"model {path}: its weights file {path.with_suffix('.bin').name} is missing: put it beside the .xml"
        )
    for file in (path, path.with_suffix(".bin")):
        _check_readable(file)
    _check_ir_xml(path)
    try:
        model = core.read_model(str(path))
    except RuntimeError as error:
        raise ModelError(
            f"model {path}: OpenVINO cannot read it ({_first_line(error)}): the files may be corrupt or truncated"
        ) from None
    return model, _inspect(model, path)


def check_device(spec: ModelSpec, core: ov.Core) -> None:
    """Refuse a device this machine lacks before anything starts (OpenVINO would only fail at compile time).

    Each device named is asked for its name, as OpenVINO itself would resolve it (`CPU.0`, `GPU` or `GPU.1`,
    `AUTO:GPU,CPU`, `BATCH:CPU(4)`); AUTO needs one of its candidates, the others all of theirs."""
    virtual, _, targets = spec.device.partition(":")
    names = [re.sub(r"\(\d+\)$", "", name.strip()) for name in targets.split(",") if name.strip()]
    candidates = [name for name in names if not name.startswith("-")]  # AUTO:-GPU: anything but GPU
    known = [name for name in candidates if _known_device(core, name)]
    if not _known_device(core, virtual):
        usable = False
    elif virtual == "AUTO" and candidates:
        usable = bool(known)
    else:
        usable = len(known) == len(candidates)
    if not usable:
        raise ModelError(
            f"model {spec.name}: device {spec.device!r} is not available on this machine (OpenVINO sees "
            f"{', '.join(core.available_devices) or 'none'}): set the model's `device` to one of them",
            key="device",
        )


def _known_device(core: ov.Core, name: str) -> bool:
    try:
        core.get_property(name, "FULL_DEVICE_NAME")
    except (RuntimeError, TypeError):  # not a device OpenVINO has here
        return False
    return True


def _check_readable(file: Path) -> None:
    """A model file root put there for root alone: say so, rather than fail on it deeper down."""
    try:
        with file.open("rb"):
            pass
    except OSError as error:
        raise ModelError(
            f"model {file}: cannot read it ({error.strerror}): check that edged may read it (under systemd, the "
            "service's user; see docs/systemd.md)"
        ) from None


def _check_ir_xml(path: Path) -> None:
    """Refuse a broken .xml ourselves: handed one, OpenVINO tries every frontend, and TensorFlow's
    prints C++ parse errors to stderr before OpenVINO's own long message."""
    if path.suffix.lower() != ".xml":
        return
    try:
        # lstrip: IR files written by some tools start with a newline before `<?xml`, which OpenVINO accepts.
        root = ElementTree.fromstring(path.read_bytes().lstrip())
    except ElementTree.ParseError as error:
        raise ModelError(
            f"model {path}: not a valid OpenVINO IR file (XML error: {error}): the file may be corrupt or truncated"
        ) from None
    if root.tag != "net":
        raise ModelError(f"model {path}: not an OpenVINO IR file (root element <{root.tag}>): give an IR model's .xml")


def _inspect(model: ov.Model, path: Path) -> ModelInfo:
    if len(model.inputs) != 1:
        raise ModelError(f"model {path}: has {len(model.inputs)} inputs; edged serves single-image models")
    port = model.inputs[0]
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or shape.is_dynamic or shape[1].get_length() != 3:
        raise ModelError(
            f"model {path}: input {port.get_any_name()} has shape {shape}; edged needs a static [N,3,H,W] image input"
        )
    outputs = tuple(
        (out.get_any_name(), tuple(int(d) for d in out.get_partial_shape().to_shape())) for out in model.outputs
    )
    try:
        family = recognise_family(outputs)
    except ValueError as error:
        raise ModelError(f"model {path}: {error}") from None
    height, width = shape[2].get_length(), shape[3].get_length()
    return ModelInfo(path.stem, family, port.get_any_name(), (width, height), outputs)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith("Exception from")]
    return lines[-1] if lines else type(error).__name__


class Engine:
    """A compiled model with its request pool; frames go in, decoded faces come back on the loop."""

    def __init__(self, spec: ModelSpec, core: ov.Core | None = None, *, throughput_bound: bool = True) -> None:
        """`throughput_bound`: some camera of this model is a file read at full speed (see default_requests)."""
        core = core or ov.Core()
        model, self.info = read_model(spec, core)
        self.name = spec.name
        self.input_size = self.info.input_size
        self._letterbox = spec.preprocessing.resize == "letterbox"
        self._output_names = [name for name, _ in self.info.outputs]
        settings = DecoderSettings(
            self.input_size, spec.confidence, tuple(self._output_names), nms_iou=spec.nms_iou, anchors=spec.anchors
        )
        self._decoder: Decoder = make_decoder(self.info.family, settings)
        graph = _with_preprocessing(model, spec.preprocessing)
        try:
            self._compiled = core.compile_model(graph, spec.device, {"PERFORMANCE_HINT": "THROUGHPUT"})
        except RuntimeError as error:
            raise ModelError(
                f"model {spec.name}: OpenVINO cannot compile it for device {spec.device!r} ({_first_line(error)}): "
                "check the model's `device`",
                key="device",
            ) from None
        requests = spec.requests or default_requests(self._compiled, throughput_bound)
        self._queue = ov.AsyncInferQueue(self._compiled, requests)
        self._queue.set_callback(self._completed)
        # Results on their way to the loop (see _completed), guarded by `_handoff`: OpenVINO may call back on
        # more than one thread.
        self._handoff = threading.Lock()
        self._ready: list[tuple[ResultCallback, Result]] = []
        self._handover_due = False  # the loop has been asked to take `_ready`
        self._out: set[int] = set()  # id() of each frame whose inference runs or waits in OpenVINO's queue
        self._streams = _streams(self._compiled, len(self._queue))
        # The base class's overload takes one Tensor as it is. AsyncInferQueue.start_async, its Python
        # wrapper, first dispatches any input type and looks the idle request up: 85-115 us more of the
        # event loop's CPU per frame, measured (docs/performance-notes.md, section j).
        self._start_async = cast(Any, super(ov.AsyncInferQueue, self._queue)).start_async  # stubs lack it
        self._loop: asyncio.AbstractEventLoop | None = None
        log.info(
            "model %s (%s, input %dx%d, %s) compiled for %s with %d requests in flight",
            self.name,
            self.info.family,
            *self.input_size,
            spec.preprocessing.resize,
            spec.device,
            len(self._queue),
        )

    @property
    def requests(self) -> int:
        return len(self._queue)

    def request_idle(self) -> bool:
        """Whether a request is free right now (submit would not wait for one)."""
        return bool(self._queue.is_ready())

    def preparer(self) -> Callable[[Image], Image]:
        """`prepare` for one camera, writing into reused input buffers: a pool per thread, since a camera
        that abandoned a stalled thread has two for a while."""
        pools = threading.local()
        input_width, input_height = self.input_size
        shape = (input_height, input_width, 3)

        def prepare(image: Image) -> Image:
            if (pool := getattr(pools, "pool", None)) is None:
                pool = pools.pool = BufferPool()
            return self.prepare(image, pool.take(shape))

        return prepare

    def prepare(self, image: Image, out: Image | None = None) -> Image:
        """Shape a source frame for this model (into `out`, whose contents are overwritten, if given)."""
        height, width = image.shape[:2]
        if (width, height) == self.input_size:
            return image
        input_width, input_height = self.input_size
        if out is None:
            out = np.empty((input_height, input_width, 3), np.uint8)
        if not self._letterbox:
            return cast(Image, cv2.resize(image, self.input_size, dst=out, interpolation=cv2.INTER_LINEAR))
        # Keep the aspect ratio, pad at the bottom/right: boxes then map back with a single scale.
        scale = min(input_width / width, input_height / height)
        inner = (min(input_width, round(width * scale)), min(input_height, round(height * scale)))
        out[: inner[1], : inner[0]] = cv2.resize(image, inner, interpolation=cv2.INTER_LINEAR)
        out[inner[1] :, :] = 0
        out[: inner[1], inner[0] :] = 0
        return out

    def _decode_size(self, width: int, height: int) -> FrameSize:
        """The size the decoder scales the model's input back to: the padded frame when letterboxed."""
        if not self._letterbox:
            return width, height
        input_width, input_height = self.input_size
        scale = min(input_width / width, input_height / height)
        return input_width / scale, input_height / scale

    def submit(self, frame: Frame, done: ResultCallback) -> None:
        """Start inference on a frame; `done` runs on the event loop. The caller keeps a request free."""
        self._loop = self._loop or asyncio.get_running_loop()
        # shared_memory: the request reads the frame's own buffer, no copy (it must be C-contiguous for
        # that, and already is but for an odd source, whose copy is then made here). The buffer stays
        # referenced through userdata until the request completes: the request itself does not keep it.
        pixels = np.ascontiguousarray(frame.tensor)
        with self._handoff:  # before the start: its callback may come before start_async returns
            self._out.add(id(frame))  # unique while out: the frame lives in the request's userdata until its callback
        try:
            self._start_async(ov.Tensor(pixels[None], shared_memory=True), (frame, done, time.perf_counter(), pixels))
        except BaseException:
            self.forget(frame)
            raise

    def forget(self, frame: Frame) -> None:
        """The frame's inference was given up on (OpenVINO calls nothing back for one that failed inside it): it no
        longer counts as out, so no result is held for it."""
        with self._handoff:
            self._out.discard(id(frame))

    def _completed(self, request: ov.InferRequest, userdata: Any) -> None:
        """On an OpenVINO thread: decode here, then hand the result to the event loop.

        Waking the loop costs it more than the Python it then runs (docs/performance-notes.md, sections l and t).
        While an inference waits queued behind those the device runs, it starts on the stream this one freed and
        another result is at most one inference away: this one waits to go with it (never more than one result
        waits), and the loop is woken once per two results (from memory, the loop's CPU per frame 0.45-0.60 ->
        0.35-0.42 ms) while every core keeps working. Holding a result while nothing is queued would leave a stream
        idle until the loop refills it (measured: 2-3 % of the cores). Live cameras below the model's capacity
        queue nothing: each result goes over at once.
        """
        if not getattr(_callback_thread, "settled", False):  # once per thread: OpenVINO owns these threads
            _settle_callback_thread()
        frame, done, started, _pixels = userdata
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        try:
            result = Result(frame, self.name, self._decode(request, frame.width, frame.height), elapsed_ms)
        except Exception as error:  # a decode failure must reach the loop, not die in OpenVINO's thread
            result = Result(frame, self.name, Faces.none(), elapsed_ms, error)
        with self._handoff:
            self._out.discard(id(frame))
            self._ready.append((done, result))
            if self._handover_due or (len(self._ready) == 1 and len(self._out) > self._streams):
                return  # asked already, or an inference is queued: the next result, due soon, brings this one along
            self._handover_due = True
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.hand_over)

    def hand_over(self) -> None:
        """On the loop: hand the results that are back to their callbacks. Also called now and then by the
        dispatcher, for a result held for the next one whose inference then failed (OpenVINO calls nothing back)."""
        with self._handoff:
            ready, self._ready = self._ready, []
            self._handover_due = False
        for done, result in ready:
            try:
                done(result)
            except Exception:  # as the loop treats a failing callback: said, and the others still handed over
                log.exception(
                    "model %s: the result of camera %s could not be handed over", self.name, result.frame.camera
                )

    def detect(self, image: Image) -> Faces:
        """Synchronous detection on one image, for the CLI; not used by the server's hot path."""
        request = self._compiled.create_infer_request()
        request.infer(self.prepare(image)[None], share_inputs=True)
        return self._decode(request, image.shape[1], image.shape[0])

    def _decode(self, request: ov.InferRequest, width: int, height: int) -> Faces:
        outputs = {name: request.get_tensor(name).data for name in self._output_names}
        faces = self._decoder.decode(outputs, [self._decode_size(width, height)])[0]
        return faces.clamped(width, height) if self._letterbox else faces


def default_requests(compiled: ov.CompiledModel, throughput_bound: bool) -> int:
    """The requests in flight an engine gets unless its model says: OpenVINO's optimal number, plus two
    (FULL_SPEED_EXTRA_REQUESTS) for a model serving a file at full speed.

    The first extra request is already running while a finished one travels back through the event loop
    to be refilled (files at full speed, 4 x 1080p: 82 vs 71 fps median). The second keeps one inference
    queued behind those the device runs, so a result can wait for the next one without leaving a stream
    idle (see Engine._completed). Live cameras get neither: every frame would wait longer for no throughput
    (Little's law; 4 x 15 fps live: p50 150 vs 190 ms at the same fps on a machine that could not keep up).
    """
    optimal = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    return optimal + FULL_SPEED_EXTRA_REQUESTS if throughput_bound else optimal


def _streams(compiled: ov.CompiledModel, requests: int) -> int:
    """How many inferences the device runs at once (the rest wait in its queue)."""
    try:
        streams = int(compiled.get_property("NUM_STREAMS"))
    except (RuntimeError, TypeError, ValueError):  # a device that does not say: never hold a result back
        return requests
    return streams if streams > 0 else requests


def _settle_callback_thread() -> None:
    """Make OpenVINO's callback thread keep its Python thread state, and let it wait its turn when woken.

    The binding (pybind11) gives a thread without a Python thread state a new one for each callback and
    deletes it on return: an allocation, a free and a few system calls per frame, and the thread's
    `threading.local` data went with it, so what was meant to run once per thread ran once per frame. One
    more hold on the state, never released, keeps it for the thread's life (its engine's: as long as edged
    runs). Measured from memory, interleaved with and without: edged's CPU per frame 14.0 against 14.3-14.7 ms,
    and 0.956-0.968 of the inference ceiling against 0.930-0.935 (docs/performance-notes.md, section s).
    """
    ctypes.pythonapi.PyGILState_Ensure()
    waits_its_turn()
    _callback_thread.settled = True


def _with_preprocessing(model: ov.Model, preprocessing: Preprocessing) -> ov.Model:
    """Let the graph take u8 NHWC BGR frames as OpenCV delivers them and do the rest of the conversion.

    Layout, type, colour order and normalisation run inside the compiled graph, fused with the
    first layer, instead of as separate numpy passes per frame.
    """
    ppp = PrePostProcessor(model)
    tensor = ppp.input().tensor()
    tensor.set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    steps = ppp.input().preprocess()
    if preprocessing.colour_order == "RGB":
        steps.convert_color(ColorFormat.RGB)
    if preprocessing.mean != (0.0, 0.0, 0.0) or preprocessing.scale != (1.0, 1.0, 1.0):
        steps.convert_element_type(ov.Type.f32).mean(list(preprocessing.mean)).scale(list(preprocessing.scale))
    return ppp.build()
