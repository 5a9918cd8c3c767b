"""The publisher on its own against a real broker: what is queued reaches subscribers without further help."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edged.config import MqttConfig
from edged.publish import Publisher
from tests.support.broker import Mosquitto

BURST = 200  # ten times the in-flight window below


@contextlib.asynccontextmanager
async def _connected_publisher(
    broker: Mosquitto, client_id: str, **mqtt: Any
) -> AsyncIterator[tuple[Publisher, asyncio.Task[None]]]:
    """A publisher connected to the broker, and its task; stopped afterwards as the supervisor stops it."""
    publisher = Publisher(MqttConfig(host=broker.host, port=broker.port, client_id=client_id, **mqtt))
    running = asyncio.create_task(publisher.run())
    try:
        await asyncio.wait_for(publisher.connected.wait(), 10)
        yield publisher, running
    finally:
        await publisher.close(2)
        await _gone(running)  # as the supervisor does once close() has flushed what it could


@pytest.mark.parametrize("qos", [0, 1])
async def test_a_burst_larger_than_the_inflight_window_is_delivered_without_further_publishes(
    broker: Mosquitto, subscriber: Any, qos: int
) -> None:
    watcher = subscriber(broker, "edged/burst/detections", qos=1)
    async with _connected_publisher(broker, "burst", inflight=20) as (publisher, _):
        for seq in range(BURST):
            publisher.publish("edged/burst/detections", str(seq).encode(), qos)
            if seq % 4 == 3:
                await asyncio.sleep(0)  # results reach the publisher a few at a time
        # Nothing is published after the burst: the outbox must empty by itself.
        received = await asyncio.to_thread(watcher.wait_for_count, "edged/burst/detections", BURST, 5)
        assert [int(message.payload) for message in received] == list(range(BURST))
        await publisher.close(5)  # waits for the last acknowledgements, which may trail the subscriber
        assert publisher.outbox_depth == 0


async def test_messages_of_mixed_qos_reach_subscribers_in_the_order_they_were_published(
    broker: Mosquitto, subscriber: Any
) -> None:
    """Per-frame messages (QoS 0) and events (QoS 1) go out by different paths: neither overtakes the other."""
    watcher = subscriber(broker, "edged/door/#", qos=1)
    async with _connected_publisher(broker, "mixed", inflight=20) as (publisher, _):
        for seq in range(BURST):
            topic = "edged/door/events" if seq % 5 == 0 else "edged/door/detections"
            publisher.publish(topic, str(seq).encode(), 1 if seq % 5 == 0 else 0)
            if seq % 7 == 6:
                await asyncio.sleep(0)
        received = await asyncio.to_thread(watcher.wait_for, lambda messages: len(messages) >= BURST, 5)
    assert [int(message.payload) for message in received] == list(range(BURST))


LARGE = 256 * 1024  # 64 of these are more than the socket buffers of both ends hold


@pytest.mark.parametrize("qos", [0, 1])
async def test_messages_the_socket_cannot_take_while_the_broker_is_stalled_follow_in_order_once_it_reads_again(
    broker: Mosquitto, subscriber: Any, qos: int
) -> None:
    watcher = subscriber(broker, "edged/big/detections", qos=1)
    async with _connected_publisher(broker, "stalled-reader", inflight=20) as (publisher, _):
        with broker.paused():  # the broker stops reading: the socket fills up
            for seq in range(64):
                publisher.publish("edged/big/detections", seq.to_bytes(4, "big") * (LARGE // 4), qos)
                await asyncio.sleep(0)
            await asyncio.sleep(1)
            assert publisher.outbox_depth > 0  # the rest waits in edged's own bounded outbox
        received = await asyncio.to_thread(watcher.wait_for_count, "edged/big/detections", 64, 15)
        assert [int.from_bytes(message.payload[:4], "big") for message in received] == list(range(64))
        assert all(len(message.payload) == LARGE for message in received)


async def _online(broker: Mosquitto, client_id: str, **mqtt: Any) -> tuple[Publisher, asyncio.Task[None]]:
    """A running publisher whose retained `online` the broker has acknowledged."""
    publisher = Publisher(MqttConfig(host=broker.host, port=broker.port, client_id=client_id, **mqtt))
    running = asyncio.create_task(publisher.run())
    await asyncio.wait_for(publisher.connected.wait(), 10)
    await asyncio.sleep(0.3)
    return publisher, running


async def _gone(running: asyncio.Task[None]) -> None:
    """Cancel the publisher's task, as the TaskGroup does when another task of edged crashes (or, after
    close(), as the supervisor does): aiomqtt then disconnects cleanly, which drops the will."""
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


async def _retained_status(broker: Mosquitto, subscriber: Any) -> bytes:
    """What a subscriber arriving now is told on edged/status."""
    watcher = subscriber(broker, "edged/status")
    return bytes((await asyncio.to_thread(watcher.wait_for_message, "edged/status", None, 5)).payload)


async def test_offline_is_retained_even_when_the_broker_stalls_through_the_final_flush(
    broker: Mosquitto, subscriber: Any
) -> None:
    publisher, running = await _online(broker, "stalled")
    with broker.paused():  # the broker hangs just as edged stops
        publisher.publish("edged/door/events", b"last words", 1)
        await publisher.close(0.5)  # the flush times out: nothing is acknowledged
        await _gone(running)
    assert await _retained_status(broker, subscriber) == b"offline"


async def test_a_stop_while_the_broker_hangs_with_the_socket_full_ends_within_systemds_patience(
    broker: Mosquitto,
) -> None:
    publisher, running = await _online(broker, "full-socket")
    with broker.paused():  # the broker stops reading: the DISCONNECT waits behind what fills the socket
        for seq in range(64):
            publisher.publish("edged/big/detections", seq.to_bytes(4, "big") * (LARGE // 4), 0)
            await asyncio.sleep(0)
        await asyncio.sleep(1)
        started = time.monotonic()
        await publisher.close(2)  # as the supervisor: flush for 2 s at most, then the task is cancelled
        await _gone(running)
        stopped_after = time.monotonic() - started
    assert stopped_after < 4  # flush 2 s, `offline` 0.5 s, the disconnect 0.5 s; systemd waits 10 s in all


# What `edged run` does when a stop comes right at start-up: the publisher's first connect has only begun.
_STOP_WHILE_CONNECTING = """
import asyncio, gc, sys
from edged.config import MqttConfig
from edged.publish import Publisher

