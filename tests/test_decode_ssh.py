"""SSH decoding (Open Model Zoo accuracy-checker convention) and the NMS it relies on."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edged.decode.nms import nms
from edged.decode.ssd import SsdDecoder
from edged.decode.ssh import SSH_ANCHORS, SshDecoder, anchor_grid, base_anchors

SSH_MODEL = "ssh-contract-retinaface-mnet025/retinaface-mnet025-ssh-640.xml"
SSD_MODEL = "face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml"
SMALL_CLIPS = [
    "classroom.mp4",
    "face-demographics-walking.mp4",
    "face-demographics-walking-and-pause.mp4",
    "head-pose-face-detection-female.mp4",
    "head-pose-face-detection-male.mp4",
    "head-pose-face-detection-female-and-male.mp4",
]
# The shared README's table: (x1, y1, x2, y2) of each stride's anchors before shifting.
README_BASE_ANCHORS = {
    32: [[-248, -248, 263, 263], [-120, -120, 135, 135]],
    16: [[-56, -56, 71, 71], [-24, -24, 39, 39]],
    8: [[-8, -8, 23, 23], [0, 0, 15, 15]],
}
INPUT = (64, 64)  # small model input for hand-built outputs: 2x2, 4x4 and 8x8 cells


def outputs_for(input_size: tuple[int, int] = INPUT, batch: int = 1) -> dict[str, np.ndarray]:
    """All-background SSH outputs for `input_size`; `put` plants anchors in them."""
    width, height = input_size
    outputs = {}
    for stride in (32, 16, 8):
        cells = (height // stride, width // stride)
        outputs[f"rpn_cls_prob_reshape_stride{stride}"] = np.zeros((batch, 4, *cells), np.float32)
        outputs[f"rpn_bbox_pred_stride{stride}"] = np.zeros((batch, 8, *cells), np.float32)
    return outputs


def put(
    outputs: dict[str, np.ndarray],
    stride: int,
    cell: tuple[int, int],
    *,
    anchor: int,
    score: float,
    deltas: tuple[float, float, float, float] = (0, 0, 0, 0),
    image: int = 0,
) -> None:
    """Give anchor `anchor` of cell (iy, ix) a face probability and (dx, dy, dw, dh)."""
    iy, ix = cell
    outputs[f"rpn_cls_prob_reshape_stride{stride}"][image, 2 + anchor, iy, ix] = score
    outputs[f"rpn_bbox_pred_stride{stride}"][image, 4 * anchor : 4 * anchor + 4, iy, ix] = deltas


def decoder(confidence: float = 0.5, nms_iou: float = 0.3) -> SshDecoder:
    return SshDecoder(INPUT, confidence, nms_iou)


# --- anchors -------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_base_anchors_equal_the_reference_table(stride: int) -> None:
    scales = dict(SSH_ANCHORS.scales)[stride]
    np.testing.assert_array_equal(base_anchors(16, (1.0,), scales), README_BASE_ANCHORS[stride])


def test_anchors_are_shifted_by_the_stride_and_flattened_in_h_w_a_order() -> None:
    grid = anchor_grid(SSH_ANCHORS, 16, 3, 5)
    flat = grid.reshape(-1, 4)
    base = np.array(README_BASE_ANCHORS[16])
    for iy, ix, a in [(0, 0, 0), (0, 1, 1), (2, 0, 0), (2, 4, 1)]:
        expected = base[a] + [ix * 16, iy * 16, ix * 16, iy * 16]
        np.testing.assert_array_equal(flat[(iy * 5 + ix) * 2 + a], expected)


def test_anchors_are_generated_once_per_feature_map_size() -> None:
    assert anchor_grid(SSH_ANCHORS, 8, 80, 80) is anchor_grid(SSH_ANCHORS, 8, 80, 80)
    assert not anchor_grid(SSH_ANCHORS, 8, 80, 80).flags.writeable


# --- one anchor, decoded by hand ---------------------------------------------------------


def test_one_anchor_decodes_to_the_box_computed_by_hand() -> None:
    # Stride 8, cell (iy=3, ix=4), anchor 1: [0,0,15,15] + (32, 24) = [32, 24, 47, 39].
    # w = h = 16, cx = 39.5, cy = 31.5; pcx = 0.25*16 + 39.5 = 43.5, pw = 2*16 = 32;
    # pcy = -0.5*16 + 31.5 = 23.5, ph = 16 -> box = pc -/+ 0.5*(p - 1).
    outputs = outputs_for()
    put(outputs, 8, (3, 4), anchor=1, score=0.9, deltas=(0.25, -0.5, math.log(2), 0.0))

    (faces,) = decoder().decode(outputs, [INPUT])

    np.testing.assert_allclose(faces.scores, [0.9])
    np.testing.assert_allclose(faces.boxes, [[28, 16, 59, 31]], atol=1e-5)


def test_face_probability_is_read_from_the_second_half_of_the_channels() -> None:
    outputs = outputs_for()
    outputs["rpn_cls_prob_reshape_stride8"][0, :2] = 1.0  # background: never a face

    (faces,) = decoder().decode(outputs, [INPUT])

    assert len(faces) == 0


def test_boxes_are_scaled_per_axis_from_the_input_to_the_source_frame() -> None:
    outputs = outputs_for()
    put(outputs, 8, (3, 4), anchor=1, score=0.9, deltas=(0.25, -0.5, math.log(2), 0.0))

    (faces,) = decoder().decode(outputs, [(128, 32)])

    np.testing.assert_allclose(faces.boxes, [[56, 8, 118, 15.5]], atol=1e-5)


def test_boxes_are_clamped_to_the_source_frame() -> None:
    outputs = outputs_for()
    put(outputs, 16, (0, 0), anchor=0, score=0.9, deltas=(0, 0, math.log(4), math.log(4)))

    (faces,) = decoder().decode(outputs, [(320, 240)])

    np.testing.assert_allclose(faces.boxes, [[0, 0, 320, 240]])


def test_scores_below_the_confidence_are_dropped_and_the_threshold_is_inclusive() -> None:
    outputs = outputs_for()
    put(outputs, 32, (0, 0), anchor=0, score=0.49)
    put(outputs, 16, (0, 0), anchor=0, score=0.5)
    put(outputs, 8, (7, 7), anchor=1, score=0.7)

    (faces,) = decoder(confidence=0.5).decode(outputs, [INPUT])

    np.testing.assert_allclose(sorted(faces.scores), [0.5, 0.7])


def test_an_overlapping_duplicate_from_another_stride_is_suppressed_for_the_better_box() -> None:
    outputs = outputs_for()
    # Stride 16 anchor 1 of cell (1, 1) is [-8, -8, 55, 55]; stride 8 anchor 0 of cell
    # (2, 2) is [8, 8, 39, 39] widened by exp(0.69) ~ 2x to about [-8, -8, 55, 55].
    put(outputs, 16, (1, 1), anchor=1, score=0.8)
    put(outputs, 8, (2, 2), anchor=0, score=0.95, deltas=(0, 0, 0.69, 0.69))
    put(outputs, 8, (7, 7), anchor=1, score=0.6)  # far away: stays

    (faces,) = decoder().decode(outputs, [INPUT])

    np.testing.assert_allclose(faces.scores, [0.95, 0.6])


def test_each_image_of_a_batch_is_decoded_with_its_own_frame_size() -> None:
    outputs = outputs_for(batch=2)
    put(outputs, 8, (3, 4), anchor=1, score=0.9, deltas=(0.25, -0.5, math.log(2), 0.0), image=1)

    first, second = decoder().decode(outputs, [INPUT, (128, 32)])

    assert len(first) == 0
    np.testing.assert_allclose(second.boxes, [[56, 8, 118, 15.5]], atol=1e-5)


def test_faces_do_not_alias_the_inference_outputs() -> None:
    outputs = outputs_for()
    put(outputs, 8, (3, 4), anchor=1, score=0.9)
    (faces,) = decoder().decode(outputs, [INPUT])
    before = faces.boxes.copy()

    for array in outputs.values():
        array[...] = 0

    np.testing.assert_allclose(faces.scores, [0.9])
    np.testing.assert_array_equal(faces.boxes, before)


def test_outputs_of_the_wrong_shape_are_reported_with_their_shapes() -> None:
    outputs = outputs_for()
    outputs["rpn_bbox_pred_stride16"] = np.zeros((1, 4, 4, 4), np.float32)

    with pytest.raises(ValueError, match=r"rpn_bbox_pred_stride16.*\(4, 4, 4\)"):
        decoder().decode(outputs, [INPUT])


def test_output_names_are_configurable() -> None:
    outputs = outputs_for()
    put(outputs, 8, (3, 4), anchor=1, score=0.9)
    renamed = {name.replace("rpn_", "face_"): array for name, array in outputs.items()}
    custom = SshDecoder(
        INPUT, 0.5, cls_name="face_cls_prob_reshape_stride{stride}", bbox_name="face_bbox_pred_stride{stride}"
    )

    (faces,) = custom.decode(renamed, [INPUT])

    assert len(faces) == 1


# --- NMS -------------------------------------------------------------------------------


def test_nms_drops_the_duplicate_and_keeps_the_better_box() -> None:
    boxes = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [100, 100, 140, 140]], np.float32)
    scores = np.array([0.7, 0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]


def test_nms_keeps_a_box_whose_overlap_equals_the_threshold() -> None:
    # Without "+1": intersection 50, union 150 -> IoU exactly 1/3.
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float64)
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 1 / 3, include_boundaries=False).tolist() == [0, 1]
    assert nms(boxes, scores, 0.33, include_boundaries=False).tolist() == [0]


def test_nms_counts_box_edges_as_pixels_with_the_plus_one_convention() -> None:
    # [0,0,1,1] and [1,1,2,2]: no overlap as areas, one shared pixel (IoU 1/7) with "+1".
    boxes = np.array([[0, 0, 1, 1], [1, 1, 2, 2]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.1, include_boundaries=False).tolist() == [0, 1]
    assert nms(boxes, scores, 0.1, include_boundaries=True).tolist() == [0]


def test_nms_of_no_boxes_is_empty() -> None:
    assert nms(np.empty((0, 4), np.float32), np.empty(0, np.float32), 0.3).size == 0


# --- the real SSH-contract model --------------------------------------------------------


def reference_decode(
    outputs: dict[str, np.ndarray], confidence: float, frame: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The accuracy checker's decoding, written plainly (loops, every anchor decoded)."""
    all_boxes, all_scores = [], []
    for stride in (32, 16, 8):
        prob = outputs[f"rpn_cls_prob_reshape_stride{stride}"][0]
        deltas = outputs[f"rpn_bbox_pred_stride{stride}"][0]
        _, height, width = prob.shape
        anchors = np.zeros((height, width, 2, 4))
        for iw in range(width):
            for ih in range(height):
                for k in range(2):
                    base = README_BASE_ANCHORS[stride][k]
                    anchors[ih, iw, k] = [base[0] + iw * stride, base[1] + ih * stride,
                                          base[2] + iw * stride, base[3] + ih * stride]  # fmt: skip
        anchors = anchors.reshape(-1, 4)
        d = deltas.transpose(1, 2, 0).reshape(-1, 4).astype(np.float64)
        w = anchors[:, 2] - anchors[:, 0] + 1.0
        h = anchors[:, 3] - anchors[:, 1] + 1.0
        cx = anchors[:, 0] + 0.5 * (w - 1.0)
        cy = anchors[:, 1] + 0.5 * (h - 1.0)
        pcx, pcy = d[:, 0] * w + cx, d[:, 1] * h + cy
        pw, ph = np.exp(d[:, 2]) * w, np.exp(d[:, 3]) * h
        all_boxes.append(np.stack([pcx - 0.5 * (pw - 1), pcy - 0.5 * (ph - 1),
                                   pcx + 0.5 * (pw - 1), pcy + 0.5 * (ph - 1)], axis=1))  # fmt: skip
        all_scores.append(prob[2:].transpose(1, 2, 0).reshape(-1))
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    confident = scores >= confidence
    boxes, scores = boxes[confident], scores[confident]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = iw * ih
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= 0.3)[0] + 1]
    scale = np.array([frame[0] / 640, frame[1] / 640] * 2)
    return scores[keep], np.clip(boxes[keep] * scale, 0, [frame[0], frame[1]] * 2)


