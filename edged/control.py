"""Control over MQTT: `{prefix}/{camera}/detect/set` ON/OFF switches detection of one camera.

Pausing keeps the camera's stream open (a paused camera resumes at once, without reconnecting);
its frames are dropped at its slot, before inference. The state is retained on
`{prefix}/{camera}/detect/state` so dashboards (and Home Assistant's switch) show it.
"""

from __future__ import annotations

import logging

from edged.frame import FrameSlot
from edged.publish import Publisher

log = logging.getLogger("edged.control")

ON, OFF = b"ON", b"OFF"


class DetectControl:
    def __init__(self, publisher: Publisher, qos: int) -> None:
        self._publisher = publisher
        self._qos = qos
        self._prefix = publisher.prefix
        self._slots: dict[str, FrameSlot] = {}
        self._commanded: set[str] = set()  # cameras that took a command this run

    def add_camera(self, camera: str, slot: FrameSlot) -> None:
        # A camera a reload restarts comes back with a new slot: it stays paused if it was. One the reload
        # removed has no slot left, so if it is added back later it starts detecting, as a new one does.
        previous = self._slots.get(camera)
        slot.paused = previous is not None and previous.paused
        self._slots[camera] = slot
        self._publish_state(camera)

    def remove_camera(self, camera: str) -> None:
        self._slots.pop(camera, None)
        self._commanded.discard(camera)  # added back later, it is new: a retained command applies to it again
        self._publisher.clear_retained(self.state_topic(camera))

    def start(self) -> None:
        self._publisher.subscribe(self.command_topic("+"), self._on_command)

    def command_topic(self, camera: str) -> str:
        return f"{self._prefix}/{camera}/detect/set"

    def state_topic(self, camera: str) -> str:
        return f"{self._prefix}/{camera}/detect/state"

    def paused(self, camera: str) -> bool:
        slot = self._slots.get(camera)
        return slot is not None and slot.paused

    def set_detection(self, camera: str, enabled: bool) -> None:
        slot = self._slots[camera]
        if slot.paused == (not enabled):
            self._publish_state(camera)  # unchanged; the retained state is re-affirmed, not re-sent
            return
        slot.paused = not enabled
        if slot.paused:
            slot.take()  # a frame waiting for inference is not detected either
        log.info(
            "camera %s: detection %s over MQTT%s",
            camera,
            "resumed" if enabled else "paused",
            "" if enabled else " (the stream stays open; send ON to resume)",
        )
        self._publish_state(camera)

    def _publish_state(self, camera: str) -> None:
        self._publisher.set_retained(self.state_topic(camera), OFF if self._slots[camera].paused else ON, self._qos)

    def _on_command(self, topic: str, payload: bytes, retained: bool) -> None:
        camera = topic.removeprefix(f"{self._prefix}/").removesuffix("/detect/set")
        if camera not in self._slots:
            log.warning("MQTT: ignored %s: no camera %r is configured here", topic, camera)
            return
        command = payload.strip().upper()
        if command not in (ON, OFF):
            shown = payload[:40].decode("utf-8", "replace")
            log.warning("camera %s: ignored %r on %s: send ON or OFF", camera, shown, topic)
            return
        if retained and camera in self._commanded:
            # The broker hands a retained command over again at every reconnect (flagged retained only then, not
            # when it was first published live): it is for a fresh start, and must not overturn what this run
            # was told since (an ON sent after a retained OFF was undone at each outage).
            return
        self._commanded.add(camera)
        self.set_detection(camera, command == ON)