async def main():
    publisher = Publisher(MqttConfig(host="127.0.0.1", port=int(sys.argv[1]), client_id="stopped-early"))
    running = asyncio.create_task(publisher.run())
    await asyncio.sleep(0)
    await publisher.close(1.0)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)

asyncio.run(main())
gc.collect()
"""


def test_a_stop_while_the_first_connect_is_under_way_exits_without_an_error_printed(broker: Mosquitto) -> None:
    stopped = subprocess.run(
        [sys.executable, "-c", _STOP_WHILE_CONNECTING, str(broker.port)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stderr == ""  # before: "Event loop is closed" with a traceback, "Task was destroyed"


async def test_offline_is_retained_when_edged_goes_down_without_closing_the_publisher(
    broker: Mosquitto, subscriber: Any
) -> None:
    _, running = await _online(broker, "crashing")
    await _gone(running)
    assert await _retained_status(broker, subscriber) == b"offline"


async def test_offline_is_retained_after_a_crash_while_the_in_flight_window_waits_for_a_stalled_broker(
    broker: Mosquitto, subscriber: Any
) -> None:
    publisher, running = await _online(broker, "full-window", inflight=1)
    with broker.paused():  # no acknowledgement comes back: the one in-flight slot stays taken
        for seq in range(3):
            publisher.publish("edged/door/events", bytes([seq]), 1)
        await asyncio.sleep(0.3)
        await _gone(running)
    assert await _retained_status(broker, subscriber) == b"offline"


async def test_camera_statuses_go_offline_with_edged_when_it_goes_down_without_closing_the_publisher(
    broker: Mosquitto, subscriber: Any
) -> None:
    publisher, running = await _online(broker, "crashing-with-cameras")
    publisher.set_retained("edged/door/status", b"online", lapses_to=b"offline")
    publisher.set_retained("edged/yard/status", b"offline", lapses_to=b"offline")
    await asyncio.sleep(0.3)
    await _gone(running)
    watcher = subscriber(broker, "edged/#")  # what a subscriber arriving afterwards is told
    statuses = await asyncio.to_thread(watcher.wait_for, lambda ms: len({m.topic for m in ms}) == 3, 5)
    assert {m.topic: m.payload for m in statuses} == {
        "edged/status": b"offline",
        "edged/door/status": b"offline",
        "edged/yard/status": b"offline",
    }


async def test_a_message_to_a_topic_no_broker_accepts_is_dropped_and_the_others_are_delivered(
    broker: Mosquitto, subscriber: Any, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = subscriber(broker, "edged/#", qos=1)
    async with _connected_publisher(broker, "wildcard") as (publisher, running):
        publisher.publish("edged/door/detections", b"before", 1)
        publisher.publish("edged/#/detections", b"never", 1)
        publisher.set_retained("edged/+/state", b"never")
        publisher.publish("edged/door/detections", b"after", 1)
        received = await asyncio.to_thread(watcher.wait_for_count, "edged/door/detections", 2, 5)
        assert [message.payload for message in received] == [b"before", b"after"]
        assert publisher.connected.is_set() and not running.done()
        assert publisher.dropped == 0  # none dropped for lack of room: the gaps in seq stay countable
        assert "MQTT: message to 'edged/#/detections' dropped: Publish topic cannot contain wildcards." in caplog.text
