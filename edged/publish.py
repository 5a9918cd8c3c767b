"""MQTT publishing through a bounded outbox, so a broker outage delays messages instead of losing them.

`publish()` never blocks and never fails: it queues. One task drains the queue in order while the
broker is reachable and reconnects with backoff while it is not.

Delivery: a message leaves the outbox only once the broker has acknowledged it (PUBACK for QoS 1,
PUBCOMP for QoS 2) or, for QoS 0, once it was written to the socket (QoS 0 promises no more: a
message written to a socket the broker just died on is lost). Up to `mqtt.inflight` messages are
on the wire at once, so a distant broker's round trip does not cap the rate. After a reconnect
the unacknowledged ones are sent again: a subscriber may see at most that many duplicates per
outage (QoS 1 is at-least-once), recognisable by their camera and `seq`.

When the outbox is full the oldest waiting messages go first and are counted. Retained state
(statuses) is kept apart as "latest value per topic": it takes no outbox space and is re-sent
first on every reconnect, because the broker may have lost it. A retained state can name the value
it lapses to when edged goes down without a clean stop (a crash elsewhere): that value is put on
the connection ahead of the DISCONNECT, with `offline` (the will only covers `{prefix}/status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttCodeError, MqttConnectError

from edged.backoff import Retry
from edged.config import MqttConfig
from edged.logs import MQTT_CLIENT_LOGGER
from edged.mqtt_writer import LoopWriter
from edged.secrets import MqttSecurity

log = logging.getLogger("edged.mqtt")

OFFLINE = b"offline"  # edged's retained status once it is gone, said by edged or by the broker (the will)
PUBLISH_TIMEOUT_S = 10.0  # an acknowledgement later than this means the connection is dead
OFFLINE_GRACE_S = 0.5  # after a flush that timed out: for `offline` (written ahead of the disconnect) to be acked
DISCONNECT_WAIT_S = 0.5  # at a stop whose flush timed out: for the broker to see the DISCONNECT (it may never)
ACK_GRACE_S = 0.05  # after a disconnect, for sends whose acknowledgement already arrived to complete
PRECIOUS_KEPT = 256  # events a full outbox keeps ahead of detections (about 7 us per publish to look past)
INCOMING_QUEUE = 1000  # incoming messages waiting for their handler: a flood of commands cannot grow memory
_REFUSED_CREDENTIALS = {4, 5, 134, 135}  # MQTT 3.1.1 CONNACK 4/5 and their MQTT 5 reason codes


class _BrokerAlerts(logging.Filter):
    """A TLS alert the broker sent, kept for edged's own line about the connection attempt it ended.

    With TLS 1.3 the broker judges edged's client certificate after the handshake: paho then logs the alert
    as a socket error in its own words and goes on waiting for an answer until the connect times out, which
    alone would read as an unreachable broker. The alert is the reason, so it goes into edged's line instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.alert = ""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "SSL" not in text or "ALERT" not in text:  # e.g. [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]
            return True
        self.alert = text.partition("socket: ")[2] or text
        return False


_BROKER_ALERTS = _BrokerAlerts()
logging.getLogger(MQTT_CLIENT_LOGGER).addFilter(_BROKER_ALERTS)


def _tolerate_closed_sockets(loop: asyncio.AbstractEventLoop) -> None:
    """aiomqtt asks the loop, from paho's connect thread, to watch the socket; when the broker closes it first
    (a refused TLS session), the loop is handed a file descriptor already closed and logs the failure with a
    traceback. Nothing is lost (the connect fails and is retried), so that one is a debug line."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        error, handle = context.get("exception"), repr(context.get("handle"))
        if (
            isinstance(error, OSError)
            and error.errno == errno.EBADF
            and ("add_writer" in handle or "add_reader" in handle)
        ):
            log.debug("MQTT: the socket closed before the loop could watch it: %s", error)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _let_go_of_unfinished_connect(client: aiomqtt.Client) -> None:
    """A stop while aiomqtt still connects (a stop right at start-up, or a broker slow to answer) cancels its
    `__aenter__`, which then leaves the socket open and watched, and paho's connect thread may still open it and
    start aiomqtt's housekeeping task. Both would be found at exit, after the loop has closed, and reported
    with tracebacks ("Event loop is closed", "Task was destroyed but it is pending"). So: let what the connect
    thread already queued run, close the socket while the loop can still unwatch it, end the housekeeping task,
    and cut paho's callbacks into the loop for whatever that thread does later. aiomqtt offers no public way."""
    paho_client = client._client
    await asyncio.sleep(0)  # the connect thread's queued calls (watch the socket, start housekeeping) run now
    paho_client.on_socket_open = None
    paho_client._reset_sockets()  # aiomqtt's close callback unwatches the socket and cancels its housekeeping
    paho_client.on_socket_close = None
    paho_client.on_socket_register_write = None
    paho_client.on_socket_unregister_write = None
    if (housekeeping := client._misc_task) is not None:
        housekeeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await housekeeping


