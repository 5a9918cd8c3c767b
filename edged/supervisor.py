"""The supervisor: owns every task of a run and wires camera -> frame -> inference -> decode -> publish.

Every task lives in one TaskGroup. Cameras come and go with reloads (edged/reload.py); signals
and systemd are edged/lifecycle.py's business, health edged/health.py's, the NVR features
(events, snapshots, stats, metrics, discovery, control) edged/nvr.py's.

Shutdown order matters and is spelt out in `_shut_down`: stop taking frames, let the frames already
in the engine come back and be published, flush the outbox, say `offline`, disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edged import health, worker
from edged.allocator import return_free_memory
from edged.camera import Camera
from edged.config import Config, load_config
from edged.dispatch import Dispatcher
from edged.errors import EXIT_OK, EXIT_USAGE, ConfigError, EdgedError, ModelError
from edged.inference import Engine, Result
from edged.lifecycle import Lifecycle
from edged.logs import counted
from edged.message import detection_payload
from edged.models import ModelSpec
from edged.nvr import Nvr
from edged.publish import OFFLINE, Publisher
from edged.reload import CameraChanges, diff
from edged.roster import CameraRoster
from edged.secrets import MqttSecurity

log = logging.getLogger("edged")

DRAIN_TIMEOUT_S = 2.0  # in-flight inferences take tens of milliseconds; this is a generous bound
FLUSH_TIMEOUT_S = 2.0  # with the other steps' limits, a SIGTERM stop takes 7 s at most: within TimeoutStopSec=10
WORKER_JOIN_S = 1.0  # for camera threads to release their captures at shutdown
RELOAD_GRACE_S = 1.0  # a reload under way when a stop comes may finish in this long; else it is abandoned
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
        self._nvr = Nvr(config, self._publisher)  # events, snapshots, stats, metrics, discovery, control
        self._roster = CameraRoster(self._publisher, config.mqtt.qos.status, self._forget)
        self._lifecycle = lifecycle or Lifecycle()
        self._seq: dict[str, int] = {}
        self._errors_logged: set[str] = set()
        self._engines: dict[str, Engine] = {}
        self._dispatchers: dict[str, Dispatcher] = {}
        self._cameras: dict[str, _Running] = {}
        self._pipeline: tuple[asyncio.Task[None], ...] = ()
        self._reloading = False
        self._rate_mark = (time.monotonic(), 0)
        self._published_detections = 0
        self.exit_code = EXIT_OK  # for `edged run`: EXIT_USAGE when every camera's input proved unusable

    def stop(self) -> None:
        self._lifecycle.request_stop()

    async def run(self) -> None:
        self._lifecycle.install_signal_handlers()
        try:
            await self._run()
        finally:
            self._lifecycle.remove_signal_handlers()

    async def _run(self) -> None:
        self._engines = await self._compile_models()
        self._dispatchers = {name: Dispatcher(engine, self._on_result) for name, engine in self._engines.items()}
        for name, engine in self._engines.items():
            self._nvr.add_model(name, self._dispatchers[name], engine.requests)
        try:
            self._nvr.start()
        except EdgedError as error:  # a key of the config (metrics.port): name the file too, as for the others
            raise EdgedError(f"{self._config_path}: {error}" if self._config_path else str(error)) from None
        self._roster.start(self._config.cameras)
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            self._nvr.create_tasks(tasks)
            mqtt_task = tasks.create_task(self._publisher.run(), name="mqtt")
            dispatch_tasks = [
                tasks.create_task(dispatcher.run(), name=f"dispatch-{name}")
                for name, dispatcher in self._dispatchers.items()
            ]
            self._pipeline = (mqtt_task, *dispatch_tasks)
            if not self._lifecycle.stop_requested.is_set():  # a SIGTERM during the compile: start nothing
                for name in self._config.cameras:
                    self._start_camera(name, self._config)
            await self._wait_for_broker()
            if not self._lifecycle.stop_requested.is_set():  # a stop while waiting: it never was running
                log.info(
                    "edged running: %s on %s (%s)",
                    counted(len(self._cameras), "camera"),
                    counted(len(self._engines), "model"),
                    ", ".join(self._engines),
                )
                self._lifecycle.ready(self._health().summary)
            watchdog = tasks.create_task(self._lifecycle.watch(self._health), name="watchdog")
            trimmer = tasks.create_task(return_free_memory(), name="return-free-memory")
            while await self._lifecycle.next_request() == "reload":
                await self._reload_unless_stopped()
            self._lifecycle.stopping()
            watchdog.cancel()
            trimmer.cancel()
            await self._shut_down(dispatch_tasks, mqtt_task)

    async def _compile_models(self) -> dict[str, Engine]:
        """Compile every model some camera uses, side by side and off the event loop."""
        specs = self._config.model_specs()
        used = list(dict.fromkeys(self._config.model_of(camera) for camera in self._config.cameras))
        for unused in specs.keys() - set(used):
            log.info("model %s is used by no camera: not compiled", unused)
        engines = await asyncio.gather(*(asyncio.to_thread(self._compile, specs[name]) for name in used))
        return dict(zip(used, engines, strict=True))

    def _compile(self, spec: ModelSpec) -> Engine:
        """In a thread: a model that reads fine can still fail to compile for its device; say which key to fix."""
        try:
            return Engine(spec, throughput_bound=self._config.throughput_bound(spec.name))
        except ModelError as error:
            raise self._config.model_error(self._config_path, spec.name, error) from None

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

    async def _shut_down(self, dispatch_tasks: list[asyncio.Task[None]], mqtt_task: asyncio.Task[None]) -> None:
        started = time.monotonic()
        await self._stop_cameras(list(self._cameras))
        # Captures are released on their own threads; let them finish (a hung one is left behind).
        if stuck := await asyncio.to_thread(worker.join_all, WORKER_JOIN_S):
            names = ", ".join(f"camera {name.removeprefix('camera-')}" for name in stuck)
            log.warning("%s still blocked in a read; not waiting for it", names)
        dispatchers = list(self._dispatchers.values())
        try:
            await asyncio.wait_for(asyncio.gather(*(d.drain() for d in dispatchers)), DRAIN_TIMEOUT_S)
        except TimeoutError:
            lost = sum(d.in_flight for d in dispatchers)
            log.warning("%d inferences still running at shutdown; their results are lost", lost)
        for task in dispatch_tasks:
            task.cancel()
        await self._nvr.shut_down()
        await self._publisher.close(FLUSH_TIMEOUT_S)
        mqtt_task.cancel()
        log.info(
            "edged stopped in %.1f s; %d MQTT messages were dropped from a full outbox during this run",
            time.monotonic() - started,
            self._publisher.dropped,
        )

    # -- cameras --------------------------------------------------------------------------------

    def _start_camera(self, name: str, config: Config) -> None:
        """Start camera `name` as `config` describes it (the running one, or a reloaded one)."""
        model = config.model_of(name)  # compiled: at start every used model is, a reload onto another is refused
        self._errors_logged.discard(name)  # a restarted camera's first decode error is told again
        slot = self._dispatchers[model].add_camera(name)
        camera = Camera(name, config.cameras[name], slot, self._engines[model].preparer(), self._on_camera_status)
        self._nvr.add_camera(name, camera, slot, model)
        task = self._tasks.create_task(self._guard(camera.run, f"camera {name}"), name=f"camera-{name}")
        task.add_done_callback(self._camera_ended)
        self._cameras[name] = _Running(camera, task)

    async def _stop_cameras(self, names: list[str]) -> None:
        stopping = {name: self._cameras.pop(name) for name in names if name in self._cameras}
        for running in stopping.values():
            running.task.cancel()
        await asyncio.gather(*(running.task for running in stopping.values()), return_exceptions=True)
        for name in stopping:
            for dispatcher in self._dispatchers.values():
                dispatcher.remove_camera(name)

    def _camera_ended(self, task: asyncio.Task[None]) -> None:
        # Cancelled outside a stop or a reload, a camera was ended by a failure elsewhere, which says so itself.
        if not task.cancelled():
            self._stop_if_all_finished()

    def _stop_if_all_finished(self) -> None:
        if self._reloading or self._lifecycle.stop_requested.is_set():
            return
        if self._cameras and all(running.task.done() for running in self._cameras.values()):
            failed = [name for name, running in self._cameras.items() if running.camera.failed]
            if failed:
                # Not a clean stop: systemd (Restart=on-failure) and scripts must see that the input is bad.
                log.error("every camera has finished, %s on an error (above): stopping", ", ".join(failed))
                self.exit_code = EXIT_USAGE
            else:
                log.info("every camera has finished: stopping")
            self._lifecycle.request_stop()

    @staticmethod
    async def _guard(run: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
        """A crash in one camera is logged with its cause and ends that camera only. `run` is called here, not by
        the caller: a task cancelled before its first step (a stop during a reload) then leaves nothing unawaited."""
        try:
            await run()
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
            in_use = frozenset(camera.url for camera in self._config.cameras.values())
            new = await asyncio.to_thread(load_config, self._config_path, None, in_use)  # file I/O: off the loop
            changes = self._retrying_failed(diff(self._config, new))
            self._check_models_running(new, changes)
        except ConfigError as error:
            self._refuse_reload(str(error))
            return
        except Exception as error:  # a config edged failed to judge must not end a running edged
            log.debug("reload: reading the configuration failed", exc_info=True)
            self._refuse_reload(f"{self._config_path}: cannot be read ({type(error).__name__}: {error})")
            return
        if changes.needs_restart:
            log.warning(
                "reload: %s changed: restart edged to apply that; running on with the current settings",
                " and ".join(changes.needs_restart),
            )
        self._reloading = True
        self._roster.expect(changes.added)  # a record read back while the cameras stop must not take them
        try:
            await self._stop_cameras([*changes.removed, *changes.changed])
            for name in changes.removed:
                self._forget(name)
                log.info("camera %s: stopped, removed from the configuration", name)
            self._config = self._config.model_copy(update={"cameras": new.cameras})
            self._roster.record(self._config.cameras)
            for name in (*changes.added, *changes.changed):
                self._start_camera(name, new)
        finally:
            self._reloading = False
        log.info("reload done in %.1f s: %s", time.monotonic() - started, changes.summary())
        self._lifecycle.ready(self._health().summary)
        self._stop_if_all_finished()  # a reload may have left only cameras that had finished

    async def _reload_unless_stopped(self) -> None:
        """A reload stuck reading the file (a hung network share) must not hold up a stop: systemd would kill edged
        without its `offline` statuses."""
        reload = asyncio.ensure_future(self._reload())
        stop = asyncio.ensure_future(self._lifecycle.stop_requested.wait())
        try:
            await asyncio.wait({reload, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not reload.done():
                await asyncio.wait({reload}, timeout=RELOAD_GRACE_S)
        finally:
            stop.cancel()
        if not reload.done():
            log.warning("reload abandoned for the stop: reading %s did not finish", self._config_path)
            reload.cancel()
            await asyncio.wait({reload})
        if not reload.cancelled():
            reload.result()  # a failure of the reload itself is raised here, as it was without the stop's watch

    def _retrying_failed(self, changes: CameraChanges) -> CameraChanges:
        """A camera stopped on an error (a corrupt file) starts again with the reload: its error told the operator
        to fix the input, and the reload is how they say it is fixed."""
        failed = tuple(name for name in changes.unchanged if (run := self._cameras.get(name)) and run.camera.failed)
        if not failed:
            return changes
        unchanged = tuple(name for name in changes.unchanged if name not in failed)
        return replace(changes, changed=(*changes.changed, *failed), unchanged=unchanged)

    def _refuse_reload(self, problems: str) -> None:
        for line in problems.splitlines():
            log.error("reload refused, the running configuration is kept: %s", line)
        self._lifecycle.ready(self._health().summary)

    def _check_models_running(self, new: Config, changes: CameraChanges) -> None:
        """Models are compiled at start only: a camera moved to another model would have none to run on."""
        for name in (*changes.added, *changes.changed):
            if (model := new.model_of(name)) not in self._engines:
                raise ConfigError(
                    f"{self._config_path}: cameras.{name}: its model {model} is not running (models are compiled "
                    "at start): restart edged to use it"
                )

    # -- results and statuses -------------------------------------------------------------------

    def _on_camera_status(self, camera: str, online: bool) -> None:
        # Cameras report changes only, and set_retained ignores an unchanged value: no bookkeeping here.
        self._nvr.on_camera_status(camera, online)
        status = b"online" if online else OFFLINE
        self._publisher.set_retained(
            self._status_topic(camera), status, self._config.mqtt.qos.status, lapses_to=OFFLINE
        )

    def _status_topic(self, camera: str) -> str:
        return f"{self._publisher.prefix}/{camera}/status"

    def _forget(self, camera: str) -> None:
        """A camera no longer configured: its retained topics go, so later subscribers do not find it."""
        self._nvr.remove_camera(camera)
        self._publisher.clear_retained(self._status_topic(camera))

    def _on_result(self, result: Result) -> None:
        camera = result.frame.camera
        if camera not in self._config.cameras:
            return  # removed by a reload while this frame was in inference (stopping keeps the configuration)
        if result.error is not None:
            if camera not in self._errors_logged:  # once per camera: a decode bug would repeat every frame
                self._errors_logged.add(camera)
                log.error("camera %s: decoding failed: %s", camera, result.error)
            return
        if self._nvr.paused(camera):
            return  # detection switched off while this frame was in inference
        seq = self._seq.get(camera, 0)
        self._seq[camera] = seq + 1
        payload = detection_payload(result, seq, time.time())
        self._publisher.publish(
            f"{self._publisher.prefix}/{camera}/detections", payload, self._config.mqtt.qos.detections
        )
        self._published_detections += 1
        self._nvr.on_result(result)

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
                running.camera.since_last_frame(now),
                running.camera.config.stall_timeout,
                1.0 / running.camera.config.fps if running.camera.config.fps else 0.0,
                running.camera.failed,
            )
            for name, running in self._cameras.items()
        )
        stalled, most_silent = max(
            ((dispatcher.stalled_for(now), model) for model, dispatcher in self._dispatchers.items()), default=(0.0, "")
        )
        return health.assess(
            health.Snapshot(
                cameras=cameras,
                inference_stalled=stalled,
                stalled_model=most_silent,
                mqtt_connected=self._publisher.connected.is_set(),
                outbox=self._publisher.outbox_depth,
                dropped=self._publisher.dropped,
                fps=fps,
                dead_tasks=tuple(task.get_name() for task in self._pipeline if task.done()),
            )
        )
