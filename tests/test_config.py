"""The configuration file: defaults, substitution, paths, and every way it is refused."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edged.config import load_config
from edged.errors import ConfigError

SEED = "models/face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml"


@pytest.fixture
def seed_model(shared_dir: Path) -> Path:
    return shared_dir / SEED


@pytest.fixture
def clip(shared_dir: Path) -> Path:
    return shared_dir / "media/classroom.mp4"


def write(tmp_path: Path, text: str, name: str = "edged.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def minimal(seed_model: Path, clip: Path) -> str:
    return f"model:\n  path: {seed_model}\ncameras:\n  door:\n    url: {clip}\n"


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path, seed_model: Path, clip: Path) -> None:
    config = load_config(write(tmp_path, minimal(seed_model, clip)))

    assert (config.mqtt.host, config.mqtt.port, config.mqtt.topic_prefix) == ("127.0.0.1", 1883, "edged")
    assert config.mqtt.client_id == f"edged-{socket.gethostname()}"
    spec = config.model_specs()["face-detection-adas-binary-0001"]
    assert (spec.device, spec.confidence, spec.preprocessing.resize) == ("CPU", 0.5, "stretch")
    assert config.model_of("door") == "face-detection-adas-binary-0001"
    door = config.cameras["door"]
    assert (door.fps, door.realtime, door.loop) == (None, True, True)
    assert config.mqtt.qos.detections == 0


def test_an_edged_with_its_own_topic_prefix_gets_its_own_default_client_id(
    tmp_path: Path, seed_model: Path, clip: Path
) -> None:
    # A broker drops a client when another connects with the same id: two edged on one host must differ.
    config = load_config(write(tmp_path, minimal(seed_model, clip) + "mqtt:\n  topic_prefix: garage/edged\n"))

    assert config.mqtt.client_id == f"edged-{socket.gethostname()}-garage/edged"


def test_environment_variables_are_substituted_with_defaults(tmp_path: Path, seed_model: Path, clip: Path) -> None:
    text = minimal(seed_model, clip) + "mqtt:\n  host: ${BROKER_HOST}\n  topic_prefix: ${PREFIX:-site1}\n"
    config = load_config(write(tmp_path, text), environ={"BROKER_HOST": "broker.lan"})

    assert config.mqtt.host == "broker.lan"
    assert config.mqtt.topic_prefix == "site1"


def test_cameras_can_share_settings_through_a_yaml_anchor_under_an_x_key(
    tmp_path: Path, seed_model: Path, clip: Path
) -> None:
    text = (
        "x-camera: &camera\n  fps: 5\n  stall_timeout: 20\n"
        f"model:\n  path: {seed_model}\n"
        f"cameras:\n  door:\n    <<: *camera\n    url: {clip}\n  yard:\n    <<: *camera\n    url: {clip}\n    fps: 2\n"
    )
    config = load_config(write(tmp_path, text))

    assert (config.cameras["door"].fps, config.cameras["door"].stall_timeout) == (5, 20)
    assert (config.cameras["yard"].fps, config.cameras["yard"].stall_timeout) == (2, 20)


def test_a_camera_named_by_a_number_keeps_that_name(tmp_path: Path, seed_model: Path, clip: Path) -> None:
    config = load_config(write(tmp_path, f"model:\n  path: {seed_model}\ncameras:\n  101:\n    url: {clip}\n"))

    assert list(config.cameras) == ["101"]


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, shared_dir: Path) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    model = os.path.relpath(shared_dir / SEED, config_dir)
    video = os.path.relpath(shared_dir / "media/classroom.mp4", config_dir)
    path = write(config_dir, f"model:\n  path: {model}\ncameras:\n  door:\n    url: {video}\n")

    config = load_config(path)

    assert config.models["face-detection-adas-binary-0001"].path == (shared_dir / SEED).resolve()
    assert Path(config.cameras["door"].url) == (shared_dir / "media/classroom.mp4").resolve()


def test_a_device_number_and_stream_urls_are_accepted(tmp_path: Path, seed_model: Path) -> None:
    text = (
        f"model:\n  path: {seed_model}\ncameras:\n  usb:\n    url: 0\n  v4l:\n    url: /dev/video2\n"
        "  door:\n    url: rtsp://10.0.0.5/stream1\n  mjpeg:\n    url: http://10.0.0.6/video.mjpg\n"
    )
    cameras = load_config(write(tmp_path, text)).cameras

    assert [cameras[name].kind for name in ("usb", "v4l", "door", "mjpeg")] == ["device", "device", "rtsp", "http"]


def yaml_with(*, top: str = "", model: str = "", camera: str = "", url: str = "{clip}", name: str = "d") -> str:
    """A valid config with one mistake spliced in: the seed model is {model_path}, a clip is {clip}."""
    return f"{top}model:\n  path: {{model_path}}\n{model}cameras:\n  {name}:\n    url: {url}\n{camera}"


REJECTIONS = [
    # (case, config text, fragment the message must contain)
    ("unknown top-level key", yaml_with(top="mqttt: {{}}\n"), "mqttt: unknown key"),
    ("unknown camera key", yaml_with(camera="    fsp: 5\n"), "cameras.d.fsp: unknown key: did you mean fps?"),
    ("misspelt mqtt key", yaml_with(top="mqtt:\n  topic_prefx: x\n"), "mqtt.topic_prefx: unknown key: did you mean"),
    ("empty url", yaml_with(url='""'), "cameras.d.url: String should have at least 1 character: it must not be"),
    ("wrong type", yaml_with(camera="    fps: fast\n"), "cameras.d.fps: Input should be a valid number, unable to"),
    ("wrong type says what to give", yaml_with(camera="    fps: fast\n"), "number: give a number (got 'fast')"),
    ("negative fps", yaml_with(camera="    fps: -3\n"), "cameras.d.fps"),
    ("unknown decoder threads", yaml_with(camera="    decoder_threads: many\n"), "cameras.d.decoder_threads"),
    ("port out of range", yaml_with(top="mqtt:\n  port: 70000\n"), "mqtt.port"),
    ("confidence above 1", yaml_with(model="  confidence: 1.5\n"), "model.confidence"),
    ("bad camera name", yaml_with(name="front door"), "cameras.front door: a camera name"),
    (
        "missing model file",
        yaml_with().replace("{model_path}", "/nonexistent/m.xml"),
        "model.path: model file not found",
    ),
    ("missing video file", yaml_with(url="/nonexistent/v.mp4"), "cameras.d.url: file not found"),
    ("unsupported scheme", yaml_with(url="ftp://cam/x"), "cameras.d.url: unsupported URL scheme 'ftp'"),
    ("no cameras", "model:\n  path: {model_path}\ncameras: {{}}\n", "cameras: is empty: configure at least one"),
    ("no model", "cameras:\n  d:\n    url: {clip}\n", "models: required key is missing"),
    ("model and models", yaml_with(top="models:\n  x:\n    path: {model_path}\n"), "not both"),
    ("neither path nor name", yaml_with().replace("path: {model_path}", "device: CPU"), "either as `path`"),
    ("unknown descriptor", yaml_with().replace("path: {model_path}", "name: no-such-model"), "no descriptor named"),
    ("unknown model of camera", yaml_with(camera="    model: other\n"), "cameras.d.model: no model named 'other'"),
    ("duplicate camera", yaml_with(camera="  d:\n    url: {clip}\n"), "duplicate key 'd'"),
    ("not YAML", "model: [unclosed\n", "not valid YAML: line"),
    ("empty file", "", "the config file is empty"),
    ("not a mapping", "- a\n- b\n", "must be a mapping"),
    ("wildcard prefix", yaml_with(top="mqtt:\n  topic_prefix: a/#\n"), "mqtt.topic_prefix"),
    ("unset variable", yaml_with(top="mqtt:\n  host: ${{NOPE_UNSET}}\n"), "mqtt.host: environment variable NOPE_UNSET"),
]


@pytest.mark.parametrize(("case", "text", "expected"), REJECTIONS, ids=[case for case, _, _ in REJECTIONS])
def test_bad_configs_are_refused_naming_the_file_and_key(
    tmp_path: Path, seed_model: Path, clip: Path, case: str, text: str, expected: str
) -> None:
    path = write(tmp_path, text.format(model_path=seed_model, clip=clip))

    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})

    assert str(path) in str(refused.value)
    assert expected in str(refused.value)


def test_a_misspelt_key_is_named_first_with_the_key_it_resembles_and_that_key_is_not_called_missing(
    tmp_path: Path, seed_model: Path, clip: Path
) -> None:
    path = write(tmp_path, f"model:\n  path: {seed_model}\ncameras:\n  d:\n    ulr: {clip}\n")

    with pytest.raises(ConfigError) as refused:
        load_config(path)

    assert str(refused.value) == (
        f"{path}: cameras.d.ulr: unknown key: did you mean url? check its spelling and indentation (see README for "
        "the keys)"
    )


def test_credentials_in_urls_never_appear_in_errors(tmp_path: Path, seed_model: Path) -> None:
    path = write(
        tmp_path, f"model:\n  path: {seed_model}\ncameras:\n  d:\n    url: rtsps://admin:hunter2@cam/x\n    fps: 0\n"
    )

    with pytest.raises(ConfigError) as refused:
        load_config(path)

    assert "hunter2" not in str(refused.value)


def edged(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edged.cli", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_check_accepts_a_good_config(tmp_path: Path, seed_model: Path, clip: Path) -> None:
    result = edged("check", "-c", str(write(tmp_path, minimal(seed_model, clip))))

    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_refuses_a_bad_config_with_one_line_and_exit_code_2(tmp_path: Path, seed_model: Path, clip: Path) -> None:
    path = write(tmp_path, minimal(seed_model, clip) + "    fps: -1\n")

    result = edged("check", "-c", str(path))

    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "cameras.door.fps" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("password", ["Se/cretX", "p@ss/w0rdX", "Se#cretX", "Se?cretX"])
def test_a_camera_password_that_is_not_percent_encoded_is_refused_without_showing_it(
    tmp_path: Path, seed_model: Path, password: str
) -> None:
    text = f"model:\n  path: {seed_model}\ncameras:\n  door:\n    url: rtsp://admin:${{CAM_PASSWORD}}@10.0.0.5/live\n"
    command = [sys.executable, "-m", "edged.cli", "check", "-c", str(write(tmp_path, text))]
    environment = {**os.environ, "CAM_PASSWORD": password}
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=environment)

    assert result.returncode == 2
    assert "cameras.door.url: the password in 'rtsp://***@10.0.0.5/live' seems to hold" in result.stderr
    assert "percent-encode them in the URL (%2F, %3F, %23, %40)" in result.stderr
    assert password not in result.stderr + result.stdout
    assert re.split("[/?#@]", password)[-1] not in result.stderr + result.stdout  # nor any part of it


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
@pytest.mark.parametrize("unreadable", ["model", "video", "image"])
def test_a_file_edged_may_not_read_is_reported_as_such_not_as_corrupt(
    tmp_path: Path, seed_model: Path, clip: Path, shared_dir: Path, unreadable: str
) -> None:
    """As under systemd's DynamicUser with a file only root may read (root itself is stripped of its right to
    read anything here)."""
    model, video, image = seed_model, clip, shared_dir / "media/images/astronaut.png"
    if unreadable == "model":
        model = tmp_path / seed_model.name
        shutil.copy(seed_model, model)
        shutil.copy(seed_model.with_suffix(".bin"), model.with_suffix(".bin"))
        model.chmod(0)
    if unreadable == "video":
        video = tmp_path / clip.name
        shutil.copy(clip, video)
        video.chmod(0)
    if unreadable == "image":
        image = tmp_path / image.name
        shutil.copy(shared_dir / "media/images/astronaut.png", image)
        image.chmod(0)
    text = f"model:\n  path: {model}\ncameras:\n  door:\n    url: {video}\n  hall:\n    url: {image}\n"
    without_root_rights = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    command = [*without_root_rights, sys.executable, "-m", "edged.cli", "check", "-c", str(write(tmp_path, text))]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "(Permission denied): check that edged may read it" in result.stderr
    assert "corrupt" not in result.stderr


def test_check_reads_the_first_frame_of_each_file_camera_and_names_each_that_fails(
    tmp_path: Path, seed_model: Path, clip: Path, media_dir: Path
) -> None:
    renamed = tmp_path / "renamed.mp4"
    renamed.write_bytes((media_dir / "images" / "astronaut.png").read_bytes())
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_text("not a video\n")
    text = minimal(seed_model, clip) + f"  renamed:\n    url: {renamed}\n  corrupt:\n    url: {corrupt}\n"
    garbled = tmp_path / "garbled.png"
    garbled.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    text += f"  garbled:\n    url: {garbled}\n"
    text += "  lobby:\n    url: rtsp://127.0.0.1:9/none\n"  # a stream is not probed: it may not be up yet
    path = write(tmp_path, text)

    result = edged("check", "-c", str(path))

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert lines[0].startswith(f"edged: {path}: camera renamed: {renamed} holds an image (PNG), not a video")
    assert lines[1].startswith(f"edged: {path}: camera corrupt: ")
    assert lines[2].startswith(f"edged: {path}: camera garbled: {garbled} is not a readable image")
    assert "Traceback" not in result.stderr


def test_check_refuses_a_corrupt_model(tmp_path: Path, seed_model: Path, clip: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text(seed_model.read_text()[:5000])  # truncated XML
    (tmp_path / "broken.bin").write_bytes(seed_model.with_suffix(".bin").read_bytes()[:1000])

    result = edged("check", "-c", str(write(tmp_path, minimal(broken, clip))))

    assert result.returncode == 2
    assert "broken.xml" in result.stderr
    assert "corrupt" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_refuses_a_model_without_its_weights(tmp_path: Path, seed_model: Path, clip: Path) -> None:
    lonely = tmp_path / "lonely.xml"
    lonely.write_text(seed_model.read_text())

    path = write(tmp_path, minimal(lonely, clip))

    result = edged("check", "-c", str(path))

    assert result.returncode == 2
    assert result.stderr.startswith(f"edged: {path}: model.path: model {lonely}: its weights file lonely.bin")


def test_a_models_dir_that_cannot_be_read_is_named_in_one_line(tmp_path: Path, seed_model: Path, clip: Path) -> None:
    # The operator's case is EACCES (a home folder systemd's ProtectHome= hides) or EIO (a dead share), which
    # root, who runs the tests, never gets; a name too long fails the same lookups with an OSError too.
    unreadable = tmp_path / ("x" * 300)
    path = write(tmp_path, f"models_dir: {unreadable}\n" + minimal(seed_model, clip))

    result = edged("check", "-c", str(path))

    assert result.returncode == 2
    assert result.stderr == (
        f"edged: {path}: models_dir: {unreadable / 'face-detection-adas-binary-0001.yaml'} cannot be read (File name "
        "too long): give edged access to it or "
        "set models_dir / $EDGED_MODELS_DIR to a folder it can read\n"
    )


def test_a_stray_file_that_is_not_utf8_in_models_dir_does_not_refuse_a_model_given_by_path(
    tmp_path: Path, shared_dir: Path, clip: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "notes.yaml").write_bytes(b"\xff\xfe not text")
    # Not named after its descriptor: edged looks through the folder's descriptors for the one listing it.
    ssh = shared_dir / "models/ssh-contract-retinaface-mnet025/retinaface-mnet025-ssh-640.xml"
    path = write(tmp_path, f"models_dir: {models}\n" + minimal(ssh, clip))

    result = edged("check", "-c", str(path))

    assert result.returncode == 0, result.stderr


def test_check_names_the_key_of_a_device_this_machine_lacks(tmp_path: Path, seed_model: Path, clip: Path) -> None:
    text = f"models:\n  fast:\n    path: {seed_model}\n    device: NPU.7\ncameras:\n  door:\n    url: {clip}\n"
    path = write(tmp_path, text)

    result = edged("check", "-c", str(path))

    assert result.returncode == 2
    assert result.stderr.startswith(f"edged: {path}: models.fast.device: model fast: device 'NPU.7' is not available")


def test_several_models_each_camera_picks_one(tmp_path: Path, shared_dir: Path, clip: Path) -> None:
    text = (
        f"models_dir: {shared_dir / 'models'}\n"
        "models:\n"
        f"  fast:\n    path: {shared_dir / SEED}\n"
        "  ssh:\n    name: ssh-contract-retinaface-mnet025\n    confidence: 0.6\n"
        f"cameras:\n  door:\n    url: {clip}\n  hall:\n    url: {clip}\n    model: ssh\n"
    )
    config = load_config(write(tmp_path, text))
    specs = config.model_specs()

    assert (config.model_of("door"), config.model_of("hall")) == ("fast", "ssh")
    assert specs["ssh"].xml == shared_dir / "models/ssh-contract-retinaface-mnet025/retinaface-mnet025-ssh-640.xml"
    assert specs["ssh"].confidence == 0.6
    assert specs["ssh"].preprocessing.resize == "letterbox"  # from its descriptor


def test_a_descriptor_name_finds_its_files_through_edged_models_dir(
    tmp_path: Path, shared_dir: Path, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGED_MODELS_DIR", str(shared_dir / "models"))
    text = f"model:\n  name: face-detection-adas-0001\n  precision: FP16-INT8\ncameras:\n  door:\n    url: {clip}\n"

    spec = load_config(write(tmp_path, text)).model_specs()["face-detection-adas-0001"]

    assert spec.xml == shared_dir / "models/face-detection-adas-0001/FP16-INT8/face-detection-adas-0001.xml"


def test_a_descriptor_without_its_files_says_where_they_were_looked_for(tmp_path: Path, clip: Path) -> None:
    text = f"models_dir: {tmp_path}\nmodel:\n  name: face-detection-retail-0004\ncameras:\n  door:\n    url: {clip}\n"

    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, text))

    assert "model.name: model files of face-detection-retail-0004 not found at" in str(refused.value)
