"""The real-parts fixtures work: broker (restart, persistence, TLS, auth), RTSP and MJPEG cameras."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.broker import BrokerFactory, Mosquitto
from tests.support.mjpeg import MjpegFactory, MjpegServer
from tests.support.mqtt import MqttError, Subscriber, SubscriberFactory, topic_matches
from tests.support.rtsp import RtspFactory, RtspServer

# --- helpers -----------------------------------------------------------------------------------------


@dataclass
class Capture:
    started: float  # monotonic time just before opening
    opened: bool
    frames: list[np.ndarray]
    times: list[float]  # monotonic time each frame was returned

    def fps(self) -> float:
        """Frames per second since the open began.

        A paced server cannot deliver faster than real time from the moment it starts, while
        per-frame intervals are useless: the opener buffers a burst of frames while it probes,
        and a loaded machine decodes late and then catches up.
        """
        return len(self.frames) / (self.times[-1] - self.started)


def capture(url: str, count: int, timeout_ms: int = 5000) -> Capture:
    """Read up to ``count`` frames the way edged opens network cameras (FFmpeg with timeouts)."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    started = time.monotonic()
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    result = Capture(started, cap.isOpened(), [], [])
    try:
        while result.opened and len(result.frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            result.frames.append(frame)
            result.times.append(time.monotonic())
    finally:
        cap.release()
    return result


# --- test data ---------------------------------------------------------------------------------------


def test_shared_dir_has_models_and_media(shared_dir: Path) -> None:
    assert (shared_dir / "media" / "faces-1080p30.mp4").is_file()
    assert any((shared_dir / "models").iterdir())


# --- MQTT --------------------------------------------------------------------------------------------


def test_topic_patterns_accept_mqtt_filters_and_globs() -> None:
    assert topic_matches("edged/+/status", "edged/cam1/status")
    assert topic_matches("edged/#", "edged/cam1/detections")
    assert topic_matches("edged/*/status", "edged/cam1/status")
    assert not topic_matches("edged/+/status", "edged/cam1/detections")


def test_publish_and_receive(broker: Mosquitto, subscriber: SubscriberFactory) -> None:
    sub = subscriber(broker)
    sub.publish("edged/cam1/status", '{"online": true}', retain=True)
    sub.publish("other/topic", "ignored")  # outside edged/#: must not be recorded

    message = sub.wait_for_message("edged/+/status", timeout=5)
    assert message.json() == {"online": True}
    assert message.qos == 1
    assert sub.json_messages("edged/#") == [{"online": True}]

    late = subscriber(broker)  # a new subscriber gets the retained message, flagged as such
    assert late.wait_for_message("edged/cam1/status", timeout=5).retain


def test_restart_keeps_port_and_subscriber_reconnects(broker: Mosquitto, subscriber: SubscriberFactory) -> None:
    sub = subscriber(broker)
    port = broker.port
    broker.restart()
    assert broker.port == port
    assert broker.running
    sub.wait_subscribed(timeout=5)  # paho retries every second
    assert sub.connect_count == 2
    sub.publish("edged/after", "x")
    assert sub.wait_for_message("edged/after", timeout=5).payload == b"x"


def test_kill_is_abrupt_and_start_comes_back_on_same_port(broker: Mosquitto) -> None:
    port, pid = broker.port, broker.pid
    broker.kill()
    assert not broker.running
    broker.start()
    assert (broker.port, broker.running) == (port, True)
    assert broker.pid != pid


def test_persistent_session_gets_qos1_messages_queued_across_a_restart(
    broker_factory: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    broker = broker_factory(persistence=True)
    away = subscriber(broker, client_id="edged-test-persistent", persistent=True)
    away.stop()  # the session (and its subscription) stays on the broker

    publisher = subscriber(broker, "unused/#")
    publisher.publish("edged/cam1/detections", '{"n": 1}', qos=1)
    broker.restart()  # SIGTERM: mosquitto saves sessions and queued messages

    back = subscriber(broker, client_id="edged-test-persistent", persistent=True)
    assert back.session_present
    assert back.wait_for_message("edged/cam1/detections", timeout=5).json() == {"n": 1}


def test_tls_with_password(broker_factory: BrokerFactory, subscriber: SubscriberFactory) -> None:
    broker = broker_factory(users={"edge": "s3cret"}, tls=True)
    assert broker.tls_port is not None
    assert broker.ca_path.is_file()
    sub = subscriber(broker, tls=True, username="edge", password="s3cret", mqtt5=True)
    sub.publish("edged/tls", "over tls")
    assert sub.wait_for_message("edged/tls", timeout=5).text() == "over tls"


def test_wrong_password_and_anonymous_are_refused(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(users={"edge": "s3cret"})
    with pytest.raises(MqttError, match="Not authorized"):
        Subscriber(broker.host, broker.port, username="edge", password="wrong").start(timeout=5)
    with pytest.raises(MqttError, match="Not authorized"):
        Subscriber(broker.host, broker.port).start(timeout=5)


def test_client_certificate_required(broker_factory: BrokerFactory, subscriber: SubscriberFactory) -> None:
    broker = broker_factory(tls=True, require_client_cert=True)
    assert broker.tls_port is not None
    with_cert = subscriber(broker, tls=True)  # the factory adds the broker's client certificate
    assert with_cert.connected

    without_cert = Subscriber(broker.host, broker.tls_port, ca_path=broker.ca_path)
    # TLS 1.3 reports a missing client certificate after the handshake, so connect() may succeed
    # and the refusal shows up as "never subscribed".
    with pytest.raises((MqttError, OSError)):
        without_cert.start(timeout=2)


# --- RTSP camera -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rtsp_opencv_reads_1080p_at_30_fps_and_survives_restart(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url
    assert url.startswith("rtsp://127.0.0.1:") and url.endswith("/stream")

    got = capture(url, 90)
    assert got.opened and len(got.frames) == 90
    assert got.frames[0].shape == (1080, 1920, 3)
    # Paced by the file's timestamps: never above 30 fps; below only if this machine lags.
    assert 20 <= got.fps() <= 31

    rtsp_server.restart()  # SIGKILL, then the same port
    assert rtsp_server.url == url
    assert len(capture(url, 5).frames) == 5


def test_rtsp_paused_server_times_out_on_open(rtsp_server: RtspServer) -> None:
    rtsp_server.pause()  # TCP still accepted by the kernel, no RTSP answer: a hung camera
    started = time.monotonic()
    assert not capture(rtsp_server.url, 1, timeout_ms=1000).opened
    assert time.monotonic() - started < 5
    rtsp_server.resume()
    assert len(capture(rtsp_server.url, 3).frames) == 3


def test_rtsp_loop_mode_streams(rtsp_server_factory: RtspFactory) -> None:
    # Looping itself (past the file's 12 s) was checked by hand: too slow for every run.
    server = rtsp_server_factory(loop=True)
    assert len(capture(server.url, 10).frames) == 10


# --- MJPEG camera ------------------------------------------------------------------------------------


def test_mjpeg_opencv_reads_frames_at_the_served_rate(mjpeg_server_factory: MjpegFactory) -> None:
    server = mjpeg_server_factory(fps=20.0)
    got = capture(server.url, 30)
    assert got.opened and len(got.frames) == 30
    assert got.frames[0].shape == (270, 480, 3)
    assert 12 <= got.fps() <= 22


def test_mjpeg_restart_same_port_and_pause(mjpeg_server: MjpegServer) -> None:
    url = mjpeg_server.url
    mjpeg_server.restart()
    assert mjpeg_server.url == url
    assert len(capture(url, 3).frames) == 3

    mjpeg_server.pause()
    assert not capture(url, 1, timeout_ms=1000).frames
    mjpeg_server.resume()
    assert len(capture(url, 3).frames) == 3
