"""Signals and systemd: reload on SIGHUP without disturbing untouched cameras, clean stops, sd_notify.

edged runs as a child process; the notify socket is a real AF_UNIX datagram socket the test binds,
exactly what systemd hands a Type=notify service.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.edged_process import EdgedProcess, base_config, largest_gap, seqs, write_config

FPS = 10.0
SEED = "models/face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml"


def _camera(shared_dir: Path, media: str, **options: Any) -> dict[str, Any]:
    return {"url": str(shared_dir / "media" / media), "fps": FPS, **options}


@pytest.mark.slow
def test_sighup_adds_removes_and_restarts_cameras_while_untouched_ones_keep_streaming(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any
) -> None:
    watcher = subscriber(broker, "edged/#")
    cameras = {
        "kept": _camera(shared_dir, "classroom.mp4"),
        "gone": _camera(shared_dir, "head-pose-face-detection-female-and-male.mp4"),  # a face always in view
        "tuned": _camera(shared_dir, "head-pose-face-detection-female.mp4"),
    }
    path = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, cameras))
    with EdgedProcess(path, tmp_path / "edged.log") as edged:
        for name in cameras:
            watcher.wait_for_count(f"edged/{name}/detections", 5, timeout=60)
        cameras.pop("gone")
        cameras["tuned"] = {**cameras["tuned"], "fps": 5.0}
        cameras["added"] = _camera(shared_dir, "head-pose-face-detection-male.mp4")
        write_config(path, base_config(shared_dir, broker.port, cameras))

        reload_start = time.monotonic()
        edged.send(signal.SIGHUP)
        edged.wait_for_log(r"reload done in [\d.]+ s: added added; removed gone; restarted tuned")
        watcher.wait_for_count("edged/added/detections", 5, timeout=30)
        reload_end = time.monotonic()
        code, _ = edged.stop(signal.SIGTERM)
        log = edged.log()

    assert code == 0, log
    assert [m.text() for m in watcher.messages("edged/gone/status")][-2:] == ["offline", ""]  # down, then deleted
    late = subscriber(broker, "edged/gone/#")
    time.sleep(0.5)  # retained messages come right after the subscription
    assert late.messages() == []  # nothing retained of a camera that no longer exists
    gone_events = [m.json()["type"] for m in watcher.messages("edged/events") if m.json()["camera"] == "gone"]
    assert gone_events[0] == "new" and gone_events[-1] == "end"  # its open face event ended with it
    assert "online" in [m.text() for m in watcher.messages("edged/added/status")]
    assert "offline" in [m.text() for m in watcher.messages("edged/tuned/status")]  # restarted: down, then up
    kept = seqs(watcher, "kept")
    assert kept == list(range(len(kept)))
    assert largest_gap(watcher, "kept", reload_start, reload_end) < 1.0  # 10 fps through the reload
    assert "camera kept" not in log.split("received SIGHUP")[1].split("reload done")[0]


def _fps_not_a_number(text: str, shared_dir: Path) -> str:
    return text.replace("fps: 10.0", "fps: fast")


def _key_that_is_a_list(text: str, shared_dir: Path) -> str:
    return text + "? [a, b]\n: 1\n"


def _camera_on_a_model_not_running(text: str, shared_dir: Path) -> str:
    config = yaml.safe_load(text)
    second = shared_dir / "models/face-detection-adas-0001/FP16/face-detection-adas-0001.xml"
    config["models"] = {"first": config.pop("model"), "second": {"path": str(second)}}
    config["cameras"]["kept"]["model"] = "second"
    return str(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "refusal"),
    [
        (_fps_not_a_number, r"edged\.yaml: cameras\.kept\.fps"),
        (_key_that_is_a_list, r"edged\.yaml: line \d+: a key must be a plain name"),
        (_camera_on_a_model_not_running, r"edged\.yaml: cameras\.kept: its model second is not running"),
    ],
    ids=["value-of-a-wrong-type", "key-that-is-a-list", "model-not-compiled"],
)
def test_an_invalid_config_on_sighup_is_refused_and_the_running_one_kept(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any, edit: Any, refusal: str
) -> None:
    watcher = subscriber(broker, "edged/#")
    cameras = {"kept": _camera(shared_dir, "classroom.mp4")}
    path = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, cameras))
    with EdgedProcess(path, tmp_path / "edged.log") as edged:
        watcher.wait_for_count("edged/kept/detections", 5, timeout=60)
        path.write_text(edit(path.read_text(), shared_dir))
        edged.send(signal.SIGHUP)
        edged.wait_for_log(r"reload refused, the running configuration is kept: .*" + refusal)
        count = len(watcher.messages("edged/kept/detections"))
        watcher.wait_for_count("edged/kept/detections", count + 10, timeout=10)
        code, _ = edged.stop(signal.SIGTERM)
        log = edged.log()
    assert code == 0
    assert "Traceback" not in log


@pytest.mark.slow
def test_sigterm_with_the_broker_down_still_exits_0_within_5_s(tmp_path: Path, shared_dir: Path, broker: Any) -> None:
    cameras = {"kept": _camera(shared_dir, "classroom.mp4")}
    path = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, cameras))
    with EdgedProcess(path, tmp_path / "edged.log") as edged:
        edged.wait_for_log("MQTT: connected")
        broker.kill()
        edged.wait_for_log("MQTT: lost the connection")
        time.sleep(1.0)  # detections pile up in the outbox
        code, seconds = edged.stop(signal.SIGTERM)
        log = edged.log()
    assert code == 0, log
    assert seconds < 5
    assert "queued messages could not be delivered before shutdown" in log


@contextmanager
def _broker_address_that_never_answers() -> Iterator[int]:
    """A port whose connects hang, as a broker host that drops packets does: a listener whose accept queue is
    full, so the kernel drops the SYNs of any further connect."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    queued = [socket.socket() for _ in range(3)]
    for client in queued:
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
    try:
        yield port
    finally:
        for sock in (*queued, listener):
            sock.close()


