"""SSD `DetectionOutput` decoding: one [1, 1, N, 7] blob shared by every image of a batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edged.decode.base import Faces, FloatArray, FrameSize

_IMAGE_ID, _CONF, _BOX = 0, 2, slice(3, 7)


class SsdDecoder:
    """Rows are [image_id, label, conf, x_min, y_min, x_max, y_max], coordinates normalised.

    The model sees the whole frame resized without letterbox, so a normalised coordinate
    maps to the source frame by its own axis' size.
    """

    def __init__(self, output_name: str, confidence: float) -> None:
        self.output_name = output_name
        self.confidence = confidence

    def decode(self, outputs: Mapping[str, FloatArray], sizes: Sequence[FrameSize]) -> list[Faces]:
        rows = self._confident_rows(outputs[self.output_name])
        image_ids = rows[:, _IMAGE_ID].astype(np.intp)
        # np.clip and the multiplication allocate: nothing returned aliases the request's blob.
        boxes = np.clip(rows[:, _BOX], 0.0, 1.0)
        scores = rows[:, _CONF]
        return [self._faces(scores, boxes, size, image_ids == image) for image, size in enumerate(sizes)]

    def _confident_rows(self, blob: FloatArray) -> FloatArray:
        rows = blob.reshape(-1, 7)
        ends = np.flatnonzero(rows[:, _IMAGE_ID] == -1)
        if ends.size:
            rows = rows[: ends[0]]
        return rows[rows[:, _CONF] >= self.confidence]

    @staticmethod
    def _faces(scores: FloatArray, boxes: FloatArray, size: FrameSize, mine: np.ndarray) -> Faces:
        width, height = size
        scale = np.array([width, height, width, height], dtype=np.float32)
        return Faces(
            scores[mine].astype(np.float32, copy=False),
            (boxes[mine] * scale).astype(np.float32, copy=False),
        )
