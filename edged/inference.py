"""One compiled model and its AsyncInferQueue, shared by every camera that uses the model.

Frames arrive already resized to the model's input by their camera thread (measured: cv2.resize
into the input size beats an in-graph resize from 1080p here); the graph itself takes the u8 NHWC
frame and does the layout and type conversion (PrePostProcessor), so nothing else runs in Python.
Completion callbacks run on OpenVINO's threads: they decode there, off the event loop, and hand the
result to the loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import openvino as ov
from openvino.preprocess import PrePostProcessor

from edged.config import ModelConfig
from edged.decode import Decoder, DecoderSettings, Faces, make_decoder, recognise_family
from edged.errors import ModelError
from edged.frame import Frame, Image

log = logging.getLogger("edged.inference")


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
    faces: Faces
    inference_ms: float  # from submission to completion, queueing in OpenVINO included
    error: BaseException | None = None


ResultCallback = Callable[[Result], None]


def read_model(config: ModelConfig, core: ov.Core) -> tuple[ov.Model, ModelInfo]:
    """Read and recognise a model; every way a model file can be unusable raises ModelError."""
    path = config.path
    if not path.with_suffix(".bin").is_file():
        raise ModelError(
            f"model {path}: its weights file {path.with_suffix('.bin').name} is missing: put it beside the .xml"
        )
    try:
        model = core.read_model(str(path))
    except RuntimeError as error:
        raise ModelError(
            f"model {path}: OpenVINO cannot read it ({_first_line(error)}): the files may be corrupt or truncated"
        ) from None
    return model, _inspect(model, path)


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

    def __init__(self, config: ModelConfig, core: ov.Core | None = None) -> None:
        core = core or ov.Core()
        model, self.info = read_model(config, core)
        self.name = self.info.name
        self.input_size = self.info.input_size
        settings = DecoderSettings(self.input_size, config.confidence, tuple(name for name, _ in self.info.outputs))
        self._decoder: Decoder = make_decoder(self.info.family, settings)
        self._output_names = [name for name, _ in self.info.outputs]
        self._compiled = core.compile_model(
            _with_preprocessing(model), config.device, {"PERFORMANCE_HINT": "THROUGHPUT"}
        )
        self._queue = ov.AsyncInferQueue(self._compiled)
        self._queue.set_callback(self._completed)
        self._loop: asyncio.AbstractEventLoop | None = None
        log.info(
            "model %s (%s, input %dx%d) compiled for %s with %d requests in flight",
            self.name,
            self.info.family,
            *self.input_size,
            config.device,
            len(self._queue),
        )

    @property
    def requests(self) -> int:
        return len(self._queue)

    def prepare(self, image: Image) -> Image:
        """Shape a source frame for this model; runs in the camera's thread."""
        if (image.shape[1], image.shape[0]) == self.input_size:
            return image
        return cast(Image, cv2.resize(image, self.input_size, interpolation=cv2.INTER_LINEAR))

    def submit(self, frame: Frame, done: ResultCallback) -> None:
        """Start inference on a frame; `done` runs on the event loop. The caller keeps a request free."""
        self._loop = self._loop or asyncio.get_running_loop()
        # share_inputs: the request reads the frame's own buffer, no copy; the frame stays
        # referenced through userdata until the request completes.
        self._queue.start_async(frame.tensor[None], (frame, done, time.perf_counter()), share_inputs=True)

    def _completed(self, request: ov.InferRequest, userdata: Any) -> None:
        """On an OpenVINO thread: decode here, then hand the result to the event loop."""
        frame, done, started = userdata
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        try:
            outputs = {name: request.get_tensor(name).data for name in self._output_names}
            faces = self._decoder.decode(outputs, [(frame.width, frame.height)])[0]
            result = Result(frame, faces, elapsed_ms)
        except Exception as error:  # a decode failure must reach the loop, not die in OpenVINO's thread
            result = Result(frame, Faces.none(), elapsed_ms, error)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(done, result)

    def detect(self, image: Image) -> Faces:
        """Synchronous detection on one image, for the CLI; not used by the server's hot path."""
        request = self._compiled.create_infer_request()
        request.infer(self.prepare(image)[None], share_inputs=True)
        outputs = {name: request.get_tensor(name).data for name in self._output_names}
        return self._decoder.decode(outputs, [(image.shape[1], image.shape[0])])[0]

    def wait_idle(self) -> None:
        """Block until every request has completed (used from a thread at shutdown)."""
        self._queue.wait_all()


def _with_preprocessing(model: ov.Model) -> ov.Model:
    """Let the graph take u8 NHWC frames as OpenCV delivers them: layout and type conversion in-graph."""
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    return ppp.build()
