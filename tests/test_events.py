"""Face events, as the pure state machine decides them: feed frames and a clock, read the messages."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np

from edged.decode.base import Faces
from edged.events import Event, EventTracker

SCHEMA = json.loads((Path(__file__).parent.parent / "docs/schemas/event.json").read_text())


def faces(*scores: float) -> Faces:
    """One face per score, side by side, 100 px wide."""
    boxes = [[10.0 + 120 * i, 20.0, 110.0 + 120 * i, 140.0] for i in range(len(scores))]
    return Faces(np.array(scores, np.float32), np.array(boxes, np.float32).reshape(-1, 4))


NONE = faces()


def feed(tracker: EventTracker, camera: str, frames: list[tuple[float, Faces]]) -> list[Event]:
    return [event for t, f in frames for event in tracker.observe(camera, t, f).events]


def test_a_face_seen_in_fewer_than_min_frames_consecutive_frames_starts_no_event() -> None:
    tracker = EventTracker(min_frames=3, end_after=2.0)
    frames = [(0.0, faces(0.9)), (0.1, faces(0.9)), (0.2, NONE), (0.3, faces(0.9)), (0.4, faces(0.9)), (0.5, NONE)]
    assert feed(tracker, "door", frames) == []


def test_an_event_starts_on_the_min_frames_th_consecutive_frame_with_a_face_dated_from_the_first() -> None:
    tracker = EventTracker(min_frames=2, end_after=2.0)
    [new] = feed(tracker, "door", [(10.0, NONE), (10.1, faces(0.8)), (10.2, faces(0.9, 0.7))])
    assert new.type == "new"
    assert new.camera == "door"
    assert new.start_time == 10.1  # when the face was first seen, not when it was confirmed
    assert new.id == "door-10100"
    assert new.end_time is None
    assert new.faces == 2
    assert new.top_score == np.float32(0.9)
    assert new.box == (10.0, 20.0, 110.0, 140.0)
    assert new.snapshot is True
    jsonschema.validate(json.loads(new.payload()), SCHEMA)


def test_an_event_ends_once_no_face_was_seen_for_end_after_and_ends_when_the_face_was_last_seen() -> None:
    tracker = EventTracker(min_frames=1, end_after=2.0)
    frames = [(0.0, faces(0.9)), (0.5, faces(0.9)), (1.0, NONE), (2.0, NONE), (2.4, NONE), (2.6, NONE), (3.0, NONE)]
    new, end = feed(tracker, "door", frames)
    assert (new.type, end.type) == ("new", "end")
    assert end.id == new.id
    assert end.start_time == 0.0
    assert end.end_time == 0.5  # the last frame with a face, not when edged stopped waiting
    assert end.faces == 0
    jsonschema.validate(json.loads(end.payload()), SCHEMA)


def test_a_face_missed_for_less_than_end_after_does_not_split_the_event() -> None:
    tracker = EventTracker(min_frames=1, end_after=2.0)
    frames = [(0.0, faces(0.9)), (1.0, NONE), (2.5, faces(0.9)), (4.0, NONE), (4.4, NONE)]
    assert [e.type for e in feed(tracker, "door", frames)] == ["new"]


def test_updates_come_only_when_the_count_or_top_score_changes_and_at_most_once_a_second() -> None:
    tracker = EventTracker(min_frames=1, end_after=5.0)
    frames = [(0.0, faces(0.6))]
    frames += [(0.1 * i, faces(0.6)) for i in range(1, 30)]  # nothing changes for 3 s: no update
    frames += [(3.0, faces(0.6, 0.5)), (3.1, faces(0.6)), (3.2, faces(0.6, 0.5))]  # count flickers
    frames += [(3.5, faces(0.6, 0.5)), (4.0, faces(0.6, 0.5))]
    events = feed(tracker, "door", frames)
    assert [(e.type, e.faces) for e in events] == [("new", 1), ("update", 2)]
    assert events[1].snapshot is False  # the score did not improve: the snapshot is still the one of `new`


def test_a_better_face_asks_for_a_snapshot_of_its_frame_and_the_next_update_announces_it() -> None:
    tracker = EventTracker(min_frames=1, end_after=5.0)
    assert tracker.observe("door", 0.0, faces(0.6)).snapshot == (10.0, 20.0, 110.0, 140.0)
    assert tracker.observe("door", 0.2, faces(0.6)).snapshot is None
    better = tracker.observe("door", 0.4, faces(0.5, 0.8))
    assert better.snapshot == (130.0, 20.0, 230.0, 140.0)  # the second face scored best
    assert better.events == ()  # within a second of `new`: the update waits
    [update] = tracker.observe("door", 1.1, faces(0.5, 0.7)).events
    assert update.type == "update"
    assert update.top_score == np.float32(0.8)
    assert update.box == (130.0, 20.0, 230.0, 140.0)
    assert update.snapshot is True


def test_without_snapshots_no_frame_is_asked_for_and_messages_say_so() -> None:
    tracker = EventTracker(min_frames=1, end_after=5.0, snapshots=False)
    observation = tracker.observe("door", 0.0, faces(0.9))
    assert observation.snapshot is None
    assert observation.events[0].snapshot is False


def test_expire_ends_the_event_of_a_camera_that_stopped_sending_frames() -> None:
    tracker = EventTracker(min_frames=1, end_after=2.0)
    feed(tracker, "door", [(100.0, faces(0.9))])
    assert tracker.expire(101.0) == []
    [end] = tracker.expire(102.5)
    assert (end.type, end.camera, end.end_time) == ("end", "door", 100.0)
    assert tracker.expire(110.0) == []


def test_a_streak_interrupted_by_a_long_gap_in_frames_starts_over() -> None:
    tracker = EventTracker(min_frames=2, end_after=1.0)
    assert feed(tracker, "door", [(0.0, faces(0.9)), (5.0, faces(0.9))]) == []
    assert [e.type for e in feed(tracker, "door", [(5.1, faces(0.9))])] == ["new"]


def test_cameras_have_independent_events() -> None:
    tracker = EventTracker(min_frames=1, end_after=1.0)
    [door] = feed(tracker, "door", [(0.0, faces(0.9))])
    [yard] = feed(tracker, "yard", [(0.5, faces(0.7))])
    assert door.id != yard.id
    assert [(e.type, e.camera) for e in feed(tracker, "door", [(1.2, NONE)])] == [("end", "door")]
    assert [(e.type, e.camera) for e in tracker.expire(1.6)] == [("end", "yard")]


def test_end_all_closes_every_open_event_at_shutdown() -> None:
    tracker = EventTracker(min_frames=1, end_after=10.0)
    feed(tracker, "door", [(0.0, faces(0.9))])
    feed(tracker, "yard", [(0.0, faces(0.9))])
    assert sorted((e.type, e.camera) for e in tracker.end_all()) == [("end", "door"), ("end", "yard")]
    assert tracker.end_all() == []


def test_an_events_id_is_its_start_time_in_milliseconds_as_published() -> None:
    tracker = EventTracker(min_frames=1, end_after=2.0)
    [new] = feed(tracker, "door", [(1796002442.0729, faces(0.9))])  # truncating would give ...072
    published = json.loads(new.payload())
    assert published["id"] == f"door-{round(published['start_time'] * 1000)}"


def test_a_streak_broken_by_a_gap_dates_the_event_from_the_face_seen_after_the_gap() -> None:
    tracker = EventTracker(min_frames=2, end_after=2.0)
    [new] = feed(tracker, "door", [(10.0, faces(0.8)), (13.0, faces(0.8)), (13.1, faces(0.8))])
    assert new.start_time == 13.0  # 10.0 was too long ago to count towards this streak