@pytest.fixture(scope="module")
def core() -> Any:
    import openvino as ov

    return ov.Core()


@pytest.fixture(scope="module")
def ssh_model(core: Any, models_dir: Path) -> Any:
    return core.compile_model(str(models_dir / SSH_MODEL), "CPU")


@pytest.fixture(scope="module")
def ssd_model(core: Any, models_dir: Path) -> Any:
    return core.compile_model(str(models_dir / SSD_MODEL), "CPU")


def infer(compiled: Any, frame: np.ndarray) -> dict[str, np.ndarray]:
    """Both families take 0..255 BGR, the whole frame resized without letterbox."""
    _, _, height, width = compiled.input(0).shape
    pixels = cv2.resize(frame, (width, height)).transpose(2, 0, 1)[None].astype(np.float32)
    result = compiled(pixels)
    return {output.get_any_name(): result[output] for output in compiled.outputs}


@pytest.fixture(scope="module")
def astronaut(media_dir: Path) -> np.ndarray:
    return read_image(media_dir / "images/astronaut.png")


def read_image(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)  # a greyscale PNG comes back as 3 channels
    assert frame is not None
    return frame


def size_of(frame: np.ndarray) -> tuple[int, int]:
    return frame.shape[1], frame.shape[0]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def test_decoding_a_real_output_matches_the_reference_implementation(ssh_model: Any, media_dir: Path) -> None:
    frame = next(sampled_frames(media_dir / "classroom.mp4", count=1))  # 480x270: per-axis scaling
    outputs = infer(ssh_model, frame)
    # A low threshold leaves dozens of overlapping candidates and several survivors.
    expected_scores, expected_boxes = reference_decode(outputs, 0.02, size_of(frame))
    assert len(expected_scores) > 3

    (faces,) = SshDecoder((640, 640), 0.02).decode(outputs, [size_of(frame)])

    np.testing.assert_allclose(faces.scores, expected_scores, rtol=1e-6)
    np.testing.assert_allclose(faces.boxes, expected_boxes, rtol=1e-5, atol=1e-3)


