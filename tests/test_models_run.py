"""Both model families through the product: `edged detect`, and `edged run` with two models at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import pytest

from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber
from tests.test_run import SEED, Edged

SSH = "ssh-contract-retinaface-mnet025"
RETAIL = "models/face-detection-retail-0004/FP32/face-detection-retail-0004.xml"


def detect(*args: str) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "edged.cli", "detect", *args]
    result = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found


def iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_detect_with_the_seed_model_finds_the_astronaut(shared_dir: Path) -> None:
    [image] = detect("-m", str(shared_dir / SEED), str(shared_dir / "media/images/astronaut.png"))

    assert image["model"] == "face-detection-adas-binary-0001"
    [face] = image["faces"]
    x1, y1, x2, y2 = face["box"]
    assert 170 <= x1 <= 190 and 260 <= x2 <= 280 and 48 <= y1 <= 65 and 168 <= y2 <= 186


def test_detect_with_the_ssh_model_by_descriptor_name_agrees_with_the_seed_model(shared_dir: Path) -> None:
    images = [str(shared_dir / "media/images" / name) for name in ("astronaut.png", "cameraman.png")]
    ssd = detect("-m", str(shared_dir / SEED), *images)
    ssh = detect("-m", SSH, "--models-dir", str(shared_dir / "models"), *images)

    assert [image["model"] for image in ssh] == [SSH, SSH]
    assert len(ssh[0]["faces"]) == 1 and len(ssh[1]["faces"]) == 1
    assert iou(ssh[0]["faces"][0]["box"], ssd[0]["faces"][0]["box"]) >= 0.7


def test_detect_prints_one_line_per_image_inside_a_json_array(shared_dir: Path) -> None:
    images = [str(shared_dir / "media/images" / name) for name in ("astronaut.png", "cameraman.png")]
    command = [sys.executable, "-m", "edged.cli", "detect", "-m", str(shared_dir / SEED), *images]
    lines = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout.splitlines()

    assert lines[0] == "[" and lines[-1] == "]"
    assert [json.loads(line.rstrip(","))["image"] for line in lines[1:-1]] == images


def test_the_ssh_model_given_by_its_file_keeps_its_descriptors_settings(shared_dir: Path, tmp_path: Path) -> None:
    capture = cv2.VideoCapture(str(shared_dir / "media/classroom.mp4"))
    ok, frame = capture.read()
    capture.release()
    assert ok
    image = tmp_path / "classroom.png"  # 16:9: stretching it onto 640x640 would lose faces
    cv2.imwrite(str(image), frame)
    xml = shared_dir / "models/ssh-contract-retinaface-mnet025/retinaface-mnet025-ssh-640.xml"

    [by_path] = detect("-m", str(xml), str(image))
    [by_name] = detect("-m", SSH, "--models-dir", str(shared_dir / "models"), str(image))

    assert by_path["faces"] == by_name["faces"]
    assert len(by_path["faces"]) >= 3


def test_detect_refuses_an_unknown_model_name_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edged.cli", "detect", "-m", "no-such-model", "x.png"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "no descriptor named 'no-such-model'; known:" in result.stderr
    assert "Traceback" not in result.stderr


def test_detect_names_an_image_that_is_not_there_in_one_line(shared_dir: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "edged.cli", "detect", "-m", str(shared_dir / SEED), str(tmp_path / "gone.png")]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert result.stderr == f"edged: {tmp_path / 'gone.png'}: no such image file: check the path\n"


def test_detect_by_a_name_whose_files_are_not_there_points_at_its_option(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "edged.cli", "detect", "-m", SSH, "--models-dir", str(tmp_path), "x.png"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert result.stderr.startswith(f"edged: -m: model files of {SSH} not found at {tmp_path}/")
    assert "pass --models-dir or set $EDGED_MODELS_DIR to the folder that holds them" in result.stderr


@pytest.mark.slow
def test_run_with_two_models_at_once_each_message_names_its_model(
    tmp_path: Path, shared_dir: Path, broker: Mosquitto
) -> None:
    clip = shared_dir / "media/faces-1080p30.mp4"
    config = tmp_path / "edged.yaml"
    config.write_text(
        f"mqtt:\n  host: {broker.host}\n  port: {broker.port}\n"
        f"models_dir: {shared_dir / 'models'}\n"
        f"models:\n  ssd:\n    path: {shared_dir / SEED}\n  ssh:\n    name: {SSH}\n"
        f"cameras:\n"
        f"  lobby-ssd:\n    url: {clip}\n    model: ssd\n"
        f"  lobby-ssh:\n    url: {clip}\n    model: ssh\n"
        f"  astronaut-ssh:\n    url: {shared_dir / 'media/images/astronaut.png'}\n    fps: 5\n    model: ssh\n"
    )
    expected = {"lobby-ssd": "ssd", "lobby-ssh": "ssh", "astronaut-ssh": "ssh"}
    with Subscriber(broker.host, broker.port, "edged/+/detections") as subscriber:
        edged = Edged(config, tmp_path / "edged.log")
        try:
            for camera in expected:
                subscriber.wait_for_count(f"edged/{camera}/detections", 10, timeout=90)
            code, _ = edged.stop(signal.SIGTERM)
        finally:
            edged.close()

    assert code == 0, edged.log.read_text()
    for camera, model in expected.items():
        messages = subscriber.json_messages(f"edged/{camera}/detections")
        assert {m["model"] for m in messages} == {model}
        with_faces = [m for m in messages if m["faces"]]
        assert len(with_faces) >= 0.8 * len(messages), camera
    lobby = subscriber.json_messages("edged/lobby-ssh/detections")
    assert sum(len(m["faces"]) == 2 for m in lobby) >= 0.5 * len(lobby)  # both faces of the clip


@pytest.mark.slow
def test_a_model_of_live_cameras_keeps_two_requests_fewer_in_flight_than_a_model_of_files_at_full_speed(
    tmp_path: Path, shared_dir: Path, broker: Mosquitto
) -> None:
    """Latency for live cameras, throughput for files read as fast as detection goes (same model file)."""
    model, clip = shared_dir / RETAIL, shared_dir / "media/classroom.mp4"
    config = tmp_path / "edged.yaml"
    config.write_text(
        f"mqtt:\n  host: {broker.host}\n  port: {broker.port}\n"
        "stats:\n  interval: 1\n"
        f"models:\n  batch:\n    path: {model}\n  live:\n    path: {model}\n"
        "cameras:\n"
        f"  replay:\n    url: {clip}\n    realtime: false\n    model: batch\n"
        f"  door:\n    url: {clip}\n    model: live\n"
    )
    with Subscriber(broker.host, broker.port, "edged/stats") as subscriber:
        edged = Edged(config, tmp_path / "edged.log")
        try:
            stats = subscriber.wait_for_message("edged/stats", lambda m: bool(m.json()["models"]), timeout=90).json()
        finally:
            edged.close()

    models = stats["models"]
    assert models["batch"]["requests"] == models["live"]["requests"] + 2 >= 3


def edged_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edged.cli", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def test_models_lists_every_descriptor_with_its_family() -> None:
    result = edged_cli("models")

    assert result.returncode == 0
    assert f"{SSH}" in result.stdout and "ssh" in result.stdout
    assert "face-detection-adas-binary-0001" in result.stdout


def test_models_verify_accepts_the_real_files(shared_dir: Path) -> None:
    result = edged_cli("models", "verify", str(shared_dir / "models"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 models in 5 precisions checked, 0 problems" in result.stdout


def test_models_verify_reports_a_damaged_copy(tmp_path: Path, shared_dir: Path) -> None:
    source = shared_dir / "models/face-detection-retail-0004/FP32"
    copy = tmp_path / "face-detection-retail-0004/FP32"
    copy.mkdir(parents=True)
    (copy / "face-detection-retail-0004.xml").write_bytes((source / "face-detection-retail-0004.xml").read_bytes())
    damaged = bytearray((source / "face-detection-retail-0004.bin").read_bytes())
    damaged[100] ^= 0xFF
    (copy / "face-detection-retail-0004.bin").write_bytes(bytes(damaged))

    result = edged_cli("models", "verify", str(tmp_path))

    assert result.returncode == 1
    assert "mismatch face-detection-retail-0004 FP32" in result.stdout
    assert "1 model in 1 precision checked, 1 problem" in result.stdout


def test_models_verify_of_a_folder_without_models_exits_2_saying_so(tmp_path: Path) -> None:
    result = edged_cli("models", "verify", str(tmp_path))

    assert result.returncode == 2
    assert result.stderr == f"edged: {tmp_path}: no known model files found (see `edged models` for the layout)\n"
