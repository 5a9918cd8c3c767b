"""The publisher on its own against a real broker: what is queued reaches subscribers without further help."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from edged.config import MqttConfig
from edged.publish import Publisher
from tests.support.broker import Mosquitto

BURST = 200  # ten times the in-flight window below


@pytest.mark.parametrize("qos", [0, 1])
async def test_a_burst_larger_than_the_inflight_window_is_delivered_without_further_publishes(
    broker: Mosquitto, subscriber: Any, qos: int
) -> None:
    watcher = subscriber(broker, "edged/burst/detections", qos=1)
    publisher = Publisher(MqttConfig(host=broker.host, port=broker.port, client_id="burst", inflight=20))
    running = asyncio.create_task(publisher.run())
    try:
        await asyncio.wait_for(publisher.connected.wait(), 10)
        for seq in range(BURST):
            publisher.publish("edged/burst/detections", str(seq).encode(), qos)
            if seq % 4 == 3:
                await asyncio.sleep(0)  # results reach the publisher a few at a time
        # Nothing is published after the burst: the outbox must empty by itself.
        received = await asyncio.to_thread(watcher.wait_for_count, "edged/burst/detections", BURST, 5)
        assert [int(message.payload) for message in received] == list(range(BURST))
        await publisher.close(5)  # waits for the last acknowledgements, which may trail the subscriber
        assert publisher.outbox_depth == 0
    finally:
        await publisher.close(2)
        running.cancel()  # as the supervisor does once close() has flushed what it could
        with contextlib.suppress(asyncio.CancelledError):
            await running
