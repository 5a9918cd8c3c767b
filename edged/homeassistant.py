"""Home Assistant MQTT discovery: every camera becomes a device with four entities.

Entities (all unavailable while `{prefix}/status` is `offline`):
- binary_sensor "Face": on while a face event is open (`{prefix}/{camera}/faces` > 0)
- sensor "Faces": the face count on `{prefix}/{camera}/faces`
- image "Snapshot": the JPEG on `{prefix}/{camera}/snapshot`
- switch "Detection": `{prefix}/{camera}/detect/set`, state on `{prefix}/{camera}/detect/state`

Face and Faces say what the camera sees now, so they are also unavailable while the camera is offline
(`{prefix}/{camera}/status`): "no face" from a camera that is down would be a false all-clear. The
snapshot (the last event's picture) and the switch (which may be set while the camera reconnects) are not.

A camera removed from the config must not leave dead entities behind, so the cameras announced are
recorded (retained) on `{prefix}/homeassistant/cameras`. On connect, the record a previous run left
arrives as a retained message; the cameras in it that are no longer configured get empty retained
payloads on their discovery topics, which is how Home Assistant is told to delete an entity. A
reload that adds or removes a camera announces or withdraws it at once.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any

from edged.config import HomeAssistantConfig, plain_topic
from edged.logs import counted
from edged.publish import Publisher
from edged.roster import recorded_cameras

log = logging.getLogger("edged.homeassistant")

COMPONENTS = ("binary_sensor", "sensor", "image", "switch")
_OBJECT_SUFFIX = {"binary_sensor": "face", "sensor": "faces", "image": "snapshot", "switch": "detection"}


_NODE_ID = re.compile(r"[A-Za-z0-9_-]+")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not a string: {value!r}")
    return value


def _checked(pattern: re.Pattern[str], value: object) -> str:
    if not pattern.fullmatch(text := _text(value)):
        raise ValueError(f"not a name edged writes: {text!r}")
    return text


def node_id(topic_prefix: str) -> str:
    """Discovery allows only [a-zA-Z0-9_-] in a node id; the topic prefix names this edged."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", topic_prefix)


def discovery_topic(discovery_prefix: str, node: str, component: str, camera: str) -> str:
    return f"{discovery_prefix}/{component}/{node}/{camera}_{_OBJECT_SUFFIX[component]}/config"


def discovery_configs(
    prefix: str, camera: str, version: str, *, events: bool = True, snapshots: bool = True
) -> dict[str, dict[str, Any]]:
    """component -> discovery config of one camera's entities (JSON-ready): the face entities only with face events
    on (nothing else keeps `faces` current), the snapshot only with snapshots on."""
    node = node_id(prefix)
    edged_up = {"topic": f"{prefix}/status", "payload_available": "online", "payload_not_available": "offline"}
    camera_up = {**edged_up, "topic": f"{prefix}/{camera}/status"}
    # `all`: a camera's status is valid only while edged is online (a kill leaves its last one retained).
    seeing = {"availability": [edged_up, camera_up], "availability_mode": "all"}
    running = {"availability": [edged_up], "availability_mode": "all"}
    common = {
        "device": {
            "identifiers": [f"{node}_{camera}"],
            "name": camera,
            "manufacturer": "edged",
            "model": "face detection camera",
            "sw_version": version,
        },
        "origin": {"name": "edged", "sw_version": version},
    }
    faces_topic = f"{prefix}/{camera}/faces"

    def entity(component: str, name: str, **fields: Any) -> dict[str, Any]:
        return {"name": name, "unique_id": f"{node}_{camera}_{_OBJECT_SUFFIX[component]}", **fields, **common}

    configs = {
        "binary_sensor": entity(
            "binary_sensor",
            "Face",
            state_topic=faces_topic,
            value_template="{{ 'ON' if value | int(0) > 0 else 'OFF' }}",
            device_class="occupancy",
            **seeing,
        ),
        "sensor": entity(
            "sensor",
            "Faces",
            state_topic=faces_topic,
            state_class="measurement",
            icon="mdi:face-recognition",
            **seeing,
        ),
        "image": entity(
            "image", "Snapshot", image_topic=f"{prefix}/{camera}/snapshot", content_type="image/jpeg", **running
        ),
        "switch": entity(
            "switch",
            "Detection",
            command_topic=f"{prefix}/{camera}/detect/set",
            state_topic=f"{prefix}/{camera}/detect/state",
            payload_on="ON",
            payload_off="OFF",
            icon="mdi:cctv",
            **running,
        ),
    }
    if not events:
        del configs["binary_sensor"], configs["sensor"]
    if not (events and snapshots):
        del configs["image"]
    return configs


