"""MQTT publishing through a bounded outbox, so a broker outage delays messages instead of losing them.

`publish()` never blocks and never fails: it queues. One task drains the queue in order while the
broker is reachable and reconnects with backoff while it is not. When the outbox is full the oldest
messages go first and are counted. Retained state (statuses) is kept apart as "latest value per
topic": it takes no outbox space and is re-sent first on every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt

from edged.config import MqttConfig

log = logging.getLogger("edged.mqtt")

RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0
PUBLISH_TIMEOUT_S = 10.0
INCOMING_QUEUE = 1000  # incoming messages waiting for their handler: a flood of commands cannot grow memory

MessageHandler = Callable[[str, bytes, bool], None]  # (topic, payload, retained), called on the event loop


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Publisher:
    def __init__(self, config: MqttConfig) -> None:
        self._config = config
        self.prefix = config.topic_prefix
        self.status_topic = f"{self.prefix}/status"
        self._outbox: deque[Message] = deque()
        self._retained: dict[str, Message] = {}
        self._unsent_retained: dict[str, Message] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self.connected = asyncio.Event()
        self.dropped = 0
        self.published = 0
        self._handlers: dict[str, MessageHandler] = {}

    # -- producer side, on the event loop ---------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        """Queue a message; when the outbox is full the oldest queued message is dropped."""
        if len(self._outbox) >= self._config.outbox_size:
            self._outbox.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "MQTT outbox full (%d messages): dropping the oldest, %d dropped so far",
                    self._config.outbox_size,
                    self.dropped,
                )
        self._outbox.append(Message(topic, payload, qos, False))
        self._wake.set()

    def set_retained(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish a retained state; only its latest value matters, so it is never dropped."""
        message = Message(topic, payload, qos, True)
        if self._retained.get(topic) == message:
            return
        self._retained[topic] = message
        self._unsent_retained[topic] = message
        self._wake.set()

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    # -- the connection task --------------------------------------------------------------

    async def run(self) -> None:
        """Connect, drain, reconnect; returns once `close()` has flushed and said goodbye."""
        retry = RETRY_MIN_S
        try:
            while not self._closed.is_set():
                try:
                    async with self._client() as client:
                        self._on_connected()
                        retry = RETRY_MIN_S
                        await self._session(client)
                        return
                except aiomqtt.MqttError as error:
                    self._on_connection_lost(error, retry)
                if self._closing:
                    return  # not connected at shutdown: what is still queued cannot be delivered
                with contextlib.suppress(TimeoutError):
                    # Jitter keeps a fleet of edge boxes from reconnecting in lockstep after a broker restart.
                    await asyncio.wait_for(self._closed.wait(), retry * random.uniform(0.8, 1.2))
                retry = min(retry * 2, RETRY_MAX_S)
        finally:
            self.connected.clear()
            self._closed.set()

    async def close(self, timeout: float) -> None:
        """Flush what is queued (up to `timeout`), publish `offline` and disconnect."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except TimeoutError:
            self._closed.set()
            self._wake.set()
        if self._outbox:
            log.warning("MQTT: %d queued messages could not be delivered before shutdown", len(self._outbox))

    def _client(self) -> aiomqtt.Client:
        config = self._config
        return aiomqtt.Client(
            config.host,
            config.port,
            identifier=config.client_id,
            username=config.username,
            password=config.password,
            keepalive=config.keepalive,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            timeout=PUBLISH_TIMEOUT_S,
            max_queued_incoming_messages=INCOMING_QUEUE,
        )

    def _on_connected(self) -> None:
        log.info("MQTT: connected to %s:%d as %s", self._config.host, self._config.port, self._config.client_id)
        self.set_retained(self.status_topic, b"online")
        # Whatever the broker had of our retained state may be stale (or gone with its restart).
        self._unsent_retained = {self.status_topic: self._retained[self.status_topic], **self._retained}
        self.connected.set()

    def _on_connection_lost(self, error: aiomqtt.MqttError, retry: float) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected or retry == RETRY_MIN_S:
            log.warning(
                "MQTT: broker %s:%d unreachable (%s); queueing up to %d messages, retrying",
                self._config.host,
                self._config.port,
                error,
                self._config.outbox_size,
            )
        else:
            log.debug("MQTT: still unreachable (%s); next try in %.0f s", error, retry)

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            while self._unsent_retained:
                topic, message = next(iter(self._unsent_retained.items()))
                await self._send(client, message)
                if self._unsent_retained.get(topic) is message:
                    del self._unsent_retained[topic]
            if self._outbox:
                message = self._outbox.popleft()
                try:
                    await self._send(client, message)
                except BaseException:
                    self._outbox.appendleft(message)  # not delivered: it stays first in line
                    raise
                continue
            if self._closing:
                await self._send(client, Message(self.status_topic, b"offline", 1, True))
                log.info("MQTT: published offline, disconnecting")
                self._closed.set()
                return
            self._wake.clear()
            await self._wake.wait()

    async def _send(self, client: aiomqtt.Client, message: Message) -> None:
        await client.publish(
            message.topic, message.payload, qos=message.qos, retain=message.retain, timeout=PUBLISH_TIMEOUT_S
        )
        self.published += 1

    # -- incoming messages (commands, retained records read back) ---------------------------

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Route messages matching `topic_filter` to `handler`; subscribed on every (re)connect.

        Register before `run()`: a filter added later is subscribed from the next reconnect on.
        """
        self._handlers[topic_filter] = handler

    async def _session(self, client: aiomqtt.Client) -> None:
        """Subscribe, then drain the outbox while a second task hands incoming messages to their handlers."""
        if not self._handlers:
            await self._drain(client)
            return
        for topic_filter in self._handlers:
            await client.subscribe(topic_filter, qos=1, timeout=PUBLISH_TIMEOUT_S)
        try:
            async with asyncio.TaskGroup() as session:
                receiver = session.create_task(self._receive(client), name="mqtt-receive")
                await self._drain(client)
                receiver.cancel()  # drained and said offline: the session is over
        except BaseExceptionGroup as group:
            # Whichever side noticed the broker going first ended the session; run() reconnects on it.
            raise group.exceptions[0] from None

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            handler = next((h for f, h in self._handlers.items() if message.topic.matches(f)), None)
            if handler is None:
                continue
            payload = message.payload
            if isinstance(payload, bytes | bytearray):
                data = bytes(payload)
            else:  # aiomqtt types payloads more widely than the bytes paho hands it
                data = b"" if payload is None else str(payload).encode()
            try:
                handler(topic, data, message.retain)
            except Exception:
                # A bad command must not take the connection down with it.
                log.exception("MQTT: handling a message on %s failed", topic)
