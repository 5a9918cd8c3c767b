"""Bad input, as a table: each row is one mistake an operator can make, and the one line edged answers.

Every row runs the real `edged run` (real model, real media, a real broker) and checks what the
operator sees: a single line naming the file, key or camera and what to do, never a traceback.
Mistakes in the configuration or the model stop edged before it starts (exit 2). Mistakes in one
camera's input (or a broker refusing the login) are reported while the good camera beside it keeps
publishing, and SIGTERM still ends the run with exit 0.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import itertools
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import av
import cv2
import numpy as np
import openvino as ov
import pytest
import yaml

from edged.config import CameraConfig
from edged.http_camera import refusal
from edged.sources import SourceError, open_source
from tests.edged_process import MODEL, EdgedProcess, base_config, largest_gap, write_config
from tests.support.mjpeg import MjpegServer

Config = dict[str, Any]


@dataclass(frozen=True)
class Ctx:
    tmp: Path
    shared: Path

    def media(self, name: str) -> str:
        return str(self.shared / "media" / name)

    def bad_camera(self, config: Config, url: str, **options: Any) -> None:
        config["cameras"]["bad"] = {"url": url, "backoff": {"min": 0.5, "max": 1.0}, **options}


# An arrangement mutates the valid config (or returns raw text to write instead of it).
Arrange = Callable[[Config, Ctx], str | None]


@dataclass(frozen=True)
class Case:
    id: str
    arrange: Arrange
    line: str  # a fragment of the one line the operator must see
    at_start: bool  # True: edged refuses to start (exit 2); False: reported at run time


def _raw(text: str) -> Arrange:
    return lambda config, ctx: text


def _set(path: str, value: Any) -> Arrange:
    def arrange(config: Config, ctx: Ctx) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return arrange


def _model_files(config: Config, ctx: Ctx, xml: bytes | None = None, bin_bytes: bytes | None = None) -> None:
    source = ctx.shared / MODEL
    target = ctx.tmp / "model" / source.name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(source.read_bytes() if xml is None else xml)
    if bin_bytes is not None:
        target.with_suffix(".bin").write_bytes(bin_bytes)
    config["model"]["path"] = str(target)


def _missing_weights(config: Config, ctx: Ctx) -> None:
    _model_files(config, ctx)


def _corrupt_model(config: Config, ctx: Ctx) -> None:
    _model_files(config, ctx, xml=b"<net><layers><this is not IR", bin_bytes=b"\0" * 64)


def _truncated_weights(config: Config, ctx: Ctx) -> None:
    _model_files(config, ctx, bin_bytes=(ctx.shared / MODEL).with_suffix(".bin").read_bytes()[:1000])


def _model_of_no_family(config: Config, ctx: Ctx) -> None:
    from openvino import opset13 as ops

    data = ops.parameter([1, 3, 32, 32], ov.Type.f32, name="data")
    path = ctx.tmp / "odd.xml"
    ov.save_model(ov.Model([ops.relu(data)], [data], "odd"), str(path))
    config["model"]["path"] = str(path)


def _duplicate_camera(config: Config, ctx: Ctx) -> str:
    url = ctx.media("classroom.mp4")
    return f"model:\n  path: {config['model']['path']}\ncameras:\n  good: {{url: {url}}}\n  good: {{url: {url}}}\n"


def _camera_named_on(config: Config, ctx: Ctx) -> str:
    text = yaml.safe_dump(config, sort_keys=False)
    return text.replace("cameras:\n", "cameras:\n  on:\n    url: '0'\n", 1)  # unquoted: YAML's boolean true


def _copy(ctx: Ctx, source: str, name: str, size: int | None = None) -> str:
    target = ctx.tmp / name
    data = Path(source).read_bytes()
    target.write_bytes(data if size is None else data[:size])
    return str(target)


def _random_bytes_video(config: Config, ctx: Ctx) -> None:
    path = ctx.tmp / "noise.mp4"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    ctx.bad_camera(config, str(path))


def _truncated_video(config: Config, ctx: Ctx) -> None:
    ctx.bad_camera(config, _copy(ctx, ctx.media("classroom.mp4"), "cut.mp4", 60_000))  # moov atom lost


def _garbled_video(config: Config, ctx: Ctx) -> None:
    ctx.bad_camera(config, str(_write_garbled(ctx.tmp / "garbled.mp4", ctx.media("classroom.mp4"))))


def _write_garbled(path: Path, video: str) -> Path:
    """A well-formed MP4 whose video packets are noise: it opens, and not one frame decodes."""
    noise = np.random.default_rng(2)
    with av.open(video) as source, av.open(str(path), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in itertools.islice(source.demux(source.streams.video[0]), 60):
            if packet.dts is None:  # the demuxer's empty packet at the end
                continue
            garbled = av.Packet(noise.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
            garbled.pts, garbled.dts, garbled.time_base = packet.pts, packet.dts, packet.time_base
            garbled.is_keyframe, garbled.stream = packet.is_keyframe, stream
            target.mux(garbled)
    return path


def _image_as_video(config: Config, ctx: Ctx) -> None:
    ctx.bad_camera(config, _copy(ctx, ctx.media("images/astronaut.png"), "astronaut.mp4"))


def _video_as_image(config: Config, ctx: Ctx) -> None:
    ctx.bad_camera(config, _copy(ctx, ctx.media("classroom.mp4"), "classroom.png"))


def _unreachable_rtsp(config: Config, ctx: Ctx) -> None:
    ctx.bad_camera(config, "rtsp://127.0.0.1:1/stream", stall_timeout=2.0)  # nothing listens on loopback port 1


def _cert_without_key(config: Config, ctx: Ctx) -> None:
    (ctx.tmp / "client.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    config["mqtt"]["tls"] = {"cert": str(ctx.tmp / "client.crt")}


def _changing_frame_size(config: Config, ctx: Ctx) -> None:
    """An MJPEG stream whose frames switch from 320x240 to 640x360 halfway."""
    path = ctx.tmp / "resizing.mjpeg"
    with path.open("wb") as out:
        for index in range(40):
            width, height = (320, 240) if index < 20 else (640, 360)
            out.write(cv2.imencode(".jpg", np.full((height, width, 3), index * 5, np.uint8))[1].tobytes())
    ctx.bad_camera(config, str(path), fps=10.0)


def _wrong_password(config: Config, ctx: Ctx) -> None:
    (ctx.tmp / "pw").write_text("wrong-password")  # the broker knows user edged with another one
    config["mqtt"] |= {"username": "edged", "password_file": str(ctx.tmp / "pw")}


CASES = [
    # -- the configuration file -------------------------------------------------------------------
    Case("config-not-yaml", _raw("cameras: [unclosed\n"), "not valid YAML: line", True),
    Case("config-empty", _raw(""), "the config file is empty", True),
    Case("config-not-a-mapping", _raw("- just\n- a list\n"), "must be a mapping of keys", True),
    Case("unknown-key", _set("camers", {}), "camers: unknown key: did you mean cameras? check its spelling", True),
    Case("wrong-type", _set("cameras.good.fps", "fast"), "cameras.good.fps: Input should be a valid number", True),
    Case("duplicate-camera-names", _duplicate_camera, "duplicate key 'good': each key may appear once", True),
    Case("camera-named-on", _camera_named_on, "cameras: YAML reads the name 'true' as a yes/no value", True),
    Case("key-that-is-a-list", _raw("? [a, b]\n: 1\n"), "line 1: a key must be a plain name, not a list", True),
    Case("home-of-no-user", _set("cameras.good.url", "~nosuchuser/cam.mp4"), "'~' names no user of this", True),
    Case("mqtt-host-empty", _set("mqtt.host", ""), "mqtt.host: String should have at least 1 character", True),
    Case("camera-url-empty", _set("cameras.good.url", ""), "cameras.good.url: String should have at least 1", True),
    Case(
        "camera-url-without-host", _set("cameras.good.url", "rtsp://"), "cameras.good.url: no host in 'rtsp://'", True
    ),
    Case(
        "camera-url-port-out-of-range",
        _set("cameras.good.url", "rtsp://cam:99999/live"),
        "cameras.good.url: the port in 'rtsp://cam:99999/live' is not a number from 1 to 65535",
        True,
    ),
    Case(
        "camera-password-not-percent-encoded",
        _set("cameras.good.url", "rtsp://admin:Se/cretX@127.0.0.1:1/live"),
        "cameras.good.url: the password in 'rtsp://***@127.0.0.1:1/live' seems to hold '/', '?', '#' or '@'",
        True,
    ),
    Case(
        "mqtt-host-with-port",
        _set("mqtt.host", "mqtt://127.0.0.1:1883"),
        "mqtt.host: 'mqtt://127.0.0.1:1883' is not a bare host name or address: give the port in mqtt.port",
        True,
    ),
    Case("mqtt-tls-empty", _set("mqtt.tls", None), "mqtt.tls: is empty: write `tls: {}` for TLS verified", True),
    Case(
        "section-given-a-value",
        _set("mqtt.backoff", 5),
        "mqtt.backoff: takes keys, indented below it, not a single value (see README for its keys) (got 5)",
        True,
    ),
    Case(
        "model-precision-with-path",
        _set("model.precision", "FP16"),
        "model.precision: goes with a descriptor `name`; with `path`, the .xml given is the precision used",
        True,
    ),
    Case(
        "camera-fps-too-low-for-events",
        _set("cameras.good.fps", 0.4),
        "cameras.good.fps: at 0.4 a second, frames are 2.5 s apart, not less than events.end_after (2 s): no face",
        True,
    ),
    Case("unsupported-url-scheme", _set("cameras.good.url", "ftp://cam/x"), "unsupported URL scheme 'ftp'", True),
    Case("video-file-missing", _set("cameras.good.url", "/nonexistent/cam.mp4"), "file not found", True),
    Case("bad-camera-name", _set("cameras.a/b", {"url": "0"}), "a camera name may only contain", True),
    Case("stall-timeout-zero", _set("cameras.good.stall_timeout", 0), "cameras.good.stall_timeout", True),
    Case("backoff-min-above-max", _set("mqtt.backoff", {"min": 60, "max": 5}), "must not exceed max", True),
    Case("tls-cert-without-key", _cert_without_key, "cert and key go together", True),
    Case("password-without-user", _set("mqtt.password_env", "PW"), "username is not", True),
    Case(
        "password-env-unset",
        _set("mqtt", {"username": "u", "password_env": "EDGED_NO_SUCH_VAR"}),
        "environment variable EDGED_NO_SUCH_VAR is not set",
        True,
    ),
    Case(
        "password-file-missing",
        _set("mqtt", {"username": "u", "password_file": "/nonexistent/pw"}),
        "mqtt.password_file: /nonexistent/pw not found",
        True,
    ),
    # -- the model ----------------------------------------------------------------------------------
    Case("model-missing", _set("model.path", "/nonexistent/model.xml"), "model file not found", True),
    Case("model-weights-missing", _missing_weights, "weights file face-detection-retail-0004.bin is missing", True),
    Case("model-corrupt", _corrupt_model, "not a valid OpenVINO IR file (XML error", True),
    Case("model-weights-truncated", _truncated_weights, "the files may be corrupt or truncated", True),
    Case("model-of-no-family", _model_of_no_family, "unrecognised model outputs: ", True),
    Case("model-device-absent", _set("model.device", "GPU"), "device 'GPU' is not available on this machine", True),
    Case(
        "model-device-cannot-compile",  # a device that exists, in a setting OpenVINO refuses only when compiling
        _set("model.device", "BATCH:CPU(0)"),
        "model.device: model face-detection-retail-0004: OpenVINO cannot compile it for device 'BATCH:CPU(0)'",
        True,
    ),
    # -- one camera's input, while another camera runs ---------------------------------------------
    Case("rtsp-host-unreachable", _unreachable_rtsp, "camera bad: cannot open rtsp://127.0.0.1:1/stream", False),
    Case(
        "mjpeg-nothing-listening",
        _set("cameras.bad", {"url": "http://127.0.0.1:1/video.mjpg", "backoff": {"min": 0.5, "max": 1.0}}),
        "camera bad: cannot open http://127.0.0.1:1/video.mjpg (Connection refused): check the URL",
        False,
    ),
    Case("video-corrupt", _random_bytes_video, "camera bad: cannot open", False),
    Case("video-truncated", _truncated_video, "the file is corrupt, truncated or not a video", False),
    Case(
        "video-of-garbled-frames",
        _garbled_video,
        "holds no frame that can be decoded: check the file; this camera is stopped",
        False,
    ),
    Case("image-where-video-expected", _image_as_video, "holds an image (PNG), not a video", False),
    Case("video-where-image-expected", _video_as_image, "holds a video (MP4/MOV), not an image", False),
    Case("frames-of-changing-size", _changing_frame_size, "", False),
    Case("broker-refuses-credentials", _wrong_password, "refused the credentials of user 'edged'", False),
]


def _arrange(case: Case, tmp_path: Path, shared_dir: Path, broker: Any) -> Path:
    cameras = {"good": {"url": str(shared_dir / "media" / "classroom.mp4"), "fps": 10.0}}
    config = base_config(shared_dir, broker.port, cameras)
    raw = case.arrange(config, Ctx(tmp_path, shared_dir))
    path = tmp_path / "edged.yaml"
    if raw is not None:
        path.write_text(raw)
        return path
    return write_config(path, config)


def _assert_one_clear_line(log: str, fragment: str) -> None:
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if fragment in line]
    assert len(lines) == 1, f"expected exactly one line with {fragment!r}:\n{log}"


@pytest.mark.parametrize("case", [c for c in CASES if c.at_start], ids=lambda c: c.id)
def test_a_bad_config_or_model_is_refused_with_one_clear_line(
    case: Case, tmp_path: Path, shared_dir: Path, broker: Any
) -> None:
    config = _arrange(case, tmp_path, shared_dir, broker)
    with EdgedProcess(config, tmp_path / "edged.log") as edged:
        code = edged.wait(timeout=60)
        log = edged.log()
    assert code == 2, log
    _assert_one_clear_line(log, case.line)
    assert log.startswith("edged: "), "the refusal is the first thing said"


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if not c.at_start], ids=lambda c: c.id)
def test_bad_camera_input_is_reported_while_the_other_camera_keeps_running(
    case: Case, tmp_path: Path, shared_dir: Path, broker_factory: Any, subscriber: Any
) -> None:
    broker_refuses = case.id == "broker-refuses-credentials"
    if broker_refuses:
        broker = broker_factory(users={"edged": "the-right-password", "watcher": "w"})
        watcher = subscriber(broker, "edged/#", username="watcher", password="w")
    else:
        broker = broker_factory()
        watcher = subscriber(broker, "edged/#")
    config = _arrange(case, tmp_path, shared_dir, broker)
    with EdgedProcess(config, tmp_path / "edged.log") as edged:
        if case.line:
            edged.wait_for_log(re.escape(case.line), timeout=30)
        if not broker_refuses:
            count = len(watcher.messages("edged/good/detections"))
            watcher.wait_for_count("edged/good/detections", count + 10, timeout=30)
        else:
            edged.wait_for_log("camera good: online")
        if case.id == "frames-of-changing-size":
            watcher.wait_for_count("edged/bad/detections", 25, timeout=30)
        code, seconds = edged.stop(signal.SIGTERM)
        log = edged.log()
    assert code == 0, log
    assert seconds < 5
    if case.line:
        _assert_one_clear_line(log, case.line)
    if case.id == "frames-of-changing-size":
        sizes = {
            (m.json()["frame"]["width"], m.json()["frame"]["height"]) for m in watcher.messages("edged/bad/detections")
        }
        assert sizes == {(320, 240)}  # OpenCV scales a stream's frames to its first size; boxes follow it
        assert "Traceback" not in log


@pytest.mark.slow
def test_a_run_whose_only_camera_is_an_unusable_file_exits_2_after_saying_why(
    tmp_path: Path, shared_dir: Path, broker: Any
) -> None:
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    config = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, {"only": {"url": str(noise)}}))
    with EdgedProcess(config, tmp_path / "edged.log") as edged:
        code = edged.wait(timeout=60)
        log = edged.log()
    assert code == 2, log  # not a clean stop: Restart=on-failure and scripts must see it
    _assert_one_clear_line(log, "camera only: cannot open")
    assert "every camera has finished, only on an error (above): stopping" in log


def _clip_at(path: Path, image: Path, fps: float, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (320, 240))
    frame = cv2.resize(cv2.imread(str(image)), (320, 240))
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.slow
def test_a_looping_file_replaced_by_one_of_a_lower_frame_rate_plays_on_without_a_pause(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any
) -> None:
    watcher = subscriber(broker, "edged/#")
    astronaut = shared_dir / "media/images/astronaut.png"
    clip = _clip_at(tmp_path / "clip.mp4", astronaut, fps=30.0, frames=30)  # 1 s, played again and again
    cameras = {"clip": {"url": str(clip)}}  # in real time, looping
    config = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, cameras))
    with EdgedProcess(config, tmp_path / "edged.log") as edged:
        watcher.wait_for_count("edged/clip/detections", 150, timeout=60)  # five loops and more at 30 fps
        _clip_at(tmp_path / "slow.mp4", astronaut, fps=5.0, frames=10).replace(clip)
        replaced = time.monotonic()
        time.sleep(6.0)  # the old file's last loop, then the new one at 5 fps
        gap = largest_gap(watcher, "clip", replaced, time.monotonic())
        code, _ = edged.stop(signal.SIGTERM)
        log = edged.log()
    assert code == 0, log
    # Counting the 150 frames so far at the new rate would have put the next one 25 s into the future.
    assert gap < 1.5, log


@pytest.mark.slow
def test_a_looping_file_replaced_by_one_whose_frames_do_not_decode_is_reported_and_its_camera_stops_on_an_error(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any
) -> None:
    watcher = subscriber(broker, "edged/#")
    clip = _clip_at(tmp_path / "clip.mp4", shared_dir / "media/images/astronaut.png", fps=30.0, frames=15)
    config = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, {"clip": {"url": str(clip)}}))
    with EdgedProcess(config, tmp_path / "edged.log") as edged:
        watcher.wait_for_count("edged/clip/detections", 5, timeout=60)
        _write_garbled(tmp_path / "garbled.mp4", str(shared_dir / "media/classroom.mp4")).replace(clip)
        code = edged.wait(timeout=30)
        log = edged.log()
    assert code == 2, log  # not "finished": Restart=on-failure must see it
    _assert_one_clear_line(log, f"camera clip: {clip} holds no frame that can be decoded: check the file")


@pytest.mark.slow
def test_a_file_that_goes_away_and_comes_back_is_read_again(
    tmp_path: Path, shared_dir: Path, broker: Any, subscriber: Any
) -> None:
    watcher = subscriber(broker, "edged/#")
    clip = Path(_copy(Ctx(tmp_path, shared_dir), str(shared_dir / "media/classroom.mp4"), "clip.mp4"))
    cameras = {"clip": {"url": str(clip), "backoff": {"min": 0.5, "max": 1.0}}}  # 1.5 s, then it loops
    config = write_config(tmp_path / "edged.yaml", base_config(shared_dir, broker.port, cameras))
    with EdgedProcess(config, tmp_path / "edged.log") as edged:
        watcher.wait_for_count("edged/clip/detections", 5, timeout=60)
        kept = clip.rename(tmp_path / "away.mp4")
        edged.wait_for_log(re.escape(f"camera clip: {clip} is not there any more: put it back"), timeout=30)
        watcher.wait_for_message("edged/clip/status", lambda m: m.payload == b"offline", timeout=30)
        kept.rename(clip)
        count = len(watcher.messages("edged/clip/detections"))
        watcher.wait_for_count("edged/clip/detections", count + 5, timeout=30)
        code, _ = edged.stop(signal.SIGTERM)
        log = edged.log()
    assert code == 0, log
    assert "Traceback" not in log


def test_an_http_camera_that_answers_an_error_is_reported_with_its_answer(mjpeg_server: MjpegServer) -> None:
    wrong_path = mjpeg_server.url.replace("/video.mjpg", "/no-such-stream.mjpg")
    with pytest.raises(SourceError) as refused:
        open_source("door", CameraConfig(url=wrong_path, stall_timeout=2.0))
    assert str(refused.value) == (
        f"camera door: cannot open {wrong_path} (the camera answered 404 Not Found): check the URL, the credentials "
        "and that the camera is reachable"
    )


def test_an_http_camera_url_that_gives_a_web_page_is_reported_as_not_a_video_stream(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<html><body>camera settings</body></html>")
    with _serving(functools.partial(_QuietFiles, directory=str(tmp_path))) as port:
        url = f"http://127.0.0.1:{port}/index.html"
        with pytest.raises(SourceError) as refused:
            open_source("door", CameraConfig(url=url, stall_timeout=2.0))
    assert f"cannot open {url} (the camera answered with text/html, not a video stream)" in str(refused.value)


@contextlib.contextmanager
def _serving(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP server on a free loopback port (yielded) for the duration of the block."""
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


