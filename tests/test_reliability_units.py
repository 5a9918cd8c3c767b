"""The pure parts of reliability: new config keys, password sources, backoff, health, reload plans,
the camera thread that can be abandoned, and a camera whose frames change size."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged import camera as camera_module
from edged.backoff import Retry
from edged.camera import Camera
from edged.config import Backoff, CameraConfig, Config, MqttConfig, load_config
from edged.errors import ConfigError
from edged.frame import FrameSlot, Image
from edged.health import CameraState, Snapshot, assess
from edged.redact import redact_url
from edged.reload import diff
from edged.secrets import mqtt_password, tls_context
from edged.worker import Worker

MODEL = "models/face-detection-retail-0004/FP32/face-detection-retail-0004.xml"


def _load(tmp_path: Path, shared_dir: Path, mqtt: str = "", camera: str = "") -> Config:
    text = (
        f"model:\n  path: {shared_dir / MODEL}\n"
        f"cameras:\n  door:\n    url: {shared_dir / 'media/classroom.mp4'}\n{camera}"
        f"mqtt:\n  host: 127.0.0.1\n{mqtt}"
    )
    (tmp_path / "edged.yaml").write_text(text)
    return load_config(tmp_path / "edged.yaml", environ={})


def _refusal(tmp_path: Path, shared_dir: Path, **parts: str) -> str:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, shared_dir, **parts)
    return str(error.value)


# -- config keys ------------------------------------------------------------------------------------


def test_reliability_defaults(tmp_path: Path, shared_dir: Path) -> None:
    config = _load(tmp_path, shared_dir)
    door = config.cameras["door"]
    assert (door.stall_timeout, door.backoff.min, door.backoff.max) == (10.0, 1.0, 30.0)
    assert (config.mqtt.outbox_size, config.mqtt.inflight, config.mqtt.qos.detections, config.mqtt.qos.status) == (
        10_000,
        20,
        0,
        1,
    )
    assert config.mqtt.tls is None and config.mqtt.credential_name == "mqtt-password"


def test_tls_moves_the_default_port_to_8883_but_an_explicit_port_wins(tmp_path: Path, shared_dir: Path) -> None:
    assert _load(tmp_path, shared_dir, mqtt="  tls: {}\n").mqtt.port == 8883
    assert _load(tmp_path, shared_dir, mqtt="  tls: {}\n  port: 9000\n").mqtt.port == 9000


def test_tls_paths_are_relative_to_the_config_file(tmp_path: Path, shared_dir: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    assert _load(tmp_path, shared_dir, mqtt="  tls: {ca: ca.pem}\n").mqtt.tls.ca == tmp_path / "ca.pem"  # type: ignore[union-attr]


def test_a_password_file_gives_its_first_line_only(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\r\n# rotated 2026-11-30 by ops\n")
    assert mqtt_password(MqttConfig(username="u", password_file=tmp_path / "pw"), {}, "c") == "s3cret"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("cannot open rtsp://admin:p@ss@10.0.0.5:554/x", "cannot open rtsp://***@10.0.0.5:554/x"),
        ("http://10.0.0.6/videostream.cgi?user=admin&pwd=hunter2", "http://10.0.0.6/videostream.cgi?user=***&pwd=***"),
        (
            "http://10.0.0.7/snap.jpg?channel=1&Password=x&token=abc#f",
            "http://10.0.0.7/snap.jpg?channel=1&Password=***&token=***#f",
        ),
        ("http://10.0.0.8/mjpeg?at=a@b", "http://10.0.0.8/mjpeg?at=a@b"),
        ("rtsp://10.0.0.9/stream1", "rtsp://10.0.0.9/stream1"),
        # Passwords not percent-encoded as they should be: all of them goes all the same.
        ("(got 'rtsp://admin:Se/cretX@127.0.0.1:1/stream1')", "(got 'rtsp://***@127.0.0.1:1/stream1')"),
        ("cannot open rtsp://admin:p@ss/w0rd?X#@10.0.0.5/s", "cannot open rtsp://***@10.0.0.5/s"),
        ("rtsp://user@10.0.0.5/s and rtsp://10.0.0.9/t", "rtsp://***@10.0.0.5/s and rtsp://10.0.0.9/t"),
    ],
)
def test_camera_credentials_never_reach_a_log_line(text: str, shown: str) -> None:
    assert redact_url(text) == shown


@pytest.mark.parametrize(
    ("mqtt", "camera", "expected"),
    [
        ("  backoff: {min: 10, max: 1}\n", "", "mqtt.backoff: min (10 s) must not exceed max (1 s)"),
        ("", "    backoff: {min: 0}\n", "cameras.door.backoff.min"),
        ("", "    stall_timeout: -1\n", "cameras.door.stall_timeout: Input should be greater than 0"),
        ("  tls: {ca: /nonexistent/ca.pem}\n", "", "mqtt.tls.ca: file not found: /nonexistent/ca.pem"),
        ("  password_env: PW\n", "", "mqtt: password_env is set but username is not"),
        ("  username: u\n  password_env: A\n  password_file: /x\n", "", "give the password one way only"),
        ("  credential: ../etc/passwd\n", "", "mqtt.credential: must be a plain credential name"),
        ("  username: u\n  password_file: /x\n  credential: pw\n", "", "not password_file and credential"),
        ("  credential: pw\n", "", "mqtt: credential is set but username is not"),
        ("  inflight: 0\n", "", "mqtt.inflight"),
    ],
)
def test_new_keys_are_validated_with_the_key_named(
    tmp_path: Path, shared_dir: Path, mqtt: str, camera: str, expected: str
) -> None:
    assert expected in _refusal(tmp_path, shared_dir, mqtt=mqtt, camera=camera)


def test_a_plain_password_needs_an_explicit_opt_in_and_is_never_echoed(tmp_path: Path, shared_dir: Path) -> None:
    refused = _refusal(tmp_path, shared_dir, mqtt="  username: u\n  password: hunter2\n")
    assert "plain-text password in the config file is refused" in refused and "hunter2" not in refused
    wrong_type = _refusal(tmp_path, shared_dir, mqtt="  username: u\n  password: [hunter2]\n")
    assert "hunter2" not in wrong_type
    allowed = _load(tmp_path, shared_dir, mqtt="  username: u\n  password: hunter2\n  allow_plain_password: true\n")
    assert mqtt_password(allowed.mqtt, {}, "edged.yaml") == "hunter2"
    assert "hunter2" not in repr(allowed)


# -- password sources -------------------------------------------------------------------------------


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "mqtt-password").write_text("from-credential\r\n")
    assert mqtt_password(MqttConfig(username="u", password_env="PW"), {"PW": "from-env"}, "c") == "from-env"
    assert mqtt_password(MqttConfig(username="u", password_file=tmp_path / "pw"), {}, "c") == "from-file"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert mqtt_password(MqttConfig(username="u"), {}, "c") == "from-credential"
    assert mqtt_password(MqttConfig(), {}, "c") is None  # no user: no password is looked for


def test_a_password_is_the_first_line_whether_edged_or_systemd_reads_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("pw", "mqtt-password"):
        (tmp_path / name).write_text("the-password\n# rotated 2026-11-30 by ops\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert mqtt_password(MqttConfig(username="u", password_file=tmp_path / "pw"), {}, "c") == "the-password"
    assert mqtt_password(MqttConfig(username="u"), {}, "c") == "the-password"


def test_a_named_credential_cannot_be_checked_outside_systemd_and_is_not_refused_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)  # `edged check` in a shell
    assert mqtt_password(MqttConfig(username="u", credential="broker-pw"), {}, "c") is None


def test_a_user_without_a_credential_connects_without_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # systemd hands over other credentials only
    assert mqtt_password(MqttConfig(username="u"), {}, "c") is None


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("env-unset", "c: mqtt.password_env: environment variable PW is not set or empty"),
        ("file-missing", "mqtt.password_file:"),
        ("file-empty", "is empty: write the broker password into it"),
        ("credential-empty", "c: mqtt.credential: systemd credential 'mqtt-password' is empty: write the broker"),
        ("credential-not-utf8", "c: mqtt.credential: cannot read systemd credential 'mqtt-password' \\(Unicode"),
        ("credential-named-missing", "c: mqtt.credential: systemd credential 'broker-pw' is not among those handed"),
    ],
)
def test_password_source_errors_name_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: str, expected: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "mqtt-password").write_bytes(b"\xff\xfe\n" if setup == "credential-not-utf8" else b"\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = {
        "env-unset": MqttConfig(username="u", password_env="PW"),
        "file-missing": MqttConfig.model_construct(
            username="u",
            password_file=tmp_path / "missing",
            password=None,
            password_env=None,
            credential=None,
        ),
        "file-empty": MqttConfig(username="u", password_file=tmp_path / "empty"),
        "credential-empty": MqttConfig(username="u"),
        "credential-not-utf8": MqttConfig(username="u"),
        "credential-named-missing": MqttConfig(username="u", credential="broker-pw"),
    }[setup]
    with pytest.raises(ConfigError, match=expected):
        mqtt_password(config, {}, "c")


def test_a_tls_file_that_is_not_pem_is_named(tmp_path: Path) -> None:
    from edged.config import TlsConfig

    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"mqtt.tls.ca: .*ca.pem is not a usable CA certificate"):
        tls_context(TlsConfig(ca=tmp_path / "ca.pem"), "c")


# -- backoff ----------------------------------------------------------------------------------------


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    retry = Retry(Backoff(min=1.0, max=30.0))
    waits = [retry.next_wait() for _ in range(8)]
    for wait, nominal in zip(waits, [1, 2, 4, 8, 16, 30, 30, 30], strict=True):
        assert 0.8 * nominal <= wait <= 1.2 * nominal
    retry.reset()
    assert retry.next_wait() <= 1.2


# -- health -----------------------------------------------------------------------------------------


def _snapshot(**changes: Any) -> Snapshot:
    base: dict[str, Any] = {
        "cameras": (CameraState("door", True, False, 0.1, 10.0), CameraState("yard", False, False, None, 10.0)),
        "inference_stalled": 0.05,
        "stalled_model": "fast",
        "mqtt_connected": True,
        "outbox": 0,
        "dropped": 0,
        "fps": 12.34,
    }
    return Snapshot(**(base | changes))


def test_a_flowing_pipeline_is_healthy_and_summarised_on_one_line() -> None:
    health = assess(_snapshot())
    assert health.ok
    assert health.summary == "1/2 cameras online (offline: yard), 12.3 detections/s, MQTT connected, outbox 0"


def test_offline_and_finished_cameras_and_a_broker_outage_are_idle_by_design() -> None:
    cameras = (CameraState("door", False, False, 300.0, 10.0), CameraState("file", False, True, 900.0, 10.0))
    assert assess(_snapshot(cameras=cameras, inference_stalled=0.0, mqtt_connected=False)).ok


def test_a_camera_capped_to_a_frame_a_minute_is_not_taken_for_a_wedged_one() -> None:
    capped = CameraState("gate", True, False, 45.0, 10.0, frame_interval=60.0)
    assert assess(_snapshot(cameras=(capped,))).ok
    late = CameraState("gate", True, False, 85.0, 10.0, frame_interval=60.0)
    assert "camera gate is online but sent no frame for 85 s" in assess(_snapshot(cameras=(late,))).problem


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"inference_stalled": 45.0}, "model fast: inference returned nothing for 45 s"),
        ({"cameras": (CameraState("door", True, False, 60.0, 10.0),)}, "camera door is online but sent no frame"),
        ({"dead_tasks": ("mqtt",)}, "task mqtt ended"),
    ],
)
def test_a_wedged_pipeline_is_unhealthy(changes: dict[str, Any], problem: str) -> None:
    health = assess(_snapshot(**changes))
    assert not health.ok and problem in health.problem


# -- reload plans -----------------------------------------------------------------------------------


def test_reload_diff_sorts_cameras_and_names_sections_needing_a_restart(tmp_path: Path, shared_dir: Path) -> None:
    old = _load(tmp_path, shared_dir)
    clip = str(shared_dir / "media/classroom.mp4")
    new = old.model_copy(
        update={
            "cameras": {"door": CameraConfig(url=clip, fps=5.0), "yard": CameraConfig(url=clip)},
            "mqtt": old.mqtt.model_copy(update={"host": "elsewhere"}),
        }
    )
    changes = diff(old, new)
    assert (changes.added, changes.removed, changes.changed, changes.unchanged) == (("yard",), (), ("door",), ())
    assert changes.needs_restart == ("mqtt",)
    assert changes.summary() == "added yard; restarted door"
    assert diff(old, old).empty


# -- the camera thread ------------------------------------------------------------------------------


async def test_a_worker_runs_calls_in_order_and_a_stuck_one_blocks_neither_loop_nor_caller() -> None:
    worker = Worker("test-worker")
    assert await worker.call(lambda a, b: a + b, 2, 3) == 5
    release = threading.Event()
    stuck = asyncio.ensure_future(worker.call(release.wait))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stuck, 0.2)
    assert time.monotonic() - started < 1.0
    released: list[str] = []
    worker.submit(released.append, "after the stuck call")
    worker.close()
    release.set()
    worker.join(2.0)
    assert released == ["after the stuck call"] and not worker.alive


async def test_a_result_nobody_waits_for_is_discarded_on_the_thread() -> None:
    worker = Worker("test-worker")
    gate = threading.Event()
    discarded: list[str] = []
    call = asyncio.ensure_future(worker.call(lambda: gate.wait() and "capture", discard=discarded.append))
    await asyncio.sleep(0.05)
    call.cancel()
    await asyncio.sleep(0.05)
    gate.set()
    worker.close()
    worker.join(2.0)
    assert discarded == ["capture"]


class _ResizingSource:
    """A live source whose frames switch from 320x240 to 640x360 after five frames."""

    native_fps = None
    still = False
    can_skip = False
    position = None
    arrived = None  # frames count from when they are read

    def __init__(self) -> None:
        self.count = 0

    def grab(self) -> int:
        self.count += 1
        time.sleep(0.01)
        return 1

    def retrieve(self) -> Image:
        width, height = (320, 240) if self.count <= 5 else (640, 360)
        return np.zeros((height, width, 3), np.uint8)

    def skip_unreferenced(self, skip: bool) -> None:
        pass

    def rewind(self) -> bool:
        return True

    def release(self) -> None:
        pass


async def test_frames_of_changing_size_are_accepted_and_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(camera_module, "open_source", lambda name, config: _ResizingSource())
    sizes: list[tuple[int, int]] = []
    enough = asyncio.Event()

    def taken() -> None:
        if (frame := slot.take()) is not None:
            sizes.append((frame.width, frame.height))
        if len(sizes) >= 15:
            enough.set()

    slot = FrameSlot("door", taken)
    camera = Camera("door", CameraConfig(url="rtsp://camera.invalid/x"), slot, lambda image: image, lambda *_: None)
    with caplog.at_level(logging.WARNING, logger="edged.camera"):
        task = asyncio.ensure_future(camera.run())
        await asyncio.wait_for(enough.wait(), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (320, 240) in sizes and (640, 360) in sizes
    changes = [r.getMessage() for r in caplog.records if "frame size changed" in r.getMessage()]
    assert changes == [
        "camera door: frame size changed from 320x240 to 640x360; accepted, boxes follow each "
        "frame's size (logged once)"
    ]


class _HangingSource(_ResizingSource):
    def __init__(self, hang: threading.Event) -> None:
        super().__init__()
        self._hang = hang

    def grab(self) -> int:
        if self.count >= 3:
            self._hang.wait()  # a read that never returns, like OpenCV on a hung server
        return super().grab()


async def test_a_read_that_hangs_is_abandoned_after_stall_timeout_and_the_camera_goes_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hang = threading.Event()
    monkeypatch.setattr(camera_module, "open_source", lambda name, config: _HangingSource(hang))
    statuses: list[bool] = []
    offline = asyncio.Event()

    def on_status(_name: str, online: bool) -> None:
        statuses.append(online)
        if not online:
            offline.set()

    slot = FrameSlot("door", lambda: None)
    config = CameraConfig(url="rtsp://camera.invalid/x", stall_timeout=0.5, backoff=Backoff(min=5, max=5))
    camera = Camera("door", config, slot, lambda image: image, on_status)
    task = asyncio.ensure_future(camera.run())
    started = time.monotonic()
    await asyncio.wait_for(offline.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    hang.set()
    assert statuses[:2] == [True, False]
    assert time.monotonic() - started < 3.0


class _ReleaseCounting(_ResizingSource):
    released = 0

    def release(self) -> None:
        type(self).released += 1


async def test_a_camera_that_hangs_while_opening_leaves_no_thread_or_capture_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[_ReleaseCounting] = []

    def slow_open(name: str, config: CameraConfig) -> _ReleaseCounting:
        time.sleep(0.6)  # longer than the camera waits for an opening
        opened.append(_ReleaseCounting())
        return opened[-1]

    monkeypatch.setattr(camera_module, "open_source", slow_open)
    monkeypatch.setattr(camera_module, "OPEN_GRACE_S", 0.0)
    _ReleaseCounting.released = 0
    config = CameraConfig(url="rtsp://camera.invalid/x", stall_timeout=0.2, backoff=Backoff(min=0.1, max=0.1))
    camera = Camera("gate", config, FrameSlot("gate", lambda: None), lambda image: image, lambda *_: None)
    task = asyncio.ensure_future(camera.run())
    await asyncio.sleep(3.0)  # several openings given up on
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(1.0)  # the last opening returns and is released
    assert len(opened) >= 3
    assert _ReleaseCounting.released == len(opened)
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("camera-gate")]


async def test_a_camera_that_crashes_raises_its_own_error_and_counts_as_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(camera_module, "open_source", lambda name, config: _ResizingSource())

    def broken_prepare(image: Image) -> Image:
        raise RuntimeError("prepare blew up")

    camera = Camera("door", CameraConfig(url="rtsp://camera.invalid/x"), FrameSlot("door", lambda: None),
                    broken_prepare, lambda *_: None)  # fmt: skip
    with pytest.raises(RuntimeError, match="prepare blew up"):
        await asyncio.wait_for(camera.run(), 5)
    assert camera.failed  # a run ending with every camera like this one exits 2, not 0


# -- the systemd watchdog follows health, not a timer ------------------------------------------------


def _pending_datagrams(receiver: Any) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(receiver.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_the_watchdog_is_fed_only_while_the_pipeline_is_healthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from edged.health import Health
    from edged.lifecycle import Lifecycle

    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify.sock"))
    receiver.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: checked every 0.05 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    healthy = [True]
    lifecycle = Lifecycle()
    watch = asyncio.ensure_future(
        lifecycle.watch(lambda: Health(healthy[0], "" if healthy[0] else "engine stuck", "1/1 cameras online"))
    )
    await asyncio.sleep(0.3)
    healthy[0] = False
    await asyncio.sleep(0.05)
    received = _pending_datagrams(receiver)
    await asyncio.sleep(0.3)
    later = _pending_datagrams(receiver)
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    receiver.close()
    assert any("WATCHDOG=1" in message for message in received)
    assert later and not any("WATCHDOG=1" in message for message in later)
    assert any("STATUS=UNHEALTHY: engine stuck; 1/1 cameras online" in message for message in later)


# -- files that end ---------------------------------------------------------------------------------


async def _run_file_camera(shared_dir: Path, loop: bool, frames_wanted: int) -> tuple[list[int], list[bool], bool]:
    indexes: list[int] = []
    statuses: list[bool] = []
    enough = asyncio.Event()

    def taken() -> None:
        if (frame := slot.take()) is not None:
            indexes.append(frame.index)
        if len(indexes) >= frames_wanted:
            enough.set()

    slot = FrameSlot("clip", taken)
    config = CameraConfig(url=str(shared_dir / "media/classroom.mp4"), loop=loop, realtime=False)  # 45 frames
    camera = Camera("clip", config, slot, lambda image: image, lambda _name, online: statuses.append(online))
    task = asyncio.ensure_future(camera.run())
    waiter = asyncio.ensure_future(enough.wait())
    await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    finished_by_itself = task.done()
    for pending in (task, waiter):
        pending.cancel()
    await asyncio.gather(task, waiter, return_exceptions=True)
    return indexes, statuses, finished_by_itself


async def test_a_file_with_loop_false_ends_the_camera_cleanly_offline(shared_dir: Path) -> None:
    indexes, statuses, finished = await _run_file_camera(shared_dir, loop=False, frames_wanted=1000)
    assert finished and statuses == [True, False]
    assert indexes == list(range(45))


async def test_a_looped_file_plays_on_past_its_end(shared_dir: Path) -> None:
    indexes, statuses, finished = await _run_file_camera(shared_dir, loop=True, frames_wanted=100)
    assert not finished and statuses[0] is True
    assert indexes[:100] == list(range(100))  # frame indexes keep counting across loops
