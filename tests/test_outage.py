"""Broker outages: a real mosquitto goes away for 10 s mid-run and comes back on the same port.

What a subscriber with a persistent session sees is the spec: with an outbox large enough, every
`seq` of every camera arrives, in order; with a small outbox, the oldest messages are dropped and
the count edged reports equals the gap subscribers see.

Delivery is at-least-once (QoS 1): a message on the wire when the connection broke is sent again,
so a subscriber may see a redelivery of a `seq` it already has (at most `mqtt.inflight` per
outage). It drops those by seq; after that the stream must be exactly 0, 1, 2, ... per camera.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.edged_process import EdgedProcess, base_config, seqs, write_config
from tests.support.broker import Mosquitto
from tests.support.mqtt import Subscriber

OUTAGE_S = 10.0
FPS = 10.0
CAMERAS = ("classroom", "walkway")
MEDIA = {"classroom": "classroom.mp4", "walkway": "face-demographics-walking.mp4"}
OUTBOX = 60  # the small outbox: every event of an outage fits, most detections do not


def _config(tmp_path: Path, shared_dir: Path, broker: Mosquitto, *, events: bool = False, **mqtt: Any) -> Path:
    cameras = {name: {"url": str(shared_dir / "media" / MEDIA[name]), "fps": FPS} for name in CAMERAS}
    mqtt = {"qos": {"detections": 1}, "backoff": {"min": 0.5, "max": 2.0}, **mqtt}
    config = base_config(shared_dir, broker.port, cameras, **mqtt)
    config["events"] = {"enabled": events}
    return write_config(tmp_path / "edged.yaml", config)


def _without_redeliveries(seqs: list[int]) -> tuple[list[int], int]:
    """Drop each seq not above the last one kept (a QoS 1 redelivery); (kept, how many dropped)."""
    kept: list[int] = []
    for seq in seqs:
        if not kept or seq > kept[-1]:
            kept.append(seq)
    return kept, len(seqs) - len(kept)


def _outage(broker: Mosquitto, subscriber: Subscriber, edged: EdgedProcess) -> dict[str, int]:
    """Run until every camera published, stop the broker for OUTAGE_S, bring it back; seqs before it."""
    for camera in CAMERAS:
        subscriber.wait_for_count(f"edged/{camera}/detections", 5, timeout=60)
    before = {camera: len(seqs(subscriber, camera)) for camera in CAMERAS}
    broker.stop()  # SIGTERM: the subscriber's persistent session survives the restart
    time.sleep(OUTAGE_S)
    broker.start()
    edged.wait_for_log(r"MQTT: reconnected", timeout=15)
    return before


@pytest.mark.slow
def test_a_ten_second_broker_outage_loses_no_message(
    tmp_path: Path, shared_dir: Path, broker_factory: Any, subscriber: Any
) -> None:
    broker = broker_factory(persistence=True)
    watcher = subscriber(broker, "edged/+/detections", client_id="outage-watcher", persistent=True)
    with EdgedProcess(_config(tmp_path, shared_dir, broker), tmp_path / "edged.log") as edged:
        before = _outage(broker, watcher, edged)
        # Everything queued during the outage, and some fresh messages after it.
        for camera in CAMERAS:
            watcher.wait_for_count(f"edged/{camera}/detections", before[camera] + int(OUTAGE_S * FPS), timeout=30)
        code, _ = edged.stop(signal.SIGTERM)
        assert code == 0, edged.log()
    time.sleep(0.5)  # the last acknowledged messages reach the watcher
    for camera in CAMERAS:
        kept, redelivered = _without_redeliveries(seqs(watcher, camera))
        assert kept == list(range(len(kept))), f"{camera}: a seq is missing"
        assert len(kept) >= before[camera] + OUTAGE_S * FPS * 0.8, f"{camera}: the outage's messages are missing"
        assert redelivered <= 20, f"{camera}: more redeliveries than messages in flight"


@pytest.mark.slow
def test_with_a_small_outbox_detections_are_dropped_before_events_and_the_count_equals_the_gap(
    tmp_path: Path, shared_dir: Path, broker_factory: Any, subscriber: Any
) -> None:
    broker = broker_factory(persistence=True)
    watcher = subscriber(broker, "edged/+/detections", client_id="gap-watcher", persistent=True)
    # Face events share the outbox with detections; they go last, so every drop is a detection's as long as the
    # events of the outage fit in the outbox: two cameras make at most ~40 in 10 s (an update a second each, and
    # new/end pairs at least end_after apart), while their 200 detections overflow it.
    config = _config(tmp_path, shared_dir, broker, events=True, outbox_size=OUTBOX)
    with EdgedProcess(config, tmp_path / "edged.log") as edged:
        before = _outage(broker, watcher, edged)
        for camera in CAMERAS:
            watcher.wait_for_count(f"edged/{camera}/detections", before[camera] + 20, timeout=30)
        code, _ = edged.stop(signal.SIGTERM)
        assert code == 0, edged.log()
        log = edged.log()
    time.sleep(0.5)
    assert f"MQTT outbox full ({OUTBOX} messages): dropping the oldest" in log
    reported = int(re.findall(r"(\d+) MQTT messages were dropped", log)[-1])
    missing = 0
    for camera in CAMERAS:
        kept, _ = _without_redeliveries(seqs(watcher, camera))
        missing += len(set(range(kept[-1] + 1)) - set(kept))
    assert reported > OUTAGE_S * FPS  # most of the outage did not fit in 20 messages
    assert missing == reported
