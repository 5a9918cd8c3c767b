"""The supervisor: owns every task of a run and wires camera -> frame -> inference -> decode -> publish.

Every task lives in one TaskGroup. Cameras come and go with reloads (edged/reload.py); signals
and systemd are edged/lifecycle.py's business, health edged/health.py's.

Shutdown order matters and is spelt out in `_shut_down`: stop taking frames, let the frames already
in the engine come back and be published, flush the outbox, say `offline`, disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged import health, worker
from edged.camera import Camera
from edged.config import CameraConfig, Config, load_config
from edged.dispatch import Dispatcher
from edged.errors import ConfigError
from edged.inference import Engine, Result
from edged.lifecycle import Lifecycle
from edged.message import detection_payload
from edged.publish import Publisher
from edged.reload import diff
from edged.secrets import MqttSecurity

log = logging.getLogger("edged")

DRAIN_TIMEOUT_S = 2.0  # in-flight inferences take tens of milliseconds; this is a generous bound
FLUSH_TIMEOUT_S = 2.0  # together they keep a SIGTERM stop well within 5 s and systemd's patience
WORKER_JOIN_S = 1.0  # for camera threads to release their captures at shutdown
READY_WAIT_S = 15.0  # READY=1 waits at most this long for the first broker connection attempt


@dataclass(slots=True)
class _Running:
    camera: Camera
    task: asyncio.Task[None]


class Supervisor:
    def __init__(
        self,
        config: Config,
        security: MqttSecurity | None = None,
        config_path: Path | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._publisher = Publisher(config.mqtt, security)
        self._lifecycle = lifecycle or Lifecycle()
        self._seq: dict[str, int] = {}
        self._camera_online: dict[str, bool] = {}
        self._errors_logged: set[str] = set()
        self._cameras: dict[str, _Running] = {}
        self._reloading = False
        self._last_result = time.monotonic()  # "since the last result" counts from the start
        self._rate_mark = (time.monotonic(), 0)
        self._published_detections = 0

    def stop(self) -> None:
        self._lifecycle.request_stop()

    async def run(self) -> None:
        self._lifecycle.install_signal_handlers()
        try:
            await self._run()
        finally:
            self._lifecycle.remove_signal_handlers()

    async def _run(self) -> None:
        engine = await asyncio.to_thread(Engine, self._config.model)  # compiling takes a while: off the loop
        self._engine = engine
        dispatcher = Dispatcher(engine, self._on_result)
        self._dispatcher = dispatcher
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            mqtt_task = tasks.create_task(self._publisher.run(), name="mqtt")
            dispatch_task = tasks.create_task(dispatcher.run(), name=f"dispatch-{engine.name}")
            self._pipeline = (mqtt_task, dispatch_task)
            if not self._lifecycle.stop_requested.is_set():  # a SIGTERM during the compile: start nothing
                for name, camera in self._config.cameras.items():
                    self._start_camera(name, camera)
            await self._wait_for_broker()
            log.info("edged running: %d cameras on model %s", len(self._cameras), engine.name)
            self._lifecycle.ready(self._health().summary)
            watchdog = tasks.create_task(self._lifecycle.watch(self._health), name="watchdog")
            while await self._lifecycle.next_request() == "reload":
                await self._reload()
            self._lifecycle.stopping()
            watchdog.cancel()
            await self._shut_down(dispatcher, dispatch_task, mqtt_task)

    async def _wait_for_broker(self) -> None:
        """READY means serving: the broker was reached, or its first attempt failed and the outbox took over."""
        settled = asyncio.ensure_future(self._publisher.settled.wait())
        stop = asyncio.ensure_future(self._lifecycle.stop_requested.wait())
        try:
            done, _ = await asyncio.wait({settled, stop}, timeout=READY_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
            stop.cancel()
        if not done:
            log.warning("MQTT: no answer from the broker yet; messages are queued meanwhile")

    async def _shut_down(
        self, dispatcher: Dispatcher, dispatch_task: asyncio.Task[None], mqtt_task: asyncio.Task[None]
    ) -> None:
        started = time.monotonic()
        await self._stop_cameras(list(self._cameras))
        # Captures are released on their own threads; let them finish (a hung one is left behind).
        if stuck := await asyncio.to_thread(worker.join_all, WORKER_JOIN_S):
            log.warning("%s still blocked in a read; not waiting for it", ", ".join(stuck))
        try:
            await asyncio.wait_for(dispatcher.drain(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("%d inferences still running at shutdown; their results are lost", dispatcher.in_flight)
        dispatch_task.cancel()
        await self._publisher.close(FLUSH_TIMEOUT_S)
        mqtt_task.cancel()
        log.info(
            "edged stopped in %.1f s; %d MQTT messages were dropped from a full outbox during this run",
            time.monotonic() - started,
            self._publisher.dropped,
        )

    # -- cameras --------------------------------------------------------------------------------

    def _start_camera(self, name: str, config: CameraConfig) -> None:
        slot = self._dispatcher.add_camera(name)
        camera = Camera(name, config, slot, self._engine.prepare, self._on_camera_status)
        task = self._tasks.create_task(self._guard(camera.run(), f"camera {name}"), name=f"camera-{name}")
        task.add_done_callback(lambda _task: self._stop_if_all_finished())
        self._cameras[name] = _Running(camera, task)

    async def _stop_cameras(self, names: list[str]) -> None:
        stopping = [self._cameras.pop(name) for name in names if name in self._cameras]
        for running in stopping:
            running.task.cancel()
        await asyncio.gather(*(running.task for running in stopping), return_exceptions=True)
        for running in stopping:
            if running.camera.name not in self._cameras:  # not restarted under the same name
                self._dispatcher.remove_camera(running.camera.name)

    def _stop_if_all_finished(self) -> None:
        if self._reloading or self._lifecycle.stop_requested.is_set():
            return
        if all(running.task.done() for running in self._cameras.values()):
            log.info("every camera has finished: stopping")
            self._lifecycle.request_stop()

    @staticmethod
    async def _guard(coroutine: Coroutine[Any, Any, None], what: str) -> None:
        """A crash in one camera is logged with its cause and ends that camera only."""
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed", what)

    # -- reload ---------------------------------------------------------------------------------

    async def _reload(self) -> None:
        self._lifecycle.reloading()
        started = time.monotonic()
        try:
            if self._config_path is None:
                raise ConfigError("no configuration file to reload from")
            new = await asyncio.to_thread(load_config, self._config_path)  # file I/O: off the loop
        except ConfigError as error:
            for line in str(error).splitlines():
                log.error("reload refused, the running configuration is kept: %s", line)
            self._lifecycle.ready(self._health().summary)
            return
        changes = diff(self._config, new)
        if changes.needs_restart:
            log.warning(
                "reload: %s changed: restart edged to apply that; running on with the current settings",
                " and ".join(changes.needs_restart),
            )
        self._reloading = True
        try:
            await self._stop_cameras([*changes.removed, *changes.changed])
            for name in changes.removed:
                log.info("camera %s: stopped, removed from the configuration", name)
            self._config = self._config.model_copy(update={"cameras": new.cameras})
            for name in (*changes.added, *changes.changed):
                self._start_camera(name, new.cameras[name])
        finally:
            self._reloading = False
        log.info("reload done in %.1f s: %s", time.monotonic() - started, changes.summary())
        self._lifecycle.ready(self._health().summary)
        self._stop_if_all_finished()  # a reload may have left only cameras that had finished

    # -- results and statuses -------------------------------------------------------------------

    def _on_camera_status(self, camera: str, online: bool) -> None:
        if self._camera_online.get(camera) == online:
            return
        self._camera_online[camera] = online
        topic = f"{self._publisher.prefix}/{camera}/status"
        self._publisher.set_retained(topic, b"online" if online else b"offline", self._config.mqtt.qos.status)

    def _on_result(self, result: Result) -> None:
        self._last_result = time.monotonic()
        camera = result.frame.camera
        if result.error is not None:
            if camera not in self._errors_logged:  # once per camera: a decode bug would repeat every frame
                self._errors_logged.add(camera)
                log.error("camera %s: decoding failed: %s", camera, result.error)
            return
        seq = self._seq.get(camera, 0)
        self._seq[camera] = seq + 1
        payload = detection_payload(result, seq, self._config.model.name, time.time())
        self._publisher.publish(
            f"{self._publisher.prefix}/{camera}/detections", payload, self._config.mqtt.qos.detections
        )
        self._published_detections += 1

    # -- health ---------------------------------------------------------------------------------

    def _health(self) -> health.Health:
        now = time.monotonic()
        mark_time, mark_count = self._rate_mark
        fps = (self._published_detections - mark_count) / max(now - mark_time, 1e-3)
        self._rate_mark = (now, self._published_detections)
        cameras = tuple(
            health.CameraState(
                name,
                running.camera.online,
                running.task.done() or running.camera.finished,
                now - running.camera.last_frame if running.camera.last_frame else None,
                running.camera.config.stall_timeout,
            )
            for name, running in self._cameras.items()
        )
        return health.assess(
            health.Snapshot(
                cameras=cameras,
                in_flight=self._dispatcher.in_flight,
                since_result=now - self._last_result,
                mqtt_connected=self._publisher.connected.is_set(),
                outbox=self._publisher.outbox_depth,
                dropped=self._publisher.dropped,
                fps=fps,
                dead_tasks=tuple(task.get_name() for task in self._pipeline if task.done()),
            )
        )
