"""Greedy non-maximum suppression with the Open Model Zoo reference semantics.

Reference (accuracy checker `NMS.nms`): boxes are visited by descending score; a box is
dropped when its IoU with an already kept box is strictly greater than the threshold; an
empty union counts as no overlap. With `include_boundaries` a box spans x2 - x1 + 1 pixels
(the "+1" convention the SSH/RetinaFace reference uses).

cv2.dnn.NMSBoxes is not used: it has no "+1" option and takes (x, y, w, h) boxes, so it
would shift the suppression boundary for small faces.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

IndexArray = NDArray[np.intp]


def nms(
    boxes: NDArray[np.floating],
    scores: NDArray[np.floating],
    iou_threshold: float,
    *,
    include_boundaries: bool = True,
) -> IndexArray:
    """Indices of the boxes (K, 4: x1, y1, x2, y2) that survive, best score first."""
    order = np.argsort(-scores, kind="stable")  # stable: equal scores keep input order
    if order.size <= 1:
        return order.astype(np.intp)
    one = 1.0 if include_boundaries else 0.0
    x1, y1, x2, y2 = boxes[order].astype(np.float64, copy=False).T
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    keep: list[int] = []
    pending = np.arange(order.size)
    # One pass per *kept* box, vectorised over the boxes still pending: there are only a
    # few faces per frame, while the candidate list can be long.
    while pending.size:
        i, rest = pending[0], pending[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)
        pending = rest[overlap <= iou_threshold]
    return order[keep].astype(np.intp)
