"""The NVR features end to end: `edged run` with the seed model, real media and a real broker.

What is asserted is what a subscriber (or Prometheus, or Home Assistant) sees: events, snapshots,
stats, /metrics, discovery configs and the effect of the detect switch. Every JSON payload is
checked against its schema in docs/schemas, the contract documented in docs/mqtt.md.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edged import __version__
from tests.support import free_port, wait_until
from tests.support.broker import Mosquitto
from tests.support.mqtt import Message, Subscriber

REPO = Path(__file__).resolve().parent.parent
SEED = "models/face-detection-adas-binary-0001/FP32-INT1/face-detection-adas-binary-0001.xml"
CLIP_FPS, CLIP_SIZE = 10, (640, 360)
TIMEOUT = 60.0  # generous: the machine is shared, nothing here measures speed


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((REPO / "docs" / "schemas" / f"{name}.json").read_text())
    return loaded


def write_config(tmp_path: Path, shared_dir: Path, broker: Mosquitto, cameras: dict[str, Any], **sections: Any) -> Path:
    config = {
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": "edged-nvr-test", "qos": {"detections": 1}},
        "model": {"path": str(shared_dir / SEED)},
        "cameras": cameras,
        **sections,
    }
    path = tmp_path / f"edged-{len(list(tmp_path.glob('edged-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Edged:
    """`edged run -c config` as a child process, its log kept for the assertion messages."""

    def __init__(self, config: Path) -> None:
        self.log = config.with_suffix(".log")
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edged.cli", "run", "-c", str(config)], stderr=self._log_file
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(TIMEOUT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()

    def log_text(self) -> str:
        return self.log.read_text()

    def reload(self, config: Path, new: Path, until: str) -> None:
        """Put `new`'s contents into `config`, send SIGHUP, wait until the log says `until` after the reload."""
        config.write_text(new.read_text())
        self.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: until in self.log_text().partition("reload done")[2], TIMEOUT), self.log_text()


@contextmanager
def edged_running(config: Path) -> Iterator[Edged]:
    edged = Edged(config)
    try:
        yield edged
    finally:
        edged.close()


def build_clip(media_dir: Path, path: Path) -> Path:
    """No face for 2.5 s, one face for 1.5 s, two faces for 2 s, no face for 4 s; 10 fps.

    The no-face frames come from one-by-one-person-detection.mp4 (people walking, no face visible at
    its start), the one face is astronaut.png on a dark frame, the two faces are faces-1080p30.mp4.
    """

    def frames(video: str, count: int, step: int = 1) -> list[np.ndarray]:
        capture = cv2.VideoCapture(str(media_dir / video))
        out: list[np.ndarray] = []
        index = 0
        while len(out) < count:
            ok, frame = capture.read()
            assert ok, f"{video} has fewer frames than the clip needs"
            if index % step == 0:
                out.append(cv2.resize(frame, CLIP_SIZE, interpolation=cv2.INTER_AREA))
            index += 1
        capture.release()
        return out

    no_face = frames("one-by-one-person-detection.mp4", 65)
    astronaut = cv2.imread(str(media_dir / "images" / "astronaut.png"), cv2.IMREAD_COLOR)
    one_face = np.full((CLIP_SIZE[1], CLIP_SIZE[0], 3), 40, np.uint8)
    one_face[:, 140:500] = cv2.resize(astronaut, (360, 360), interpolation=cv2.INTER_AREA)
    two_faces = frames("faces-1080p30.mp4", 20, step=3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, CLIP_SIZE)
    for frame in [*no_face[:25], *[one_face] * 15, *two_faces, *no_face[25:]]:
        writer.write(frame)
    writer.release()
    return path


