"""The cameras edged keeps retained topics for, recorded on the broker so that a later run can tidy up.

A camera's status, face count, snapshot and detection state are retained: the broker keeps them after
edged stops. A reload that removes a camera deletes them at once; a restart with a camera taken out of
the file could not, because the new run does not know the old one's cameras. So edged records its
cameras, retained, on `{prefix}/cameras`; on connect the broker hands over the record the previous run
left, and the cameras in it that are no longer configured get their topics deleted. Only what edged
itself recorded is deleted: other clients' topics under the same prefix are never touched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from edged.config import CAMERA_NAME
from edged.publish import Publisher

log = logging.getLogger("edged")


class CameraRoster:
    def __init__(self, publisher: Publisher, qos: int, forget: Callable[[str], None]) -> None:
        """`forget(camera)`: delete the retained topics of a camera that is no longer configured."""
        self._publisher = publisher
        self._qos = qos
        self._forget = forget
        self._cameras: list[str] = []
        self.topic = f"{publisher.prefix}/cameras"

    def start(self, cameras: Iterable[str]) -> None:
        """Before the publisher connects: read back the previous record on connect, and record these."""
        self._publisher.subscribe(self.topic, self._on_record)
        self.record(cameras)

    def record(self, cameras: Iterable[str]) -> None:
        """The cameras configured now (at start and after each reload)."""
        self._cameras = sorted(cameras)
        self._publisher.set_retained(self.topic, json.dumps({"cameras": self._cameras}).encode(), self._qos)

    def expect(self, cameras: Iterable[str]) -> None:
        """Cameras a reload is bringing in, before it records them: a record read back on a reconnect meanwhile
        (which may still list them from an earlier run) must not take them for leftovers. The cameras it
        removes stay known until then too: in-flight results may still reach them."""
        self._cameras = sorted({*self._cameras, *cameras})

    def _on_record(self, topic: str, payload: bytes, retained: bool) -> None:
        if not retained or not payload:
            return  # our own record coming back live, or none was ever kept
        try:
            recorded = recorded_cameras(json.loads(payload))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored an unreadable record of cameras on %s; no retained topics deleted", topic)
            return
        leftovers = sorted(set(recorded) - set(self._cameras))
        for camera in leftovers:
            self._forget(camera)
        if leftovers:
            log.info("deleted the retained topics of cameras no longer configured: %s", ", ".join(leftovers))


def recorded_cameras(record: Any) -> list[str]:
    """The cameras of a record read back from the broker (this one, or Home Assistant discovery's).

    Anyone who can publish to the broker can write a record: it is trusted no further than names edged itself
    could have written (no wildcards, no topic levels of its own). Anything else raises ValueError, KeyError or
    TypeError."""
    cameras = record["cameras"]
    names_edged_writes = isinstance(cameras, list) and all(
        isinstance(name, str) and CAMERA_NAME.fullmatch(name) for name in cameras
    )
    if not names_edged_writes:
        raise ValueError(f"not camera names edged writes: {cameras!r}")
    return list(cameras)