def test_ssh_model_finds_the_astronaut_face_where_the_seed_model_does(
    ssh_model: Any, ssd_model: Any, astronaut: np.ndarray
) -> None:

    (ssh,) = SshDecoder((640, 640), 0.5).decode(infer(ssh_model, astronaut), [size_of(astronaut)])
    (ssd,) = SsdDecoder("detection_out", 0.5).decode(infer(ssd_model, astronaut), [size_of(astronaut)])

    assert len(ssh) == 1
    assert len(ssd) == 1
    assert iou(ssh.boxes[0], ssd.boxes[0]) >= 0.7


def test_ssh_model_finds_the_face_in_the_greyscale_cameraman(ssh_model: Any, media_dir: Path) -> None:
    cameraman = read_image(media_dir / "images/cameraman.png")

    (faces,) = SshDecoder((640, 640), 0.5).decode(infer(ssh_model, cameraman), [size_of(cameraman)])

    assert len(faces) == 1
    x1, y1, x2, y2 = faces.boxes[0]
    assert 180 < x1 < x2 < 280
    assert 100 < y1 < y2 < 210


def sampled_frames(clip: Path, count: int = 4) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(clip))
    try:
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(np.linspace(0, frames - 1, count).astype(int).tolist())
        for index in range(frames):
            ok, frame = capture.read()
            if not ok:
                break
            if index in wanted:
                yield frame
    finally:
        capture.release()