class _CameraWantingBasicAuth(http.server.BaseHTTPRequestHandler):
    """Answers 401 with a Basic challenge unless given edged:right, then 404; records what each request sent."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        sent = self.headers.get("Authorization")
        self.seen.append(sent)
        if sent != "Basic " + base64.b64encode(b"edged:right").decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="camera"')
            self.end_headers()
            return
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.mark.parametrize(("password", "answer"), [("right", "404 Not Found"), ("wrong", "401 Unauthorized")])
def test_an_http_cameras_password_goes_out_only_when_the_camera_asks_for_it(password: str, answer: str) -> None:
    _CameraWantingBasicAuth.seen = []
    with _serving(_CameraWantingBasicAuth) as port:
        reason = refusal(f"http://edged:{password}@127.0.0.1:{port}/video.mjpg", 2.0)
    assert reason == f"the camera answered {answer}"
    assert _CameraWantingBasicAuth.seen[0] is None  # the first request carries no password, as FFmpeg's does


def test_an_http_camera_url_the_probe_cannot_send_still_gives_the_cameras_usual_line() -> None:
    url = "http://127.0.0.1:1/caméra.mjpg"  # urllib refuses a non-ASCII path: no reason, and no crash either
    with pytest.raises(SourceError) as refused:
        open_source("door", CameraConfig(url=url, stall_timeout=2.0))
    assert str(refused.value).startswith(f"camera door: cannot open {url}: check the URL")
