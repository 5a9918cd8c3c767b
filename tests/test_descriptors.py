"""Model descriptors: the repository's YAML files, their schema, and weight verification."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from edged.decode import describe_outputs
from edged.decode.ssh import SSH_ANCHORS, SshDecoder
from edged.descriptors import (
    Descriptor,
    DescriptorError,
    FileStatus,
    default_models_dir,
    find_descriptor,
    load_descriptor,
    load_descriptors,
    verify,
)

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"
KNOWN_MODELS = {
    "face-detection-adas-binary-0001",
    "face-detection-adas-0001",
    "face-detection-retail-0004",
    "ssh-contract-retinaface-mnet025",
}


@pytest.fixture(scope="module")
def descriptors() -> dict[str, Descriptor]:
    return load_descriptors(REPO_MODELS)


def raw(name: str) -> dict[str, object]:
    loaded = yaml.safe_load((REPO_MODELS / f"{name}.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def write(folder: Path, name: str, content: dict[str, object]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_every_known_model_has_a_descriptor(descriptors: dict[str, Descriptor]) -> None:
    assert set(descriptors) == KNOWN_MODELS


def test_the_default_descriptor_folder_is_the_repositorys_models_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGED_MODELS_DIR", raising=False)
    assert default_models_dir() == REPO_MODELS


def test_the_descriptor_folder_can_be_set_by_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path, "face-detection-retail-0004", raw("face-detection-retail-0004"))
    monkeypatch.setenv("EDGED_MODELS_DIR", str(tmp_path))
    assert set(load_descriptors()) == {"face-detection-retail-0004"}


def test_a_missing_descriptor_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DescriptorError, match="no descriptor folder"):
        load_descriptors(tmp_path / "absent")


def test_find_descriptor_returns_the_named_model() -> None:
    assert find_descriptor("face-detection-adas-0001", REPO_MODELS).input.width == 672


def test_find_descriptor_of_an_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(LookupError, match="known: face-detection-adas-0001, face-detection-adas-binary"):
        find_descriptor("yolo-face", REPO_MODELS)


def test_the_descriptors_verify_against_the_test_data(descriptors: dict[str, Descriptor], models_dir: Path) -> None:
    for descriptor in descriptors.values():
        checks = verify(descriptor, models_dir)
        assert len(checks) == 2 * len(descriptor.precisions)
        assert all(check.status is FileStatus.OK for check in checks), checks


def test_a_corrupted_copy_is_reported_as_a_mismatch(
    descriptors: dict[str, Descriptor], models_dir: Path, tmp_path: Path
) -> None:
    descriptor = descriptors["face-detection-retail-0004"]
    files = descriptor.files()
    for ref in files.all():
        (tmp_path / ref.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(models_dir / ref.path, tmp_path / ref.path)
    with (tmp_path / files.bin.path).open("r+b") as stream:
        stream.seek(1000)
        byte = stream.read(1)
        stream.seek(1000)
        stream.write(bytes([byte[0] ^ 0x01]))

    statuses = {check.file.name: check.status for check in verify(descriptor, tmp_path)}

    assert statuses == {
        "face-detection-retail-0004.xml": FileStatus.OK,
        "face-detection-retail-0004.bin": FileStatus.MISMATCH,
    }


def test_absent_files_are_reported_as_missing(descriptors: dict[str, Descriptor], tmp_path: Path) -> None:
    checks = verify(descriptors["face-detection-adas-0001"], tmp_path, precision="FP16-INT8")
    assert [(check.file.parent.name, check.status) for check in checks] == [
        ("FP16-INT8", FileStatus.MISSING),
        ("FP16-INT8", FileStatus.MISSING),
    ]


def test_the_first_listed_precision_is_the_default(descriptors: dict[str, Descriptor]) -> None:
    adas = descriptors["face-detection-adas-0001"]
    assert adas.default_precision == "FP16"
    assert adas.files().xml.path == "face-detection-adas-0001/FP16/face-detection-adas-0001.xml"


def test_an_unknown_precision_names_the_ones_there_are(descriptors: dict[str, Descriptor]) -> None:
    with pytest.raises(KeyError, match="has no precision 'FP32'; it has FP16, FP16-INT8"):
        descriptors["face-detection-adas-0001"].files("FP32")


@pytest.mark.parametrize("name", sorted(KNOWN_MODELS))
def test_a_descriptor_states_its_models_real_contract(
    name: str, descriptors: dict[str, Descriptor], models_dir: Path
) -> None:
    import openvino as ov

    descriptor = descriptors[name]
    for precision in descriptor.precisions:
        model = ov.Core().read_model(str(models_dir / descriptor.files(precision).xml.path))
        (data,) = model.inputs
        assert data.get_any_name() == descriptor.input.name
        assert list(data.get_shape()) == [1, 3, descriptor.input.height, descriptor.input.width]
        assert dict(describe_outputs(model)) == descriptor.outputs


def test_the_ssh_descriptor_carries_the_reference_anchors(descriptors: dict[str, Descriptor]) -> None:
    anchors = descriptors["ssh-contract-retinaface-mnet025"].anchors
    assert anchors is not None
    assert anchors.config() == SSH_ANCHORS


def test_a_descriptor_builds_its_decoder(descriptors: dict[str, Descriptor]) -> None:
    decoder = descriptors["ssh-contract-retinaface-mnet025"].decoder(confidence=0.7)
    assert isinstance(decoder, SshDecoder)
    assert (decoder.input_size, decoder.confidence, decoder.nms_iou) == ((640, 640), 0.7, 0.3)


def test_unknown_fields_are_refused(tmp_path: Path) -> None:
    content = raw("face-detection-retail-0004") | {"threshold": 0.5}
    with pytest.raises(DescriptorError, match="threshold"):
        load_descriptor(write(tmp_path, "face-detection-retail-0004", content))


def test_an_unknown_family_is_refused(tmp_path: Path) -> None:
    content = raw("face-detection-retail-0004") | {"family": "yolo"}
    with pytest.raises(DescriptorError, match="unknown family 'yolo'"):
        load_descriptor(write(tmp_path, "face-detection-retail-0004", content))


def test_outputs_of_another_family_are_refused(tmp_path: Path) -> None:
    content = raw("face-detection-retail-0004") | {"family": "ssh"}
    with pytest.raises(DescriptorError, match="outputs are those of the ssd family, not ssh"):
        load_descriptor(write(tmp_path, "face-detection-retail-0004", content))


def test_a_descriptor_is_named_as_its_file(tmp_path: Path) -> None:
    with pytest.raises(DescriptorError, match="differs from the file name"):
        load_descriptor(write(tmp_path, "retail", raw("face-detection-retail-0004")))


def test_a_file_path_leaving_the_weights_folder_is_refused(tmp_path: Path) -> None:
    content = raw("face-detection-retail-0004")
    files = {"path": "../elsewhere/model.xml", "sha256": "0" * 64}
    content["precisions"] = {"FP32": {"xml": files, "bin": files}}
    with pytest.raises(DescriptorError, match="inside the weights folder"):
        load_descriptor(write(tmp_path, "face-detection-retail-0004", content))
