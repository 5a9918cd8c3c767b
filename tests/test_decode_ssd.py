"""SSD DetectionOutput decoding: hand-built blobs, then the real SSD-contract models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.decode.base import Faces
from edged.decode.ssd import SsdDecoder

ASTRONAUT_FACE = (179.0, 56.0, 271.0, 177.0)  # where the seed model puts it, in 512x512 pixels
SSD_MODELS = [
    "face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml",
    "face-detection-adas-0001/FP16/face-detection-adas-0001.xml",
    "face-detection-adas-0001/FP16-INT8/face-detection-adas-0001.xml",
    "face-detection-retail-0004/FP32/face-detection-retail-0004.xml",
]


def blob(*rows: list[float], capacity: int = 8) -> np.ndarray:
    """A [1, 1, capacity, 7] DetectionOutput: `rows`, the -1 terminator, then junk."""
    out = np.full((1, 1, capacity, 7), 0.99, dtype=np.float32)  # junk that would pass any filter
    if rows:
        out[0, 0, : len(rows)] = rows
    if len(rows) < capacity:
        out[0, 0, len(rows), 0] = -1
    return out


def decode(detections: np.ndarray, sizes: list[tuple[int, int]], confidence: float = 0.5) -> list[Faces]:
    return SsdDecoder("detection_out", confidence).decode({"detection_out": detections}, sizes)


def test_rows_after_the_first_minus_one_image_id_are_ignored() -> None:
    (faces,) = decode(blob([0, 1, 0.9, 0.1, 0.1, 0.2, 0.2]), [(100, 100)])
    assert len(faces) == 1


def test_a_blob_without_terminator_is_read_to_its_end() -> None:
    full = blob(*([[0, 1, 0.9, 0.1, 0.1, 0.2, 0.2]] * 3), capacity=3)
    (faces,) = decode(full, [(100, 100)])
    assert len(faces) == 3


def test_an_empty_blob_gives_no_faces() -> None:
    (faces,) = decode(blob(), [(100, 100)])
    assert len(faces) == 0
    assert faces.boxes.shape == (0, 4)


def test_boxes_are_scaled_per_axis_to_the_source_frame() -> None:
    (faces,) = decode(blob([0, 1, 0.9, 0.25, 0.5, 0.75, 1.0]), [(640, 360)])
    np.testing.assert_allclose(faces.boxes, [[160, 180, 480, 360]])
    assert faces.boxes.dtype == np.float32


def test_coordinates_outside_the_unit_square_are_clamped_to_the_frame() -> None:
    (faces,) = decode(blob([0, 1, 0.9, -0.2, -0.1, 1.3, 1.01]), [(200, 100)])
    np.testing.assert_allclose(faces.boxes, [[0, 0, 200, 100]])


def test_rows_below_the_confidence_are_dropped_and_the_threshold_is_inclusive() -> None:
    rows = [[0, 1, score, 0.1, 0.1, 0.2, 0.2] for score in (0.49, 0.5, 0.51)]
    (faces,) = decode(blob(*rows), [(100, 100)], confidence=0.5)
    np.testing.assert_allclose(faces.scores, [0.5, 0.51])


def test_batch_rows_are_routed_to_their_image_by_image_id() -> None:
    rows = [
        [1, 1, 0.8, 0.0, 0.0, 0.5, 0.5],
        [0, 1, 0.9, 0.5, 0.5, 1.0, 1.0],
        [1, 1, 0.7, 0.5, 0.5, 1.0, 1.0],
    ]
    first, second, third = decode(blob(*rows), [(100, 100), (200, 50), (10, 10)])
    np.testing.assert_allclose(first.boxes, [[50, 50, 100, 100]])
    np.testing.assert_allclose(second.scores, [0.8, 0.7])
    np.testing.assert_allclose(second.boxes, [[0, 0, 100, 25], [100, 25, 200, 50]])
    assert len(third) == 0


def test_faces_do_not_alias_the_inference_output() -> None:
    detections = blob([0, 1, 0.9, 0.1, 0.2, 0.3, 0.4])
    (faces,) = decode(detections, [(1, 1)])
    detections[...] = 0
    np.testing.assert_allclose(faces.scores, [0.9])
    np.testing.assert_allclose(faces.boxes, [[0.1, 0.2, 0.3, 0.4]], rtol=1e-6)


def iou(a: np.ndarray, b: tuple[float, float, float, float]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


@pytest.fixture(scope="module")
def astronaut(media_dir: Path) -> np.ndarray:
    frame = cv2.imread(str(media_dir / "images/astronaut.png"), cv2.IMREAD_COLOR)
    assert frame is not None
    return frame


@pytest.mark.parametrize("model", SSD_MODELS)
def test_ssd_models_find_the_one_astronaut_face(model: str, astronaut: np.ndarray, models_dir: Path) -> None:
    import openvino as ov

    compiled = ov.Core().compile_model(str(models_dir / model), "CPU")
    _, _, height, width = compiled.input(0).shape
    # The model takes 0..255 BGR, the whole frame resized without letterbox.
    pixels = cv2.resize(astronaut, (width, height)).transpose(2, 0, 1)[None].astype(np.float32)
    detections = compiled(pixels)[compiled.output(0)]

    (faces,) = decode(detections, [(astronaut.shape[1], astronaut.shape[0])])

    assert len(faces) == 1
    assert iou(faces.boxes[0], ASTRONAUT_FACE) >= 0.9
