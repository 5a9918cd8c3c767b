"""SSH (`ssh-mxnet` output contract) decoding, as Open Model Zoo's accuracy checker does it.

Per stride s the model gives `rpn_cls_prob_reshape_stride{s}` [N, 2A, H, W] (background
then face probability per anchor) and `rpn_bbox_pred_stride{s}` [N, 4A, H, W] (dx, dy, dw, dh
per anchor). Anchors are enumerated in (H, W, A) order. Boxes come out in model-input pixels
with the "+1" pixel convention and are scaled back to the source frame per axis, since the
frame was resized to the input without letterbox.

Only anchors above the confidence threshold are decoded: thresholding is per anchor, so
doing it first gives the same boxes as the reference while touching a few dozen anchors
instead of all 16,800 of a 640x640 input.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edged.decode.base import Faces, FloatArray, FrameSize
from edged.decode.nms import nms

F64Array = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class AnchorConfig:
    """Anchor generation parameters; hashable so generated anchors can be cached on it."""

    base_size: int = 16
    ratios: tuple[float, ...] = (1.0,)
    # (stride, scales) pairs, in the order the outputs are read.
    scales: tuple[tuple[int, tuple[float, ...]], ...] = (
        (32, (32.0, 16.0)),
        (16, (8.0, 4.0)),
        (8, (2.0, 1.0)),
    )

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(stride for stride, _ in self.scales)

    def anchors_per_cell(self, stride: int) -> int:
        return len(self.ratios) * len(dict(self.scales)[stride])


SSH_ANCHORS = AnchorConfig()
DEFAULT_NMS_IOU = 0.3
CLS_NAME = "rpn_cls_prob_reshape_stride{stride}"
BBOX_NAME = "rpn_bbox_pred_stride{stride}"


@functools.cache
def base_anchors(base_size: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> F64Array:
    """(A, 4) anchors of the cell at the origin, ratio-major then scale, as the reference."""
    centre = 0.5 * (base_size - 1)
    ratio = np.asarray(ratios, dtype=np.float64)
    ratio_w = np.round(np.sqrt(base_size * base_size / ratio))
    ratio_h = np.round(ratio_w * ratio)
    scale = np.asarray(scales, dtype=np.float64)
    half_w = 0.5 * (np.outer(ratio_w, scale).ravel() - 1.0)
    half_h = 0.5 * (np.outer(ratio_h, scale).ravel() - 1.0)
    anchors = np.stack([centre - half_w, centre - half_h, centre + half_w, centre + half_h], axis=1)
    anchors.flags.writeable = False  # cached and shared
    return anchors


@functools.cache
def anchor_grid(config: AnchorConfig, stride: int, height: int, width: int) -> F64Array:
    """(H, W, A, 4) anchors of one stride's feature map; computed once per input size."""
    base = base_anchors(config.base_size, config.ratios, dict(config.scales)[stride])
    shift_x = np.arange(width, dtype=np.float64) * stride
    shift_y = np.arange(height, dtype=np.float64) * stride
    shifts = np.zeros((height, width, 1, 4))
    shifts[..., 0::2] = shift_x[None, :, None, None]
    shifts[..., 1::2] = shift_y[:, None, None, None]
    grid = shifts + base
    grid.flags.writeable = False  # cached and shared
    return grid


def apply_deltas(anchors: F64Array, deltas: NDArray[np.floating]) -> F64Array:
    """(K, 4) anchors + (K, 4) (dx, dy, dw, dh) -> (K, 4) boxes; no variance term."""
    size = anchors[:, 2:] - anchors[:, :2] + 1.0
    centre = anchors[:, :2] + 0.5 * (size - 1.0)
    pred_centre = deltas[:, :2] * size + centre
    pred_half = 0.5 * (np.exp(deltas[:, 2:]) * size - 1.0)
    return np.concatenate([pred_centre - pred_half, pred_centre + pred_half], axis=1)


@dataclass(frozen=True, slots=True)
class _Level:
    stride: int
    cls_name: str
    bbox_name: str
    per_cell: int  # anchors per feature-map cell


class SshDecoder:
    """Decodes the six SSH outputs of each image of a batch into faces in source pixels."""

    def __init__(
        self,
        input_size: FrameSize,
        confidence: float,
        nms_iou: float = DEFAULT_NMS_IOU,
        *,
        anchors: AnchorConfig = SSH_ANCHORS,
        cls_name: str = CLS_NAME,
        bbox_name: str = BBOX_NAME,
    ) -> None:
        """`cls_name`/`bbox_name` are templates formatted with `stride`."""
        self.input_size = input_size
        self.confidence = confidence
        self.nms_iou = nms_iou
        self.anchors = anchors
        self._levels = tuple(
            _Level(s, cls_name.format(stride=s), bbox_name.format(stride=s), anchors.anchors_per_cell(s))
            for s in anchors.strides
        )

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for level in self._levels for name in (level.cls_name, level.bbox_name))

    def decode(self, outputs: Mapping[str, FloatArray], sizes: Sequence[FrameSize]) -> list[Faces]:
        return [self._decode_image(outputs, image, size) for image, size in enumerate(sizes)]

    def _decode_image(self, outputs: Mapping[str, FloatArray], image: int, size: FrameSize) -> Faces:
        found = [
            self._candidates(outputs[level.cls_name][image], outputs[level.bbox_name][image], level)
            for level in self._levels
        ]
        scores = np.concatenate([s for s, _ in found])
        if scores.size == 0:
            return Faces.none()
        boxes = np.concatenate([b for _, b in found])
        keep = nms(boxes, scores, self.nms_iou, include_boundaries=True)
        return Faces(scores[keep].astype(np.float32, copy=False), self._to_frame(boxes[keep], size))

    def _candidates(self, prob: FloatArray, deltas: FloatArray, level: _Level) -> tuple[FloatArray, F64Array]:
        """Scores and boxes (model-input pixels) of one stride's anchors above the threshold."""
        a = level.per_cell
        _, height, width = prob.shape
        if prob.shape[0] != 2 * a or deltas.shape != (4 * a, height, width):
            raise ValueError(
                f"stride {level.stride}: expected {level.cls_name} [2A, H, W] and {level.bbox_name} "
                f"[4A, H, W] with A={a}, got {prob.shape} and {deltas.shape}"
            )
        face = prob[a:].reshape(a, -1)  # channels A..2A-1: the face probability of each anchor
        # flatnonzero on the flat view is ~10x cheaper than a multi-axis np.nonzero here.
        found = np.flatnonzero(face >= self.confidence)
        if found.size == 0:
            return np.empty(0, np.float32), np.empty((0, 4))
        ks, cells = np.divmod(found, height * width)
        # The reference's (H, W, A) anchor order, so equal scores meet NMS in a known order.
        index = np.sort(cells * a + ks)
        cells, ks = np.divmod(index, a)
        anchor_deltas = deltas.reshape(a, 4, -1)[ks, :, cells]
        anchors = anchor_grid(self.anchors, level.stride, height, width).reshape(-1, 4)[index]
        return face[ks, cells], apply_deltas(anchors, anchor_deltas)

    def _to_frame(self, boxes: F64Array, size: FrameSize) -> FloatArray:
        width, height = size
        input_w, input_h = self.input_size
        scaled = boxes * np.array([width / input_w, height / input_h] * 2)
        clamped: F64Array = np.clip(scaled, 0.0, np.array([width, height] * 2))
        return clamped.astype(np.float32)
