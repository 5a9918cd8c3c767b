"""A recording MQTT subscriber for tests, on paho-mqtt 2 with its network loop in a thread.

It is deliberately a different client library from the one edged uses (aiomqtt), so a test checks
what really reached the broker, not what edged's own client believes it sent.
"""

from __future__ import annotations

import fnmatch
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import LOCALHOST

# Type of the ``subscriber`` fixture: (broker=None, topics="edged/#", *, tls=False, **options).
SubscriberFactory = Callable[..., "Subscriber"]


class MqttError(RuntimeError):
    """Connecting, subscribing or publishing failed, or a wait timed out."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: float  # time.monotonic() when the subscriber got it

    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter (``edged/+/status``, ``edged/#``) or shell glob (``edged/*/status``)."""
    if "+" in pattern or "#" in pattern:
        return paho.topic_matches_sub(pattern, topic)
    return fnmatch.fnmatchcase(topic, pattern)


class Subscriber:
    """Subscribes to ``topics`` and records every message, in arrival order.

    ``persistent=True`` asks the broker to keep the session (and queue QoS 1 messages) while this
    client is away: MQTT 3.1.1 ``clean_session=False`` or MQTT 5 ``clean_start=False`` with a
    session expiry. It then needs a fixed ``client_id``. After a reconnect the subscriber only
    re-subscribes when the broker lost the session, so queued messages are neither lost nor
    doubled by retained re-delivery. paho reconnects by itself every second while the broker is
    down.
    """

    def __init__(
        self,
        host: str = LOCALHOST,
        port: int = 1883,
        topics: str | Iterable[str] = "edged/#",
        *,
        qos: int = 1,
        client_id: str = "",
        persistent: bool = False,
        mqtt5: bool = False,
        username: str | None = None,
        password: str | None = None,
        ca_path: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        keepalive: int = 10,
    ) -> None:
        if persistent and not client_id:
            raise ValueError("a persistent session needs a fixed client_id")
        self.host, self.port = host, port
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos, self.persistent, self.mqtt5, self.keepalive = qos, persistent, mqtt5, keepalive
        self._messages: list[Message] = []
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._failure: str | None = None  # why the first connection or the subscription failed
        self.connect_count = 0
        self.session_present: bool | None = None
        self._client = self._make_client(client_id)
        self._configure_security(username, password, ca_path, client_cert, client_key)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Subscriber:
        """Connect, start the network thread and wait until the subscription is in place."""
        properties = None
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # Without an expiry an MQTT 5 session ends with the connection, persistent or not.
            properties.SessionExpiryInterval = 3600 if self.persistent else 0
        self._client.connect(
            self.host,
            self.port,
            keepalive=self.keepalive,
            clean_start=not self.persistent if self.mqtt5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()
        try:
            self.wait_subscribed(timeout)
        except MqttError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Disconnect cleanly; a persistent session stays on the broker."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float = 10.0) -> None:
        if not self._connected.wait(timeout):
            raise MqttError(self._failure or f"not connected to {self.host}:{self.port} after {timeout}s")

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Wait until messages published from now on will be received (SUBACK, or session kept)."""
        deadline = time.monotonic() + timeout
        while not self._subscribed.wait(0.05):
            if self._failure:
                raise MqttError(self._failure)
            if time.monotonic() >= deadline:
                raise MqttError(f"no subscription on {self.host}:{self.port} after {timeout}s")

    # --- recorded messages ---------------------------------------------------------------------

    def messages(self, topic: str = "#") -> list[Message]:
        with self._cond:
            return [m for m in self._messages if topic_matches(topic, m.topic)]

    def json_messages(self, topic: str = "#") -> list[Any]:
        return [m.json() for m in self.messages(topic)]

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(self, predicate: Callable[[Sequence[Message]], object], timeout: float = 10.0) -> list[Message]:
        """Wait until ``predicate(all messages so far)`` is true; returns that snapshot."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MqttError(f"condition not met within {timeout}s; {self._summary()}")
                self._cond.wait(remaining)
            return list(self._messages)

    def wait_for_count(self, topic: str, count: int, timeout: float = 10.0) -> list[Message]:
        """Wait for at least ``count`` messages on ``topic``; returns those messages."""
        self.wait_for(lambda ms: sum(topic_matches(topic, m.topic) for m in ms) >= count, timeout)
        return self.messages(topic)

    def wait_for_message(
        self, topic: str = "#", where: Callable[[Message], object] | None = None, timeout: float = 10.0
    ) -> Message:
        """The first message on ``topic`` (that satisfies ``where``), waiting for it if needed."""

        def match(m: Message) -> bool:
            return topic_matches(topic, m.topic) and (where is None or bool(where(m)))

        snapshot = self.wait_for(lambda ms: any(match(m) for m in ms), timeout)
        return next(m for m in snapshot if match(m))

    # --- publishing (handy for commands/config topics) ----------------------------------------

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=10.0)
        if not info.is_published():
            raise MqttError(f"publish to {topic!r} not acknowledged (rc={info.rc})")

    # --- paho callbacks (run in paho's network thread) -----------------------------------------

    def _make_client(self, client_id: str) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if self.mqtt5 else not self.persistent,
            protocol=MQTTProtocolVersion.MQTTv5 if self.mqtt5 else MQTTProtocolVersion.MQTTv311,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _configure_security(
        self,
        username: str | None,
        password: str | None,
        ca_path: Path | None,
        client_cert: Path | None,
        client_key: Path | None,
    ) -> None:
        if username is not None:
            self._client.username_pw_set(username, password)
        if ca_path is not None:
            self._client.tls_set(
                ca_certs=str(ca_path),
                certfile=str(client_cert) if client_cert else None,
                keyfile=str(client_key) if client_key else None,
            )

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            # Refused (bad credentials, ...): give up instead of retrying every second, so start()
            # fails at once and stop() does not wait out a reconnect delay.
            self._failure = f"broker {self.host}:{self.port} refused: {reason_code} ({reason_code.value})"
            client.disconnect()
            return
        self.connect_count += 1
        self.session_present = flags.session_present
        self._connected.set()
        if flags.session_present:
            # The broker kept our subscription: subscribing again would re-send retained messages.
            self._subscribed.set()
        else:
            client.subscribe([(topic, self.qos) for topic in self.topics])

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if self.connect_count == 0 and self._failure is None:
            # Lost before the first CONNACK (e.g. TLS refused a missing client certificate): a
            # broken setup, not an outage, so fail start() instead of retrying.
            self._failure = f"connection to {self.host}:{self.port} closed before CONNACK ({reason_code})"
            client.disconnect()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(code.is_failure for code in reason_codes):
            self._failure = f"subscription to {self.topics} refused: {[str(c) for c in reason_codes]}"
            return
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        received = Message(
            topic=message.topic,
            payload=bytes(message.payload),
            qos=message.qos,
            retain=bool(message.retain),
            received_at=time.monotonic(),
        )
        with self._cond:
            self._messages.append(received)
            self._cond.notify_all()

    # --- diagnostics ---------------------------------------------------------------------------

    def _summary(self) -> str:
        topics = sorted({m.topic for m in self._messages})
        return f"{len(self._messages)} message(s) received on {topics}"

    def __repr__(self) -> str:
        return f"<Subscriber {self.host}:{self.port} {self.topics} messages={len(self._messages)}>"
