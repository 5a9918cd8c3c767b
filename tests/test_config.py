"""The configuration file: defaults, substitution, paths, and every way it is refused."""

from __future__ import annotations

import os
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
    assert (config.model.device, config.model.confidence) == ("CPU", 0.5)
    door = config.cameras["door"]
    assert (door.fps, door.realtime, door.loop) == (None, True, True)
    assert config.mqtt.qos.detections == 0


def test_environment_variables_are_substituted_with_defaults(tmp_path: Path, seed_model: Path, clip: Path) -> None:
    text = minimal(seed_model, clip) + "mqtt:\n  host: ${BROKER_HOST}\n  topic_prefix: ${PREFIX:-site1}\n"
    config = load_config(write(tmp_path, text), environ={"BROKER_HOST": "broker.lan"})

    assert config.mqtt.host == "broker.lan"
    assert config.mqtt.topic_prefix == "site1"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, shared_dir: Path) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    model = os.path.relpath(shared_dir / SEED, config_dir)
    video = os.path.relpath(shared_dir / "media/classroom.mp4", config_dir)
    path = write(config_dir, f"model:\n  path: {model}\ncameras:\n  door:\n    url: {video}\n")

    config = load_config(path)

    assert config.model.path == (shared_dir / SEED).resolve()
    assert Path(config.cameras["door"].url) == (shared_dir / "media/classroom.mp4").resolve()


def test_a_device_number_and_stream_urls_are_accepted(tmp_path: Path, seed_model: Path) -> None:
    text = (
        f"model:\n  path: {seed_model}\ncameras:\n  usb:\n    url: 0\n  v4l:\n    url: /dev/video2\n"
        "  door:\n    url: rtsp://10.0.0.5/stream1\n  mjpeg:\n    url: http://10.0.0.6/video.mjpg\n"
    )
    cameras = load_config(write(tmp_path, text)).cameras

    assert [cameras[name].kind for name in ("usb", "v4l", "door", "mjpeg")] == ["device", "device", "rtsp", "http"]


REJECTIONS = [
    # (case, yaml given the seed model path as {model} and a clip as {clip}, expected fragment of the message)
    (
        "unknown top-level key",
        "model:\n  path: {model}\ncameras:\n  d:\n    url: {clip}\nmqttt: {{}}\n",
        "mqttt: unknown key",
    ),
    (
        "unknown camera key",
        "model:\n  path: {model}\ncameras:\n  d:\n    url: {clip}\n    fsp: 5\n",
        "cameras.d.fsp: unknown key",
    ),
    ("wrong type", "model:\n  path: {model}\ncameras:\n  d:\n    url: {clip}\n    fps: fast\n", "cameras.d.fps"),
    ("negative fps", "model:\n  path: {model}\ncameras:\n  d:\n    url: {clip}\n    fps: -3\n", "cameras.d.fps"),
    (
        "port out of range",
        "mqtt:\n  port: 70000\nmodel:\n  path: {model}\ncameras:\n  d:\n    url: {clip}\n",
        "mqtt.port",
    ),
    (
        "confidence above 1",
        "model:\n  path: {model}\n  confidence: 1.5\ncameras:\n  d:\n    url: {clip}\n",
        "model.confidence",
    ),
    (
        "bad camera name",
        "model:\n  path: {model}\ncameras:\n  front door:\n    url: {clip}\n",
        "cameras.front door: a camera name",
    ),
    (
        "missing model file",
        "model:\n  path: /nonexistent/m.xml\ncameras:\n  d:\n    url: {clip}\n",
        "model.path: model file not found",
    ),
    (
        "missing video file",
        "model:\n  path: {model}\ncameras:\n  d:\n    url: /nonexistent/v.mp4\n",
        "cameras.d.url: file not found",
    ),
    (
        "unsupported scheme",
        "model:\n  path: {model}\ncameras:\n  d:\n    url: ftp://cam/x\n",
        "cameras.d.url: unsupported URL scheme 'ftp'",
    ),
    ("no cameras", "model:\n  path: {model}\ncameras: {{}}\n", "cameras"),
    ("no model", "cameras:\n  d:\n    url: {clip}\n", "model: required key is missing"),
    (
        "duplicate camera",
        "model:\n  path: {model}\ncameras:\n  d:\n    url: {clip}\n  d:\n    url: {clip}\n",
        "duplicate key 'd'",
    ),
    ("not YAML", "model: [unclosed\n", "not valid YAML: line"),
    ("empty file", "", "the config file is empty"),
    ("not a mapping", "- a\n- b\n", "must be a mapping"),
    (
        "wildcard prefix",
        "mqtt:\n  topic_prefix: a/#\nmodel:\n  path: {model}\ncameras:\n  d:\n    url: {clip}\n",
        "mqtt.topic_prefix",
    ),
    (
        "unset variable",
        "mqtt:\n  host: ${{NOPE_UNSET}}\nmodel:\n  path: {model}\ncameras:\n  d:\n    url: {clip}\n",
        "mqtt.host: environment variable NOPE_UNSET is not set",
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), REJECTIONS, ids=[case for case, _, _ in REJECTIONS])
def test_bad_configs_are_refused_naming_the_file_and_key(
    tmp_path: Path, seed_model: Path, clip: Path, case: str, text: str, expected: str
) -> None:
    path = write(tmp_path, text.format(model=seed_model, clip=clip))

    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})

    assert str(path) in str(refused.value)
    assert expected in str(refused.value)


def test_credentials_in_urls_never_appear_in_errors(tmp_path: Path, seed_model: Path) -> None:
    path = write(
        tmp_path, f"model:\n  path: {seed_model}\ncameras:\n  d:\n    url: rtsps://admin:hunter2@cam/x\n    fps: 0\n"
    )

    with pytest.raises(ConfigError) as refused:
        load_config(path)

    assert "hunter2" not in str(refused.value)


def edged(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


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

    result = edged("check", "-c", str(write(tmp_path, minimal(lonely, clip))))

    assert result.returncode == 2
    assert "lonely.bin is missing" in result.stderr
