"""Which decoder family a model belongs to, told from its outputs alone.

A family is registered here once: how to recognise its outputs, how to describe them in
an error, and how to build its decoder. Adding a family touches only this package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edged.decode.base import Decoder, FrameSize
from edged.decode.ssd import SsdDecoder
from edged.decode.ssh import BBOX_NAME, CLS_NAME, DEFAULT_NMS_IOU, SSH_ANCHORS, AnchorConfig, SshDecoder

Shape = tuple[int | None, ...]  # None: a dynamic dimension
ModelOutput = tuple[str, Shape]


@dataclass(frozen=True, slots=True)
class DecoderSettings:
    """What any family's decoder may need; each family reads the fields it uses."""

    input_size: FrameSize  # (width, height) the model takes
    confidence: float
    output_names: tuple[str, ...] = ()  # the model's outputs; SSD decodes the only one
    nms_iou: float | None = None  # None: the family's default
    anchors: AnchorConfig | None = None  # None: the family's default


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    expects: str  # the outputs it recognises, for error messages
    matches: Callable[[Sequence[ModelOutput]], bool]
    build: Callable[[DecoderSettings], Decoder]


class UnknownModelFamily(ValueError):
    """The outputs match no supported family; the message says what was found and expected."""

    def __init__(self, outputs: Sequence[ModelOutput]) -> None:
        found = ", ".join(f"{name} {_format_shape(shape)}" for name, shape in outputs) or "no outputs"
        supported = "; ".join(f"{family.name}: {family.expects}" for family in FAMILIES)
        super().__init__(f"unrecognised model outputs: {found}. Supported families: {supported}")


def recognise_family(outputs: Sequence[ModelOutput]) -> str:
    """The name of the family whose output contract `outputs` (name, shape) satisfy."""
    for family in FAMILIES:
        if family.matches(outputs):
            return family.name
    raise UnknownModelFamily(outputs)


def family_named(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown decoder family {name!r}; supported: {', '.join(family_names())}")


def family_names() -> tuple[str, ...]:
    return tuple(family.name for family in FAMILIES)


def describe_outputs(model: Any) -> list[ModelOutput]:
    """(name, shape) of each output of an `openvino.Model` or `CompiledModel`."""
    described = []
    for output in model.outputs:
        # A graph built in code may leave an output unnamed; its node still has a name.
        name = output.get_any_name() if output.get_names() else output.get_node().get_friendly_name()
        shape = tuple(d.get_length() if d.is_static else None for d in output.get_partial_shape())
        described.append((name, shape))
    return described


def _format_shape(shape: Shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _is_ssd(outputs: Sequence[ModelOutput]) -> bool:
    if len(outputs) != 1:
        return False
    shape = outputs[0][1]
    # DetectionOutput keeps [1, 1, N, 7] whatever the batch: image_id says whose row it is.
    return len(shape) == 4 and shape[0] == 1 and shape[1] == 1 and shape[3] == 7


def _is_ssh(outputs: Sequence[ModelOutput]) -> bool:
    shapes = dict(outputs)
    expected = {name.format(stride=s) for s in SSH_ANCHORS.strides for name in (CLS_NAME, BBOX_NAME)}
    if len(outputs) != len(expected) or set(shapes) != expected:
        return False
    for stride in SSH_ANCHORS.strides:
        cls = shapes[CLS_NAME.format(stride=stride)]
        bbox = shapes[BBOX_NAME.format(stride=stride)]
        per_cell = SSH_ANCHORS.anchors_per_cell(stride)
        if len(cls) != 4 or len(bbox) != 4 or cls[1] != 2 * per_cell or bbox[1] != 4 * per_cell:
            return False
        if cls[0] != bbox[0] or cls[2:] != bbox[2:]:
            return False
    return True


def _build_ssd(settings: DecoderSettings) -> Decoder:
    if len(settings.output_names) != 1:
        raise ValueError(f"an SSD model has exactly one output, got {settings.output_names}")
    return SsdDecoder(settings.output_names[0], settings.confidence)


def _build_ssh(settings: DecoderSettings) -> Decoder:
    decoder = SshDecoder(
        settings.input_size,
        settings.confidence,
        DEFAULT_NMS_IOU if settings.nms_iou is None else settings.nms_iou,
        anchors=settings.anchors or SSH_ANCHORS,
    )
    # Empty: trust the default names; otherwise they must be the ones the decoder reads.
    if settings.output_names and set(settings.output_names) != set(decoder.output_names):
        raise ValueError(f"SSH outputs must be {decoder.output_names}, got {settings.output_names}")
    return decoder


FAMILIES: tuple[Family, ...] = (
    Family("ssd", "one output [1,1,N,7] (DetectionOutput rows)", _is_ssd, _build_ssd),
    Family(
        "ssh",
        "six outputs rpn_cls_prob_reshape_stride{32,16,8} [N,4,H,W] and rpn_bbox_pred_stride{32,16,8} [N,8,H,W]",
        _is_ssh,
        _build_ssh,
    ),
)