class HomeAssistantDiscovery:
    def __init__(
        self,
        config: HomeAssistantConfig,
        publisher: Publisher,
        cameras: Iterable[str],
        version: str,
        qos: int,
        *,
        events: bool = True,
        snapshots: bool = True,
    ) -> None:
        self._config = config
        self._features = {"events": events, "snapshots": snapshots}
        self._publisher = publisher
        self._cameras = sorted(cameras)
        self._version = version
        self._qos = qos
        self._node = node_id(publisher.prefix)
        self.record_topic = f"{publisher.prefix}/homeassistant/cameras"

    def start(self) -> None:
        """Queue the discovery configs and the record; read back the previous record on every connect."""
        for camera in self._cameras:
            self._announce(camera)
        self._publisher.subscribe(self.record_topic, self._on_record)
        self._publish_record()
        log.info(
            "Home Assistant discovery: %s under %s/",
            counted(len(self._cameras), "camera"),
            self._config.discovery_prefix,
        )

    def add_camera(self, camera: str) -> None:
        """A reload added the camera: Home Assistant gets its entities at once."""
        if camera in self._cameras:
            return  # announced already (a camera a reload restarted keeps its entities)
        self._cameras = sorted([*self._cameras, camera])
        self._announce(camera)
        self._publish_record()

    def remove_camera(self, camera: str) -> None:
        """A reload removed the camera: its entities go from Home Assistant, not only at the next start."""
        if camera not in self._cameras:
            return
        self._cameras = [name for name in self._cameras if name != camera]
        self._withdraw(self._config.discovery_prefix, self._node, camera)
        self._publish_record()

    def _announce(self, camera: str) -> None:
        """Its entities; those of a feature switched off go (an earlier run may have announced them)."""
        configs = discovery_configs(self._publisher.prefix, camera, self._version, **self._features)
        for component in COMPONENTS:
            topic = discovery_topic(self._config.discovery_prefix, self._node, component, camera)
            payload = json.dumps(configs[component], separators=(",", ":")).encode() if component in configs else b""
            self._publisher.set_retained(topic, payload, self._qos)

    def _withdraw(self, discovery_prefix: str, node: str, camera: str) -> None:
        for component in COMPONENTS:
            self._publisher.set_retained(discovery_topic(discovery_prefix, node, component, camera), b"", self._qos)

    def _publish_record(self) -> None:
        record = {"discovery_prefix": self._config.discovery_prefix, "node_id": self._node, "cameras": self._cameras}
        self._publisher.set_retained(self.record_topic, json.dumps(record).encode(), self._qos)

    def _on_record(self, topic: str, payload: bytes, retained: bool) -> None:
        if not retained or not payload:
            return  # our own record coming back live, or none was ever kept
        try:
            record = json.loads(payload)
            announced = recorded_cameras(record)
            old_prefix = plain_topic(_text(record["discovery_prefix"]))
            old_node = _checked(_NODE_ID, record["node_id"])
        except (ValueError, KeyError, TypeError):  # anyone who can publish to the broker can write it
            log.warning("Home Assistant: ignored an unreadable record on %s; no entities removed", topic)
            return
        keep = set(self._cameras) if (old_prefix, old_node) == (self._config.discovery_prefix, self._node) else set()
        removed = [camera for camera in announced if camera not in keep]
        for camera in removed:
            self._withdraw(old_prefix, old_node, camera)
        if removed:
            log.info("Home Assistant: removed the entities of cameras no longer configured: %s", ", ".join(removed))