MessageHandler = Callable[[str, bytes, bool], None]  # (topic, payload, retained), called on the event loop


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    precious: bool = False  # a full outbox drops it only when nothing else is left to drop


class Publisher:
    def __init__(self, config: MqttConfig, security: MqttSecurity | None = None) -> None:
        self._config = config
        self._security = security or MqttSecurity()
        self.prefix = config.topic_prefix
        self.status_topic = f"{self.prefix}/status"
        self._goodbye = Message(self.status_topic, OFFLINE, 1, True)  # as the will says, on a clean stop
        self._outbox: deque[Message] = deque()
        self._pending: deque[_Send] = deque()  # sends of the outbox's first messages, in order
        self._retained: dict[str, Message] = {}
        self._unsent_retained: dict[str, Message] = {}
        self._lapses: dict[str, bytes] = {}  # retained topic -> its value once edged is gone
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self.connected = asyncio.Event()
        self.settled = asyncio.Event()  # the first connection attempt is over, whatever its outcome
        self._last_problem = ""
        self._lost_at: float | None = None
        self._session_client: aiomqtt.Client | None = None  # the connected client, while a session runs
        self.dropped = 0
        self.published = 0
        self.reconnects = 0
        self._handlers: dict[str, MessageHandler] = {}
        self._refused_topics: set[str] = set()  # topics paho refused, logged once each

    # -- producer side, on the event loop ---------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 0, *, precious: bool = False) -> None:
        """Queue a message; when the outbox is full the oldest waiting message is dropped, a precious one (an
        event: rare, and a subscriber cannot infer it from the next) only when nothing else is waiting."""
        if len(self._outbox) >= self._config.outbox_size and len(self._outbox) > len(self._pending):
            # Never one already on the wire: its acknowledgement would retire the wrong message.
            del self._outbox[self._oldest_droppable()]
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "MQTT outbox full (%d messages): dropping the oldest, %d dropped so far",
                    self._config.outbox_size,
                    self.dropped,
                )
        self._outbox.append(Message(topic, payload, qos, False, precious))
        self._wake.set()

    def _oldest_droppable(self) -> int:
        """The oldest waiting message that is not precious, looked for among the first PRECIOUS_KEPT waiting:
        events pile up at the front during a long outage, and beyond that many the oldest of them go too (the
        look stays cheap on every publish of a full outbox)."""
        first = len(self._pending)
        for index in range(first, min(first + PRECIOUS_KEPT, len(self._outbox))):
            if not self._outbox[index].precious:
                return index
        return first

    def set_retained(self, topic: str, payload: bytes, qos: int = 1, *, lapses_to: bytes | None = None) -> None:
        """Publish a retained state; only its latest value matters, so it is never dropped. `lapses_to`: the
        value the state takes when edged goes down, said even if it goes down without a clean stop."""
        if lapses_to is not None:
            self._lapses[topic] = lapses_to
        message = Message(topic, payload, qos, True)
        if self._retained.get(topic) == message:
            return
        self._retained[topic] = message
        self._unsent_retained[topic] = message
        self._wake.set()

    def clear_retained(self, topic: str) -> None:
        """Delete the broker's retained copy (an empty retained message does that), e.g. of a camera a reload
        removed: subscribers arriving later must not find a camera that no longer exists."""
        self._lapses.pop(topic, None)
        self.set_retained(topic, b"", 1)

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    # -- the connection task --------------------------------------------------------------

    async def run(self) -> None:
        """Connect, drain, reconnect; returns once `close()` has flushed and said goodbye."""
        retry = Retry(self._config.backoff)
        _tolerate_closed_sockets(asyncio.get_running_loop())
        try:
            while not self._closed.is_set():
                _BROKER_ALERTS.alert = ""  # this attempt's own
                client = self._client()
                try:
                    async with client:
                        self._on_connected()
                        retry.reset()
                        await self._session(client)
                        return
                except* aiomqtt.MqttError as group:
                    self._on_connection_lost(group.exceptions[0])
                finally:
                    if _being_cancelled():
                        await _let_go_of_unfinished_connect(client)
                    self._retire_acknowledged()
                    self._pending.clear()  # the rest are still first in the outbox: sent again
                    self.settled.set()
                if self._closing:
                    return  # not connected at shutdown: what is still queued cannot be delivered
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), retry.next_wait())
        finally:
            self.connected.clear()
            self._closed.set()

    async def close(self, timeout: float) -> None:
        """Flush what is queued (up to `timeout`), publish `offline` and disconnect."""
        self._closing = True
        self._wake.set()
        if not self.connected.is_set():
            self._closed.set()  # nothing can be flushed; waiting would only delay the exit
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except TimeoutError:
            await self._offline_ahead_of_disconnect()
            if (client := self._session_client) is not None:
                # A broker that could not take the queue in time will not take the DISCONNECT behind it either:
                # aiomqtt would wait its whole timeout (10 s) for the connection to close, past systemd's patience.
                client.timeout = DISCONNECT_WAIT_S
            self._closed.set()
            self._wake.set()
        if self._outbox:
            log.warning("MQTT: %d queued messages could not be delivered before shutdown", len(self._outbox))

    async def _offline_ahead_of_disconnect(self) -> None:
        """The queue did not drain in time (a slow or stalled broker), or edged is going down without a clean
        stop: put the lapsed states and `offline` on the connection anyway, ahead of the DISCONNECT that
        follows. A clean disconnect suppresses the will, so without it subscribers would keep a retained
        `online` from a process that is gone."""
        if (client := self._session_client) is None:
            return
        # QoS 0: paho writes it at once, so TCP puts it ahead of the DISCONNECT; at QoS 1 paho would hold it back
        # while its in-flight window is full (after a crash, of sends nobody waits for any more). `offline` first:
        # every subscriber's view of edged hangs on it.
        last_words = (replace(self._goodbye, qos=0), *self._lapsed())
        sends = [asyncio.ensure_future(self._send(client, message)) for message in last_words]
        try:
            await asyncio.wait(sends, timeout=OFFLINE_GRACE_S)
        finally:
            for send in sends:
                if not send.done():
                    send.cancel()  # not written yet: the DISCONNECT follows it on the socket all the same
                elif not send.cancelled() and (error := send.exception()) is not None:
                    log.debug("MQTT: a last status could not be sent at shutdown: %s", error)

    def _lapsed(self) -> list[Message]:
        """The retained states whose lapsed value the broker may not hold yet."""
        return [
            Message(topic, payload, 0, True)
            for topic, payload in self._lapses.items()
            if (current := self._retained.get(topic)) is not None  # gone: a topic the broker refused
            and (current.payload != payload or topic in self._unsent_retained)
        ]

    def _client(self) -> aiomqtt.Client:
        config = self._config
        client = aiomqtt.Client(
            config.host,
            config.port,
            identifier=config.client_id,
            username=config.username,
            password=self._security.password,
            keepalive=config.keepalive,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True),
            timeout=PUBLISH_TIMEOUT_S,
            tls_context=self._security.tls,
            max_inflight_messages=config.inflight,
            max_queued_incoming_messages=INCOMING_QUEUE,
            logger=logging.getLogger(MQTT_CLIENT_LOGGER),
        )
        # aiomqtt warns past 10 unacknowledged publishes; a full window is the normal state here.
        client.pending_calls_threshold = config.inflight + len(self._retained) + 1
        return client

    def _on_connected(self) -> None:
        where = f"{self._config.host}:{self._config.port}"
        if self._lost_at is None:
            tls = " over TLS" if self._security.tls is not None else ""
            log.info("MQTT: connected to %s%s as %s", where, tls, self._config.client_id)
        else:
            log.info(
                "MQTT: reconnected to %s after %.1f s offline; delivering %d queued messages (%d dropped so far)",
                where,
                time.monotonic() - self._lost_at,
                len(self._outbox),
                self.dropped,
            )
            self.reconnects += 1
        self._lost_at = None
        self._last_problem = ""
        self.settled.set()
        self.set_retained(self.status_topic, b"online")
        # Whatever the broker had of our retained state may be stale (or gone with its restart).
        self._unsent_retained = {self.status_topic: self._retained[self.status_topic], **self._retained}
        self.connected.set()

    def _on_connection_lost(self, error: BaseException) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if self._closing:  # no reconnect follows: close() has said what could not be delivered
            log.debug("MQTT: the connection ended during the stop (%s)", error)
            return
        level, problem = self._describe(error)
        if was_connected:
            self._lost_at = time.monotonic()
            log.warning(
                "MQTT: lost the connection to %s:%d; queueing up to %d messages, reconnecting",
                self._config.host,
                self._config.port,
                self._config.outbox_size,
            )
        elif problem != self._last_problem and (level > logging.WARNING or not self._last_problem):
            # Once per kind of trouble: a refusal needs the operator; an outage only patience.
            log.log(level, "MQTT: %s; queueing up to %d messages, retrying", problem, self._config.outbox_size)
        else:
            log.debug("MQTT: still failing (%s)", problem)
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        self._last_problem = problem

    def _describe(self, error: BaseException) -> tuple[int, str]:
        """How bad, and what to do: a refusal needs the operator, an outage only patience."""
        where = f"{self._config.host}:{self._config.port}"
        code = getattr(error, "rc", None)
        if isinstance(error, MqttConnectError) and getattr(code, "value", code) in _REFUSED_CREDENTIALS:
            user = self._config.username
            who = f"user {user!r}" if user else "an anonymous client"
            return logging.ERROR, (
                f"broker {where} refused the credentials of {who} ({code}): check mqtt.username and the password "
                "(password_file, password_env or the systemd credential) against the broker's password file"
            )
        if alert := _BROKER_ALERTS.alert:
            if "CERTIFICATE" in alert or "UNKNOWN_CA" in alert:
                return logging.ERROR, (
                    f"broker {where} refused edged's client certificate ({alert}): check mqtt.tls.cert and "
                    "mqtt.tls.key (the broker requires one, signed by a CA it trusts and not expired)"
                )
            return (
                logging.ERROR,
                f"broker {where} ended the TLS session ({alert}): check mqtt.tls and the broker's TLS log",
            )
        text = str(error.__cause__ or error)  # "Disconnected during message iteration" hides the reason
        if "SSL" in text or "certificate" in text:
            return logging.ERROR, (
                f"TLS handshake with {where} failed ({text}): check mqtt.tls.ca (the CA that signed the broker's "
                "certificate), the name it was issued for (or mqtt.tls.insecure) and mqtt.port"
            )
        if self._security.tls is not None and ("reset by peer" in text or "EOF" in text):
            # A plain MQTT listener drops a TLS handshake without a word.
            return logging.ERROR, (
                f"broker {where} closed the connection during the TLS handshake ({text}): is mqtt.port a TLS "
                "listener? (mqtt.tls is set; plain MQTT is usually 1883, TLS 8883)"
            )
        return logging.WARNING, f"broker {where} unreachable ({text})"

    # -- one connection ---------------------------------------------------------------------

    async def _session(self, client: aiomqtt.Client) -> None:
        """Subscribe, then drain until closing; a lost connection fails the receiver and the whole group."""
        for topic_filter in self._handlers:
            await client.subscribe(topic_filter, qos=1, timeout=PUBLISH_TIMEOUT_S)
        self._session_client = client
        LoopWriter(client._client, self._wake.set)  # aiomqtt exposes no other way to its paho client
        try:
            async with asyncio.TaskGroup() as tasks:
                receiver = tasks.create_task(self._receive(client), name="mqtt-receive")
                await self._drain(client, tasks)
                receiver.cancel()  # drained and said offline: the session is over
        except BaseException as error:
            if not self._closed.is_set() and not _connection_lost(error):
                # edged is going down without close() (a crash elsewhere cancelled this task): aiomqtt's
                # clean DISCONNECT on the way out would suppress the will and leave `online` retained.
                await self._offline_ahead_of_disconnect()
            raise
        finally:
            self._session_client = None

    async def _drain(self, client: aiomqtt.Client, tasks: asyncio.TaskGroup) -> None:
        while True:
            while self._unsent_retained:
                topic, message = next(iter(self._unsent_retained.items()))
                await self._send(client, message)
                if self._unsent_retained.get(topic) is message:
                    del self._unsent_retained[topic]
                    if not message.payload:  # deleted on the broker: nothing left to say again at a reconnect
                        self._retained.pop(topic, None)  # (gone already if the broker refused the topic)
            # Retire before refilling: the sends that woke us free window space for the next
            # messages, and nothing else would wake us to send them (a burst larger than the
            # window, a backlog after an outage, the last messages before shutdown).
            self._retire_acknowledged()
            tasked = False  # once a send of this pass waits in a task, the ones after it do too (their order)
            while len(self._pending) < self._config.inflight and len(self._pending) < len(self._outbox):
                message = self._outbox[len(self._pending)]
                if message.qos == 0 and not tasked:
                    self._pending.append(self._write(client, message))
                else:
                    tasked = True
                    self._pending.append(tasks.create_task(self._send(client, message)))
            if self._closing and not self._outbox and not self._unsent_retained:
                await self._send(client, self._goodbye)
                log.info("MQTT: published offline, disconnecting")
                self._closed.set()
                return
            self._wake.clear()
            if self._unsent_retained:  # set while a retained message was being sent
                continue
            await self._wake.wait()

    def _retire_acknowledged(self) -> None:
        """The outbox's first messages leave it once their sends succeeded, in order."""
        while self._pending and _succeeded(send := self._pending[0]):
            self._pending.popleft()
            self._outbox.popleft()
            if isinstance(send, paho.MQTTMessageInfo):
                self.published += 1

    def _write(self, client: aiomqtt.Client, message: Message) -> paho.MQTTMessageInfo | None:
        """A QoS 0 message straight to paho, which writes it later in this loop iteration (see LoopWriter): it
        needs no acknowledgement, so no task waits for one. aiomqtt's `publish` would spend a task, an event and
        a timeout on each message. None: refused, nothing to wait for."""
        try:
            info = client._client.publish(message.topic, message.payload, 0, message.retain)
        except ValueError as error:
            self._refused(message, error)
            return None
        if info.rc != paho.MQTT_ERR_SUCCESS:  # as aiomqtt's publish: the connection is gone
            raise MqttCodeError(info.rc, "Could not publish message")
        return info

    async def _send(self, client: aiomqtt.Client, message: Message) -> None:
        try:
            await client.publish(
                message.topic, message.payload, qos=message.qos, retain=message.retain, timeout=PUBLISH_TIMEOUT_S
            )
        except ValueError as error:
            self._refused(message, error)
            return
        finally:
            self._wake.set()
        self.published += 1

    def _refused(self, message: Message, error: ValueError) -> None:
        """paho refuses a topic no broker would accept (a wildcard, too long): that message can never be delivered,
        so it leaves the outbox instead of failing the connection and every message behind it."""
        if message.retain and self._retained.get(message.topic) is message:
            del self._retained[message.topic]  # not to be refused again at every reconnect
        if message.topic not in self._refused_topics and len(self._refused_topics) < 100:
            self._refused_topics.add(message.topic)
            log.error("MQTT: message to %r dropped: %s", message.topic[:200], error)

    # -- incoming messages (commands, retained records read back) ---------------------------

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Route messages matching `topic_filter` to `handler`; subscribed on every (re)connect.

        Register before `run()`: a filter added later is subscribed from the next reconnect on.
        """
        self._handlers[topic_filter] = handler

    async def _receive(self, client: aiomqtt.Client) -> None:
        # Also the connection's watchdog: pending acknowledgements never fail on their own when the
        # connection drops (they would just time out); the message iterator raises at once.
        try:
            await self._dispatch_incoming(client)
        except aiomqtt.MqttError:
            # Acknowledgements read just before the connection closed have woken their sends, which
            # have not run yet: let them finish first, or their messages would be sent twice.
            await asyncio.sleep(ACK_GRACE_S)
            raise

    async def _dispatch_incoming(self, client: aiomqtt.Client) -> None:
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


def _connection_lost(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(aiomqtt.MqttError) is not None
    return isinstance(error, aiomqtt.MqttError)


_Send = asyncio.Task[None] | paho.MQTTMessageInfo | None  # None: a message paho refused, nothing to wait for


def _succeeded(send: _Send) -> bool:
    if send is None:
        return True
    if isinstance(send, paho.MQTTMessageInfo):
        return send.is_published()
    return send.done() and not send.cancelled() and send.exception() is None