@pytest.mark.slow
def test_sigterm_while_the_broker_connect_hangs_exits_0_without_waiting_for_it(
    tmp_path: Path, shared_dir: Path
) -> None:
    cameras = {"kept": _camera(shared_dir, "classroom.mp4")}
    with _broker_address_that_never_answers() as port:
        path = write_config(tmp_path / "edged.yaml", base_config(shared_dir, port, cameras))
        with EdgedProcess(path, tmp_path / "edged.log") as edged:
            edged.wait_for_log("camera kept: online")  # the first connect has begun, and hangs for 5 s
            assert "MQTT" not in edged.log(), "the connect must still hang when the stop comes"
            code, seconds = edged.stop(signal.SIGTERM)
            log = edged.log()
    assert code == 0, log
    assert seconds < 3, log  # not held up by paho's connect timeout
    assert "edged running" not in log  # stopped while it waited for the broker: it never said it was running


class NotifySocket:
    """A bound AF_UNIX datagram socket recording every sd_notify message, like systemd's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def keys(self) -> list[str]:
        """The notable key of each message in order (READY, RELOADING, STOPPING, WATCHDOG, STATUS)."""
        order = ("READY", "RELOADING", "STOPPING", "WATCHDOG", "STATUS")
        return [next(key for key in order if key in fields) for _, fields in self.messages]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.mark.slow
def test_systemd_hears_ready_watchdog_status_reload_and_stop(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any, notify_socket: NotifySocket
) -> None:
    watcher = subscriber(broker, "edged/#")
    cameras = {"kept": _camera(shared_dir, "classroom.mp4")}
    path = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, cameras))
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "2000000"}
    with EdgedProcess(path, tmp_path / "edged.log", env=env) as edged:
        watcher.wait_for_count("edged/kept/detections", 5, timeout=60)
        time.sleep(3.0)  # a 2 s watchdog is fed every second
        edged.send(signal.SIGHUP)
        edged.wait_for_log("reload done")
        time.sleep(0.5)
        code, _ = edged.stop(signal.SIGTERM)
    assert code == 0
    keys = notify_socket.keys()
    ready = keys.index("READY")
    assert "WATCHDOG" not in keys[:ready]  # the watchdog counts only once edged said it is ready
    assert keys.count("WATCHDOG") >= 3
    reloading = keys.index("RELOADING")
    assert "READY" in keys[reloading:]
    assert "MONOTONIC_USEC" in notify_socket.messages[reloading][1]
    assert keys[-1] == "STOPPING"
    statuses = [fields["STATUS"] for _, fields in notify_socket.messages if "STATUS" in fields]
    assert any("1/1 cameras online" in status and "MQTT connected" in status for status in statuses)


@pytest.mark.slow
def test_a_camera_stopped_on_an_error_is_told_in_status_and_a_reload_after_the_fix_starts_it_again(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any, notify_socket: NotifySocket
) -> None:
    watcher = subscriber(broker, "edged/#")
    broken = tmp_path / "yard.mp4"
    broken.write_bytes(bytes(range(256)) * 800)  # not a video: the camera stops, the other runs on
    cameras = {"kept": _camera(shared_dir, "classroom.mp4"), "yard": _camera(shared_dir, "classroom.mp4")}
    cameras["yard"]["url"] = str(broken)
    path = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, cameras))
    env = {"NOTIFY_SOCKET": str(notify_socket.path)}
    with EdgedProcess(path, tmp_path / "edged.log", env=env) as edged:
        edged.wait_for_log("camera yard: cannot open")
        watcher.wait_for_count("edged/kept/detections", 5, timeout=60)
        told = "1/1 cameras online, stopped on an error: yard"
        deadline = time.monotonic() + 15  # STATUS= is refreshed every 5 s
        while not any(told in fields.get("STATUS", "") for _, fields in notify_socket.messages):
            assert time.monotonic() < deadline, [fields for _, fields in notify_socket.messages]
            time.sleep(0.2)
        shutil.copy(shared_dir / "media" / "classroom.mp4", broken)  # the operator fixes the file
        edged.send(signal.SIGHUP)
        edged.wait_for_log("reload done in .* s: restarted yard")
        watcher.wait_for_count("edged/yard/detections", 5, timeout=60)
        code, _ = edged.stop(signal.SIGTERM)
        log = edged.log()
    assert code == 0, log


@pytest.mark.slow
def test_a_stop_during_a_reload_stuck_reading_the_file_still_ends_edged_at_once(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any
) -> None:
    watcher = subscriber(broker, "edged/#")
    cameras = {"kept": _camera(shared_dir, "classroom.mp4")}
    path = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, cameras))
    with EdgedProcess(path, tmp_path / "edged.log") as edged:
        watcher.wait_for_count("edged/kept/detections", 5, timeout=60)
        path.unlink()
        os.mkfifo(path)  # opening it blocks until a writer comes: as a file on a hung network share does
        edged.send(signal.SIGHUP)
        edged.wait_for_log("received SIGHUP")
        code, seconds = edged.stop(signal.SIGTERM)
        log = edged.log()
    assert code == 0, log
    assert seconds < 8, log  # within systemd's TimeoutStopSec=10 (before: until the file could be read, or SIGKILL)
    assert "reload abandoned for the stop" in log
    assert watcher.wait_for_message("edged/kept/status", lambda m: m.payload == b"offline", timeout=5)


@pytest.mark.slow
def test_a_reload_goes_ahead_while_a_running_cameras_file_is_away(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any
) -> None:
    watcher = subscriber(broker, "edged/#")
    on_share = tmp_path / "share.mp4"
    shutil.copy(shared_dir / "media" / "classroom.mp4", on_share)
    cameras = {"kept": _camera(shared_dir, "classroom.mp4"), "shared": {"url": str(on_share), "fps": FPS}}
    config = base_config(shared_dir, broker.port, cameras)
    path = write_config(tmp_path / "edged.yaml", config)
    with EdgedProcess(path, tmp_path / "edged.log") as edged:
        watcher.wait_for_count("edged/shared/detections", 5, timeout=60)
        on_share.unlink()  # the share dropped out: an outage that camera retries
        edged.wait_for_log("camera shared: .* is not there any more: put it back", timeout=30)
        config["cameras"]["added"] = _camera(shared_dir, "classroom.mp4")
        write_config(path, config)
        edged.send(signal.SIGHUP)
        edged.wait_for_log("reload done in .* s: added added")
        watcher.wait_for_count("edged/added/detections", 5, timeout=60)
        code, _ = edged.stop(signal.SIGTERM)
        log = edged.log()
    assert code == 0, log
    assert "reload refused" not in log


# A bug no input can reach, injected where it takes the server down at once, with the model and the camera just
# started.
_BUG_IN_THE_MQTT_SESSION = """
import sys

import aiomqtt

from edged.cli import main


async def fail(self):
    raise RuntimeError("a bug in the MQTT session")


aiomqtt.Client.__aenter__ = fail
sys.exit(main(sys.argv[1:]))
"""


def test_a_bug_that_takes_edged_down_exits_1_with_its_traceback_not_with_an_abort(
    tmp_path: Path, shared_dir: Path, broker: Any
) -> None:
    config = base_config(shared_dir, broker.port, {"door": {"url": str(shared_dir / "media/images/astronaut.png")}})
    config["model"]["path"] = str(shared_dir / SEED)  # the seed model: it takes a second or two to compile
    config_path = write_config(tmp_path / "edged.yaml", config)
    buggy = tmp_path / "buggy_edged.py"
    buggy.write_text(_BUG_IN_THE_MQTT_SESSION)

    result = subprocess.run(
        [sys.executable, str(buggy), "run", "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1, result.stderr[-3000:]
    assert "edged failed unexpectedly; please report this with the lines above" in result.stderr
    assert "RuntimeError: a bug in the MQTT session" in result.stderr
    assert "terminate called" not in result.stderr
    assert "every camera has finished" not in result.stderr  # they did not: the bug ended them
