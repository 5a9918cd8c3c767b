"""The MQTT payloads edged publishes: their format is a contract with every subscriber."""

from __future__ import annotations

import orjson

from edged.decode import Faces
from edged.inference import Result


def faces_json(faces: Faces, width: int, height: int) -> list[dict[str, object]]:
    """Faces as subscribers see them: score, box in source pixels, box normalised to 0..1."""
    # Plain floats and Python's round: a frame has a few faces, and numpy's per-call overhead (six
    # calls, rounding included) is what a few faces cost with it (docs/performance-notes.md, section j).
    return [
        {
            "score": round(score, 4),
            "box": [round(x_min, 1), round(y_min, 1), round(x_max, 1), round(y_max, 1)],
            "box_norm": [
                round(x_min / width, 4),
                round(y_min / height, 4),
                round(x_max / width, 4),
                round(y_max / height, 4),
            ],
        }
        for score, (x_min, y_min, x_max, y_max) in zip(faces.scores.tolist(), faces.boxes.tolist(), strict=True)
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
