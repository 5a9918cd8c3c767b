"""Telling a model's decoder family from its outputs, and building that family's decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.decode import (
    DecoderSettings,
    UnknownModelFamily,
    describe_outputs,
    make_decoder,
    recognise_family,
)
from edged.decode.ssd import SsdDecoder
from edged.decode.ssh import SshDecoder

SSH_OUTPUTS = [
    ("rpn_cls_prob_reshape_stride32", (1, 4, 20, 20)),
    ("rpn_bbox_pred_stride32", (1, 8, 20, 20)),
    ("rpn_cls_prob_reshape_stride16", (1, 4, 40, 40)),
    ("rpn_bbox_pred_stride16", (1, 8, 40, 40)),
    ("rpn_cls_prob_reshape_stride8", (1, 4, 80, 80)),
    ("rpn_bbox_pred_stride8", (1, 8, 80, 80)),
]
SSH_NAMES = tuple(name for name, _ in SSH_OUTPUTS)
REAL_MODELS = {
    "face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml": "ssd",
    "face-detection-adas-0001/FP16/face-detection-adas-0001.xml": "ssd",
    "face-detection-adas-0001/FP16-INT8/face-detection-adas-0001.xml": "ssd",
    "face-detection-retail-0004/FP32/face-detection-retail-0004.xml": "ssd",
    "ssh-contract-retinaface-mnet025/retinaface-mnet025-ssh-640.xml": "ssh",
}


def test_one_detection_output_blob_is_ssd() -> None:
    assert recognise_family([("detection_out", (1, 1, 200, 7))]) == "ssd"


def test_an_ssd_blob_with_a_dynamic_row_count_is_ssd() -> None:
    assert recognise_family([("boxes", (1, 1, None, 7))]) == "ssd"


def test_the_six_rpn_outputs_are_ssh() -> None:
    assert recognise_family(SSH_OUTPUTS) == "ssh"


def test_the_rpn_outputs_in_another_order_are_still_ssh() -> None:
    assert recognise_family(list(reversed(SSH_OUTPUTS))) == "ssh"


def test_rpn_outputs_with_another_anchor_count_are_refused() -> None:
    three_anchors = [(name, (1, shape[1] // 2 * 3, *shape[2:])) for name, shape in SSH_OUTPUTS]
    with pytest.raises(UnknownModelFamily):
        recognise_family(three_anchors)


def test_a_missing_rpn_output_is_refused() -> None:
    with pytest.raises(UnknownModelFamily):
        recognise_family(SSH_OUTPUTS[:-1])


def test_refusal_lists_the_outputs_found_and_the_supported_families() -> None:
    with pytest.raises(UnknownModelFamily) as refused:
        recognise_family([("logits", (1, 1000)), ("boxes", (1, None, 4))])
    message = str(refused.value)
    assert "logits [1,1000]" in message
    assert "boxes [1,?,4]" in message
    assert "ssd: one output [1,1,N,7]" in message
    assert "ssh: six outputs rpn_cls_prob_reshape_stride" in message


def test_unknown_model_family_is_a_value_error() -> None:
    assert issubclass(UnknownModelFamily, ValueError)


@pytest.fixture(scope="module")
def core() -> Any:
    import openvino as ov

    return ov.Core()


@pytest.mark.parametrize(("model", "family"), REAL_MODELS.items())
def test_real_models_are_recognised(model: str, family: str, core: Any, models_dir: Path) -> None:
    assert recognise_family(describe_outputs(core.read_model(str(models_dir / model)))) == family


def test_a_model_of_no_known_family_is_refused_with_its_outputs_listed() -> None:
    import openvino as ov
    import openvino.opset13 as ops

    pixels = ops.parameter([1, 3, 8, 8], ov.Type.f32, name="data")
    relu = ops.relu(pixels)
    relu.output(0).set_names({"activation"})
    model = ov.Model([ops.result(relu)], [pixels], "relu-only")

    with pytest.raises(UnknownModelFamily, match=r"activation \[1,3,8,8\].*Supported families: ssd"):
        recognise_family(describe_outputs(model))


def test_make_decoder_builds_the_ssd_decoder_on_the_models_only_output() -> None:
    decoder = make_decoder("ssd", DecoderSettings((672, 384), 0.6, output_names=("detection_out",)))
    assert isinstance(decoder, SsdDecoder)
    assert (decoder.output_name, decoder.confidence) == ("detection_out", 0.6)


def test_make_decoder_builds_the_ssh_decoder_with_the_default_nms() -> None:
    decoder = make_decoder("ssh", DecoderSettings((640, 640), 0.5, SSH_NAMES))
    assert isinstance(decoder, SshDecoder)
    assert (decoder.input_size, decoder.nms_iou) == ((640, 640), 0.3)


def test_make_decoder_refuses_ssh_outputs_under_other_names() -> None:
    renamed = tuple(name.upper() for name in SSH_NAMES)
    with pytest.raises(ValueError, match="SSH outputs must be"):
        make_decoder("ssh", DecoderSettings((640, 640), 0.5, renamed))


def test_a_decoder_from_make_decoder_decodes() -> None:
    decoder = make_decoder("ssd", DecoderSettings((300, 300), 0.5, output_names=("out",)))
    blob = np.array([[[[0, 1, 0.9, 0, 0, 0.5, 0.5], [-1, 0, 0, 0, 0, 0, 0]]]], np.float32)
    (faces,) = decoder.decode({"out": blob}, [(300, 300)])
    np.testing.assert_allclose(faces.boxes, [[0, 0, 150, 150]])


def test_make_decoder_refuses_an_unknown_family() -> None:
    with pytest.raises(ValueError, match="unknown decoder family 'yolo'; supported: ssd, ssh"):
        make_decoder("yolo", DecoderSettings((640, 640), 0.5))


def test_an_unnamed_output_is_described_by_its_result_node() -> None:
    import openvino as ov
    import openvino.opset13 as ops

    pixels = ops.parameter([-1, 3, 8, 8], ov.Type.f32, name="data")
    result = ops.result(ops.relu(pixels))
    model = ov.Model([result], [pixels], "unnamed")

    assert describe_outputs(model) == [(result.get_friendly_name(), (None, 3, 8, 8))]
