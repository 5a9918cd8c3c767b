"""The MQTT payloads edged publishes: their format is a contract with every subscriber."""

from __future__ import annotations

import numpy as np
import orjson

from edged.decode import Faces
from edged.inference import Result


def faces_json(faces: Faces, width: int, height: int) -> list[dict[str, object]]:
    """Faces as subscribers see them: score, box in source pixels, box normalised to 0..1."""
    if not len(faces):
        return []  # most frames of most cameras: 0.3 us instead of 6 for the numpy passes below
    size = np.array([width, height, width, height], dtype=np.float64)
    # One vectorised rounding per array, then plain lists: cheaper than formatting face by face.
    scores = np.round(faces.scores.astype(np.float64), 4).tolist()
    boxes = faces.boxes.astype(np.float64)
    return [
        {"score": score, "box": box, "box_norm": norm}
        for score, box, norm in zip(
            scores, np.round(boxes, 1).tolist(), np.round(boxes / size, 4).tolist(), strict=True
        )
    ]


def detection_payload(result: Result, seq: int, published: float) -> bytes:
    """The per-frame message on `{prefix}/{camera}/detections` (see docs/mqtt.md)."""
    frame = result.frame
    message = {
        "camera": frame.camera,
        "seq": seq,
        "timestamp": round(frame.timestamp, 3),
        "frame": {"index": frame.index, "width": frame.width, "height": frame.height},
        "model": result.model,
        "latency_ms": round((published - frame.timestamp) * 1000.0, 1),
        "faces": faces_json(result.faces, frame.width, frame.height),
    }
    # Compact, and 13 us against json.dumps' 47 on this per-frame path; numpy scalars are accepted as json's are.
    return orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