def payloads(messages: list[Message]) -> list[Any]:
    return [m.json() for m in messages]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --- events and snapshots ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_face_that_appears_and_leaves_makes_one_event_new_updates_end_with_a_snapshot(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    clip = build_clip(media_dir, tmp_path / "door.mp4")
    config = write_config(
        tmp_path,
        shared_dir,
        broker,
        {"door": {"url": str(clip), "loop": False}},
        events={"min_frames": 2, "end_after": 1.0},
        snapshots={"height": 200, "quality": 80},
        stats={"enabled": False},
    )
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber, edged_running(config) as edged:
        # The clip is not looped: edged stops by itself once the camera has played it.
        assert edged.process.wait(TIMEOUT) == 0, edged.log_text()

        events = payloads(subscriber.messages("edged/events"))
        for event in events:
            jsonschema.validate(event, schema("event"))
        for detection in payloads(subscriber.messages("edged/door/detections"))[:20]:
            jsonschema.validate(detection, schema("detections"))

        kinds = [event["type"] for event in events]
        assert kinds[0] == "new" and kinds[-1] == "end" and set(kinds[1:-1]) == {"update"}, kinds
        new, end = events[0], events[-1]
        assert {event["id"] for event in events} == {new["id"]}
        assert {event["camera"] for event in events} == {"door"}
        assert new["faces"] == 1 and new["snapshot"] is True and new["end_time"] is None
        assert any(event["faces"] == 2 for event in events[1:-1])  # the second face was announced
        assert [e["top_score"] for e in events] == sorted(e["top_score"] for e in events)
        assert end["start_time"] == new["start_time"] < end["end_time"]
        assert end["faces"] == 0

        counts = [int(m.payload) for m in subscriber.messages("edged/door/faces")]
        assert counts[0] == 0 and counts[-1] == 0 and max(counts) == 2

    with Subscriber(broker.host, broker.port, ["edged/door/snapshot", "edged/door/faces"]) as late:
        snapshot = late.wait_for_message("edged/door/snapshot", timeout=TIMEOUT)
        faces = late.wait_for_message("edged/door/faces", timeout=TIMEOUT)
    assert snapshot.retain and faces.retain
    assert faces.payload == b"0"
    image = cv2.imdecode(np.frombuffer(snapshot.payload, np.uint8), cv2.IMREAD_COLOR)
    assert snapshot.payload[:2] == b"\xff\xd8"  # raw JPEG, no base64
    assert image is not None and image.shape[:2] == (200, round(CLIP_SIZE[0] * 200 / CLIP_SIZE[1]))


@pytest.mark.slow
def test_a_face_crop_snapshot_has_the_configured_height(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    config = write_config(
        tmp_path,
        shared_dir,
        broker,
        {"portrait": {"url": str(media_dir / "images" / "astronaut.png"), "fps": 5}},
        snapshots={"crop": True, "height": 120, "boxes": False},
    )
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber, edged_running(config) as edged:
        snapshot = subscriber.wait_for_message("edged/portrait/snapshot", timeout=TIMEOUT)
        assert edged.stop() == 0, edged.log_text()
    image = cv2.imdecode(np.frombuffer(snapshot.payload, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] == 120
    assert image.shape[1] < 120  # a crop around an upright face is narrower than the square photo


# --- stats and Prometheus --------------------------------------------------------------------------


@pytest.mark.slow
def test_stats_and_metrics_carry_figures_consistent_with_the_messages_received(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    port = free_port()
    cameras = {
        "lobby": {"url": str(media_dir / "face-demographics-walking.mp4")},
        "hall": {"url": str(media_dir / "classroom.mp4")},
    }
    config = write_config(tmp_path, shared_dir, broker, cameras, stats={"interval": 1}, metrics={"port": port})
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber, edged_running(config) as edged:
        for camera in cameras:
            subscriber.wait_for_count(f"edged/{camera}/detections", 20, timeout=TIMEOUT)
        running = subscriber.wait_for_message("edged/stats", lambda m: m.json()["uptime_s"] > 1, timeout=TIMEOUT).json()
        received = {camera: len(subscriber.messages(f"edged/{camera}/detections")) for camera in cameras}
        metrics = scrape(port)

        jsonschema.validate(running, schema("stats"))
        assert running["version"] == __version__
        assert running["process"]["rss_bytes"] > 10_000_000 and running["process"]["cpu_percent"] > 0
        model = running["models"]["face-detection-adas-binary-0001"]
        assert model["requests"] >= 1 and 0 < model["inference_ms"]["avg"] <= model["inference_ms"]["p99"]
        for camera in cameras:
            figures = running["cameras"][camera]
            assert figures["status"] == "online" and figures["reconnects"] == 0
            assert figures["camera_fps"] > 0 and figures["processed_fps"] > 0
            assert figures["frames_read"] >= figures["frames_processed"] + figures["frames_skipped"] - 2

            processed = metrics[("edged_frames_processed_total", (("camera", camera),))]
            assert processed >= received[camera]  # counted before it is published
            assert metrics[("edged_camera_frames_read_total", (("camera", camera),))] >= processed
            assert metrics[("edged_camera_online", (("camera", camera),))] == 1
        model_label = (("model", "face-detection-adas-binary-0001"),)
        assert metrics[("edged_inference_seconds_count", model_label)] == sum(
            metrics[("edged_frames_processed_total", (("camera", camera),))] for camera in cameras
        )
        assert metrics[("edged_inference_seconds_sum", model_label)] > 0
        assert metrics[("edged_build_info", (("version", __version__),))] == 1
        assert metrics[("process_resident_memory_bytes", ())] > 0

        assert edged.stop() == 0, edged.log_text()

    # The last stats message is published at shutdown, after the last detection was queued.
    final = subscriber.messages("edged/stats")[-1].json()
    jsonschema.validate(final, schema("stats"))
    for camera in cameras:
        detections = subscriber.messages(f"edged/{camera}/detections")
        assert final["cameras"][camera]["frames_processed"] == len(detections)
    assert final["mqtt"]["dropped"] == 0


@pytest.mark.slow
def test_a_metrics_port_in_use_stops_edged_at_start_with_one_line(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cameras = {"front": {"url": str(media_dir / "images" / "astronaut.png")}}
        config = write_config(tmp_path, shared_dir, broker, cameras, metrics={"port": port})
        result = subprocess.run(
            [sys.executable, "-m", "edged.cli", "run", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"edged: {config}: metrics.port: cannot serve /metrics on 127.0.0.1:{port} (Address already in use): "
        "choose a free port or stop what listens there"
    )


# --- control -----------------------------------------------------------------------------------------


def front_and_back(media_dir: Path) -> dict[str, Any]:
    """Two still cameras at 5 fps: front shows astronaut.png, back cameraman.png."""
    return {
        "front": {"url": str(media_dir / "images" / "astronaut.png"), "fps": 5},
        "back": {"url": str(media_dir / "images" / "cameraman.png"), "fps": 5},
    }


@pytest.mark.slow
def test_detect_off_stops_detections_of_that_camera_only_and_on_resumes_them(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    port = free_port()
    cameras = front_and_back(media_dir)
    config = write_config(tmp_path, shared_dir, broker, cameras, metrics={"port": port})
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber, edged_running(config) as edged:

        def count(camera: str) -> int:
            return len(subscriber.messages(f"edged/{camera}/detections"))

        def wait_for_more_back(more: int) -> None:
            target = count("back") + more
            subscriber.wait_for_count("edged/back/detections", target, timeout=TIMEOUT)

        subscriber.wait_for_message("edged/front/detect/state", lambda m: m.payload == b"ON", timeout=TIMEOUT)
        subscriber.wait_for_count("edged/front/detections", 3, timeout=TIMEOUT)

        subscriber.publish("edged/front/detect/set", "OFF")
        off = subscriber.wait_for_message("edged/front/detect/state", lambda m: m.payload == b"OFF", timeout=TIMEOUT)
        wait_for_more_back(5)  # whatever front had in flight or queued has arrived by now
        paused_at = count("front")
        read_at = scrape(port)[("edged_camera_frames_read_total", (("camera", "front"),))]
        wait_for_more_back(10)
        assert count("front") == paused_at  # not one detection while OFF
        metrics = scrape(port)
        assert metrics[("edged_detection_enabled", (("camera", "front"),))] == 0
        assert metrics[("edged_camera_frames_read_total", (("camera", "front"),))] > read_at  # stream kept open
        assert [m.payload for m in subscriber.messages("edged/front/status")] == [b"online"]

        subscriber.publish("edged/front/detect/set", "ON")
        subscriber.wait_for_message(
            "edged/front/detect/state", lambda m: m.payload == b"ON" and m.received_at > off.received_at
        )
        subscriber.wait_for_count("edged/front/detections", paused_at + 3, timeout=TIMEOUT)
        assert edged.stop() == 0, edged.log_text()

    with Subscriber(broker.host, broker.port, "edged/+/detect/state") as late:
        late.wait_for_count("edged/+/detect/state", 2, timeout=TIMEOUT)
        assert {m.topic: (m.payload, m.retain) for m in late.messages()} == {
            "edged/front/detect/state": (b"ON", True),
            "edged/back/detect/state": (b"ON", True),
        }


@pytest.mark.slow
def test_a_face_event_ends_end_after_seconds_once_its_camera_stops_giving_frames(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    cameras = {"front": front_and_back(media_dir)["front"]}
    config = write_config(tmp_path, shared_dir, broker, cameras, events={"min_frames": 2, "end_after": 1.0})
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber, edged_running(config) as edged:
        subscriber.wait_for_message("edged/events", lambda m: json.loads(m.payload)["type"] == "new", timeout=TIMEOUT)
        subscriber.publish("edged/front/detect/set", "OFF")  # no more frames: nothing else would end the event
        off = subscriber.wait_for_message("edged/front/detect/state", lambda m: m.payload == b"OFF", timeout=TIMEOUT)
        end = subscriber.wait_for_message("edged/events", lambda m: json.loads(m.payload)["type"] == "end", timeout=10)
        assert end.received_at - off.received_at < 3.0  # end_after, and the check's quarter-second tick
        assert edged.stop() == 0, edged.log_text()


@pytest.mark.slow
def test_invalid_detect_commands_are_ignored_with_a_warning(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    cameras = {"front": {"url": str(media_dir / "images" / "astronaut.png"), "fps": 5}}
    config = write_config(tmp_path, shared_dir, broker, cameras)
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber, edged_running(config) as edged:
        subscriber.wait_for_count("edged/front/detections", 2, timeout=TIMEOUT)
        subscriber.publish("edged/front/detect/set", "MAYBE")
        subscriber.publish("edged/garage/detect/set", "OFF")
        subscriber.publish("edged/front/detect/set", "off")  # case does not matter: this one is valid
        subscriber.wait_for_message("edged/front/detect/state", lambda m: m.payload == b"OFF", timeout=TIMEOUT)
        assert edged.stop() == 0
    log = edged.log_text()
    assert "camera front: ignored 'MAYBE' on edged/front/detect/set: send ON or OFF" in log
    assert "ignored edged/garage/detect/set: no camera 'garage' is configured here" in log
    assert [m.payload for m in subscriber.messages("edged/front/detect/state")] == [b"ON", b"OFF"]
    assert "Traceback" not in log


@pytest.mark.slow
def test_a_camera_switched_off_over_mqtt_stays_off_when_a_reload_restarts_it(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    cameras = front_and_back(media_dir)
    config = write_config(tmp_path, shared_dir, broker, cameras)
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber, edged_running(config) as edged:
        subscriber.wait_for_count("edged/front/detections", 2, timeout=TIMEOUT)
        subscriber.publish("edged/front/detect/set", "OFF")
        subscriber.wait_for_message("edged/front/detect/state", lambda m: m.payload == b"OFF", timeout=TIMEOUT)
        changed = {"front": {**cameras["front"], "fps": 4}, "back": cameras["back"]}  # restarts front only
        edged.reload(config, write_config(tmp_path, shared_dir, broker, changed), until="camera front: online")
        paused_at = len(subscriber.messages("edged/front/detections"))
        back_at = len(subscriber.messages("edged/back/detections"))
        subscriber.wait_for_count("edged/back/detections", back_at + 10, timeout=TIMEOUT)
        assert len(subscriber.messages("edged/front/detections")) == paused_at  # still off after the restart
        assert [m.payload for m in subscriber.messages("edged/front/detect/state")] == [b"ON", b"OFF"]

        subscriber.publish("edged/front/detect/set", "ON")
        subscriber.wait_for_count("edged/front/detections", paused_at + 3, timeout=TIMEOUT)
        assert edged.stop() == 0, edged.log_text()


@pytest.mark.slow
def test_a_file_read_at_detections_pace_is_not_decoded_while_detection_is_off(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    port = free_port()
    cameras = {"clip": {"url": str(media_dir / "classroom.mp4"), "realtime": False}}
    config = write_config(tmp_path, shared_dir, broker, cameras, metrics={"port": port})
    decoded = ("edged_camera_frames_decoded_total", (("camera", "clip"),))
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber, edged_running(config) as edged:
        subscriber.wait_for_count("edged/clip/detections", 5, timeout=TIMEOUT)
        subscriber.publish("edged/clip/detect/set", "OFF")
        subscriber.wait_for_message("edged/clip/detect/state", lambda m: m.payload == b"OFF", timeout=TIMEOUT)
        time.sleep(0.5)  # the frame being decoded when the command came
        before = scrape(port)[decoded]
        time.sleep(2.0)  # at full speed this file decodes hundreds of frames in that time
        assert scrape(port)[decoded] - before <= 1
        paused_at = len(subscriber.messages("edged/clip/detections"))
        subscriber.publish("edged/clip/detect/set", "ON")
        subscriber.wait_for_count("edged/clip/detections", paused_at + 5, timeout=TIMEOUT)
        assert edged.stop() == 0, edged.log_text()


@pytest.mark.slow
@pytest.mark.parametrize("sent", ["before-start", "while-running"])
def test_a_retained_off_is_applied_once_not_again_at_every_reconnect(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker_factory: Any, sent: str
) -> None:
    broker = broker_factory(persistence=True)  # keeps the retained OFF across its restart
    cameras = {"front": front_and_back(media_dir)["front"]}
    config = write_config(tmp_path, shared_dir, broker, cameras)
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber:
        if sent == "before-start":
            subscriber.publish("edged/front/detect/set", "OFF", retain=True)
        with edged_running(config) as edged:
            if sent == "while-running":  # edged receives it flagged live; only redeliveries are flagged retained
                subscriber.wait_for_count("edged/front/detections", 1, timeout=TIMEOUT)
                subscriber.publish("edged/front/detect/set", "OFF", retain=True)
            subscriber.wait_for_message("edged/front/detect/state", lambda m: m.payload == b"OFF", timeout=TIMEOUT)
            subscriber.publish("edged/front/detect/set", "ON")  # a live command overrules it
            subscriber.wait_for_count("edged/front/detections", 2, timeout=TIMEOUT)
            broker.restart()
            assert wait_until(lambda: "MQTT: reconnected" in edged.log_text(), TIMEOUT), edged.log_text()
            resumed_at = len(subscriber.messages("edged/front/detections"))
            subscriber.wait_for_count("edged/front/detections", resumed_at + 5, timeout=TIMEOUT)
            assert edged.stop() == 0, edged.log_text()
    assert [m.payload for m in subscriber.messages("edged/front/detect/state")][-1] == b"ON"
    assert edged.log_text().count("detection paused over MQTT") == 1


@pytest.mark.slow
def test_a_camera_a_reload_removed_and_added_back_obeys_a_retained_off_again_like_a_new_camera(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker_factory: Any
) -> None:
    broker = broker_factory(persistence=True)  # keeps the retained OFF across its restart
    both = front_and_back(media_dir)
    config = write_config(tmp_path, shared_dir, broker, both)
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber, edged_running(config) as edged:
        subscriber.wait_for_count("edged/front/detections", 1, timeout=TIMEOUT)
        subscriber.publish("edged/front/detect/set", "OFF", retain=True)
        subscriber.wait_for_message("edged/front/detect/state", lambda m: m.payload == b"OFF", timeout=TIMEOUT)
        edged.reload(config, write_config(tmp_path, shared_dir, broker, {"back": both["back"]}), until="")
        assert wait_until(lambda: edged.log_text().count("reload done") == 1, TIMEOUT), edged.log_text()
        readded_at = len(subscriber.messages("edged/front/detections"))
        edged.reload(config, write_config(tmp_path, shared_dir, broker, both), until="camera front: online")
        subscriber.wait_for_count("edged/front/detections", readded_at + 2, timeout=TIMEOUT)  # back, and detecting

        broker.restart()  # hands the retained OFF over again: for a fresh start, which front now is
        assert wait_until(lambda: edged.log_text().count("detection paused over MQTT") == 2, TIMEOUT), edged.log_text()
        assert edged.stop() == 0, edged.log_text()


# --- Home Assistant ------------------------------------------------------------------------------------


def discovery_topics(camera: str) -> set[str]:
    return {
        f"homeassistant/binary_sensor/edged/{camera}_face/config",
        f"homeassistant/sensor/edged/{camera}_faces/config",
        f"homeassistant/image/edged/{camera}_snapshot/config",
        f"homeassistant/switch/edged/{camera}_detection/config",
    }


@pytest.mark.slow
def test_home_assistant_discovery_describes_each_camera_and_a_removed_camera_loses_its_entities(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    both = front_and_back(media_dir)
    expected = discovery_topics("front") | discovery_topics("back")
    config = write_config(tmp_path, shared_dir, broker, both, homeassistant={"enabled": True})
    with (
        Subscriber(broker.host, broker.port, ["edged/#", "homeassistant/#"]) as subscriber,
        edged_running(config) as edged,
    ):
        subscriber.wait_for(lambda ms: expected <= {m.topic for m in ms}, timeout=TIMEOUT)
        configs = {m.topic: m.json() for m in subscriber.messages("homeassistant/#")}
        assert set(configs) == expected
        referenced = set()
        for topic, entity in configs.items():
            jsonschema.validate(entity, schema("homeassistant-discovery"))
            assert entity["availability"][0]["topic"] == "edged/status"
            referenced |= {entity[key] for key in ("state_topic", "image_topic") if key in entity}
            if topic.startswith("homeassistant/switch/"):
                camera = entity["device"]["name"]
                assert entity["command_topic"] == f"edged/{camera}/detect/set"
        assert referenced == {
            f"edged/{camera}/{leaf}" for camera in both for leaf in ("faces", "snapshot", "detect/state")
        }
        # Every state the entities read is really published (the snapshot once a face event starts).
        subscriber.wait_for(lambda ms: referenced | {"edged/status"} <= {m.topic for m in ms}, timeout=TIMEOUT)
        record = subscriber.wait_for_message("edged/homeassistant/cameras", timeout=TIMEOUT).json()
        jsonschema.validate(record, schema("homeassistant-record"))
        assert record["cameras"] == ["back", "front"]
        assert edged.stop() == 0, edged.log_text()

    only_front = write_config(tmp_path, shared_dir, broker, {"front": both["front"]}, homeassistant={"enabled": True})
    with Subscriber(broker.host, broker.port, "homeassistant/#") as subscriber, edged_running(only_front) as edged:
        removed = discovery_topics("back")
        subscriber.wait_for(lambda ms: removed <= {m.topic for m in ms if m.payload == b""}, timeout=TIMEOUT)
        assert edged.stop() == 0, edged.log_text()
    assert "removed the entities of cameras no longer configured: back" in edged.log_text()

    with Subscriber(broker.host, broker.port, ["homeassistant/#", "edged/homeassistant/cameras"]) as late:
        late.wait_for(lambda ms: discovery_topics("front") <= {m.topic for m in ms}, timeout=TIMEOUT)
        record = late.wait_for_message("edged/homeassistant/cameras", timeout=TIMEOUT).json()
        assert record["cameras"] == ["front"]
        assert {m.topic for m in late.messages("homeassistant/#")} == discovery_topics("front")


@pytest.mark.slow
def test_with_face_events_switched_off_the_face_and_snapshot_entities_and_their_last_values_go(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    """Nothing keeps a face count or a snapshot current then: Home Assistant must not show an earlier run's."""
    front = {"front": front_and_back(media_dir)["front"]}
    with_events = write_config(tmp_path, shared_dir, broker, front, homeassistant={"enabled": True})
    with (
        Subscriber(broker.host, broker.port, ["edged/#", "homeassistant/#"]) as subscriber,
        edged_running(with_events) as edged,
    ):
        wanted = discovery_topics("front") | {"edged/front/faces", "edged/front/snapshot"}
        subscriber.wait_for(lambda ms: wanted <= {m.topic for m in ms}, timeout=TIMEOUT)
        assert edged.stop() == 0, edged.log_text()
    without_events = write_config(
        tmp_path, shared_dir, broker, front, homeassistant={"enabled": True}, events={"enabled": False}
    )
    with edged_running(without_events) as edged:
        with Subscriber(broker.host, broker.port, ["edged/#", "homeassistant/#"]) as late:
            late.wait_for_message("edged/status", lambda m: m.payload == b"online", timeout=TIMEOUT)
            time.sleep(1.0)  # the earlier run's retained values, then what this run says of them
            latest = {m.topic: m.payload for m in late.messages()}
        assert edged.stop() == 0, edged.log_text()
    retained = {topic for topic, payload in latest.items() if payload}
    assert "homeassistant/switch/edged/front_detection/config" in retained
    assert not retained & {
        "homeassistant/binary_sensor/edged/front_face/config",
        "homeassistant/sensor/edged/front_faces/config",
        "homeassistant/image/edged/front_snapshot/config",
        "edged/front/faces",
        "edged/front/snapshot",
    }


def available(entity: dict[str, Any], latest: dict[str, bytes]) -> bool:
    """Home Assistant's rule for `availability_mode: all`: every availability topic says available."""
    assert entity["availability_mode"] == "all"
    return all(latest.get(a["topic"]) == a["payload_available"].encode() for a in entity["availability"])


@pytest.mark.slow
def test_the_face_sensors_of_a_camera_that_is_down_are_unavailable_not_clear(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    cameras = {"front": front_and_back(media_dir)["front"], "down": {"url": "rtsp://127.0.0.1:9/none"}}
    config = write_config(tmp_path, shared_dir, broker, cameras, homeassistant={"enabled": True})
    expected = discovery_topics("front") | discovery_topics("down")
    statuses = {"edged/status", "edged/front/status", "edged/down/status"}
    with Subscriber(broker.host, broker.port, ["edged/#", "homeassistant/#"]) as subscriber:
        with edged_running(config) as edged:
            subscriber.wait_for(lambda ms: expected | statuses <= {m.topic for m in ms}, timeout=TIMEOUT)
            subscriber.wait_for_message("edged/front/status", lambda m: m.payload == b"online", timeout=TIMEOUT)
            entities = {m.topic: m.json() for m in subscriber.messages("homeassistant/#")}
            latest = {m.topic: m.payload for m in subscriber.messages()}
            assert latest["edged/down/status"] == b"offline"
            availability = {topic: available(entity, latest) for topic, entity in entities.items()}
            assert edged.stop() == 0, edged.log_text()
        after_stop = {m.topic: m.payload for m in subscriber.messages()}
    for entity in entities.values():
        jsonschema.validate(entity, schema("homeassistant-discovery"))
    assert availability == {
        "homeassistant/binary_sensor/edged/front_face/config": True,
        "homeassistant/sensor/edged/front_faces/config": True,
        "homeassistant/image/edged/front_snapshot/config": True,
        "homeassistant/switch/edged/front_detection/config": True,
        "homeassistant/binary_sensor/edged/down_face/config": False,  # not "no face": the camera is down
        "homeassistant/sensor/edged/down_faces/config": False,
        "homeassistant/image/edged/down_snapshot/config": True,  # the last event's picture stays viewable
        "homeassistant/switch/edged/down_detection/config": True,  # detection can be switched while it is down
    }
    assert not any(available(entity, after_stop) for entity in entities.values())  # edged gone: all of them


@pytest.mark.slow
def test_a_reload_gives_an_added_camera_its_entities_and_takes_a_removed_cameras_away(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    cameras = front_and_back(media_dir)
    config = write_config(tmp_path, shared_dir, broker, {"front": cameras["front"]}, homeassistant={"enabled": True})
    with (
        Subscriber(broker.host, broker.port, ["homeassistant/#", "edged/homeassistant/cameras"]) as subscriber,
        edged_running(config) as edged,
    ):
        subscriber.wait_for(lambda ms: discovery_topics("front") <= {m.topic for m in ms}, timeout=TIMEOUT)
        swapped = write_config(tmp_path, shared_dir, broker, {"back": cameras["back"]}, homeassistant={"enabled": True})
        edged.reload(config, swapped, until="camera back: online")

        def announced(camera: str, messages: Sequence[Message]) -> set[str]:
            return {m.topic for m in messages if m.topic in discovery_topics(camera) and m.payload}

        subscriber.wait_for(lambda ms: announced("back", ms) == discovery_topics("back"), timeout=TIMEOUT)
        subscriber.wait_for(
            lambda ms: discovery_topics("front") <= {m.topic for m in ms if m.payload == b""}, timeout=TIMEOUT
        )
        record = subscriber.wait_for_message(
            "edged/homeassistant/cameras", lambda m: m.json()["cameras"] == ["back"], timeout=TIMEOUT
        )
        jsonschema.validate(record.json(), schema("homeassistant-record"))
        assert edged.stop() == 0, edged.log_text()

    with Subscriber(broker.host, broker.port, "homeassistant/#") as late:  # what Home Assistant finds on the broker
        late.wait_for(lambda ms: discovery_topics("back") <= {m.topic for m in ms}, timeout=TIMEOUT)
        assert {m.topic for m in late.messages("homeassistant/#")} == discovery_topics("back")


@pytest.mark.slow
def test_a_camera_dropped_from_the_config_between_two_runs_leaves_no_retained_topics_and_others_topics_stay(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    both = front_and_back(media_dir)
    config = write_config(tmp_path, shared_dir, broker, both)
    with Subscriber(broker.host, broker.port, "edged/#") as subscriber, edged_running(config) as edged:
        subscriber.wait_for_message("edged/back/faces", where=lambda m: m.payload != b"0", timeout=TIMEOUT)
        # Another client's retained topic under the same prefix (an edged with prefix edged/garage, say).
        subscriber.publish("edged/garage/status", "online", retain=True)
        record = subscriber.wait_for_message("edged/cameras", timeout=TIMEOUT).json()
        assert edged.stop() == 0, edged.log_text()
    jsonschema.validate(record, schema("cameras-record"))
    assert record == {"cameras": ["back", "front"]}
    only_front = write_config(tmp_path, shared_dir, broker, {"front": both["front"]})
    with edged_running(only_front) as edged:
        assert wait_until(lambda: "cameras no longer configured: back" in edged.log_text(), TIMEOUT)
        assert edged.stop() == 0, edged.log_text()

    with Subscriber(broker.host, broker.port, ["edged/back/#", "edged/front/#", "edged/garage/#"]) as late:
        late.wait_for(lambda ms: {"edged/front/status", "edged/garage/status"} <= {m.topic for m in ms}, TIMEOUT)
        time.sleep(0.5)  # retained messages arrive at once on subscribing
        assert late.messages("edged/back/#") == []
        assert {"edged/front/faces", "edged/front/detect/state"} <= {m.topic for m in late.messages("edged/front/#")}
        assert [m.payload for m in late.messages("edged/garage/status")] == [b"online"]


def test_a_reload_that_restarts_a_camera_keeps_its_face_count_while_the_face_stays_in_view(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    camera = {"url": str(media_dir / "images" / "astronaut.png"), "fps": 5}
    config = write_config(tmp_path, shared_dir, broker, {"door": camera})
    with Subscriber(broker.host, broker.port, "edged/door/faces") as subscriber, edged_running(config) as edged:
        subscriber.wait_for_message("edged/door/faces", where=lambda m: m.payload != b"0", timeout=TIMEOUT)
        changed = write_config(tmp_path, shared_dir, broker, {"door": {**camera, "fps": 4}})  # restarts the camera
        edged.reload(config, changed, until="camera door: online")
        time.sleep(1.0)  # frames of the restarted camera are processed: a count they changed would have arrived
        counts = [m.payload for m in subscriber.messages("edged/door/faces")]
        assert edged.stop() == 0, edged.log_text()
    first_face = next(i for i, count in enumerate(counts) if count != b"0")
    assert b"0" not in counts[first_face:], counts  # the face never left the picture


@pytest.mark.slow
def test_a_forged_discovery_record_naming_wildcard_topics_is_ignored(
    tmp_path: Path, shared_dir: Path, media_dir: Path, broker: Mosquitto
) -> None:
    cameras = {"front": front_and_back(media_dir)["front"]}
    config = write_config(tmp_path, shared_dir, broker, cameras, homeassistant={"enabled": True})
    with Subscriber(broker.host, broker.port, ["edged/#", "homeassistant/#"]) as subscriber:
        forged = {"discovery_prefix": "homeassistant/#", "node_id": "edged", "cameras": ["front", "+"]}
        subscriber.publish("edged/homeassistant/cameras", json.dumps(forged), retain=True)
        with edged_running(config) as edged:
            subscriber.wait_for_count("edged/front/detections", 3, timeout=TIMEOUT)
            at = len(subscriber.messages("edged/front/detections"))
            subscriber.wait_for_count("edged/front/detections", at + 5, timeout=TIMEOUT)
            assert edged.stop() == 0, edged.log_text()
    log = edged.log_text()
    assert "Home Assistant: ignored an unreadable record on edged/homeassistant/cameras" in log
    assert "Traceback" not in log
    assert not [m for m in subscriber.messages("homeassistant/#") if m.payload == b""]  # nothing withdrawn
