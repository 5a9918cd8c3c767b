"""Face presence per camera, debounced into events: pure logic, no I/O, no clock of its own.

Per-frame detections flicker (a face missed for one frame, a false positive for one frame); an
NVR user wants "someone is at the door" to start once and end once. The tracker is fed
(camera, timestamp, faces) for every processed frame and, from a periodic tick, the current time
for cameras that stopped producing frames; it answers with the event messages to publish.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edged.decode.base import Faces

EventType = Literal["new", "update", "end"]
UPDATE_INTERVAL_S = 1.0  # at most one `update` per event per second, however fast frames come
Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in source pixels


@dataclass(frozen=True, slots=True)
class Event:
    """One message on `{prefix}/events` (schema: docs/schemas/event.json)."""

    type: EventType
    id: str
    camera: str
    start_time: float
    end_time: float | None
    top_score: float
    faces: int  # faces in the latest frame that had any; 0 once the event has ended
    box: Box  # the face that scored top_score, source pixels
    snapshot: bool  # a newer snapshot than the last message announced was taken for this event

    def payload(self) -> bytes:
        message = {
            "type": self.type,
            "id": self.id,
            "camera": self.camera,
            "start_time": round(self.start_time, 3),
            "end_time": None if self.end_time is None else round(self.end_time, 3),
            "top_score": round(self.top_score, 4),
            "faces": self.faces,
            "box": [round(v, 1) for v in self.box],
            "snapshot": self.snapshot,
        }
        return json.dumps(message, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Observation:
    """What one frame changed: messages to publish, and whether this frame should be the snapshot."""

    events: tuple[Event, ...] = ()
    snapshot: Box | None = None  # this frame holds the event's best face so far: that face's box


@dataclass(slots=True)
class _Open:
    id: str
    start_time: float
    last_seen: float
    top_score: float
    box: Box
    faces: int
    last_message: float
    announced: tuple[int, float]  # (faces, top_score) as the last message told them
    snapshot_pending: bool = False  # improved since the last message


@dataclass(slots=True)
class _CameraState:
    streak: int = 0  # consecutive processed frames with a face, before an event starts
    streak_first: float = 0.0  # when the streak's face was first seen: the event's start
    streak_last: float = 0.0
    event: _Open | None = None


@dataclass
class EventTracker:
    min_frames: int = 2
    end_after: float = 2.0
    snapshots: bool = True
    _cameras: dict[str, _CameraState] = field(default_factory=dict)

    def observe(self, camera: str, timestamp: float, faces: Faces) -> Observation:
        """One processed frame of `camera`, read at `timestamp` (Unix seconds)."""
        state = self._cameras.get(camera)
        if state is None:
            state = self._cameras[camera] = _CameraState()
        event = state.event
        if len(faces) == 0:
            state.streak = 0
            if event is not None and timestamp - event.last_seen >= self.end_after:
                return Observation((self._end(camera, state),))
            return Observation()
        best = int(np.argmax(faces.scores))
        score = float(faces.scores[best])
        box = _box(faces, best)
        if event is None:
            # A gap longer than end_after between two face frames (camera paused or offline) breaks the streak.
            if state.streak and timestamp - state.streak_last >= self.end_after:
                state.streak = 0
            if state.streak == 0:
                state.streak_first = timestamp
            state.streak += 1
            state.streak_last = timestamp
            if state.streak < self.min_frames:
                return Observation()
            state.streak = 0
            # The face was there from the streak's first frame on; the frames after it only confirmed it.
            started_ms = round(state.streak_first * 1000)  # the id is the start in ms, exactly as start_time shows it
            event = state.event = _Open(
                id=f"{camera}-{started_ms}",
                start_time=started_ms / 1000,
                last_seen=timestamp,
                top_score=score,
                box=box,
                faces=len(faces),
                last_message=timestamp,
                announced=(len(faces), score),
            )
            return Observation((self._message("new", camera, event, None, self.snapshots),), self._snap(box))
        event.last_seen = timestamp
        event.faces = len(faces)
        improved = score > event.top_score
        if improved:
            event.top_score, event.box = score, box
            event.snapshot_pending = self.snapshots
        changed = (event.faces, event.top_score) != event.announced
        if changed and timestamp - event.last_message >= UPDATE_INTERVAL_S:
            message = self._message("update", camera, event, None, event.snapshot_pending)
            event.last_message, event.announced = timestamp, (event.faces, event.top_score)
            event.snapshot_pending = False
            return Observation((message,), self._snap(box) if improved else None)
        return Observation((), self._snap(box) if improved else None)

    def any_open(self) -> bool:
        """Whether some camera has a face event open (one that `expire` may have to end)."""
        return any(state.event is not None for state in self._cameras.values())

    def has_event(self, camera: str) -> bool:
        """Whether a face event of `camera` is open."""
        return (state := self._cameras.get(camera)) is not None and state.event is not None

    def expire(self, now: float) -> list[Event]:
        """End the events of cameras that have shown no face for `end_after` (no frames count too)."""
        return [
            self._end(camera, state)
            for camera, state in self._cameras.items()
            if state.event is not None and now - state.event.last_seen >= self.end_after
        ]

    def end(self, camera: str) -> Event | None:
        """End the camera's open event at once and forget the camera (a reload removed it): no snapshot follows."""
        state = self._cameras.pop(camera, None)
        if state is None or (event := state.event) is None:
            return None
        return self._message("end", camera, event, event.last_seen, False)

    def end_all(self) -> list[Event]:
        """End every open event, at shutdown: subscribers must not be left with events that never end."""
        return [self._end(camera, state) for camera, state in self._cameras.items() if state.event is not None]

    def _snap(self, box: Box) -> Box | None:
        return box if self.snapshots else None

    def _end(self, camera: str, state: _CameraState) -> Event:
        event = state.event
        assert event is not None
        state.event, state.streak = None, 0
        # The event ended when the face was last seen, not when edged gave up waiting for it.
        return self._message("end", camera, event, event.last_seen, event.snapshot_pending)

    @staticmethod
    def _message(kind: EventType, camera: str, event: _Open, end_time: float | None, snapshot: bool) -> Event:
        faces = 0 if kind == "end" else event.faces
        return Event(kind, event.id, camera, event.start_time, end_time, event.top_score, faces, event.box, snapshot)


def _box(faces: Faces, index: int) -> Box:
    x1, y1, x2, y2 = (float(v) for v in faces.boxes[index])
    return (x1, y1, x2, y2)
