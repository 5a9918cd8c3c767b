"""The NVR features around the per-frame detections: events, snapshots, stats, metrics, discovery, control.

The supervisor owns the pipeline and hands this object each camera, each model and each result;
everything built here hangs off those few calls, so the supervisor stays about the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from edged import __version__
from edged.config import Config
from edged.control import DetectControl
from edged.events import Event, EventTracker
from edged.frame import FrameSlot
from edged.homeassistant import HomeAssistantDiscovery
from edged.inference import Result
from edged.metrics import MetricsServer
from edged.publish import Publisher
from edged.snapshot import SnapshotRequest, Snapshotter
from edged.stats import CameraCounters, InFlight, StatsReporter, Telemetry

log = logging.getLogger("edged.nvr")

EXPIRE_TICK_S = 0.25  # how late an event of a camera that stopped sending frames may end
SNAPSHOT_FLUSH_S = 1.0  # at shutdown, for pending snapshots (one renders in a few ms) before events end


class Nvr:
    def __init__(self, config: Config, publisher: Publisher) -> None:
        self._config = config
        self._publisher = publisher
        self._prefix = publisher.prefix
        self._state_qos = config.mqtt.qos.status
        self.telemetry = Telemetry(__version__, publisher)
        self.control = DetectControl(publisher, self._state_qos)
        events, snapshots = config.events, config.snapshots
        self._tracker = EventTracker(events.min_frames, events.end_after, snapshots.enabled) if events.enabled else None
        self._events_changed = asyncio.Event()  # an observation started, updated or ended a face event
        self._snapshots = (
            Snapshotter(snapshots, self._publish_snapshot) if events.enabled and snapshots.enabled else None
        )
        self.telemetry.snapshots = self._snapshots
        self._stats = (
            StatsReporter(self.telemetry, config.stats.interval, self._publish_stats) if config.stats.enabled else None
        )
        self._metrics = MetricsServer(config.metrics, self.telemetry) if config.metrics.port is not None else None
        self._discovery = (
            HomeAssistantDiscovery(
                config.homeassistant,
                publisher,
                config.cameras,
                __version__,
                self._state_qos,
                events=events.enabled,
                snapshots=self._snapshots is not None,
            )
            if config.homeassistant.enabled
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._removed: set[str] = set()  # cameras a reload removed: their retained topics stay deleted

    # -- wiring, before the run -------------------------------------------------------------

    def add_model(self, name: str, dispatcher: InFlight, requests: int) -> None:
        self.telemetry.add_model(name, dispatcher, requests)

    def add_camera(self, name: str, reader: CameraCounters, slot: FrameSlot, model: str) -> None:
        self._removed.discard(name)
        self.telemetry.add_camera(name, reader, slot, model)
        self.control.add_camera(name, slot)
        if self._discovery is not None:
            self._discovery.add_camera(name)
        if self._tracker is None:  # nothing keeps the count: an earlier run's must not stay on record
            self._publisher.clear_retained(self._faces_topic(name))
        elif not self._tracker.has_event(name):
            # A previous run may have died with a face on record: the count starts from what is known.
            # (A camera a reload restarts keeps its open event, and the count that event published.)
            self._publisher.set_retained(self._faces_topic(name), b"0", self._state_qos)
        if self._snapshots is None:  # nor an earlier run's picture, taken when snapshots were on
            self._publisher.clear_retained(self._snapshot_topic(name))

    def remove_camera(self, name: str) -> None:
        """The camera is not configured (any more): it leaves the stats and Home Assistant, takes no more commands,
        and its retained topics are deleted. Also for a camera only an earlier run had (its topics left over)."""
        self._removed.add(name)
        self.telemetry.cameras.pop(name, None)
        self.control.remove_camera(name)
        if self._snapshots is not None:
            self._snapshots.forget(name)
        if self._tracker is not None and (event := self._tracker.end(name)) is not None:
            self._publish_event(event)  # subscribers must not be left with an event that never ends
        for topic in (self._faces_topic(name), self._snapshot_topic(name)):
            self._publisher.clear_retained(topic)
        if self._discovery is not None:
            self._discovery.remove_camera(name)

    def start(self) -> None:
        """Before the run: bind /metrics (EdgedError if it cannot), subscribe, queue discovery."""
        if self._metrics is not None:
            self._metrics.start()
        self.control.start()
        if self._discovery is not None:
            self._discovery.start()

    def create_tasks(self, tasks: asyncio.TaskGroup) -> None:
        if self._snapshots is not None:
            self._tasks.append(tasks.create_task(self._snapshots.run(), name="snapshots"))
        if self._stats is not None:
            self._tasks.append(tasks.create_task(self._stats.run(), name="stats"))
        if self._tracker is not None:
            self._tasks.append(tasks.create_task(self._expire_events(), name="events"))

    # -- during the run ---------------------------------------------------------------------

    def paused(self, camera: str) -> bool:
        return self.control.paused(camera)

    def on_camera_status(self, camera: str, online: bool) -> None:
        self.telemetry.set_online(camera, online)

    def on_result(self, result: Result) -> None:
        """After a frame's detections are published: per frame, so only counting and the event state."""
        self.telemetry.on_result(result)
        if self._tracker is None:
            return
        frame = result.frame
        observation = self._tracker.observe(frame.camera, frame.timestamp, result.faces)
        if observation.snapshot is not None and self._snapshots is not None:
            self._snapshots.request(
                SnapshotRequest(frame.camera, frame.image, result.faces.boxes, observation.snapshot)
            )
        for event in observation.events:
            self._publish_event(event)
        if observation.events:
            self._events_changed.set()

    async def shut_down(self) -> None:
        """After the last result: render pending snapshots, end open events, a last stats message, stop serving
        /metrics."""
        if self._snapshots is not None:
            await self._snapshots.flush(SNAPSHOT_FLUSH_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tracker is not None:
            for event in self._tracker.end_all():
                self._publish_event(event)
        if self._stats is not None:
            await self._stats.report()
        if self._metrics is not None:
            await self._metrics.stop()

    async def _expire_events(self) -> None:
        """End the events of cameras that stopped producing frames (paused, offline, finished)."""
        assert self._tracker is not None
        while True:
            if not self._tracker.any_open():  # nothing to end: no tick (an idle edged stays asleep)
                self._events_changed.clear()
                await self._events_changed.wait()
            await asyncio.sleep(EXPIRE_TICK_S)
            for event in self._tracker.expire(time.time()):
                self._publish_event(event)

    # -- publishing -------------------------------------------------------------------------

    def _faces_topic(self, camera: str) -> str:
        return f"{self._prefix}/{camera}/faces"

    def _snapshot_topic(self, camera: str) -> str:
        return f"{self._prefix}/{camera}/snapshot"

    def _publish_event(self, event: Event) -> None:
        # Face events are data for subscribers, not edged's own state: the log keeps them at debug.
        log.debug("camera %s: face event %s %s, %d faces", event.camera, event.id, event.type, event.faces)
        self._publisher.publish(f"{self._prefix}/events", event.payload(), self._config.events.qos, precious=True)
        if event.camera not in self._removed:
            self._publisher.set_retained(self._faces_topic(event.camera), str(event.faces).encode(), self._state_qos)

    def _publish_snapshot(self, camera: str, jpeg: bytes) -> None:
        if camera not in self._removed:  # rendered after a reload removed the camera
            self._publisher.set_retained(self._snapshot_topic(camera), jpeg, self._config.snapshots.qos)

    def _publish_stats(self, payload: bytes) -> None:
        self._publisher.set_retained(f"{self._prefix}/stats", payload, self._state_qos)
