"""What every decoder returns, and the one method every decoder has."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Faces:
    """The faces found in one frame, in that frame's pixels.

    Arrays rather than a list of objects: decoders produce them vectorised and the
    publisher formats them in one pass.
    """

    scores: FloatArray  # (K,)
    boxes: FloatArray  # (K, 4): x_min, y_min, x_max, y_max, clamped to the frame

    @classmethod
    def none(cls) -> Faces:
        return cls(np.empty(0, np.float32), np.empty((0, 4), np.float32))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def clamped(self, width: float, height: float) -> Faces:
        """Boxes clipped to a frame; boxes left without area (wholly outside it) are dropped."""
        boxes = np.clip(self.boxes, 0.0, np.array([width, height, width, height], np.float32))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return Faces(self.scores[keep], boxes[keep])


FrameSize = tuple[float, float]  # (width, height) of a source frame


class Decoder(Protocol):
    """Outputs of one inference -> the faces of each image in it, in source-frame pixels.

    `outputs` maps output names to arrays that belong to the inference request: a decoder
    reads them and must not keep references to them. `sizes` holds one (width, height)
    per image of the batch, in batch order.
    """

    def decode(self, outputs: Mapping[str, FloatArray], sizes: Sequence[FrameSize]) -> list[Faces]: ...