@pytest.mark.parametrize("clip", SMALL_CLIPS)
def test_the_two_families_agree_on_the_larger_faces_of_the_small_clips(
    clip: str, ssh_model: Any, ssd_model: Any, media_dir: Path
) -> None:
    """Every face the seed model is sure of (score >= 0.9, >= 20 px tall) is found by SSH too.

    The SSH-contract model is square, and these faces are what it misses most when a 16:9
    frame is stretched onto it (in classroom.mp4 it matched 35 of 76 such faces stretched,
    76 of 76 padded): a property of the model, not of decoding. So it gets the frame
    padded to a square at the bottom, which keeps pixel coordinates unchanged and lets the
    decoder's per-axis scaling map 640x640 back to the padded frame.
    """
    compared = 0
    for frame in sampled_frames(media_dir / clip):
        width, height = size_of(frame)
        square = np.zeros((width, width, 3), np.uint8)
        square[:height] = frame
        (ssd,) = SsdDecoder("detection_out", 0.9).decode(infer(ssd_model, frame), [(width, height)])
        (ssh,) = SshDecoder((640, 640), 0.5).decode(infer(ssh_model, square), [(width, width)])
        for box in ssd.boxes[ssd.boxes[:, 3] - ssd.boxes[:, 1] >= 20]:
            best = max((iou(box, other) for other in ssh.boxes), default=0.0)
            assert best >= 0.5, f"{clip}: SSD face {box.round()} has no SSH match (best IoU {best:.2f})"
            compared += 1
    assert compared > 0, f"{clip}: no face to compare in the sampled frames"
